// The bad-input matrix: every invalid argument an op can receive is refused when the
// op is recorded, with a ShapeError naming the op, the argument, the shapes and the
// rule. The cases already covered next to each op (tests/ops/test_<op>.cpp) are not
// repeated here; this file completes the matrix. Then NaN and infinity: what each op
// does with them (documented in the README, "Errors and guarantees"), and anomaly
// mode catching them.
#include <cmath>
#include <limits>

#include "test_util.hpp"

namespace ad::test::test_bad_input {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// A tensor of shape s holding `values` in row-major order.
T64 tensor(const Shape& s, std::initializer_list<double> values) {
  T64 t(s);
  std::copy(values.begin(), values.end(), t.begin());
  return t;
}

// ---------------------------------------------------------------- conv2d

TEST(Conv2dBadInput, KernelAndBiasOfTheWrongRank) {
  Tape<double> t;
  const Value x = t.input(uniform({1, 3, 8, 8}, 1));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, t.input(uniform({8, 3, 3}, 2)), Value{}); },
                                 {"conv2d", "kernel (8,3,3)", "rank 4", "(C_out, C_in, KH, KW)", "not rank 3"}));
  const Value k = t.input(uniform({8, 3, 3, 3}, 3));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k, t.input(uniform({8, 1}, 4))); },
                                 {"conv2d", "bias (8,1)", "rank 1", "(C_out)", "not rank 2"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, t.input(uniform({1, 1, 3, 8, 8}, 5)), k, Value{}); },
                                 {"conv2d", "input (1,1,3,8,8)", "rank 4", "(N, C_in, H, W)", "not rank 5"}));
}

TEST(Conv2dBadInput, StrideAndPaddingOnTheWidthAxis) {
  Tape<double> t;
  const Value x = t.input(uniform({1, 3, 8, 8}, 1)), k = t.input(uniform({4, 3, 3, 3}, 2));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k, Value{}, {.stride = {1, 0}}); },
                                 {"conv2d", "stride (1,0) must be >= 1 on both axes"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k, Value{}, {.stride = {-2, 1}}); },
                                 {"conv2d", "stride (-2,1) must be >= 1"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k, Value{}, {.padding = {0, -3}}); },
                                 {"conv2d", "padding (0,-3) must be >= 0 on both axes"}));
}

TEST(Conv2dBadInput, KernelWiderThanThePaddedInput) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 3, 8, 6}, 1));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, t.input(uniform({4, 3, 3, 9}, 2)), Value{}, {.padding = {0, 1}}); },
                                 {"conv2d", "kernel (3,9) is larger than input (2,3,8,6) with padding (0,1)",
                                  "KW 9 > W + 2*1 = 8"}));
  // Exactly the padded size is allowed (one output column).
  const Value y = conv2d(t, x, t.input(uniform({4, 3, 3, 8}, 3)), Value{}, {.padding = {0, 1}});
  EXPECT_EQ(t.shape(y), (Shape{2, 4, 6, 1}));
}

TEST(Conv2dBadInput, EmptyAxesOfInputAndKernel) {
  Tape<double> t;
  const Value k = t.input(uniform({4, 3, 3, 3}, 1));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, t.input(T64(Shape{1, 3, 0, 8})), k, Value{}); },
                                 {"conv2d", "input (1,3,0,8) is empty along axis 2", ">= 1"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, t.input(uniform({1, 3, 8, 8}, 2)), t.input(T64(Shape{0, 3, 3, 3})), Value{}); },
                                 {"conv2d", "kernel (0,3,3,3) is empty along axis 0"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, t.input(T64(Shape{1, 0, 8, 8})), t.input(T64(Shape{4, 0, 3, 3})), Value{}); },
                                 {"conv2d", "input (1,0,8,8) is empty along axis 1"}));
}

