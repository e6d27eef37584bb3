// The binary elementwise ops add, sub, mul, div with NumPy broadcasting: the broadcast
// rule, values, VJPs against finite differences (summing over the stretched axes), fan-out,
// shape errors, NaN, empty batches, and the float path with its parallel loops.
#include <cmath>
#include <limits>

#include "ops/broadcast.hpp"
#include "test_util.hpp"

namespace ad::test::test_elementwise {
namespace {

const std::string kOps[] = {"add", "sub", "mul", "div"};

// The op named `op` on the tape.
template <class T>
Value binary(const std::string& op, Tape<T>& t, Value a, Value b) {
  if (op == "add") return add(t, a, b);
  if (op == "sub") return sub(t, a, b);
  if (op == "mul") return mul(t, a, b);
  return div(t, a, b);
}

// Operand shape pairs that broadcast, with the result's shape.
struct Case {
  Shape a, b, out;
};
const Case kCases[] = {
    {{2, 3, 4}, {2, 3, 4}, {2, 3, 4}},              // no broadcasting
    {{2, 3, 4, 5}, {1, 3, 1, 1}, {2, 3, 4, 5}},     // per channel, (1,C,1,1)
    {{2, 3, 4, 5}, {3, 1, 1}, {2, 3, 4, 5}},        // per channel, (C,1,1)
    {{2, 3}, {}, {2, 3}},                           // a scalar ()
    {{2, 3}, {1}, {2, 3}},                          // a scalar (1)
    {{}, {2, 3}, {2, 3}},                           // the scalar on the left
    {{4, 1, 3}, {5, 1}, {4, 5, 3}},                 // both stretched
    {{1, 3}, {2, 1}, {2, 3}},                       // both stretched, rank 2
    {{2, 1, 4, 1}, {3, 1, 5}, {2, 3, 4, 5}},        // alternating axes
};

// Values in [0.5, 1.5) with a random sign: divisors well away from 0.
T64 away_from_zero(const Shape& s, uint64_t seed) {
  T64 t = uniform(s, seed, 0.5, 1.5);
  const T64 sign = uniform(s, seed + 1);
  for (std::size_t i = 0; i < t.size(); ++i) t.data()[i] *= sign.data()[i] < 0 ? -1 : 1;
  return t;
}

TEST(Broadcast, ShapesFollowNumPysRule) {
  for (const Case& c : kCases) {
    EXPECT_EQ(broadcast("test", c.a, c.b).out, c.out) << shape_str(c.a) << " with " << shape_str(c.b);
    EXPECT_EQ(broadcast("test", c.b, c.a).out, c.out) << shape_str(c.b) << " with " << shape_str(c.a);
  }
  EXPECT_TRUE(broadcast("test", {2, 3}, {2, 3}).same);
  EXPECT_FALSE(broadcast("test", {2, 3}, {1, 2, 3}).same);
  // A size 1 stretches to an empty axis; an empty axis stays empty.
  EXPECT_EQ(broadcast("test", {0, 3, 4, 4}, {1, 3, 1, 1}).out, (Shape{0, 3, 4, 4}));
  EXPECT_EQ(broadcast("test", {2, 1}, {0}).out, (Shape{2, 0}));
  // (N,C,H,W) with (1,C,1,1) walks N*C rows of H*W elements with b fixed along each.
  const Broadcast bc = broadcast("test", {2, 3, 4, 5}, {1, 3, 1, 1});
  EXPECT_EQ(bc.inner, 20u);
  EXPECT_EQ(bc.inner_a, 1u);
  EXPECT_EQ(bc.inner_b, 0u);
  EXPECT_EQ(bc.rows(), 6u);
}

TEST(Broadcast, EveryElementReadsTheOperandsNumPyWould) {
  // Against a direct multi-index computation, for every case: c[i] = a[ia] * 1000 + b[ib].
  for (const Case& c : kCases) {
    T64 a(c.a), b(c.b);
    for (std::size_t i = 0; i < a.size(); ++i) a.data()[i] = static_cast<double>(i);
    for (std::size_t i = 0; i < b.size(); ++i) b.data()[i] = static_cast<double>(i);
    Tape<double> t;
    const T64 got = t.value(add(t, t.input(a * 1000.0), t.input(b)));
    const T64 want = a * 1000.0 + b;  // xtensor broadcasts as NumPy does
    ASSERT_EQ(to_shape(got.shape()), c.out);
    EXPECT_TRUE(all_close(got, want, 0)) << shape_str(c.a) << " + " << shape_str(c.b);
  }
}

TEST(BinaryOps, ValuesAndVjpsMatchFiniteDifferencesWhenBroadcasting) {
  for (const std::string& op : kOps)
    for (const Case& c : kCases) {
      SCOPED_TRACE(fmt::format("{} {} {}", op, shape_str(c.a), shape_str(c.b)));
      const T64 a = uniform(c.a, 1), b = op == "div" ? away_from_zero(c.b, 2) : uniform(c.b, 2);
      auto f = [&](Tape<double>& t, const std::vector<Value>& v) { return binary(op, t, v[0], v[1]); };
      EXPECT_GRADCHECK(f, (std::vector<T64>{a, b}), (std::vector<std::string>{"a", "b"}));
    }
}

TEST(BinaryOps, ForwardValuesAreTheArithmeticOnes) {
  Tape<double> t;
  const Value a = t.input(T64{{1.0, 2.0}, {3.0, 4.0}}), b = t.input(T64{2.0, 8.0});
  EXPECT_EQ(t.value(add(t, a, b)), (T64{{3.0, 10.0}, {5.0, 12.0}}));
  EXPECT_EQ(t.value(sub(t, a, b)), (T64{{-1.0, -6.0}, {1.0, -4.0}}));
  EXPECT_EQ(t.value(mul(t, a, b)), (T64{{2.0, 16.0}, {6.0, 32.0}}));
  EXPECT_EQ(t.value(div(t, a, b)), (T64{{0.5, 0.25}, {1.5, 0.5}}));
}

TEST(BinaryOps, SumOverTheStretchedAxesInTheVjp) {
  // c = a * b with b (1,C,1,1): dJ/db[c] = sum_{n,h,w} g a, here with g = 1.
  Tape<double> t;
  Parameter<double> a("a", uniform({2, 3, 2, 2}, 1)), b("b", uniform({1, 3, 1, 1}, 2));
  t.backward(sum(t, mul(t, t.param(a), t.param(b))));
  for (std::size_t c = 0; c < 3; ++c) {
    double s = 0;
    for (std::size_t n = 0; n < 2; ++n)
      for (std::size_t i = 0; i < 4; ++i) s += a.value(n, c, i / 2, i % 2);
    EXPECT_NEAR(b.grad(0, c, 0, 0), s, 1e-14);
  }
}

TEST(BinaryOps, FanOutAddsBothContributions) {
  // The same value as both operands, and a broadcast operand used by two ops.
  for (const std::string& op : kOps) {
    SCOPED_TRACE(op);
    auto self = [&](Tape<double>& t, const std::vector<Value>& v) { return binary(op, t, v[0], v[0]); };
    EXPECT_GRADCHECK(self, (std::vector<T64>{away_from_zero({2, 3}, 1)}), (std::vector<std::string>{"x"}));
    auto twice = [&](Tape<double>& t, const std::vector<Value>& v) {
      return add(t, binary(op, t, v[0], v[1]), binary(op, t, v[1], v[0]));
    };
    EXPECT_GRADCHECK(twice, (std::vector<T64>{away_from_zero({2, 3, 2, 2}, 2), away_from_zero({3, 1, 1}, 3)}),
                     (std::vector<std::string>{"x", "b"}));
  }
}

TEST(BinaryOps, GradcheckNodesChecksEveryBroadcastNode) {
  Tape<float> t;
  Parameter<float> x("x", xt::cast<float>(uniform({2, 3, 3, 3}, 1))), s("s", xt::cast<float>(away_from_zero({3, 1, 1}, 2)));
  Parameter<float> b("b", xt::cast<float>(uniform({1, 3, 1, 1}, 4)));
  const Value xv = t.param(x), sv = t.param(s), bv = t.param(b);
  const Value y = sub(t, div(t, mul(t, xv, sv), sv), t.input(Tensor<float>(2.f)));
  t.backward(sum(t, add(t, y, bv)));
  const NodeGradcheckResult r = gradcheck_nodes(t);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_EQ(r.nodes.size(), 5u);  // mul, div, sub, add, sum
}

TEST(BinaryOps, FloatMatchesDoubleOnTheParallelPaths) {
  // 2*16*48*48 = 73,728 elements: above the 65,536 threshold of the parallel loops, with a
  // per-channel operand (rows of 2,304), a scalar (one row cut in blocks) and same shapes.
  const Shape big{2, 16, 48, 48};
  for (const Shape& bs : {Shape{1, 16, 1, 1}, Shape{}, big})
    for (const std::string& op : kOps) {
      SCOPED_TRACE(fmt::format("{} {}", op, shape_str(bs)));
      const T64 a64 = uniform(big, 1), b64 = away_from_zero(bs, 2), g64 = uniform(big, 3);
      Tape<double> td;
      Parameter<double> ad("a", a64), bd("b", b64);
      const Value yd = binary(op, td, td.param(ad), td.param(bd));
      td.backward(yd, g64);
      Tape<float> tf;
      Parameter<float> af("a", xt::cast<float>(a64)), bf("b", xt::cast<float>(b64));
      const Value yf = binary(op, tf, tf.param(af), tf.param(bf));
      tf.backward(yf, Tensor<float>(xt::cast<float>(g64)));
      EXPECT_TRUE(all_close(xt::cast<double>(tf.value(yf)), td.value(yd), 1e-5, 1e-5)) << "forward";
      EXPECT_TRUE(all_close(xt::cast<double>(af.grad), ad.grad, 1e-5, 1e-5)) << "grad a";
      // b's gradient sums up to 73,728 terms in float: a looser absolute tolerance.
      EXPECT_TRUE(all_close(xt::cast<double>(bf.grad), bd.grad, 1e-4, 1e-2)) << "grad b";
    }
}

TEST(BinaryOps, ShapesThatDoNotBroadcastNameBothAndTheRule) {
  Tape<double> t;
  const Value a = t.input(uniform({2, 3}, 1));
  EXPECT_TRUE(throws_shape_error([&] { add(t, a, t.input(uniform({3, 2}, 2))); },
                                 {"add: operands (2,3) and (3,2) cannot be broadcast together",
                                  "at axis -1 (counted from the right) their sizes are 3 and 2", "NumPy's rule",
                                  "aligned from the right", "equal or one of them 1"}));
  // Aligned from the right, (2,3) and (2,3,1) compare 3 with 1 (fine), then 2 with 3.
  EXPECT_TRUE(throws_shape_error([&] { mul(t, a, t.input(uniform({2, 3, 1}, 3))); },
                                 {"mul: operands (2,3) and (2,3,1) cannot be broadcast together", "at axis -2",
                                  "sizes are 2 and 3"}));
  EXPECT_TRUE(throws_shape_error([&] { sub(t, t.input(uniform({4, 3, 1, 1}, 4)), t.input(uniform({2, 3, 5, 5}, 5))); },
                                 {"sub: operands (4,3,1,1) and (2,3,5,5)", "at axis -4", "sizes are 4 and 2"}));
  EXPECT_TRUE(throws_shape_error([&] { div(t, a, t.input(uniform({2}, 6))); }, {"div: operands (2,3) and (2)"}));
  // A refused call records nothing.
  EXPECT_EQ(t.nodes().size(), 6u);  // the six inputs
}

TEST(BinaryOps, NaNReachesOnlyTheOutputsThatReadItAndInfinitiesFollowIeee) {
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  Tape<double> t;
  T64 bv = uniform({1, 3, 1, 1}, 2);
  bv(0, 1, 0, 0) = kNaN;
  Parameter<double> a("a", uniform({2, 3, 2, 2}, 1)), b("b", bv);
  const Value y = mul(t, t.param(a), t.param(b));
  t.backward(sum(t, y));
  for (std::size_t n = 0; n < 2; ++n)
    for (std::size_t c = 0; c < 3; ++c) {
      EXPECT_EQ(std::isnan(t.value(y)(n, c, 1, 1)), c == 1);
      EXPECT_EQ(std::isnan(a.grad(n, c, 0, 1)), c == 1);  // dJ/da = b
    }
  EXPECT_TRUE(std::isfinite(b.grad(0, 0, 0, 0)));
  // Division by zero: x/0 is +-inf, 0/0 NaN, and the divisor's gradient -g (a/b)/b too.
  Tape<double> t2;
  Parameter<double> num("num", T64{1.0, -1.0, 0.0}), den("den", T64{0.0});
  const Value q = div(t2, t2.param(num), t2.param(den));
  EXPECT_EQ(t2.value(q)(0), std::numeric_limits<double>::infinity());
  EXPECT_EQ(t2.value(q)(1), -std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(t2.value(q)(2)));
  t2.backward(q, T64{1.0, 1.0, 1.0});
  EXPECT_TRUE(std::isnan(den.grad(0)));  // -inf + inf + NaN
}

TEST(BinaryOps, AnEmptyBatchGivesAnEmptyResultAndZeroGradients) {
  for (const std::string& op : kOps) {
    SCOPED_TRACE(op);
    Tape<double> t;
    Parameter<double> x("x", T64(Shape{0, 3, 4, 4})), b("b", uniform({1, 3, 1, 1}, 1));
    const Value y = binary(op, t, t.param(x), t.param(b));
    EXPECT_EQ(t.shape(y), (Shape{0, 3, 4, 4}));
    t.backward(y, T64(Shape{0, 3, 4, 4}));
    EXPECT_EQ(b.grad, T64(xt::zeros<double>({1, 3, 1, 1})));
  }
}

}  // namespace
}  // namespace ad::test::test_elementwise
