// softmax, log_softmax and nll_loss as separate ops: the definitions along any axis,
// stability, VJPs against finite differences, agreement with the fused cross-entropy,
// per-node checks, fan-out, errors, ignore_index, NaN and empty inputs.
#include <cmath>
#include <limits>

#include "test_util.hpp"

namespace ad::test::test_softmax {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// softmax along axis 1 of a (A, K, B) tensor, by the definition (no shift).
T64 softmax_reference(const T64& x) {
  T64 y(x.shape());
  for (std::size_t a = 0; a < x.shape()[0]; ++a)
    for (std::size_t b = 0; b < x.shape()[2]; ++b) {
      double s = 0;
      for (std::size_t k = 0; k < x.shape()[1]; ++k) s += std::exp(x(a, k, b));
      for (std::size_t k = 0; k < x.shape()[1]; ++k) y(a, k, b) = std::exp(x(a, k, b)) / s;
    }
  return y;
}

TEST(Softmax, ForwardMatchesTheDefinitionAlongEveryAxis) {
  const T64 x = uniform({3, 4, 5}, 1, -3, 3);
  for (const int axis : {0, 1, 2, -1, -2, -3}) {
    SCOPED_TRACE(axis);
    const std::size_t a = static_cast<std::size_t>(axis < 0 ? axis + 3 : axis);
    // x as (A, K, B) with `axis` in the middle (the axes before it, it, the axes after it).
    std::size_t before = 1, after = 1;
    for (std::size_t d = 0; d < a; ++d) before *= x.shape()[d];
    for (std::size_t d = a + 1; d < 3; ++d) after *= x.shape()[d];
    const Shape s = {before, x.shape()[a], after};
    const T64 want = xt::reshape_view(softmax_reference(T64(xt::reshape_view(x, s))), x.shape());
    Tape<double> t;
    const Value in = t.input(x);
    EXPECT_TRUE(all_close(t.value(softmax(t, in, axis)), want, 1e-13, 1e-15));
    EXPECT_TRUE(all_close(t.value(log_softmax(t, in, axis)), T64(xt::log(want)), 1e-13, 1e-13));
  }
}

TEST(Softmax, IsStableForHugeInputs) {
  Tape<double> t;
  const Value x = t.input(T64{{1000.0, 1001.0, 999.0}, {-1000.0, -1001.0, -999.0}});
  const T64 want = softmax_reference(T64(xt::reshape_view(T64{0.0, 1.0, -1.0}, {1, 3, 1})));
  const T64& y = t.value(softmax(t, x, 1));
  const T64& ly = t.value(log_softmax(t, x, 1));
  for (std::size_t k = 0; k < 3; ++k) {
    EXPECT_NEAR(y(0, k), want(0, k, 0), 1e-15);
    EXPECT_NEAR(ly(0, k), std::log(want(0, k, 0)), 1e-13);
    EXPECT_NEAR(ly(1, k), std::log(y(1, k)), 1e-13);
  }
  EXPECT_NEAR(y(1, 2), want(0, 1, 0), 1e-15);  // -999 is the largest of the second row
}

TEST(Softmax, VjpsMatchFiniteDifferencesAlongEveryAxis) {
  for (const int axis : {0, 1, -1}) {
    SCOPED_TRACE(axis);
    const std::vector<T64> in = {uniform({3, 4, 2}, 1, -2, 2)};
    EXPECT_GRADCHECK([axis](Tape<double>& t, const std::vector<Value>& v) { return softmax(t, v[0], axis); }, in,
                     std::vector<std::string>{"x"});
    EXPECT_GRADCHECK([axis](Tape<double>& t, const std::vector<Value>& v) { return log_softmax(t, v[0], axis); }, in,
                     std::vector<std::string>{"x"});
  }
}

// softmax(x) * softmax(x) + log_softmax(x): x feeds two ops, each output is used twice.
TEST(Softmax, VjpsAddWhenInputAndOutputAreUsedTwice) {
  auto f = [](Tape<double>& t, const std::vector<Value>& v) {
    const Value s = softmax(t, v[0], 1), l = log_softmax(t, v[0], 1);
    return add(t, mul(t, s, s), mul(t, l, l));
  };
  EXPECT_GRADCHECK(f, std::vector<T64>{uniform({2, 3, 2}, 1)}, std::vector<std::string>{"x"});
}

// log_softmax then nll_loss is the fused softmax cross-entropy, value and gradient.
TEST(NllLoss, AfterLogSoftmaxEqualsSoftmaxCrossEntropy) {
  const std::vector<int> labels = {2, 0, 1, 3};
  const T64 z = uniform({4, 5}, 1, -3, 3);
  Parameter<double> p1("z", z), p2("z", z);
  Tape<double> t1, t2;
  const Value j1 = nll_loss(t1, log_softmax(t1, t1.param(p1), 1), labels);
  const Value j2 = softmax_cross_entropy(t2, t2.param(p2), labels);
  t1.backward(j1);
  t2.backward(j2);
  EXPECT_NEAR(t1.value(j1)(), t2.value(j2)(), 1e-14);
  EXPECT_TRUE(all_close(p1.grad, p2.grad, 1e-12, 1e-15));
}

TEST(NllLoss, VjpMatchesFiniteDifferencesWithIgnoredSamples) {
  for (const int ignore : {-100, 1}) {
    SCOPED_TRACE(ignore);
    const std::vector<int> labels = {0, -100, 1, 3, 1};
    if (ignore == 1) {  // -100 is then an ordinary, out-of-range label: use another set
      EXPECT_GRADCHECK([](Tape<double>& t, const std::vector<Value>& v) {
        return nll_loss(t, v[0], {0, 1, 2, 3, 1}, {.ignore_index = 1});
      }, std::vector<T64>{uniform({5, 4}, 1)}, std::vector<std::string>{"log_probs"});
      continue;
    }
    EXPECT_GRADCHECK([&](Tape<double>& t, const std::vector<Value>& v) { return nll_loss(t, v[0], labels); },
                     std::vector<T64>{uniform({5, 4}, 1)}, std::vector<std::string>{"log_probs"});
  }
}

TEST(NllLoss, MeanOverTheSamplesKeptAndNaNWhenAllAreIgnored) {
  const T64 lp = {{-1.0, -2.0, -3.0}, {-4.0, -5.0, -6.0}, {-7.0, -8.0, -9.0}};
  Tape<double> t;
  const Value x = t.input(lp);
  EXPECT_DOUBLE_EQ(t.value(nll_loss(t, x, {0, -100, 2}))(), (1.0 + 9.0) / 2);
  EXPECT_DOUBLE_EQ(t.value(nll_loss(t, x, {0, 1, 1}, {.ignore_index = 1}))(), 1.0);
  EXPECT_TRUE(std::isnan(t.value(nll_loss(t, x, {-100, -100, -100}))()));
  // ... and then no gradient at all (PyTorch: zeros)
  Parameter<double> p("lp", lp);
  Tape<double> t2;
  t2.backward(nll_loss(t2, t2.param(p), {-100, -100, -100}));
  EXPECT_EQ(p.grad, xt::zeros<double>({3, 3}));
}

TEST(Softmax, GradcheckNodesPassesOnAClassifierHead) {
  Parameter<double> w("w", uniform({6, 4}, 1));
  Tape<double> t;
  const Value z = linear(t, t.input(uniform({5, 6}, 2)), t.param(w), Value{});
  const Value j = nll_loss(t, log_softmax(t, z, -1), {0, 3, -100, 1, 2});
  const Value s = sum(t, mul(t, softmax(t, z, 0), softmax(t, z, 1)));
  t.backward(add(t, j, s));
  const NodeGradcheckResult r = gradcheck_nodes(t);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_EQ(r.nodes.size(), 8u);
  EXPECT_NE(format_node(t, 3).find("log_softmax(#2) -> (5,4) axis=1"), std::string::npos) << format_node(t, 3);
  EXPECT_NE(format_node(t, 4).find("nll_loss(#3) -> () labels=5 @"), std::string::npos) << format_node(t, 4);
  Tape<double> t2;
  nll_loss(t2, t2.input(uniform({2, 3}, 3)), {1, 2}, {.ignore_index = 2});
  EXPECT_NE(format_node(t2, 1).find("nll_loss(#0) -> () labels=2 ignore_index=2"), std::string::npos);
}

TEST(Softmax, FloatPathAgreesWithDouble) {
  const std::vector<T64> in = {uniform({3, 7, 4}, 1, -5, 5)};
  EXPECT_TRUE(float_agrees_with_double([](auto& t, const std::vector<Value>& v) { return softmax(t, v[0], 1); }, in,
                                       1e-5, 1e-6));
  EXPECT_TRUE(float_agrees_with_double([](auto& t, const std::vector<Value>& v) { return log_softmax(t, v[0], 1); }, in,
                                       1e-5, 1e-5));
}

// Large enough for the blocks to run in parallel (> 65,536 elements).
TEST(Softmax, ParallelBlocksAgreeWithTheDefinition) {
  const T64 x = uniform({64, 40, 30}, 1, -3, 3);
  Tape<double> t;
  EXPECT_TRUE(all_close(t.value(softmax(t, t.input(x), 1)), softmax_reference(x), 1e-13, 1e-15));
}

TEST(Softmax, RefusesAnAxisOutOfRange) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 3}, 1));
  EXPECT_TRUE(throws_shape_error([&] { softmax(t, x, 2); }, {"softmax", "axis 2 is out of range for input (2,3)", "[-2, 2)"}));
  EXPECT_TRUE(throws_shape_error([&] { log_softmax(t, x, -3); }, {"log_softmax", "axis -3"}));
  // A scalar has one axis, 0 or -1 (as PyTorch): softmax of a scalar is 1.
  const Value s = t.input(T64(3.5));
  EXPECT_EQ(t.value(softmax(t, s, -1))(), 1.0);
  EXPECT_EQ(t.value(log_softmax(t, s, 0))(), 0.0);
  EXPECT_THROW(softmax(t, s, 1), ShapeError);
}