// A padding of 2^31 - 1 gives OH = OW = 2^32, so N*C*OH*OW wraps to 0 in 64 bits: this
// used to allocate an empty output and write past it (a segfault). Now refused.
TEST(Conv2dBadInput, HugePaddingWhoseOutputSizeOverflowsIsRefused) {
  Tape<float> t;
  const int p = std::numeric_limits<int>::max();
  const Value x = t.input(xt::zeros<float>({1, 1, 2, 2})), k = t.input(xt::zeros<float>({1, 1, 1, 1}));
  EXPECT_THROW(conv2d(t, x, k, Value{}, {.padding = {p, p}}), ShapeError);
  try {
    conv2d(t, x, k, Value{}, {.padding = {p, p}});
  } catch (const ShapeError& e) {
    const std::string msg = e.what();
    for (const char* part : {"conv2d: output (1,1,4294967296,4294967296) for input (1,1,2,2)",
                             "padding (2147483647,2147483647)", "more than 2^60 elements"})
      EXPECT_NE(msg.find(part), std::string::npos) << msg;
  }
}

// ---------------------------------------------------------------- pooling

TEST(Pool2dBadInput, RankOfTheInputForBothPools) {
  Tape<double> t;
  EXPECT_TRUE(throws_shape_error([&] { avg_pool2d(t, t.input(uniform({6, 6}, 1))); },
                                 {"avg_pool2d", "input (6,6)", "rank 4", "(N, C, H, W)", "not rank 2"}));
  EXPECT_TRUE(throws_shape_error([&] { max_pool2d(t, t.input(uniform({1, 2, 3, 6, 6}, 2))); },
                                 {"max_pool2d", "input (1,2,3,6,6)", "not rank 5"}));
}

TEST(Pool2dBadInput, WindowStrideAndPaddingOnEachAxis) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 3, 6, 6}, 1));
  EXPECT_TRUE(throws_shape_error([&] { max_pool2d(t, x, {.window = {2, 0}}); }, {"max_pool2d", "window (2,0)", ">= 1"}));
  EXPECT_TRUE(throws_shape_error([&] { max_pool2d(t, x, {.window = {-1, 2}}); }, {"max_pool2d", "window (-1,2)", ">= 1"}));
  EXPECT_TRUE(throws_shape_error([&] { max_pool2d(t, x, {.window = {2, 2}, .stride = {2, 0}}); },
                                 {"max_pool2d", "stride (2,0) must be >= 1"}));
  EXPECT_TRUE(throws_shape_error([&] { avg_pool2d(t, x, {.window = {2, 2}, .stride = {-1, -1}}); },
                                 {"avg_pool2d", "stride (-1,-1) must be >= 1"}));
  EXPECT_TRUE(throws_shape_error([&] { max_pool2d(t, x, {.window = {2, 2}, .stride = {2, 2}, .padding = {-1, 0}}); },
                                 {"max_pool2d", "padding (-1,0) must be >= 0"}));
}

TEST(Pool2dBadInput, WindowWiderThanThePaddedInput) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 3, 6, 6}, 1));
  EXPECT_TRUE(throws_shape_error([&] { avg_pool2d(t, x, {.window = {2, 9}, .stride = {1, 1}, .padding = {0, 1}}); },
                                 {"avg_pool2d", "window (2,9) is larger than input (2,3,6,6) with padding (0,1)",
                                  "KW 9 > W + 2*1 = 8"}));
}

TEST(Pool2dBadInput, NegInfPaddingAsWideAsTheWindowOnTheWidthAxis) {
  Tape<double> t;
  const Value x = t.input(uniform({1, 1, 6, 6}, 1));
  EXPECT_TRUE(throws_shape_error([&] { max_pool2d(t, x, {.window = {3, 3}, .stride = {1, 1}, .padding = {0, 3}}); },
                                 {"max_pool2d", "padding (0,3) must be smaller than the window (3,3)",
                                  "MaxPoolPadding::Zero"}));
  // The document's zero padding has no such rule: a window of only padding yields 0.
  const Value y = max_pool2d(t, x, {.window = {3, 3}, .stride = {1, 1}, .padding = {0, 3}, .max_padding = MaxPoolPadding::Zero});
  EXPECT_EQ(t.shape(y), (Shape{1, 1, 4, 10}));
  EXPECT_EQ(t.value(y)(0, 0, 0, 0), 0.0);
}

