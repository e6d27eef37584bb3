// Losses: softmax cross-entropy (fused VJP, stability, label checks) and MSE.
#include "test_util.hpp"

namespace ad::test::test_loss {
namespace {

TEST(SoftmaxCrossEntropy, VjpMatchesFiniteDifferences) {
  const std::vector<int> labels = {0, 3, 2, 2, 1};
  auto f = [&](Tape<double>& t, const std::vector<Value>& v) { return softmax_cross_entropy(t, v[0], labels); };
  EXPECT_GRADCHECK(f, std::vector<T64>{uniform({5, 4}, 1, -3, 3)}, std::vector<std::string>{"logits"});
}

TEST(SoftmaxCrossEntropy, MatchesTheDefinitionAndIsStableForHugeLogits) {
  Tape<double> t;
  const T64 z = {{1.0, 2.0, 3.0}, {1000.0, 1001.0, 999.0}};
  const Value j = softmax_cross_entropy(t, t.input(z), {2, 0});
  const double l0 = -std::log(std::exp(3.0) / (std::exp(1.0) + std::exp(2.0) + std::exp(3.0)));
  const double l1 = -std::log(std::exp(0.0) / (std::exp(0.0) + std::exp(1.0) + std::exp(-1.0)));
  EXPECT_NEAR(t.value(j)(), (l0 + l1) / 2, 1e-12);
}

// The log-sum-exp must be shifted by the row's maximum wherever it is: a row whose
// huge logit is not in column 0 (a shift by z[0] would overflow exp to inf there), and
// hugely negative logits (a shift that is too large would underflow every exp to 0).
TEST(SoftmaxCrossEntropy, IsStableWhereverTheHugeLogitIs) {
  const T64 z = {{0.0, 1000.0, 999.0}, {-5.0, 2.0, 800.0}, {-1000.0, -999.0, -1001.0}, {3.0, 1.0, 2.0}};
  const std::vector<int> labels = {2, 0, 1, 2};
  double want = 0;
  for (std::size_t n = 0; n < 4; ++n) {
    const double m = std::max({z(n, 0), z(n, 1), z(n, 2)});
    const double lse = m + std::log(std::exp(z(n, 0) - m) + std::exp(z(n, 1) - m) + std::exp(z(n, 2) - m));
    want += (lse - z(n, labels[n])) / 4;
  }
  for (const bool use_float : {false, true}) {
    SCOPED_TRACE(use_float ? "float" : "double");
    auto run = [&](auto zero) {
      using F = decltype(zero);
      Tape<F> t;
      Parameter<F> p("z", xt::cast<F>(z));
      const Value j = softmax_cross_entropy(t, t.param(p), labels);
      t.backward(j);
      // float: the log-sum-exp of logits near 1000 is good to its ulp there, 6e-5
      const double tol = use_float ? 1e-4 : 1e-12;
      EXPECT_NEAR(static_cast<double>(t.value(j)()), want, tol * std::max(1.0, want));
      // dJ/dz = (softmax - onehot)/N: finite, each row summing to 0
      for (std::size_t n = 0; n < 4; ++n) {
        double row = 0;
        for (std::size_t k = 0; k < 3; ++k) {
          EXPECT_TRUE(std::isfinite(static_cast<double>(p.grad(n, k)))) << n << "," << k;
          row += static_cast<double>(p.grad(n, k));
        }
        EXPECT_NEAR(row, 0.0, tol);
      }
      EXPECT_NEAR(static_cast<double>(p.grad(1, 2)), 1.0 / 4, tol);   // softmax 1 on the huge logit
      EXPECT_NEAR(static_cast<double>(p.grad(1, 0)), -1.0 / 4, tol);  // the label, far below
    };
    if (use_float) run(0.0f);
    else run(0.0);
  }
}

// ignore_index (PyTorch's default -100): rows with that label take no part in the mean
// and get no gradient; the VJP matches finite differences; an index that is a class is
// ignored too; when every row is ignored (or there is none) the loss is NaN, as in
// PyTorch, and no gradient flows.
TEST(SoftmaxCrossEntropy, IgnoreIndexSkipsRowsExactlyAsPyTorch) {
  const T64 z = uniform({5, 4}, 3, -3, 3);
  auto loss_of = [&](const std::vector<int>& labels, int ignore) {
    double total = 0;
    int m = 0;
    for (std::size_t n = 0; n < 5; ++n) {
      if (labels[n] == ignore) continue;
      double s = 0;
      for (std::size_t k = 0; k < 4; ++k) s += std::exp(z(n, k));
      total += std::log(s) - z(n, labels[n]);
      ++m;
    }
    return total / m;
  };
  for (const auto& [labels, ignore] : {std::pair{std::vector<int>{0, -100, 2, -100, 1}, -100},
                                      std::pair{std::vector<int>{0, 3, 2, 0, 1}, 0},
                                      std::pair{std::vector<int>{7, 3, 7, 0, 1}, 7}}) {
    SCOPED_TRACE(ignore);
    const CrossEntropyOptions opt{.ignore_index = ignore};
    Tape<double> t;
    Parameter<double> p("z", z);
    const Value j = softmax_cross_entropy(t, t.param(p), labels, opt);
    EXPECT_NEAR(t.value(j)(), loss_of(labels, ignore), 1e-12);
    t.backward(j);
    for (std::size_t n = 0; n < 5; ++n)
      for (std::size_t k = 0; k < 4; ++k)
        if (labels[n] == ignore) {
          EXPECT_EQ(p.grad(n, k), 0.0) << "ignored row " << n;
        }
    auto f = [&](Tape<double>& tt, const std::vector<Value>& v) { return softmax_cross_entropy(tt, v[0], labels, opt); };
    EXPECT_GRADCHECK(f, std::vector<T64>{z}, std::vector<std::string>{"logits"});
    // the per-node check replays the node from its saved labels
    const NodeGradcheckResult r = gradcheck_nodes(t);
    EXPECT_TRUE(r.ok) << r.report;
  }
  // every row ignored, and an empty batch: NaN, and no gradient
  for (const auto& [shape, labels] : {std::pair{Shape{3, 4}, std::vector<int>{-100, -100, -100}},
                                      std::pair{Shape{0, 4}, std::vector<int>{}}}) {
    Tape<double> t;
    Parameter<double> p("z", uniform(shape, 4));
    const Value j = softmax_cross_entropy(t, t.param(p), labels);
    EXPECT_TRUE(std::isnan(t.value(j)())) << shape_str(shape);
    t.backward(j);
    EXPECT_EQ(p.grad, xt::zeros<double>(shape));
  }
  // a label that is neither a class nor the ignore_index is still refused
  Tape<double> t;
  EXPECT_TRUE(throws_shape_error([&] { softmax_cross_entropy(t, t.input(uniform({2, 3}, 1)), {0, -100}, {.ignore_index = 0}); },
                                 {"label -100 at position 1", "ignore_index (0)"}));
}

TEST(SoftmaxCrossEntropy, RejectsLabelsOutOfRangeAndCountMismatch) {
  Tape<double> t;
  const Value z = t.input(uniform({2, 3}, 1));
  EXPECT_TRUE(throws_shape_error([&] { softmax_cross_entropy(t, z, {0, 3}); },
                                 {"softmax_cross_entropy", "label 3 at position 1", "(2,3)", "[0, 3)"}));
  EXPECT_TRUE(throws_shape_error([&] { softmax_cross_entropy(t, z, {0, -1}); }, {"label -1"}));
  EXPECT_TRUE(throws_shape_error([&] { softmax_cross_entropy(t, z, {0}); }, {"disagree on N (2 vs 1)"}));
}

TEST(Mse, VjpMatchesFiniteDifferences) {
  auto f = [](Tape<double>& t, const std::vector<Value>& v) { return mse(t, v[0], v[1]); };
  EXPECT_GRADCHECK(f, (std::vector<T64>{uniform({4, 3}, 1), uniform({4, 3}, 2)}), (std::vector<std::string>{"pred", "target"}));
  Tape<double> t;
  EXPECT_TRUE(throws_shape_error([&] { mse(t, t.input(uniform({4, 3}, 1)), t.input(uniform({3, 4}, 2))); },
                                 {"mse", "(4,3)", "(3,4)"}));
}

TEST(Reductions, SumMeanScaleMulBiasAddVjpsMatchFiniteDifferences) {
  auto f = [](Tape<double>& t, const std::vector<Value>& v) {
    const Value y = bias_add(t, mul(t, v[0], v[1]), v[2]);
    return add(t, scale(t, sum(t, y), 0.5), mean(t, y));
  };
  EXPECT_GRADCHECK(f, (std::vector<T64>{uniform({2, 3, 2, 2}, 1), uniform({2, 3, 2, 2}, 2), uniform({3}, 3)}),
                   (std::vector<std::string>{"a", "b", "bias"}));
}

}  // namespace
}  // namespace ad::test::test_loss
