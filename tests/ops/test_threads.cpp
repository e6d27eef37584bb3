// The ops' OpenMP kernels on several threads agree with one thread. Shapes are large
// enough that every parallel loop runs parallel (conv2d above 2^18 multiply-adds,
// pooling above 2^16 window taps, activations above 65,536 elements), and each kernel is
// also run alone to check that its team really had more than one thread. This is also
// the program `./run.sh test-tsan` runs under ThreadSanitizer, so a data race in a
// kernel fails there even when the numbers agree.
#include <dlfcn.h>
#include <omp.h>

#include <atomic>

#include "ops/conv2d_direct.hpp"
#include "ops/isa.hpp"
#include "test_util.hpp"

// Every parallel region the ops open is a call to GOMP_parallel (GCC's OpenMP ABI, which
// LLVM's libomp, used by ./run.sh test-tsan, implements too). This definition in the
// test program is the one the statically linked ops call: it records the size of each
// team that ran, then hands the region to the runtime's own GOMP_parallel.
namespace {
std::atomic<int> g_largest_team{0};
struct Region {
  void (*fn)(void*);
  void* data;
};
void counted(void* region) {
  const int n = omp_get_num_threads();
  int seen = g_largest_team.load();
  while (n > seen && !g_largest_team.compare_exchange_weak(seen, n)) {
  }
  const Region* r = static_cast<const Region*>(region);
  r->fn(r->data);
}
}  // namespace

extern "C" void GOMP_parallel(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags) {
  using Real = void (*)(void (*)(void*), void*, unsigned, unsigned);
  static const Real real = reinterpret_cast<Real>(dlsym(RTLD_NEXT, "GOMP_parallel"));
  Region r{fn, data};
  real(counted, &r, num_threads, flags);
}

namespace ad::test {
namespace {

// The largest team of threads any parallel region had while `f` ran, on 3 threads.
template <class F>
int team_size_during(F f) {
  const int before = num_threads();
  set_num_threads(3);
  g_largest_team = 0;
  f();
  set_num_threads(before);
  return g_largest_team.load();
}

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
  const std::vector<T64> in = {uniform({6, 3, 16, 16}, 1), uniform({8, 3, 3, 3}, 2), uniform({8}, 3)};
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) { return conv2d(t, v[0], v[1], v[2], {.padding = {1, 1}}); }, in);
  const std::vector<T64> wide = {uniform({6, 3, 30, 30}, 4), uniform({12, 3, 3, 3}, 5), uniform({12}, 6)};
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) {
        return conv2d(t, v[0], v[1], v[2], {.padding = {2, 0}, .stride = {2, 3}});
      },
      wide);
  // 1x1 kernels at stride 1 without padding take the direct path (no im2col).
  const std::vector<T64> one = {uniform({8, 16, 16, 16}, 7), uniform({16, 16, 1, 1}, 8)};
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) { return conv2d(t, v[0], v[1], Value{}); }, one);
  // Each kernel alone (no tape, so no other parallel loop): its forward and its VJP,
  // with every gradient (the per-thread partial sums of dK and db), ran on a team.
  for (const auto& [xs, opt] : {std::pair{in, Conv2dOptions{.padding = {1, 1}}},
                                std::pair{wide, Conv2dOptions{.padding = {2, 0}, .stride = {2, 3}}},
                                std::pair{one, Conv2dOptions{}}}) {
    SCOPED_TRACE(shape_str(xs[1].shape()));
    const Conv2dOptions& a = opt;
    const Shape ys = conv2d_output_shape(to_shape(xs[0].shape()), to_shape(xs[1].shape()), nullptr, a);
    T64 y(ys), gx = xt::zeros<double>(xs[0].shape()), gk = xt::zeros<double>(xs[1].shape()), gb = xt::zeros<double>({xs[1].shape()[0]});
    const T64 g = uniform(ys, 9);
    EXPECT_GE(team_size_during([&] { conv2d_forward(xs[0], xs[1], static_cast<const T64*>(nullptr), a, y); }), 2);
    EXPECT_GE(team_size_during([&] { conv2d_vjp(g, xs[0], xs[1], a, &gx, &gk, &gb); }), 2);
    EXPECT_GE(team_size_during([&] { conv2d_vjp(g, xs[0], xs[1], a, static_cast<T64*>(nullptr), &gk, &gb); }), 2);
  }
}