TEST(Pool2dBadInput, EmptyChannelsOrRowsButNotAnEmptyBatch) {
  Tape<double> t;
  EXPECT_EQ(t.shape(max_pool2d(t, t.input(T64(Shape{0, 3, 6, 6})))), (Shape{0, 3, 3, 3}));  // N = 0, as in PyTorch
  EXPECT_TRUE(throws_shape_error([&] { avg_pool2d(t, t.input(T64(Shape{2, 0, 6, 6}))); },
                                 {"avg_pool2d", "input (2,0,6,6) is empty along axis 1", "but the batch axis 0"}));
  EXPECT_TRUE(throws_shape_error([&] { max_pool2d(t, t.input(T64(Shape{2, 3, 0, 6}))); },
                                 {"max_pool2d", "input (2,3,0,6) is empty along axis 2"}));
}

TEST(Pool2dBadInput, HugePaddingWhoseOutputSizeOverflowsIsRefused) {
  Tape<float> t;
  const int p = std::numeric_limits<int>::max();
  const Value x = t.input(xt::zeros<float>({1, 1, 2, 2}));
  EXPECT_TRUE(throws_shape_error([&] { avg_pool2d(t, x, {.window = {1, 1}, .stride = {1, 1}, .padding = {p, p}}); },
                                 {"avg_pool2d", "output (1,1,4294967296,4294967296)", "more than 2^60 elements"}));
  EXPECT_TRUE(throws_shape_error(
      [&] {
        max_pool2d(t, x, {.window = {1, 1}, .stride = {1, 1}, .padding = {p, p}, .max_padding = MaxPoolPadding::Zero});
      },
      {"max_pool2d", "output (1,1,4294967296,4294967296)", "more than 2^60 elements"}));
}

// ---------------------------------------------------------------- flatten, linear, matmul

TEST(FlattenBadInput, ScalarAndEmptyFeatures) {
  Tape<double> t;
  EXPECT_TRUE(throws_shape_error([&] { flatten(t, t.input(T64(2.0))); }, {"flatten", "input ()", "rank >= 2", "not rank 0"}));
  EXPECT_TRUE(throws_shape_error([&] { flatten(t, t.input(T64(Shape{2, 3, 0, 2}))); },
                                 {"flatten", "input (2,3,0,2) is empty along axis 2"}));
  EXPECT_EQ(t.shape(flatten(t, t.input(T64(Shape{0, 3, 2, 2})))), (Shape{0, 12}));  // N = 0
}

TEST(LinearBadInput, ForgottenFlattenIsARankError) {
  Tape<double> t;
  const Value w = t.input(uniform({48, 10}, 1));
  EXPECT_TRUE(throws_shape_error([&] { linear(t, t.input(uniform({2, 3, 4, 4}, 2)), w, Value{}); },
                                 {"linear", "input (2,3,4,4)", "rank 2", "(N, D_in)", "not rank 4"}));
}

TEST(LinearBadInput, WeightAndBiasOfTheWrongRank) {
  Tape<double> t;
  const Value x = t.input(uniform({4, 3}, 1));
  EXPECT_TRUE(throws_shape_error([&] { linear(t, x, t.input(uniform({3}, 2)), Value{}); },
                                 {"linear", "weight (3)", "rank 2", "(D_in, D_out)"}));
  // PyTorch's (D_out, D_in) layout is refused by the D_in rule, naming both shapes.
  EXPECT_TRUE(throws_shape_error([&] { linear(t, x, t.input(uniform({5, 3}, 3)), Value{}); },
                                 {"linear: input (4,3) and weight (5,3) disagree on D_in (3 vs 5)"}));
  EXPECT_TRUE(throws_shape_error([&] { linear(t, x, t.input(uniform({3, 5}, 4)), t.input(uniform({1, 5}, 5))); },
                                 {"linear", "bias (1,5)", "rank 1", "(D_out)"}));
}

