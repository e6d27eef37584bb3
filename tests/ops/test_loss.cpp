// Losses: softmax cross-entropy (fused VJP, stability, label checks) and MSE.
#include "test_util.hpp"

namespace ad::test {
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
}  // namespace ad::test
