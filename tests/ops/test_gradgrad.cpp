// Second order, op by op: gradgradcheck (central differences of each op's VJP against
// a second backward through its recorded VJP, in double), and first-order gradchecks of
// the helper ops that the recorded VJPs introduce (scatter/gather, unpool, the ReLU
// masks, conv2d_backward_kernel, sum_to/broadcast_to, softmax_cross_entropy_backward).
#include <span>

#include "test_util.hpp"

namespace ad::test::test_gradgrad {
namespace {

#define EXPECT_GRADGRADCHECK(fn, inputs, names)                               \
  do {                                                                       \
    const ::ad::GradcheckResult r_ = ::ad::gradgradcheck(fn, inputs, names); \
    EXPECT_TRUE(r_.ok) << r_.report;                                         \
  } while (0)

using Fn = GradcheckFn;
using V = std::vector<Value>;

// ---- conv2d and conv_transpose2d ----

TEST(GradGrad, Conv2dWithBiasStridePadding) {
  Fn f = [](Tape<double>& t, const V& v) { return conv2d(t, v[0], v[1], v[2], {.padding = {1, 0}, .stride = {2, 1}}); };
  EXPECT_GRADGRADCHECK(f, (std::vector<T64>{uniform({2, 2, 5, 4}, 1), uniform({3, 2, 3, 2}, 2), uniform({3}, 3)}),
                       (std::vector<std::string>{"x", "k", "b"}));
}

TEST(GradGrad, Conv2dNoBiasPlainGeometry) {
  Fn f = [](Tape<double>& t, const V& v) { return conv2d(t, v[0], v[1], Value{}, {.padding = {1, 1}}); };
  EXPECT_GRADGRADCHECK(f, (std::vector<T64>{uniform({1, 1, 4, 4}, 4), uniform({2, 1, 3, 3}, 5)}),
                       (std::vector<std::string>{"x", "k"}));
}

TEST(GradGrad, Conv2dDilationGroupsStrideTakesTheGeneralPath) {
  Fn f = [](Tape<double>& t, const V& v) {
    return conv2d(t, v[0], v[1], v[2], {.padding = {1, 2}, .stride = {2, 1}, .dilation = {2, 1}, .groups = 2});
  };
  EXPECT_GRADGRADCHECK(f, (std::vector<T64>{uniform({2, 4, 6, 5}, 6), uniform({4, 2, 2, 3}, 7), uniform({4}, 8)}),
                       (std::vector<std::string>{"x", "k", "b"}));
}

TEST(GradGrad, ConvTranspose2dStrideOutputPadding) {
  Fn f = [](Tape<double>& t, const V& v) {
    return conv_transpose2d(t, v[0], v[1], v[2], {.padding = {1, 0}, .stride = {2, 2}, .output_padding = {1, 0}});
  };
  EXPECT_GRADGRADCHECK(f, (std::vector<T64>{uniform({2, 2, 3, 3}, 9), uniform({2, 3, 3, 2}, 10), uniform({3}, 11)}),
                       (std::vector<std::string>{"x", "k", "b"}));
}

TEST(GradGrad, Conv2dBackwardKernelIsBilinearAndHasItsOwnRecordedVjp) {
  // First order of the helper op, and its second order (conv2d's third).
  Fn f = [](Tape<double>& t, const V& v) { return conv2d_backward_kernel(t, v[0], v[1], 3, 2, {.padding = {1, 0}, .stride = {2, 1}}); };
  const std::vector<T64> in{uniform({2, 2, 5, 4}, 12), uniform({2, 3, 3, 3}, 13)};
  EXPECT_GRADCHECK(f, in, (std::vector<std::string>{"x", "grad_out"}));
  EXPECT_GRADGRADCHECK(f, in, (std::vector<std::string>{"x", "grad_out"}));
}

// ---- pooling ----

TEST(GradGrad, MaxPool2dOverlappingWindows) {
  Fn f = [](Tape<double>& t, const V& v) { return max_pool2d(t, v[0], {.window = {3, 2}, .stride = {2, 1}, .padding = {1, 0}}); };
  EXPECT_GRADGRADCHECK(f, std::vector<T64>{distinct({2, 2, 5, 4}, 14)}, std::vector<std::string>{"x"});
}

TEST(GradGrad, MaxPool2dScatterAndGatherAreEachOthersVjp) {
  const std::vector<int32_t> sw{0, 3, 5, 5, -1, 2, 1, 4};  // (1, 2, 2, 2) outputs into (1, 2, 2, 3) planes of 6
  Fn scatter = [&](Tape<double>& t, const V& v) { return max_pool2d_backward(t, v[0], std::span<const int32_t>(sw), 2, 3); };
  Fn gather = [&](Tape<double>& t, const V& v) { return max_pool2d_gather(t, v[0], std::span<const int32_t>(sw), 2, 2); };
  EXPECT_GRADCHECK(scatter, std::vector<T64>{uniform({1, 2, 2, 2}, 15)}, std::vector<std::string>{"g"});
  EXPECT_GRADCHECK(gather, std::vector<T64>{uniform({1, 2, 2, 3}, 16)}, std::vector<std::string>{"x"});
  EXPECT_GRADGRADCHECK(scatter, std::vector<T64>{uniform({1, 2, 2, 2}, 15)}, std::vector<std::string>{"g"});
  EXPECT_GRADGRADCHECK(gather, std::vector<T64>{uniform({1, 2, 2, 3}, 16)}, std::vector<std::string>{"x"});
}

TEST(GradGrad, AvgPool2dAndItsUnpool) {
  const Pool2dOptions a{.window = {3, 2}, .stride = {2, 1}, .padding = {1, 1}};
  Fn pool = [a](Tape<double>& t, const V& v) { return avg_pool2d(t, v[0], a); };
  Fn unpool = [a](Tape<double>& t, const V& v) { return avg_pool2d_backward(t, v[0], 5, 4, a); };
  EXPECT_GRADGRADCHECK(pool, std::vector<T64>{uniform({2, 2, 5, 4}, 17)}, std::vector<std::string>{"x"});
  EXPECT_GRADCHECK(unpool, std::vector<T64>{uniform({2, 2, 3, 5}, 18)}, std::vector<std::string>{"g"});
  EXPECT_GRADGRADCHECK(unpool, std::vector<T64>{uniform({2, 2, 3, 5}, 18)}, std::vector<std::string>{"g"});
}

TEST(GradGrad, GlobalAvgPool2d) {
  Fn f = [](Tape<double>& t, const V& v) { return global_avg_pool2d(t, v[0]); };
  EXPECT_GRADGRADCHECK(f, std::vector<T64>{uniform({2, 3, 3, 2}, 19)}, std::vector<std::string>{"x"});
}

// ---- activations ----

TEST(GradGrad, ReluAndLeakyReluOffTheKink) {
  Fn relu_f = [](Tape<double>& t, const V& v) { return relu(t, v[0]); };
  Fn leaky_f = [](Tape<double>& t, const V& v) { return leaky_relu(t, v[0], 0.2); };
  EXPECT_GRADGRADCHECK(relu_f, std::vector<T64>{off_zero({2, 3, 4}, 20)}, std::vector<std::string>{"x"});
  EXPECT_GRADGRADCHECK(leaky_f, std::vector<T64>{off_zero({2, 3, 4}, 21)}, std::vector<std::string>{"x"});
}

TEST(GradGrad, ReluMaskOpsAreLinearInTheGradient) {
  Fn f = [](Tape<double>& t, const V& v) { return relu_backward(t, v[0], v[1]); };
  Fn g = [](Tape<double>& t, const V& v) { return leaky_relu_backward(t, v[0], v[1], 0.3); };
  const std::vector<T64> in{uniform({3, 4}, 22), off_zero({3, 4}, 23)};
  EXPECT_GRADCHECK(f, in, (std::vector<std::string>{"g", "x"}));
  EXPECT_GRADCHECK(g, in, (std::vector<std::string>{"g", "x"}));
  EXPECT_GRADGRADCHECK(f, in, (std::vector<std::string>{"g", "x"}));
  EXPECT_GRADGRADCHECK(g, in, (std::vector<std::string>{"g", "x"}));
}

TEST(GradGrad, SigmoidAndTanh) {
  Fn s = [](Tape<double>& t, const V& v) { return sigmoid(t, v[0]); };
  Fn h = [](Tape<double>& t, const V& v) { return ad::tanh(t, v[0]); };
  EXPECT_GRADGRADCHECK(s, std::vector<T64>{uniform({2, 5}, 24, -3, 3)}, std::vector<std::string>{"x"});
  EXPECT_GRADGRADCHECK(h, std::vector<T64>{uniform({2, 5}, 25, -2, 2)}, std::vector<std::string>{"x"});
}

// ---- linear algebra, elementwise, shapes ----

TEST(GradGrad, LinearAndMatmul) {
  Fn lin = [](Tape<double>& t, const V& v) { return linear(t, v[0], v[1], v[2]); };
  Fn mm = [](Tape<double>& t, const V& v) { return matmul(t, v[0], v[1]); };
  EXPECT_GRADGRADCHECK(lin, (std::vector<T64>{uniform({3, 4}, 26), uniform({4, 2}, 27), uniform({2}, 28)}),
                       (std::vector<std::string>{"x", "w", "b"}));
  EXPECT_GRADGRADCHECK(mm, (std::vector<T64>{uniform({2, 3}, 29), uniform({3, 4}, 30)}), (std::vector<std::string>{"a", "b"}));
}

TEST(GradGrad, LinearOnOneRow) {  // sum_to (1, D) -> (D) for the bias
  Fn lin = [](Tape<double>& t, const V& v) { return linear(t, v[0], v[1], v[2]); };
  EXPECT_GRADGRADCHECK(lin, (std::vector<T64>{uniform({1, 3}, 31), uniform({3, 2}, 32), uniform({2}, 33)}),
                       (std::vector<std::string>{"x", "w", "b"}));
}

TEST(GradGrad, BroadcastingBinaryOps) {
  const std::vector<T64> in{uniform({2, 3, 2}, 34), uniform({3, 1}, 35, 0.5, 1.5)};
  const std::vector<std::string> names{"a", "b"};
  Fn a = [](Tape<double>& t, const V& v) { return add(t, v[0], v[1]); };
  Fn s = [](Tape<double>& t, const V& v) { return sub(t, v[0], v[1]); };
  Fn m = [](Tape<double>& t, const V& v) { return mul(t, v[0], v[1]); };
  Fn d = [](Tape<double>& t, const V& v) { return div(t, v[0], v[1]); };
  EXPECT_GRADGRADCHECK(a, in, names);
  EXPECT_GRADGRADCHECK(s, in, names);
  EXPECT_GRADGRADCHECK(m, in, names);
  EXPECT_GRADGRADCHECK(d, in, names);
}

TEST(GradGrad, SameShapeProductOfAValueWithItself) {  // fan-out: x used twice, contributions added
  Fn f = [](Tape<double>& t, const V& v) { return mul(t, v[0], mul(t, v[0], v[0])); };
  EXPECT_GRADGRADCHECK(f, std::vector<T64>{uniform({4}, 36)}, std::vector<std::string>{"x"});
}

TEST(GradGrad, ScaleBiasAddSumMean) {
  Fn sc = [](Tape<double>& t, const V& v) { return scale(t, mul(t, v[0], v[0]), -1.5); };
  Fn ba = [](Tape<double>& t, const V& v) { return bias_add(t, mul(t, v[0], v[0]), v[1]); };
  Fn su = [](Tape<double>& t, const V& v) { return sum(t, mul(t, v[0], v[0])); };
  Fn me = [](Tape<double>& t, const V& v) { return mean(t, mul(t, v[0], v[0])); };
  EXPECT_GRADGRADCHECK(sc, std::vector<T64>{uniform({3, 2}, 37)}, std::vector<std::string>{"x"});
  EXPECT_GRADGRADCHECK(ba, (std::vector<T64>{uniform({2, 3, 2}, 38), uniform({3}, 39)}), (std::vector<std::string>{"x", "b"}));
  EXPECT_GRADGRADCHECK(su, std::vector<T64>{uniform({3, 2}, 40)}, std::vector<std::string>{"x"});
  EXPECT_GRADGRADCHECK(me, std::vector<T64>{uniform({3, 2}, 41)}, std::vector<std::string>{"x"});
}

TEST(GradGrad, SumToAndBroadcastToAreEachOthersVjp) {
  Fn st = [](Tape<double>& t, const V& v) { return sum_to(t, v[0], Shape{3, 1}); };
  Fn bt = [](Tape<double>& t, const V& v) { return broadcast_to(t, v[0], Shape{2, 3, 4}); };
  EXPECT_GRADCHECK(st, std::vector<T64>{uniform({2, 3, 4}, 42)}, std::vector<std::string>{"x"});
  EXPECT_GRADCHECK(bt, std::vector<T64>{uniform({3, 1}, 43)}, std::vector<std::string>{"x"});
  EXPECT_GRADGRADCHECK(st, std::vector<T64>{uniform({2, 3, 4}, 42)}, std::vector<std::string>{"x"});
  EXPECT_GRADGRADCHECK(bt, std::vector<T64>{uniform({3, 1}, 43)}, std::vector<std::string>{"x"});
}

TEST(GradGrad, FlattenAndShapeOps) {
  // Each op is linear: a product after it makes the second derivative nonzero.
  auto sq = [](Tape<double>& t, Value y) { return mul(t, y, y); };
  Fn fl = [sq](Tape<double>& t, const V& v) { return sq(t, flatten(t, v[0])); };
  Fn rs = [sq](Tape<double>& t, const V& v) { return sq(t, reshape(t, v[0], {3, -1})); };
  Fn pe = [sq](Tape<double>& t, const V& v) { return sq(t, permute(t, v[0], {2, 0, 3, 1})); };
  Fn tr = [sq](Tape<double>& t, const V& v) { return sq(t, transpose(t, v[0], 1, 3)); };
  Fn na = [sq](Tape<double>& t, const V& v) { return sq(t, narrow(t, v[0], 2, 1, 2)); };
  Fn co = [sq](Tape<double>& t, const V& v) { return sq(t, concat(t, {v[0], v[1], v[0]}, 1)); };
  const std::vector<T64> x{uniform({2, 3, 4, 1}, 44)};
  const std::vector<std::string> n{"x"};
  EXPECT_GRADGRADCHECK(fl, x, n);
  EXPECT_GRADGRADCHECK(rs, (std::vector<T64>{uniform({2, 3, 2}, 45)}), n);
  EXPECT_GRADGRADCHECK(pe, x, n);
  EXPECT_GRADGRADCHECK(tr, x, n);
  EXPECT_GRADGRADCHECK(na, x, n);
  EXPECT_GRADGRADCHECK(co, (std::vector<T64>{uniform({2, 3, 4, 1}, 46), uniform({2, 2, 4, 1}, 47)}),
                       (std::vector<std::string>{"x", "y"}));
}

// ---- unary maths, dropout ----

TEST(GradGrad, UnaryMaths) {
  const std::vector<std::string> n{"x"};
  const std::vector<T64> pos{uniform({2, 3}, 70, 0.3, 2.0)}, any{off_zero({2, 3}, 71, 0.1)};
  Fn ne = [](Tape<double>& t, const V& v) { return mul(t, neg(t, v[0]), v[0]); };
  Fn ex = [](Tape<double>& t, const V& v) { return ad::exp(t, v[0]); };
  Fn lg = [](Tape<double>& t, const V& v) { return ad::log(t, v[0]); };
  Fn sq = [](Tape<double>& t, const V& v) { return ad::sqrt(t, v[0]); };
  Fn pw = [](Tape<double>& t, const V& v) { return ad::pow(t, v[0], 2.5); };
  Fn pn = [](Tape<double>& t, const V& v) { return ad::pow(t, v[0], -2.0); };
  Fn ab = [](Tape<double>& t, const V& v) { return mul(t, ad::abs(t, v[0]), v[0]); };
  Fn cl = [](Tape<double>& t, const V& v) { return mul(t, clamp(t, v[0], -0.5, 0.6), v[0]); };
  EXPECT_GRADGRADCHECK(ne, any, n);
  EXPECT_GRADGRADCHECK(ex, any, n);
  EXPECT_GRADGRADCHECK(lg, pos, n);
  EXPECT_GRADGRADCHECK(sq, pos, n);
  EXPECT_GRADGRADCHECK(pw, pos, n);
  EXPECT_GRADGRADCHECK(pn, any, n);
  EXPECT_GRADGRADCHECK(ab, any, n);
  EXPECT_GRADGRADCHECK(cl, (std::vector<T64>{T64{{-0.9, -0.3, 0.1}, {0.4, 0.8, -0.7}}}), n);
}

TEST(GradGrad, DropoutWithItsSavedMask) {
  Fn f = [](Tape<double>& t, const V& v) { return mul(t, dropout(t, v[0], 0.4, true, 7), v[0]); };
  EXPECT_GRADGRADCHECK(f, std::vector<T64>{uniform({3, 5}, 72)}, std::vector<std::string>{"x"});
}

// ---- batch norm: the double backward through the batch statistics ----

TEST(GradGrad, BatchNorm2dTrainingWithAndWithoutAffine) {
  Fn affine = [](Tape<double>& t, const V& v) { return batch_norm2d(t, v[0], v[1], v[2], nullptr, nullptr); };
  Fn plain = [](Tape<double>& t, const V& v) { return batch_norm2d(t, v[0], Value{}, Value{}, nullptr, nullptr); };
  EXPECT_GRADGRADCHECK(affine, (std::vector<T64>{uniform({3, 2, 3, 2}, 80), uniform({2}, 81), uniform({2}, 82)}),
                       (std::vector<std::string>{"x", "w", "b"}));
  EXPECT_GRADGRADCHECK(plain, std::vector<T64>{uniform({2, 3, 2, 2}, 83)}, std::vector<std::string>{"x"});
}

TEST(GradGrad, BatchNorm2dEvalMode) {
  Fn f = [](Tape<double>& t, const V& v) {
    T64 rm{0.3, -0.2}, rv{1.5, 0.7};
    return ad::tanh(t, batch_norm2d(t, v[0], v[1], v[2], &rm, &rv, {.training = false}));
  };
  EXPECT_GRADGRADCHECK(f, (std::vector<T64>{uniform({2, 2, 3, 3}, 84), uniform({2}, 85), uniform({2}, 86)}),
                       (std::vector<std::string>{"x", "w", "b"}));
}

// ---- losses ----

TEST(GradGrad, SoftmaxCrossEntropyWithAnIgnoredRow) {
  Fn f = [](Tape<double>& t, const V& v) { return softmax_cross_entropy(t, v[0], {2, 0, -100, 1}); };
  EXPECT_GRADGRADCHECK(f, std::vector<T64>{uniform({4, 3}, 48, -2, 2)}, std::vector<std::string>{"logits"});
}

TEST(GradGrad, SoftmaxCrossEntropyBackwardFirstOrder) {
  const std::vector<int32_t> labels{1, kIgnoredLabel, 0};
  Fn f = [&](Tape<double>& t, const V& v) {
    return softmax_cross_entropy_backward(t, v[0], v[1], std::span<const int32_t>(labels));
  };
  EXPECT_GRADCHECK(f, (std::vector<T64>{uniform({3, 4}, 49, -2, 2), T64(xt::xarray<double>(0.7))}),
                   (std::vector<std::string>{"logits", "g"}));
}

TEST(GradGrad, SoftmaxCrossEntropyBackwardSecondOrder) {  // the loss's third derivative
  const std::vector<int32_t> labels{1, kIgnoredLabel, 0};
  Fn f = [&](Tape<double>& t, const V& v) {
    return softmax_cross_entropy_backward(t, v[0], v[1], std::span<const int32_t>(labels));
  };
  EXPECT_GRADGRADCHECK(f, (std::vector<T64>{uniform({3, 4}, 49, -2, 2), T64(xt::xarray<double>(0.7))}),
                       (std::vector<std::string>{"logits", "g"}));
}

TEST(GradGrad, SoftmaxLogSoftmaxNllLoss) {
  Fn sm = [](Tape<double>& t, const V& v) { return softmax(t, v[0], 1); };
  Fn sm0 = [](Tape<double>& t, const V& v) { return softmax(t, v[0], 0); };
  Fn lsm = [](Tape<double>& t, const V& v) { return log_softmax(t, v[0], -1); };
  Fn nll = [](Tape<double>& t, const V& v) { return nll_loss(t, mul(t, v[0], v[0]), {2, -100, 0}); };
  Fn ce = [](Tape<double>& t, const V& v) { return nll_loss(t, log_softmax(t, v[0], 1), {2, 1, 0}, {.ignore_index = 1}); };
  const std::vector<T64> x{uniform({3, 4}, 60, -2, 2)};
  const std::vector<std::string> n{"x"};
  EXPECT_GRADGRADCHECK(sm, x, n);
  EXPECT_GRADGRADCHECK(sm0, x, n);
  EXPECT_GRADGRADCHECK(lsm, (std::vector<T64>{uniform({2, 3, 4}, 61, -2, 2)}), n);
  EXPECT_GRADGRADCHECK(nll, x, n);
  EXPECT_GRADGRADCHECK(ce, x, n);
}

TEST(GradGrad, NllLossBackwardIsNllLossTransposed) {
  const std::vector<int32_t> labels{2, -100, 0};
  Fn f = [&](Tape<double>& t, const V& v) { return nll_loss_backward(t, v[0], std::span<const int32_t>(labels), 4); };
  const std::vector<T64> g{T64(xt::xarray<double>(1.3))};
  EXPECT_GRADCHECK(f, g, std::vector<std::string>{"g"});
  EXPECT_GRADGRADCHECK(f, g, std::vector<std::string>{"g"});
}

TEST(GradGrad, Mse) {
  Fn f = [](Tape<double>& t, const V& v) { return mse(t, v[0], v[1]); };
  EXPECT_GRADGRADCHECK(f, (std::vector<T64>{uniform({2, 3}, 50), uniform({2, 3}, 51)}), (std::vector<std::string>{"p", "t"}));
}

// ---- the ref-CNN, end to end (fan-out into the kernels from every position) ----

TEST(GradGrad, RefCnnLossEndToEnd) {
  Fn f = [](Tape<double>& t, const V& v) {
    const Value a1 = max_pool2d(t, relu(t, conv2d(t, v[0], v[1], v[2], {.padding = {1, 1}})));
    const Value a2 = max_pool2d(t, leaky_relu(t, conv2d(t, a1, v[3], v[4], {.padding = {1, 1}}), 0.1));
    return softmax_cross_entropy(t, linear(t, flatten(t, a2), v[5], v[6]), {1, 0});
  };
  const std::vector<T64> in{distinct({2, 1, 8, 8}, 52), uniform({2, 1, 3, 3}, 53), uniform({2}, 54),
                            uniform({3, 2, 3, 3}, 55), uniform({3}, 56), uniform({12, 3}, 57), uniform({3}, 58)};
  GradcheckOptions opt;
  opt.max_elements = 40;  // per input; the random direction still moves every element
  const GradcheckResult r = gradgradcheck(f, in, {"x", "k1", "b1", "k2", "b2", "w3", "b3"}, opt);
  EXPECT_TRUE(r.ok) << r.report;
}

}  // namespace
}  // namespace ad::test::test_gradgrad