TEST(LinearBadInput, EmptyFeaturesAndEmptyWeight) {
  Tape<double> t;
  EXPECT_TRUE(throws_shape_error([&] { linear(t, t.input(T64(Shape{2, 0})), t.input(uniform({3, 5}, 1)), Value{}); },
                                 {"linear", "input (2,0) is empty along axis 1"}));
  EXPECT_TRUE(throws_shape_error([&] { linear(t, t.input(uniform({2, 3}, 2)), t.input(T64(Shape{3, 0})), Value{}); },
                                 {"linear", "weight (3,0) is empty along axis 1"}));
}

TEST(MatmulBadInput, RanksAndEmptyOperands) {
  Tape<double> t;
  const Value a = t.input(uniform({2, 3}, 1));
  EXPECT_TRUE(throws_shape_error([&] { matmul(t, t.input(uniform({3}, 2)), a); },
                                 {"matmul", "left operand (3)", "rank 2", "(M, K)"}));
  EXPECT_TRUE(throws_shape_error([&] { matmul(t, a, t.input(uniform({3, 2, 1}, 3))); },
                                 {"matmul", "right operand (3,2,1)", "rank 2", "(K, N)"}));
  EXPECT_TRUE(throws_shape_error([&] { matmul(t, t.input(T64(Shape{0, 2})), t.input(uniform({2, 2}, 4))); },
                                 {"matmul", "left operand (0,2) is empty along axis 0"}));
}

// ---------------------------------------------------------------- elementwise and reductions

TEST(ElementwiseBadInput, AddAndMulNeedShapesThatBroadcast) {
  Tape<double> t;
  const Value a = t.input(uniform({2, 3}, 1)), b = t.input(uniform({3, 2}, 2));
  EXPECT_TRUE(throws_shape_error([&] { add(t, a, b); }, {"add: operands (2,3) and (3,2) cannot be broadcast together"}));
  EXPECT_TRUE(throws_shape_error([&] { mul(t, a, t.input(uniform({2, 3, 1}, 3))); },
                                 {"mul: operands (2,3) and (2,3,1) cannot be broadcast together"}));
  // A scalar broadcasts (tests/ops/test_elementwise.cpp has the rest).
  EXPECT_EQ(t.shape(add(t, a, t.input(T64(1.0)))), (Shape{2, 3}));
}

TEST(ElementwiseBadInput, BiasAddRanksAndChannels) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 3, 4, 4}, 1));
  EXPECT_TRUE(throws_shape_error([&] { bias_add(t, t.input(uniform({3}, 2)), t.input(uniform({3}, 3))); },
                                 {"bias_add", "input (3)", "rank >= 2"}));
  EXPECT_TRUE(throws_shape_error([&] { bias_add(t, x, t.input(uniform({3, 1}, 4))); },
                                 {"bias_add", "bias (3,1)", "rank 1", "(C)"}));
  EXPECT_TRUE(throws_shape_error([&] { bias_add(t, x, t.input(uniform({4}, 5))); },
                                 {"bias_add: input (2,3,4,4) and bias (4) disagree on C (3 vs 4)"}));
}

TEST(ElementwiseBadInput, SumAndMeanOfNothing) {
  Tape<double> t;
  const Value e = t.input(T64(Shape{0, 3}));
  EXPECT_TRUE(throws_shape_error([&] { sum(t, e); }, {"sum: input (0,3) is empty"}));
  EXPECT_TRUE(throws_shape_error([&] { mean(t, e); }, {"mean: input (0,3) is empty"}));
}

// ---------------------------------------------------------------- losses

TEST(LossBadInput, LogitsOfTheWrongRank) {
  Tape<double> t;
  EXPECT_TRUE(throws_shape_error([&] { softmax_cross_entropy(t, t.input(uniform({10}, 1)), {3}); },
                                 {"softmax_cross_entropy", "logits (10)", "rank 2", "(N, K)", "not rank 1"}));
  EXPECT_TRUE(throws_shape_error([&] { softmax_cross_entropy(t, t.input(uniform({2, 10, 1, 1}, 2)), {3, 4}); },
                                 {"softmax_cross_entropy", "logits (2,10,1,1)", "not rank 4"}));
}

