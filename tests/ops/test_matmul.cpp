// Linear and matmul (section 3.1.1): forward in the document's W layout, VJPs
// against finite differences, errors.
#include "test_util.hpp"

namespace ad::test::test_matmul {
namespace {

TEST(Linear, ForwardIsXTimesDocumentWeightPlusBias) {
  // Document: Z = W^T B + b for one column B. Rows of x are the B^T's.
  const T64 x = uniform({4, 3}, 1), w = uniform({3, 2}, 2), b = uniform({2}, 3);
  Tape<double> t;
  const Value y = linear(t, t.input(x), t.input(w), t.input(b));
  for (std::size_t n = 0; n < 4; ++n)
    for (std::size_t d = 0; d < 2; ++d) {
      double z = b(d);
      for (std::size_t i = 0; i < 3; ++i) z += w(i, d) * x(n, i);  // (W^T B)_d
      EXPECT_NEAR(t.value(y)(n, d), z, 1e-14);
    }
}

TEST(Linear, VjpMatchesFiniteDifferences) {
  for (auto [n, din, dout] : {std::tuple{5, 7, 3}, std::tuple{1, 4, 1}, std::tuple{8, 1, 6}}) {
    const Shape xs{std::size_t(n), std::size_t(din)}, ws{std::size_t(din), std::size_t(dout)};
    auto f = [](Tape<double>& t, const std::vector<Value>& v) { return linear(t, v[0], v[1], v[2]); };
    EXPECT_GRADCHECK(f, (std::vector<T64>{uniform(xs, 1), uniform(ws, 2), uniform({std::size_t(dout)}, 3)}),
                     (std::vector<std::string>{"x", "w", "b"}));
    auto g = [](Tape<double>& t, const std::vector<Value>& v) { return linear(t, v[0], v[1], Value{}); };
    EXPECT_GRADCHECK(g, (std::vector<T64>{uniform(xs, 4), uniform(ws, 5)}), (std::vector<std::string>{"x", "w"}));
  }
}

TEST(Matmul, VjpMatchesFiniteDifferencesIncludingSquaredOperand) {
  auto f = [](Tape<double>& t, const std::vector<Value>& v) { return matmul(t, v[0], v[1]); };
  EXPECT_GRADCHECK(f, (std::vector<T64>{uniform({3, 4}, 1), uniform({4, 2}, 2)}), (std::vector<std::string>{"a", "b"}));
  auto sq = [](Tape<double>& t, const std::vector<Value>& v) { return matmul(t, v[0], v[0]); };
  EXPECT_GRADCHECK(sq, (std::vector<T64>{uniform({3, 3}, 3)}), (std::vector<std::string>{"a"}));
}

// An empty batch (N = 0), as PyTorch accepts it: output (0, D_out); backward adds
// nothing to the weight and bias gradients. And a whole CNN on an empty batch, up to a
// NaN mean cross-entropy (PyTorch's mean over no rows).
TEST(Linear, AnEmptyBatchGivesAnEmptyOutput) {
  Tape<float> t;
  Parameter<float> x("x", Tensor<float>(Shape{0, 3})), w("w", xt::cast<float>(uniform({3, 5}, 1))),
      b("b", xt::cast<float>(uniform({5}, 2)));
  const Value y = linear(t, t.param(x), t.param(w), t.param(b));
  EXPECT_EQ(t.shape(y), (Shape{0, 5}));
  t.backward(y, Tensor<float>(Shape{0, 5}));
  EXPECT_EQ(w.grad, xt::zeros<float>({3, 5}));
  EXPECT_EQ(b.grad, xt::zeros<float>({5}));

  Tape<double> tc;
  Parameter<double> k("k", uniform({4, 1, 3, 3}, 3)), kb("kb", uniform({4}, 4)), fc("fc", uniform({4 * 3 * 3, 10}, 5));
  const Value a = max_pool2d(tc, relu(tc, conv2d(tc, tc.input(T64(Shape{0, 1, 6, 6})), tc.param(k), tc.param(kb),
                                                 {.padding = {1, 1}})));
  const Value logits = linear(tc, flatten(tc, avg_pool2d(tc, a, {.window = {1, 1}, .stride = {1, 1}})), tc.param(fc), Value{});
  EXPECT_EQ(tc.shape(logits), (Shape{0, 10}));
  const Value j = softmax_cross_entropy(tc, logits, {});
  EXPECT_TRUE(std::isnan(tc.value(j)()));
  tc.backward(j);
  EXPECT_EQ(k.grad, xt::zeros<double>({4, 1, 3, 3}));
  EXPECT_EQ(fc.grad, xt::zeros<double>({36, 10}));
}

TEST(Linear, RejectsMismatchedShapes) {
  Tape<double> t;
  const Value x = t.input(uniform({4, 3}, 1));
  EXPECT_TRUE(throws_shape_error([&] { linear(t, x, t.input(uniform({2, 5}, 2)), Value{}); },
                                 {"linear: input (4,3) and weight (2,5) disagree on D_in (3 vs 2)"}));
  EXPECT_TRUE(throws_shape_error([&] { linear(t, x, t.input(uniform({3, 5}, 2)), t.input(uniform({4}, 3))); },
                                 {"linear: bias (4) and weight (3,5) disagree on D_out (4 vs 5)"}));
  EXPECT_TRUE(throws_shape_error([&] { matmul(t, x, t.input(uniform({2, 2}, 3))); }, {"matmul", "K (3 vs 2)"}));
}

}  // namespace
}  // namespace ad::test::test_matmul
