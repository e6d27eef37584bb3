// dropout: the seeded mask (reproducible, keep rate 1 - p, scale 1/(1 - p)), eval mode,
// p = 0 and p = 1, the VJP against finite differences, the replay, fan-out, errors,
// NaN and the empty batch. PyTorch's values for a given mask: test_golden.
#include <cmath>
#include <limits>

#include "test_util.hpp"

namespace ad::test::test_dropout {
namespace {

// The kept elements of a dropout output y of x: y_i != 0 (x has no zeros).
std::vector<bool> kept_elements(const T64& y) {
  std::vector<bool> k(y.size());
  for (std::size_t i = 0; i < y.size(); ++i) k[i] = y.data()[i] != 0;
  return k;
}

TEST(Dropout, KeepsAboutOneMinusPAndScalesTheKeptByItsInverse) {
  const T64 x = uniform({8, 4, 50, 50}, 1, 0.5, 1.5);  // 80,000 elements, no zeros
  Tape<double> t;
  const Value y = dropout(t, t.input(x), 0.3, true, 42);
  std::size_t n_kept = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double yi = t.value(y).data()[i];
    if (yi == 0) continue;
    ++n_kept;
    ASSERT_EQ(yi, x.data()[i] * (1 / 0.7)) << "element " << i;
  }
  // 80,000 Bernoulli(0.7) draws: the standard deviation of the rate is 0.0016.
  EXPECT_NEAR(static_cast<double>(n_kept) / static_cast<double>(x.size()), 0.7, 0.01);
}

TEST(Dropout, TheSameSeedGivesTheSameMaskOnAnyThreadCountAndAnotherSeedAnother) {
  const T64 x = uniform({4, 3, 80, 80}, 1, 0.5, 1.5);  // above the parallel threshold
  auto mask_of = [&](uint64_t seed, int threads) {
    const int before = num_threads();
    set_num_threads(threads);
    Tape<double> t;
    const std::vector<bool> k = kept_elements(t.value(dropout(t, t.input(x), 0.5, true, seed)));
    set_num_threads(before);
    return k;
  };
  const std::vector<bool> a = mask_of(7, 1);
  EXPECT_EQ(mask_of(7, 2), a);
  EXPECT_EQ(mask_of(7, 3), a);
  const std::vector<bool> b = mask_of(8, 2);  // the next seed: an unrelated mask
  std::size_t same = 0;
  for (std::size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  EXPECT_NEAR(static_cast<double>(same) / static_cast<double>(a.size()), 0.5, 0.01);
  // The mask function itself, and its packing: element i is bit i % 32 of word i / 32.
  std::vector<int32_t> m;
  dropout_mask(7, 0.5, x.size(), m);
  ASSERT_EQ(m.size(), (x.size() + 31) / 32);
  for (std::size_t i = 0; i < x.size(); i += 997) EXPECT_EQ(((static_cast<uint32_t>(m[i / 32]) >> (i % 32)) & 1u) != 0, a[i]);
}

TEST(Dropout, EvalModeIsTheIdentityAndRecordsNothing) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 3}, 1));
  const std::size_t nodes = t.nodes().size();
  const Value y = dropout(t, x, 0.5, false, 1);
  EXPECT_EQ(y, x);
  EXPECT_EQ(t.nodes().size(), nodes);
}

TEST(Dropout, PZeroKeepsEverythingAndPOneDropsEverythingAsPyTorch) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  T64 x = uniform({3, 4}, 1);
  Tape<double> t;
  EXPECT_EQ(t.value(dropout(t, t.input(x), 0.0, true, 1)), x);
  x(0, 0) = nan;
  x(1, 1) = std::numeric_limits<double>::infinity();
  const T64 y = t.value(dropout(t, t.input(x), 1.0, true, 1));
  // x * 0: zeros, and NaN for the NaN and the infinity (PyTorch: tensor([nan, 0., 0.]))
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (i == 0 || i == 5) EXPECT_TRUE(std::isnan(y.data()[i])) << i;
    else EXPECT_EQ(y.data()[i], 0.0) << i;
  }
  Parameter<double> p("x", uniform({3, 4}, 2));
  Tape<double> t2;
  t2.backward(sum(t2, dropout(t2, t2.param(p), 1.0, true, 1)));
  EXPECT_EQ(p.grad, xt::zeros<double>({3, 4}));
}