TEST(LossBadInput, NoClasses) {
  Tape<double> t;
  EXPECT_TRUE(throws_shape_error([&] { softmax_cross_entropy(t, t.input(T64(Shape{2, 0})), {0, 0}); },
                                 {"softmax_cross_entropy", "logits (2,0) is empty along axis 1"}));
}

TEST(LossBadInput, LabelAtTheUpperBoundAndFarOutOfRange) {
  Tape<double> t;
  const Value z = t.input(uniform({3, 10}, 1));
  EXPECT_TRUE(throws_shape_error([&] { softmax_cross_entropy(t, z, {0, 9, 10}); },
                                 {"softmax_cross_entropy", "label 10 at position 2", "logits (3,10)", "[0, 10)"}));
  EXPECT_TRUE(throws_shape_error([&] { softmax_cross_entropy(t, z, {std::numeric_limits<int>::min(), 0, 0}); },
                                 {"label -2147483648 at position 0"}));
  EXPECT_TRUE(throws_shape_error([&] { softmax_cross_entropy(t, z, {0, 1, 2, 3}); },
                                 {"logits (3,10) and labels (4) disagree on N (3 vs 4)"}));
}

TEST(LossBadInput, MseOfSameSizeButDifferentShapeAndOfNothing) {
  Tape<double> t;
  EXPECT_TRUE(throws_shape_error([&] { mse(t, t.input(uniform({6}, 1)), t.input(uniform({2, 3}, 2))); },
                                 {"mse: prediction (6) and target (2,3) must have the same shape"}));
  EXPECT_TRUE(throws_shape_error([&] { mse(t, t.input(T64(Shape{0, 3})), t.input(T64(Shape{0, 3}))); },
                                 {"mse", "prediction (0,3) is empty along axis 0"}));
}

// ---------------------------------------------------------------- the tape

TEST(TapeBadInput, SeedOfTheSameSizeButAnotherShape) {
  Tape<double> t;
  Parameter<double> p("w", uniform({2, 3}, 1));
  const Value y = scale(t, t.param(p), 2.0);
  EXPECT_TRUE(throws_shape_error([&] { t.backward(y, uniform({3, 2}, 2)); },
                                 {"backward: seed gradient (3,2) and value", "(2,3) disagree in shape"}));
  // Nothing was accumulated by the refused call.
  EXPECT_EQ(p.grad, (T64(xt::zeros<double>({2, 3}))));
}

TEST(TapeBadInput, AMissingOrStaleValueHandle) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 2}, 1));
  EXPECT_TRUE(throws_tape_error([&] { relu(t, Value{}); }, {"tape: value #-1 is not on this tape"}));
  // A conv2d whose kernel argument is "none".
  EXPECT_TRUE(throws_tape_error([&] { conv2d(t, t.input(uniform({1, 1, 3, 3}, 2)), Value{}, Value{}); },
                                {"value #-1 is not on this tape"}));
  t.reset();
  EXPECT_TRUE(throws_tape_error([&] { relu(t, x); }, {"value #0 belongs to another recording", "reset()"}));
  t.input(uniform({2, 2}, 3));  // slot 0 holds a new value now: the old handle is still refused
  EXPECT_TRUE(throws_tape_error([&] { relu(t, x); }, {"value #0 belongs to another recording", "reset()"}));
}

// ---------------------------------------------------------------- NaN and infinity
//
// No op checks values (that costs a pass over every tensor; anomaly mode does it on
// request). Arithmetic follows IEEE 754: a NaN input makes NaN every output that
// depends on it, and only those.

TEST(NonFinite, NaNPropagatesThroughConvolutionToTheWindowsThatSeeIt) {
  Tape<double> t;
  T64 x = uniform({1, 1, 5, 5}, 1);
  x(0, 0, 0, 0) = kNaN;
  const Value y = conv2d(t, t.input(x), t.input(uniform({2, 1, 3, 3}, 2)), t.input(uniform({2}, 3)));
  const T64& v = t.value(y);
  for (std::size_t o = 0; o < 2; ++o)
    for (std::size_t i = 0; i < 3; ++i)
      for (std::size_t j = 0; j < 3; ++j)
        EXPECT_EQ(std::isnan(v(0, o, i, j)), i == 0 && j == 0) << fmt::format("output ({},{},{})", o, i, j);
}

