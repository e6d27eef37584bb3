// batch_norm2d: forward and running statistics against the definition, the full
// training-mode VJP and the eval-mode VJP against finite differences, per-node checks,
// fan-out, record-time errors, NaN and the empty batch. PyTorch's values: test_golden.
#include <cmath>
#include <limits>

#include <xtensor/xview.hpp>

#include "test_util.hpp"

namespace ad::test::test_norm {
namespace {

// The definition, per channel over (n, h, w): y = w (x - mu) / sqrt(var + eps) + b with
// the batch's mean and biased variance (training) or the given ones (eval).
T64 bn_reference(const T64& x, const T64& w, const T64& b, const T64* mean, const T64* var, double eps) {
  const std::size_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  T64 y(x.shape());
  for (std::size_t c = 0; c < C; ++c) {
    double mu = 0, v = 0;
    if (mean) {
      mu = (*mean)(c), v = (*var)(c);
    } else {
      for (std::size_t n = 0; n < N; ++n)
        for (std::size_t h = 0; h < H; ++h)
          for (std::size_t j = 0; j < W; ++j) mu += x(n, c, h, j);
      mu /= static_cast<double>(N * H * W);
      for (std::size_t n = 0; n < N; ++n)
        for (std::size_t h = 0; h < H; ++h)
          for (std::size_t j = 0; j < W; ++j) v += (x(n, c, h, j) - mu) * (x(n, c, h, j) - mu);
      v /= static_cast<double>(N * H * W);
    }
    for (std::size_t n = 0; n < N; ++n)
      for (std::size_t h = 0; h < H; ++h)
        for (std::size_t j = 0; j < W; ++j) y(n, c, h, j) = w(c) * (x(n, c, h, j) - mu) / std::sqrt(v + eps) + b(c);
  }
  return y;
}

TEST(BatchNorm2d, TrainingForwardAndRunningStatisticsMatchTheDefinition) {
  const T64 x = uniform({3, 2, 4, 5}, 1, -2, 3), w = uniform({2}, 2), b = uniform({2}, 3);
  T64 rm = uniform({2}, 4), rv = uniform({2}, 5, 0.5, 2);
  const T64 rm0 = rm, rv0 = rv;
  Tape<double> t;
  const Value y = batch_norm2d(t, t.input(x), t.input(w), t.input(b), &rm, &rv, {.momentum = 0.25, .eps = 1e-3});
  EXPECT_TRUE(all_close(t.value(y), bn_reference(x, w, b, nullptr, nullptr, 1e-3), 1e-12, 1e-12));
  // running = 0.75 running + 0.25 batch statistic; the variance unbiased (M = 60, / 59)
  for (std::size_t c = 0; c < 2; ++c) {
    const T64 xc = xt::view(x, xt::all(), c, xt::all(), xt::all());
    const double mu = xt::mean(xc)(), var_unbiased = xt::sum(xt::square(xc - mu))() / 59;
    EXPECT_NEAR(rm(c), 0.75 * rm0(c) + 0.25 * mu, 1e-14);
    EXPECT_NEAR(rv(c), 0.75 * rv0(c) + 0.25 * var_unbiased, 1e-14);
  }
}

TEST(BatchNorm2d, EvalModeUsesTheRunningStatisticsAndLeavesThemAlone) {
  const T64 x = uniform({2, 3, 3, 2}, 1), w = uniform({3}, 2), b = uniform({3}, 3);
  T64 rm = uniform({3}, 4), rv = uniform({3}, 5, 0.5, 2);
  const T64 rm0 = rm, rv0 = rv;
  Tape<double> t;
  const Value y = batch_norm2d(t, t.input(x), t.input(w), t.input(b), &rm, &rv, {.training = false});
  EXPECT_TRUE(all_close(t.value(y), bn_reference(x, w, b, &rm0, &rv0, 1e-5), 1e-12, 1e-12));
  EXPECT_EQ(rm, rm0);
  EXPECT_EQ(rv, rv0);
  // One value per channel is fine in eval mode.
  const Value y1 = batch_norm2d(t, t.input(uniform({1, 3, 1, 1}, 6)), Value{}, Value{}, &rm, &rv, {.training = false});
  EXPECT_EQ(t.shape(y1), (Shape{1, 3, 1, 1}));
}

TEST(BatchNorm2d, WithoutAffineOrRunningBuffersNormalisesEachChannel) {
  Tape<double> t;
  const Value y = batch_norm2d(t, t.input(uniform({4, 2, 3, 3}, 1, 5, 9)), Value{}, Value{}, nullptr, nullptr,
                                       {.eps = 0});
  for (std::size_t c = 0; c < 2; ++c) {
    const T64 yc = xt::view(t.value(y), xt::all(), c, xt::all(), xt::all());
    EXPECT_NEAR(xt::mean(yc)(), 0, 1e-12);
    EXPECT_NEAR(xt::mean(xt::square(yc))(), 1, 1e-12);
  }
}

struct BnCase {
  const char* name;
  Shape x;
  bool affine;
  bool training;
};

TEST(BatchNorm2d, VjpMatchesFiniteDifferencesInTrainingAndEvalMode) {
  const BnCase cases[] = {
      {"train_affine", {3, 2, 3, 4}, true, true},
      {"train_plain", {2, 3, 2, 2}, false, true},
      {"train_batch_of_one", {1, 2, 3, 3}, true, true},
      {"train_1x1_planes", {5, 3, 1, 1}, true, true},
      {"eval_affine", {2, 2, 3, 3}, true, false},
      {"eval_plain", {2, 3, 2, 1}, false, false},
  };
  uint64_t seed = 10;
  for (const BnCase& c : cases) {
    SCOPED_TRACE(c.name);
    const std::size_t C = c.x[1];
    const T64 rm = uniform({C}, seed++), rv = uniform({C}, seed++, 0.5, 2);
    std::vector<T64> in = {uniform(c.x, seed++, -1, 2)};
    std::vector<std::string> names = {"x"};
    if (c.affine) {
      in.push_back(uniform({C}, seed++, 0.5, 1.5)), names.push_back("weight");
      in.push_back(uniform({C}, seed++)), names.push_back("bias");
    }
    const BatchNorm2dOptions opt{.training = c.training, .eps = 1e-3};
    auto f = [&](Tape<double>& t, const std::vector<Value>& v) {
      // Copies: the check calls f many times, and training mode would move the buffers.
      T64 m = rm, s = rv;
      return batch_norm2d(t, v[0], c.affine ? v[1] : Value{}, c.affine ? v[2] : Value{}, c.training ? nullptr : &m,
                          c.training ? nullptr : &s, opt);
    };
    EXPECT_GRADCHECK(f, in, names);
  }
}

// The eval-mode shortcut would be wrong in training mode: the batch statistics depend
// on x. With a cotangent that is constant per channel, the full VJP w.r.t. x is zero
// (a shift of a channel's x changes nothing), the shortcut w s g is not.
TEST(BatchNorm2d, TrainingVjpGoesThroughTheBatchStatistics) {
  const T64 x = uniform({2, 2, 3, 3}, 1);
  Tape<double> t;
  Parameter<double> px("x", x);
  const Value y = batch_norm2d(t, t.param(px), Value{}, Value{}, nullptr, nullptr);
  T64 g = xt::ones<double>(x.shape());
  xt::view(g, xt::all(), 1, xt::all(), xt::all()) = 3.0;
  t.backward(y, g);
  EXPECT_LT(xt::amax(xt::abs(px.grad))(), 1e-12);
}

TEST(BatchNorm2d, GradcheckNodesPassesInBothModesAndTheReplayMovesNoRunningStatistics) {
  for (const bool training : {true, false}) {
    SCOPED_TRACE(training ? "training" : "eval");
    Parameter<double> w("w", uniform({3}, 1, 0.5, 1.5)), b("b", uniform({3}, 2)), k("k", uniform({3, 2, 3, 3}, 3));
    T64 rm = uniform({3}, 4), rv = uniform({3}, 5, 0.5, 2);
    Tape<double> t;
    const Value z = conv2d(t, t.input(uniform({2, 2, 5, 5}, 6)), t.param(k), Value{}, {.padding = {1, 1}});
    const Value y = batch_norm2d(t, z, t.param(w), t.param(b), &rm, &rv, {.training = training});
    t.backward(sum(t, ad::tanh(t, y)));
    const T64 rm_after = rm, rv_after = rv;
    const NodeGradcheckResult r = gradcheck_nodes(t);
    EXPECT_TRUE(r.ok) << r.report;
    EXPECT_EQ(r.nodes.size(), 4u);  // conv2d, batch_norm2d, tanh, sum
    EXPECT_EQ(rm, rm_after);
    EXPECT_EQ(rv, rv_after);
    // Eval mode: the replay normalises by the statistics the node read (saved in the
    // node), even after the caller's buffers have changed.
    rm += 1.0;
    EXPECT_TRUE(gradcheck_nodes(t).ok);
  }
}

TEST(BatchNorm2d, VjpAddsWhenInputAndOutputAreUsedTwice) {
  // J = sum(y * y) + sum(x) with y = bn(x): x feeds bn and the sum, y feeds mul twice.
  auto f = [](Tape<double>& t, const std::vector<Value>& v) {
    const Value y = batch_norm2d(t, v[0], v[1], v[2], nullptr, nullptr);
    return add(t, sum(t, mul(t, y, y)), sum(t, v[0]));
  };
  EXPECT_GRADCHECK(f, (std::vector<T64>{uniform({2, 2, 3, 2}, 1), uniform({2}, 2), uniform({2}, 3)}),
                   (std::vector<std::string>{"x", "weight", "bias"}));
}

TEST(BatchNorm2d, FloatPathAgreesWithDouble) {
  const T64 x = uniform({4, 3, 6, 5}, 1, 10, 12), w = uniform({3}, 2), b = uniform({3}, 3);
  const T64 g = uniform({4, 3, 6, 5}, 4);
  for (const bool training : {true, false}) {
    T64 rmd = uniform({3}, 5, 10, 12), rvd = uniform({3}, 6, 0.1, 1);
    Tensor<float> rmf = xt::cast<float>(rmd), rvf = xt::cast<float>(rvd);
    Tape<double> td;
    Parameter<double> xd("x", x), wd("w", w), bd("b", b);
    const Value yd = batch_norm2d(td, td.param(xd), td.param(wd), td.param(bd), &rmd, &rvd, {.training = training});
    td.backward(yd, g);
    Tape<float> tf;
    Parameter<float> xf("x", xt::cast<float>(x)), wf("w", xt::cast<float>(w)), bf("b", xt::cast<float>(b));
    const Value yf = batch_norm2d(tf, tf.param(xf), tf.param(wf), tf.param(bf), &rmf, &rvf, {.training = training});
    tf.backward(yf, Tensor<float>(xt::cast<float>(g)));
    EXPECT_TRUE(all_close(xt::cast<double>(tf.value(yf)), td.value(yd), 1e-4, 1e-4));
    EXPECT_TRUE(all_close(xt::cast<double>(xf.grad), xd.grad, 1e-3, 1e-4));
    EXPECT_TRUE(all_close(xt::cast<double>(wf.grad), wd.grad, 1e-4, 1e-4));
    EXPECT_TRUE(all_close(xt::cast<double>(bf.grad), bd.grad, 1e-5, 1e-4));
    EXPECT_TRUE(all_close(xt::cast<double>(rmf), rmd, 1e-6));
    EXPECT_TRUE(all_close(xt::cast<double>(rvf), rvd, 1e-5));
  }
}

// Large enough for the channels to run in parallel (> 65,536 elements).
TEST(BatchNorm2d, ParallelChannelsAgreeWithTheDefinition) {
  const T64 x = uniform({8, 4, 48, 48}, 1), w = uniform({4}, 2), b = uniform({4}, 3);
  Tape<double> t;
  const Value y = batch_norm2d(t, t.input(x), t.input(w), t.input(b), nullptr, nullptr);
  EXPECT_TRUE(all_close(t.value(y), bn_reference(x, w, b, nullptr, nullptr, 1e-5), 1e-11, 1e-11));
}

TEST(BatchNorm2d, NoGradGuardStillUpdatesTheRunningStatisticsInTrainingMode) {
  T64 rm = xt::zeros<double>({2}), rv = xt::ones<double>({2});
  Tape<double> t;
  NoGradGuard guard(t);
  batch_norm2d(t, t.input(uniform({2, 2, 2, 2}, 1, 1, 2)), Value{}, Value{}, &rm, &rv);
  EXPECT_GT(rm(0), 0.1 * 1.0);  // 0.9 * 0 + 0.1 * (a mean in [1, 2))
  EXPECT_TRUE(t.nodes().empty());
}

TEST(BatchNorm2d, RefusesBadShapesAndOneValuePerChannelWhenTraining) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 3, 4, 4}, 1));
  T64 r3 = xt::zeros<double>({3}), r2 = xt::zeros<double>({2}), r33 = xt::zeros<double>({3, 3});
  EXPECT_TRUE(throws_shape_error([&] { batch_norm2d(t, t.input(uniform({2, 3, 4}, 2)), Value{}, Value{}, nullptr, nullptr); },
                                 {"batch_norm2d", "input (2,3,4)", "rank 4", "(N, C, H, W)"}));
  EXPECT_TRUE(throws_shape_error([&] { batch_norm2d(t, x, t.input(uniform({2}, 3)), Value{}, nullptr, nullptr); },
                                 {"batch_norm2d", "weight (2) and input (2,3,4,4) disagree on C (2 vs 3)"}));
  EXPECT_TRUE(throws_shape_error([&] { batch_norm2d(t, x, Value{}, t.input(uniform({3, 1}, 3)), nullptr, nullptr); },
                                 {"batch_norm2d", "bias (3,1)", "rank 1", "(C)"}));
  EXPECT_TRUE(throws_shape_error([&] { batch_norm2d(t, x, Value{}, Value{}, &r2, &r3); },
                                 {"batch_norm2d", "running_mean (2) and input (2,3,4,4) disagree on C"}));
  EXPECT_TRUE(throws_shape_error([&] { batch_norm2d(t, x, Value{}, Value{}, &r3, &r33); },
                                 {"batch_norm2d", "running_var (3,3)", "rank 1"}));
  EXPECT_TRUE(throws_shape_error([&] { batch_norm2d(t, x, Value{}, Value{}, &r3, nullptr); },
                                 {"batch_norm2d", "must be given together", "only running_mean"}));
  EXPECT_TRUE(throws_shape_error([&] { batch_norm2d(t, x, Value{}, Value{}, nullptr, nullptr, {.training = false}); },
                                 {"batch_norm2d", "eval mode", "running_mean and running_var must be given"}));
  const T64 r3_before = r3;
  EXPECT_TRUE(throws_shape_error(
      [&] { batch_norm2d(t, t.input(uniform({1, 3, 1, 1}, 4)), Value{}, Value{}, &r3, &r3); },
      {"batch_norm2d", "Expected more than 1 value per channel when training", "(1,3,1,1)"}));
  EXPECT_EQ(r3, r3_before);  // a refused call changes nothing
}