TEST(NllLoss, RefusesBadShapesAndLabels) {
  Tape<double> t;
  const Value lp = t.input(uniform({3, 4}, 1));
  EXPECT_TRUE(throws_shape_error([&] { nll_loss(t, t.input(uniform({3, 4, 2}, 2)), {0, 1, 2}); },
                                 {"nll_loss", "log_probs (3,4,2)", "rank 2", "(N, K)"}));
  EXPECT_TRUE(throws_shape_error([&] { nll_loss(t, lp, {0, 1}); }, {"nll_loss", "disagree on N (3 vs 2)"}));
  EXPECT_TRUE(throws_shape_error([&] { nll_loss(t, lp, {0, 4, 1}); },
                                 {"nll_loss", "label 4 at position 1", "(3,4)", "[0, 4) or be ignore_index (-100)"}));
  EXPECT_TRUE(throws_shape_error([&] { nll_loss(t, lp, {0, -100, 1}, {.ignore_index = 0}); }, {"label -100"}));
}

// A NaN makes its line NaN and leaves the others; +inf, and a line of -inf, give NaN (as PyTorch).
TEST(Softmax, NaNAndInfinityGiveNaNInTheirLineOnly) {
  Tape<double> t;
  const Value x = t.input(T64{{1.0, kNaN, 2.0}, {1.0, 2.0, 3.0}, {kInf, 1.0, 2.0}, {-kInf, -kInf, -kInf}});
  for (const bool log : {false, true}) {
    const T64& y = t.value(log ? log_softmax(t, x, 1) : softmax(t, x, 1));
    for (std::size_t k = 0; k < 3; ++k) {
      EXPECT_TRUE(std::isnan(y(0, k)));
      EXPECT_TRUE(std::isfinite(y(1, k)));
      EXPECT_TRUE(std::isnan(y(2, k)));
      EXPECT_TRUE(std::isnan(y(3, k)));
    }
  }
  // nll_loss reads only the labelled entries
  EXPECT_TRUE(std::isnan(t.value(nll_loss(t, t.input(T64{{kNaN, -1.0}, {-2.0, -3.0}}), {0, 1}))()));
  EXPECT_EQ(t.value(nll_loss(t, t.input(T64{{kNaN, -1.0}, {-2.0, -3.0}}), {1, 1}))(), 2.0);
}

// Empty batches: empty outputs; nll_loss of no samples is NaN (PyTorch: tensor(nan)).
TEST(Softmax, EmptyInputsGiveEmptyOutputs) {
  Parameter<double> p("x", T64(Shape{0, 5}));
  Tape<double> t;
  const Value y = softmax(t, t.param(p), 1);
  EXPECT_EQ(t.shape(y), (Shape{0, 5}));
  EXPECT_EQ(t.shape(log_softmax(t, t.param(p), 0)), (Shape{0, 5}));
  const Value j = nll_loss(t, t.param(p), {});
  EXPECT_TRUE(std::isnan(t.value(j)()));
  t.backward(y, T64(Shape{0, 5}));
  EXPECT_EQ(t.shape(softmax(t, t.input(T64(Shape{2, 0, 3})), 1)), (Shape{2, 0, 3}));
}

}  // namespace
}  // namespace ad::test::test_softmax