TEST(NonFinite, NaNPropagatesThroughAveragePooling) {
  Tape<double> t;
  T64 x = uniform({1, 1, 4, 4}, 1);
  x(0, 0, 3, 3) = kNaN;
  const Value y = avg_pool2d(t, t.input(x));
  EXPECT_TRUE(std::isnan(t.value(y)(0, 0, 1, 1)));
  EXPECT_TRUE(std::isfinite(t.value(y)(0, 0, 0, 0)));
}

TEST(NonFinite, MaxPoolingLetsNaNWinAndRoutesItsGradientThereAsInPyTorch) {
  Tape<double> t;
  // The NaN is neither first nor larger than its neighbours: it wins anyway.
  Parameter<double> p("x", tensor({1, 1, 2, 2}, {1.0, 9.0, kNaN, 2.0}));
  const Value y = max_pool2d(t, t.param(p));
  EXPECT_TRUE(std::isnan(t.value(y)(0, 0, 0, 0)));
  EXPECT_EQ(t.nodes().back().saved_index, (std::vector<int32_t>{2}));  // the NaN's index h*W+w
  t.backward(y, tensor({1, 1, 1, 1}, {1.0}));
  EXPECT_EQ(p.grad, tensor({1, 1, 2, 2}, {0.0, 0.0, 1.0, 0.0}));
}

TEST(NonFinite, MaxPoolingOfInfinities) {
  Tape<double> t;
  const Value y = max_pool2d(t, t.input(tensor({1, 2, 2, 2}, {-kInf, -kInf, -kInf, -kInf, 1.0, kInf, -kInf, 3.0})));
  EXPECT_EQ(t.value(y)(0, 0, 0, 0), -kInf);  // an all -inf window: -inf, not the padding
  EXPECT_EQ(t.value(y)(0, 1, 0, 0), kInf);
}

TEST(NonFinite, SmoothActivationsPropagateNaNAndSaturateAtInfinity) {
  Tape<double> t;
  const Value x = t.input(T64{kNaN, kInf, -kInf});
  const T64 leaky = t.value(leaky_relu(t, x, 0.1));
  const T64 sig = t.value(sigmoid(t, x));
  const T64 th = t.value(ad::tanh(t, x));
  EXPECT_TRUE(std::isnan(leaky(0)));
  EXPECT_EQ(leaky(1), kInf);
  EXPECT_EQ(leaky(2), -kInf);
  EXPECT_TRUE(std::isnan(sig(0)));
  EXPECT_EQ(sig(1), 1.0);
  EXPECT_EQ(sig(2), 0.0);
  EXPECT_TRUE(std::isnan(th(0)));
  EXPECT_EQ(th(1), 1.0);
  EXPECT_EQ(th(2), -1.0);
  const T64 relu_inf = t.value(relu(t, t.input(T64{kInf, -kInf})));
  EXPECT_EQ(relu_inf, (T64{kInf, 0.0}));
}

// PyTorch's relu returns NaN for NaN, and so does ours: a NaN before a ReLU is not hidden
// from every later op.
TEST(NonFinite, ReluPropagatesNaNAsInPyTorch) {
  Tape<double> t;
  const T64 y = t.value(relu(t, t.input(T64{kNaN, -1.0, 2.0})));
  EXPECT_TRUE(std::isnan(y(0))) << "relu(NaN) = " << y(0);
}

TEST(NonFinite, LinearAndLossesPropagateNaN) {
  Tape<double> t;
  T64 x = uniform({2, 3}, 1);
  x(1, 2) = kNaN;
  const Value z = linear(t, t.input(x), t.input(uniform({3, 4}, 2)), t.input(uniform({4}, 3)));
  for (std::size_t k = 0; k < 4; ++k) {
    EXPECT_TRUE(std::isfinite(t.value(z)(0, k)));
    EXPECT_TRUE(std::isnan(t.value(z)(1, k)));
  }
  EXPECT_TRUE(std::isnan(t.value(softmax_cross_entropy(t, z, {0, 1}))()));
  EXPECT_TRUE(std::isnan(t.value(mse(t, z, t.input(T64(xt::zeros<double>({2, 4})))))()));
}

