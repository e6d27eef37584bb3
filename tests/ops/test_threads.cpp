// The ops' OpenMP kernels on several threads agree with one thread. Shapes are large
// enough that every parallel loop runs parallel (activations go parallel above
// 65,536 elements). This is also the program `./run.sh test-tsan` runs under
// ThreadSanitizer, so a data race in a kernel fails there even when the numbers agree.
#include "test_util.hpp"

namespace ad::test {
namespace {

// Everything one forward and VJP of `f` produce, on `threads` OpenMP threads: the
// output, then the gradient of every input, for the cotangent `cot`.
using Fn = std::function<Value(Tape<double>&, const std::vector<Value>&)>;
std::vector<T64> run_on(int threads, const Fn& f, const std::vector<T64>& inputs, uint64_t cot_seed) {
  const int before = num_threads();
  set_num_threads(threads);
  std::vector<Parameter<double>> ps;
  ps.reserve(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) ps.emplace_back(fmt::format("in{}", i), inputs[i]);
  Tape<double> t;
  std::vector<Value> vs;
  for (Parameter<double>& p : ps) vs.push_back(t.param(p));
  const Value y = f(t, vs);
  const T64 out = t.value(y);
  t.backward(y, uniform(to_shape(out.shape()), cot_seed));
  set_num_threads(before);
  std::vector<T64> all = {out};
  for (Parameter<double>& p : ps) all.push_back(p.grad);
  return all;
}

void expect_same_on_every_thread_count(const Fn& f, const std::vector<T64>& inputs) {
  const std::vector<T64> one = run_on(1, f, inputs, 99);
  for (int threads : {2, 3}) {
    const std::vector<T64> many = run_on(threads, f, inputs, 99);
    ASSERT_EQ(many.size(), one.size());
    for (std::size_t i = 0; i < one.size(); ++i)
      EXPECT_TRUE(all_close(many[i], one[i], 1e-12, 1e-12))
          << threads << " threads, " << (i == 0 ? std::string("output") : fmt::format("gradient of input {}", i - 1));
  }
}

TEST(Threads, Conv2dAgreesWithOneThread) {
  const std::vector<T64> in = {uniform({6, 3, 12, 11}, 1), uniform({5, 3, 3, 3}, 2), uniform({5}, 3)};
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) { return conv2d(t, v[0], v[1], v[2], {.padding = {1, 1}}); }, in);
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) {
        return conv2d(t, v[0], v[1], v[2], {.padding = {2, 0}, .stride = {2, 3}});
      },
      in);
  // 1x1 kernels at stride 1 without padding take the direct path (no im2col).
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) { return conv2d(t, v[0], v[1], Value{}); },
      {uniform({6, 3, 7, 7}, 4), uniform({4, 3, 1, 1}, 5)});
}

TEST(Threads, PoolingAgreesWithOneThread) {
  const std::vector<T64> in = {distinct({6, 3, 12, 12}, 1)};
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) { return max_pool2d(t, v[0]); }, in);
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) {
        return max_pool2d(t, v[0], {.window = {3, 3}, .stride = {1, 1}, .padding = {1, 1}});
      },
      in);
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) {
        return avg_pool2d(t, v[0], {.window = {3, 2}, .stride = {2, 1}, .padding = {1, 0}});
      },
      in);
}

TEST(Threads, ActivationsAgreeWithOneThread) {
  const std::vector<T64> in = {off_zero({2, 4, 100, 100}, 1)};  // 80,000 elements
  expect_same_on_every_thread_count([](Tape<double>& t, const std::vector<Value>& v) { return relu(t, v[0]); }, in);
  expect_same_on_every_thread_count([](Tape<double>& t, const std::vector<Value>& v) { return leaky_relu(t, v[0], 0.1); },
                                    in);
  expect_same_on_every_thread_count([](Tape<double>& t, const std::vector<Value>& v) { return sigmoid(t, v[0]); }, in);
  expect_same_on_every_thread_count([](Tape<double>& t, const std::vector<Value>& v) { return ad::tanh(t, v[0]); }, in);
}

// Broadcasting binary ops (a per-channel operand: rows of H*W; a scalar: one row cut in
// blocks; same shapes: flat loops), the unary maths and global average pooling, on
// 2*16*48*48 = 73,728 elements.
TEST(Threads, ElementwiseOpsAndGlobalPoolingAgreeWithOneThread) {
  const T64 x = uniform({2, 16, 48, 48}, 1, 0.5, 1.5);
  for (const Shape& bs : {Shape{1, 16, 1, 1}, Shape{}, Shape{2, 16, 48, 48}}) {
    const std::vector<T64> in = {x, uniform(bs, 2, 0.5, 1.5)};
    expect_same_on_every_thread_count([](Tape<double>& t, const std::vector<Value>& v) { return add(t, v[0], v[1]); }, in);
    expect_same_on_every_thread_count([](Tape<double>& t, const std::vector<Value>& v) { return sub(t, v[1], v[0]); }, in);
    expect_same_on_every_thread_count([](Tape<double>& t, const std::vector<Value>& v) { return mul(t, v[0], v[1]); }, in);
    expect_same_on_every_thread_count([](Tape<double>& t, const std::vector<Value>& v) { return div(t, v[0], v[1]); }, in);
  }
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) {
        const Value a = add(t, ad::log(t, v[0]), ad::sqrt(t, ad::abs(t, neg(t, v[0]))));
        return add(t, a, clamp(t, ad::pow(t, ad::exp(t, v[0]), 1.5), 2.0, 5.0));
      },
      {x});
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) { return global_avg_pool2d(t, v[0]); }, {x});
}

TEST(Threads, WholeCnnAgreesWithOneThread) {
  const std::vector<T64> in = {uniform({8, 1, 12, 12}, 1), uniform({4, 1, 3, 3}, 2), uniform({4}, 3),
                               uniform({8, 4, 3, 3}, 4), uniform({8}, 5), uniform({8 * 3 * 3, 10}, 6)};
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) {
        const Value a1 = max_pool2d(t, relu(t, conv2d(t, v[0], v[1], v[2], {.padding = {1, 1}})));
        const Value a2 = avg_pool2d(t, ad::tanh(t, conv2d(t, a1, v[3], v[4], {.padding = {1, 1}})));
        return softmax_cross_entropy(t, linear(t, flatten(t, a2), v[5], Value{}), {0, 1, 2, 3, 4, 5, 6, 7});
      },
      in);
}

}  // namespace
}  // namespace ad::test