// A NaN makes its channel NaN (its mean and variance are NaN), and that channel's
// running statistics; the other channels are untouched (as PyTorch).
TEST(BatchNorm2d, NaNPoisonsItsChannelOnly) {
  T64 x = uniform({2, 2, 2, 2}, 1);
  x(1, 0, 1, 0) = std::numeric_limits<double>::quiet_NaN();
  T64 rm = xt::zeros<double>({2}), rv = xt::ones<double>({2});
  Tape<double> t;
  const Value y = batch_norm2d(t, t.input(x), Value{}, Value{}, &rm, &rv);
  const T64& yv = t.value(y);
  for (std::size_t n = 0; n < 2; ++n)
    for (std::size_t i = 0; i < 4; ++i) {
      EXPECT_TRUE(std::isnan(yv(n, 0, i / 2, i % 2)));
      EXPECT_TRUE(std::isfinite(yv(n, 1, i / 2, i % 2)));
    }
  EXPECT_TRUE(std::isnan(rm(0)) && std::isnan(rv(0)));
  EXPECT_TRUE(std::isfinite(rm(1)) && std::isfinite(rv(1)));
}

// N = 0: an empty output, the running statistics unchanged (as PyTorch), and backward
// gives zero gradients to weight and bias.
TEST(BatchNorm2d, EmptyBatchGivesAnEmptyOutput) {
  T64 rm = uniform({3}, 1), rv = uniform({3}, 2, 0.5, 1);
  const T64 rm0 = rm, rv0 = rv;
  Parameter<double> w("w", uniform({3}, 3)), b("b", uniform({3}, 4));
  for (const bool training : {true, false}) {
    Tape<double> t;
    const Value y = batch_norm2d(t, t.input(T64(Shape{0, 3, 4, 4})), t.param(w), t.param(b), &rm, &rv,
                                 {.training = training});
    EXPECT_EQ(t.shape(y), (Shape{0, 3, 4, 4}));
    t.backward(y, T64(Shape{0, 3, 4, 4}));
    EXPECT_EQ(rm, rm0);
    EXPECT_EQ(rv, rv0);
    EXPECT_EQ(w.grad, xt::zeros<double>({3}));
    EXPECT_EQ(b.grad, xt::zeros<double>({3}));
  }
}

TEST(BatchNorm2d, PrintsItsModeAndAttributes) {
  T64 rm = xt::zeros<double>({2}), rv = xt::ones<double>({2});
  Tape<double> t;
  const Value x = t.input(uniform({2, 2, 2, 2}, 1));
  batch_norm2d(t, x, Value{}, Value{}, &rm, &rv, {.momentum = 0.2});
  batch_norm2d(t, x, Value{}, Value{}, &rm, &rv, {.training = false, .eps = 1e-3});
  EXPECT_NE(format_node(t, 1).find("batch_norm2d(#0) -> (2,2,2,2) train momentum=0.2 eps=1e-05"), std::string::npos)
      << format_node(t, 1);
  EXPECT_NE(format_node(t, 2).find("batch_norm2d(#0) -> (2,2,2,2) eval eps=0.001"), std::string::npos)
      << format_node(t, 2);
}

}  // namespace
}  // namespace ad::test::test_norm