TEST(NonFinite, CrossEntropyOfInfiniteLogits) {
  Tape<double> t;
  const auto logits = [&](double a, double b) {
    T64 z = xt::zeros<double>({1, 2});
    z(0, 0) = a, z(0, 1) = b;
    return t.input(z);
  };
  // -inf on a wrong class is a probability of 0: finite loss. +inf gives inf - inf = NaN.
  EXPECT_NEAR(t.value(softmax_cross_entropy(t, logits(0.0, -kInf), {0}))(), 0.0, 1e-15);
  EXPECT_EQ(t.value(softmax_cross_entropy(t, logits(0.0, -kInf), {1}))(), kInf);
  EXPECT_TRUE(std::isnan(t.value(softmax_cross_entropy(t, logits(0.0, kInf), {0}))()));
}

TEST(NonFinite, ANaNLossGivesNaNGradients) {
  Tape<double> t;
  Parameter<double> w("w", uniform({3, 2}, 1));
  T64 x = uniform({1, 3}, 2);
  x(0, 1) = kNaN;
  t.backward(softmax_cross_entropy(t, linear(t, t.input(x), t.param(w), Value{}), {0}));
  // dJ/dw[i,k] = x[i] (p_k - onehot_k): the NaN row of x and, through the NaN
  // probabilities, every other entry too.
  for (double g : w.grad) EXPECT_TRUE(std::isnan(g));
}

// ---------------------------------------------------------------- anomaly mode
//
// Tape::set_anomaly_mode(true) checks every forward result and every gradient for
// NaN and infinities and throws AnomalyError naming the node (tests/autodiff/
// test_anomaly.cpp tests the mode itself; here: it catches bad input).

TEST(Anomaly, CatchesANaNInputBeforeAnOpHidesIt) {
  Tape<double> t;
  t.set_anomaly_mode(true);
  T64 x = uniform({1, 1, 4, 4}, 1);
  x(0, 0, 2, 1) = kNaN;
  try {
    // relu would turn the NaN into 0 (see above): anomaly mode must see it first.
    const Value y = relu(t, t.input(x, "images"));
    t.check_anomalies();
    FAIL() << "anomaly mode let a NaN input through; relu gave " << t.value(y)(0, 0, 2, 1);
  } catch (const AnomalyError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.node, 0) << msg;
    EXPECT_EQ(e.op, "input") << msg;
    EXPECT_EQ(e.label, "images") << msg;
    EXPECT_FALSE(e.in_backward) << msg;
    EXPECT_NE(msg.find("1 NaN"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[0,0,2,1]"), std::string::npos) << msg;
  }
}

TEST(Anomaly, CatchesAnInfiniteInputToALoss) {
  Tape<double> t;
  t.set_anomaly_mode(true);
  Parameter<double> w("w", uniform({3, 2}, 1));
  T64 x = uniform({1, 3}, 2);
  x(0, 2) = -kInf;
  EXPECT_THROW(t.backward(softmax_cross_entropy(t, linear(t, t.input(x), t.param(w), Value{}), {0})), AnomalyError);
}

TEST(Anomaly, CatchesAnOverflowToInfinityInTheForward) {
  Tape<double> t;
  t.set_anomaly_mode(true);
  Parameter<double> w("w", T64{1.0, 2.0});
  try {
    const Value y = scale(t, t.param(w), 1e300);
    t.backward(sum(t, mul(t, y, y)));  // y*y = 1e600 overflows to inf
    FAIL() << "no AnomalyError";
  } catch (const AnomalyError& e) {
    EXPECT_EQ(e.op, "mul") << e.what();
    EXPECT_FALSE(e.in_backward) << e.what();
  }
}

}  // namespace
}  // namespace ad::test::test_bad_input