// conv2d_relu_max_pool2d: its VJP makes dJ/dz image by image inside conv2d's VJP, in a
// buffer of each thread of the team (detail::conv2d_vjp_images). Double through the
// tape (the direct kernel); float called directly on ref-CNN's conv2 shape, the
// Winograd path where the instruction set prefers it, on a team.
TEST(Threads, FusedConvReluPoolAgreesWithOneThread) {
  const std::vector<T64> in = {uniform({6, 3, 16, 16}, 1), uniform({8, 3, 3, 3}, 2, -0.5, 0.5), uniform({8}, 3)};
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) {
        return conv2d_relu_max_pool2d(t, v[0], v[1], v[2], {.padding = {1, 1}});
      },
      in);
  const Tensor<float> x = xt::cast<float>(uniform({6, 16, 14, 14}, 4));
  const Tensor<float> k = xt::cast<float>(uniform({32, 16, 5, 5}, 5, -0.2, 0.2));
  const Tensor<float> b = xt::cast<float>(uniform({32}, 6));
  const Conv2dOptions conv{.padding = {2, 2}};
  const Pool2dOptions pool{};
  const Shape ys = conv2d_relu_max_pool2d_output_shape(to_shape(x.shape()), to_shape(k.shape()), nullptr, conv, pool);
  Tensor<float> y(ys);
  std::vector<int32_t> sw(y.size());
  conv2d_relu_max_pool2d_forward(x, k, &b, conv, pool, y, sw.data());
  const Tensor<float> g = xt::cast<float>(uniform(ys, 7));
  // dJ/dx, dJ/dk, dJ/db on one thread, or (team not null) on 3, recording the team's size
  auto vjp = [&](int* team) {
    std::vector<Tensor<float>> grads = {xt::zeros<float>(x.shape()), xt::zeros<float>(k.shape()),
                                        xt::zeros<float>(b.shape())};
    auto run = [&] { conv2d_relu_max_pool2d_vjp(g, y, sw, x, k, conv, &grads[0], &grads[1], &grads[2]); };
    if (team) {
      *team = team_size_during(run);
    } else {
      const int before = num_threads();
      set_num_threads(1);
      run();
      set_num_threads(before);
    }
    return grads;
  };
  int team = 0;
  const std::vector<Tensor<float>> one = vjp(nullptr), many = vjp(&team);
  EXPECT_GE(team, 2);
  for (std::size_t i = 0; i < one.size(); ++i)  // dK and db: per-thread partial sums, another order
    EXPECT_TRUE(all_close(xt::cast<double>(many[i]), xt::cast<double>(one[i]), 1e-5, 1e-5)) << "gradient " << i;
}