TEST(Dropout, VjpMatchesFiniteDifferences) {
  for (const double p : {0.2, 0.5, 0.9}) {
    SCOPED_TRACE(p);
    auto f = [p](Tape<double>& t, const std::vector<Value>& v) { return dropout(t, v[0], p, true, 123); };
    EXPECT_GRADCHECK(f, std::vector<T64>{uniform({2, 3, 4, 5}, 1)}, std::vector<std::string>{"x"});
  }
}

// J = sum(y * y) + sum(dropout(x) with another seed): x feeds two dropouts, y feeds mul twice.
TEST(Dropout, VjpAddsWhenInputAndOutputAreUsedTwice) {
  auto f = [](Tape<double>& t, const std::vector<Value>& v) {
    const Value y = dropout(t, v[0], 0.4, true, 5);
    return add(t, sum(t, mul(t, y, y)), sum(t, dropout(t, v[0], 0.4, true, 6)));
  };
  EXPECT_GRADCHECK(f, std::vector<T64>{uniform({3, 2, 4}, 1)}, std::vector<std::string>{"x"});
}

// The replay reproduces the mask from the node's saved mask (gradcheck_nodes checks
// that the replay's output is the recorded one), and the tape prints p and the seed.
TEST(Dropout, GradcheckNodesReplaysTheSavedMask) {
  Parameter<double> w("w", uniform({6, 4}, 1));
  Tape<double> t;
  const Value h = dropout(t, linear(t, t.input(uniform({5, 6}, 2)), t.param(w), Value{}), 0.5, true, 99);
  t.backward(sum(t, ad::tanh(t, h)));
  const NodeGradcheckResult r = gradcheck_nodes(t);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_EQ(r.nodes.size(), 4u);
  EXPECT_EQ(r.nodes[1].op, "dropout");
  EXPECT_EQ(r.nodes[1].replay_error, 0.0);
  EXPECT_NE(format_node(t, 3).find("dropout(#2) -> (5,4) p=0.5 seed=99"), std::string::npos) << format_node(t, 3);
  EXPECT_EQ(t.nodes()[3].saved_index.size(), 1u);  // 20 elements: one word of mask bits
}

TEST(Dropout, FloatPathAgreesWithDouble) {
  EXPECT_TRUE(float_agrees_with_double([](auto& t, const std::vector<Value>& v) { return dropout(t, v[0], 0.25, true, 3); },
                                       {uniform({4, 5, 6}, 1)}, 1e-6, 1e-7));
}

TEST(Dropout, RefusesAProbabilityOutsideZeroToOneInEitherMode) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 2}, 1));
  for (const bool training : {true, false}) {
    EXPECT_TRUE(throws_shape_error([&] { dropout(t, x, 1.5, training, 0); },
                                   {"dropout", "dropout probability has to be between 0 and 1, but got 1.5"}));
    EXPECT_TRUE(throws_shape_error([&] { dropout(t, x, -0.1, training, 0); }, {"but got -0.1"}));
    EXPECT_TRUE(throws_shape_error([&] { dropout(t, x, std::nan(""), training, 0); }, {"but got nan"}));
  }
}

// A NaN stays NaN whether kept or dropped (x * 0, as PyTorch).
TEST(Dropout, NaNStaysNaN) {
  const T64 x = xt::ones<double>({64}) * std::numeric_limits<double>::quiet_NaN();
  Tape<double> t;
  const T64 y = t.value(dropout(t, t.input(x), 0.5, true, 1));
  for (double v : y) EXPECT_TRUE(std::isnan(v));
}

TEST(Dropout, EmptyBatchGivesAnEmptyOutput) {
  Tape<double> t;
  Parameter<double> p("x", T64(Shape{0, 3, 4}));
  const Value y = dropout(t, t.param(p), 0.5, true, 1);
  EXPECT_EQ(t.shape(y), (Shape{0, 3, 4}));
  EXPECT_TRUE(t.nodes().back().saved_index.empty());
  t.backward(y, T64(Shape{0, 3, 4}));
  EXPECT_EQ(p.grad.size(), 0u);
}

}  // namespace
}  // namespace ad::test::test_dropout