// Fewer images than threads: each image is split into items by channel ranges shared
// by the team (ops/conv2d.cpp, WorkItems), one vector of channels a register block: the
// forward's output channels; in the VJP, C_out for dJ/dK and dJ/db and C_in for dJ/dx.
// The same operations compute every element of the forward and of dJ/dx, so those are
// the one thread's bit for bit; dJ/dK and dJ/db are per-thread partial sums (the float
// path's 1e-5 here). The plain convolution and the fused op (also its forward without
// switches, inference's own Winograd output pass), direct and Winograd, a
// channel count that leaves the last range partly padding, and conv1's single input
// channel (16 output channels: one vector with AVX-512, so not split there); on every
// kernel variant the processor runs.
TEST(Threads, SmallBatchSplitsImagesByChannel) {
  struct ModeGuard {
    WinogradMode before = conv2d_winograd();
    Isa isa = active_isa();
    ~ModeGuard() { set_conv2d_winograd(before), set_isa(isa); }
  } guard;
  struct Case {
    Shape x, k;
  };
  const Case cases[] = {{{1, 16, 14, 14}, {32, 16, 5, 5}}, {{2, 16, 14, 14}, {32, 16, 5, 5}},
                        {{1, 8, 20, 20}, {20, 8, 5, 5}}, {{1, 1, 28, 28}, {16, 1, 5, 5}}};
  const Conv2dOptions conv{.padding = {2, 2}};
  const Pool2dOptions pool{};
  uint64_t seed = 40;
  for (const Isa isa : kernel_variants())  // every variant of the kernels this processor runs
  for (const WinogradMode mode : {WinogradMode::On, WinogradMode::Off}) {
    set_isa(isa);
    set_conv2d_winograd(mode);
    for (const Case& c : cases) {
      SCOPED_TRACE(fmt::format("x {}, k {}, Winograd {}, {}", shape_str(c.x), shape_str(c.k), mode == WinogradMode::On,
                               isa_name(isa)));
      const Tensor<float> x = xt::cast<float>(uniform(c.x, seed++)), k = xt::cast<float>(uniform(c.k, seed++, -0.3, 0.3));
      const Tensor<float> b = xt::cast<float>(uniform({c.k[0]}, seed++));
      const Shape zs = conv2d_output_shape(c.x, c.k, nullptr, conv);
      const Shape ys = conv2d_relu_max_pool2d_output_shape(c.x, c.k, nullptr, conv, pool);
      const Tensor<float> gz = xt::cast<float>(uniform(zs, seed++)), gy = xt::cast<float>(uniform(ys, seed++));
      // [0] z, [1] y (fused), [2..4] conv2d's dJ/dx, dJ/dk, dJ/db, [5..7] the fused op's,
      // [8..9] conv2d's dJ/dk, dJ/db without dJ/dx, [10..13] the fused op on a tape (whose
      // node keeps the switches as codes, pixel-major: ops/conv2d_relu_pool.cpp): y, dJ/dx,
      // dJ/dk, dJ/db; and the switches, of the direct call and of the tape
      struct Out {
        std::vector<Tensor<float>> t;
        std::vector<int32_t> sw, codes;
      };
      auto zeros = [](const Tensor<float>& like) { return Tensor<float>(xt::zeros<float>(like.shape())); };
      auto forward = [&](Out& o) {
        o.t = {Tensor<float>(zs), Tensor<float>(ys)};
        o.sw.assign(o.t[1].size(), 0);
        conv2d_forward(x, k, &b, conv, o.t[0]);
        conv2d_relu_max_pool2d_forward(x, k, &b, conv, pool, o.t[1], o.sw.data());
      };
      auto backward = [&](Out& o) {
        for (const Tensor<float>* like : {&x, &k, &b, &x, &k, &b, &k, &b}) o.t.push_back(zeros(*like));
        conv2d_vjp(gz, x, k, conv, &o.t[2], &o.t[3], &o.t[4]);
        conv2d_relu_max_pool2d_vjp(gy, o.t[1], o.sw, x, k, conv, &o.t[5], &o.t[6], &o.t[7]);
        conv2d_vjp(gz, x, k, conv, static_cast<Tensor<float>*>(nullptr), &o.t[8], &o.t[9]);
        Tape<float> t;
        Parameter<float> px("x", x), pk("k", k), pb("b", b);
        const Value y = conv2d_relu_max_pool2d(t, t.param(px), t.param(pk), t.param(pb), conv, pool);
        o.codes = t.nodes().back().saved_index;
        t.backward(y, gy);
        for (const Tensor<float>* r : std::initializer_list<const Tensor<float>*>{&t.value(y), &px.grad, &pk.grad, &pb.grad})
          o.t.push_back(*r);
      };
      Out one, many;
      {
        const int before = num_threads();
        set_num_threads(1);
        forward(one);
        backward(one);
        set_num_threads(before);
      }
      const int team_forward = team_size_during([&] { forward(many); });
      const int team_backward = team_size_during([&] { backward(many); });
      // split only into whole vectors: conv1's 16 channels are one with AVX-512
      if (c.k[0] > conv::kernels<float>().lanes) {
        EXPECT_GE(team_forward, 2);
        EXPECT_GE(team_backward, 2);
      }
      const char* what[] = {"conv2d",         "conv2d_relu_max_pool2d", "conv2d dJ/dx",     "conv2d dJ/dk",
                            "conv2d dJ/db",   "fused dJ/dx",            "fused dJ/dk",      "fused dJ/db",
                            "conv2d dJ/dk (no dJ/dx)", "conv2d dJ/db (no dJ/dx)", "taped y", "taped dJ/dx",
                            "taped dJ/dk",    "taped dJ/db"};
      ASSERT_EQ(one.t.size(), std::size(what));
      for (std::size_t i = 0; i < one.t.size(); ++i) {
        const bool exact = i <= 2 || i == 5 || i == 10 || i == 11;  // outputs and dJ/dx
        EXPECT_TRUE(all_close(xt::cast<double>(many.t[i]), xt::cast<double>(one.t[i]), exact ? 0 : 1e-5, exact ? 0 : 1e-5))
            << what[i];
      }
      EXPECT_EQ(many.sw, one.sw) << "the pool's switches";
      EXPECT_EQ(many.codes, one.codes) << "the tape's switch codes";
      // the tape's results are the direct calls' (the same kernels, switches in another form)
      for (std::size_t i = 10; i < 14; ++i)
        EXPECT_TRUE(all_close(xt::cast<double>(one.t[i]), xt::cast<double>(one.t[i == 10 ? 1 : i - 6]), 0, 0))
            << what[i];
      // inference (no switches wanted): Winograd's own output pass, split the same way
      Tensor<float> y_infer(ys);
      const int team_infer =
          team_size_during([&] { conv2d_relu_max_pool2d_forward(x, k, &b, conv, pool, y_infer, nullptr); });
      if (c.k[0] > conv::kernels<float>().lanes) {
        EXPECT_GE(team_infer, 2);
      }
      EXPECT_TRUE(all_close(xt::cast<double>(y_infer), xt::cast<double>(one.t[1]), 0, 0)) << "without switches";
    }
  }
}

// linear: the forward and dJ/dx by row blocks, dJ/dW as per-thread partial sums over
// row blocks of the batch (ref-CNN's last layer: 64 x 1568 by 1568 x 10).
TEST(Threads, LinearAgreesWithOneThread) {
  const std::vector<T64> in = {uniform({64, 1568}, 1), uniform({1568, 10}, 2), uniform({10}, 3)};
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) { return linear(t, v[0], v[1], v[2]); }, in);
  const T64 g = uniform({64, 10}, 4);
  T64 y = xt::zeros<double>({64, 10}), gx = xt::zeros<double>({64, 1568}), gw = xt::zeros<double>({1568, 10});
  EXPECT_GE(team_size_during([&] { linear_forward(in[0], in[1], &in[2], y); }), 2);
  EXPECT_GE(team_size_during([&] { linear_vjp(g, in[0], in[1], static_cast<T64*>(nullptr), &gw, static_cast<T64*>(nullptr)); }), 2);
  EXPECT_GE(team_size_during([&] { linear_vjp(g, in[0], in[1], &gx, static_cast<T64*>(nullptr), static_cast<T64*>(nullptr)); }), 2);
  // dJ/dW[k, d] = sum_n x[n, k] g[n, d] (section 3.1.1), by the definition
  T64 want = xt::zeros<double>({1568, 10});
  for (std::size_t n = 0; n < 64; ++n)
    for (std::size_t k = 0; k < 1568; ++k)
      for (std::size_t d = 0; d < 10; ++d) want(k, d) += in[0](n, k) * g(n, d);
  EXPECT_TRUE(all_close(gw, want, 1e-12, 1e-12));
}

// In float, ref-CNN's last layer runs on the dense kernels (ops/dense_simd.inc): rows of
// the output and of dJ/dx, and columns of dJ/dW each summed whole by one thread, so
// every team gives the same bits (no partial sums over row blocks).
TEST(Threads, FloatLinearHasTheSameBitsOnEveryTeam) {
  const Tensor<float> x = xt::cast<float>(uniform({64, 1568}, 11)), w = xt::cast<float>(uniform({1568, 10}, 12));
  const Tensor<float> b = xt::cast<float>(uniform({10}, 13)), g = xt::cast<float>(uniform({64, 10}, 14));
  auto run = [&](int threads) {
    const int before = num_threads();
    set_num_threads(threads);
    Tensor<float> y = xt::zeros<float>({64, 10}), gx = xt::zeros<float>({64, 1568}), gw = xt::ones<float>({1568, 10});
    Tensor<float> gb = xt::zeros<float>({10});
    linear_forward(x, w, &b, y);
    linear_vjp(g, x, w, &gx, &gw, &gb, true);
    set_num_threads(before);
    return std::vector<Tensor<float>>{y, gx, gw};
  };
  const std::vector<Tensor<float>> one = run(1);
  for (int threads : {2, 3}) {
    const std::vector<Tensor<float>> many = run(threads);
    for (std::size_t i = 0; i < one.size(); ++i)
      EXPECT_TRUE(one[i] == many[i]) << threads << " threads, " << (i == 0 ? "y" : i == 1 ? "dJ/dx" : "dJ/dW");
  }
  Tensor<float> y = xt::zeros<float>({64, 10}), gw = xt::zeros<float>({1568, 10});
  EXPECT_GE(team_size_during([&] { linear_forward(x, w, &b, y); }), 2);
  EXPECT_GE(team_size_during([&] { linear_vjp(g, x, w, static_cast<Tensor<float>*>(nullptr), &gw, static_cast<Tensor<float>*>(nullptr)); }), 2);
}

TEST(Threads, PoolingAgreesWithOneThread) {
  const std::vector<T64> in = {distinct({8, 8, 64, 64}, 1)};
  const Pool2dOptions two{}, three{.window = {3, 3}, .stride = {1, 1}, .padding = {1, 1}},
      avg{.window = {3, 2}, .stride = {2, 1}, .padding = {1, 0}};
  expect_same_on_every_thread_count(
      [&](Tape<double>& t, const std::vector<Value>& v) { return max_pool2d(t, v[0], two); }, in);
  expect_same_on_every_thread_count(
      [&](Tape<double>& t, const std::vector<Value>& v) { return max_pool2d(t, v[0], three); }, in);
  expect_same_on_every_thread_count(
      [&](Tape<double>& t, const std::vector<Value>& v) { return avg_pool2d(t, v[0], avg); }, in);
  // Each kernel alone: the 2x2 fast path, the general loop, both VJPs.
  for (const Pool2dOptions& o : {two, three, avg}) {
    SCOPED_TRACE(fmt::format("window ({},{})", o.window[0], o.window[1]));
    const Pool2dOptions& a = o;
    const Shape ys = pool2d_output_shape("max_pool2d", to_shape(in[0].shape()), a);
    T64 y(ys), gx = xt::zeros<double>(in[0].shape());
    const T64 g = uniform(ys, 2);
    std::vector<int32_t> sw(y.size());
    EXPECT_GE(team_size_during([&] { max_pool2d_forward(in[0], a, y, sw.data()); }), 2);
    EXPECT_GE(team_size_during([&] { max_pool2d_vjp(g, sw, &gx); }), 2);
    EXPECT_GE(team_size_during([&] { avg_pool2d_forward(in[0], a, y); }), 2);
    EXPECT_GE(team_size_during([&] { avg_pool2d_vjp(g, a, &gx); }), 2);
  }
}

TEST(Threads, ActivationsAgreeWithOneThread) {
  const std::vector<T64> in = {off_zero({2, 4, 100, 100}, 1)};  // 80,000 elements
  T64 y(in[0].shape()), gx = xt::zeros<double>(in[0].shape());
  EXPECT_GE(team_size_during([&] { relu_forward(in[0], y); }), 2);
  EXPECT_GE(team_size_during([&] { tanh_vjp(in[0], in[0], &gx); }), 2);
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

// The ops of issue 11: batch norm (channels in parallel), dropout (mask words), softmax
// (blocks), conv2d with groups and dilation and conv_transpose2d (images).
TEST(Threads, NormalisationDropoutAndSoftmaxAgreeWithOneThread) {
  const std::vector<T64> in = {uniform({4, 4, 66, 66}, 1), uniform({4}, 2), uniform({4}, 3)};  // 69,696 elements
  for (const bool training : {true, false})
    expect_same_on_every_thread_count(
        [training](Tape<double>& t, const std::vector<Value>& v) {
          T64 rm = xt::zeros<double>({4}), rv = xt::ones<double>({4});
          return batch_norm2d(t, v[0], v[1], v[2], &rm, &rv, {.training = training});
        },
        in);
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) { return dropout(t, v[0], 0.3, true, 17); }, {in[0]});
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) { return softmax(t, v[0], 1); }, {uniform({64, 40, 30}, 4)});
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) { return log_softmax(t, v[0], -1); }, {uniform({64, 40, 30}, 5)});
}

TEST(Threads, GroupedDilatedAndTransposedConvolutionsAgreeWithOneThread) {
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) {
        return conv2d(t, v[0], v[1], v[2], {.padding = {2, 1}, .dilation = {2, 1}, .groups = 2});
      },
      {uniform({8, 4, 16, 16}, 1), uniform({8, 2, 3, 3}, 2), uniform({8}, 3)});
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) {
        return conv_transpose2d(t, v[0], v[1], v[2], {.padding = {1, 1}, .stride = {2, 2}, .output_padding = {1, 1}});
      },
      {uniform({6, 5, 12, 12}, 4), uniform({5, 3, 3, 3}, 5), uniform({3}, 6)});
  expect_same_on_every_thread_count(
      [](Tape<double>& t, const std::vector<Value>& v) {
        return conv_transpose2d(t, v[0], v[1], Value{}, {.stride = {2, 1}, .dilation = {1, 2}, .groups = 2});
      },
      {uniform({8, 4, 12, 12}, 7), uniform({4, 3, 3, 3}, 8)});
}

}  // namespace
}  // namespace ad::test
