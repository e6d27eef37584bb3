// Elementwise maths (neg, exp, log, sqrt, pow, abs, clamp): VJPs against finite
// differences, fan-out, PyTorch's conventions at kinks, domain edges and NaN, empty
// batches, the per-node check with its kinks, printing, and the float path.
#include <cmath>
#include <limits>

#include "test_util.hpp"

namespace ad::test::test_unary {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Every op, with its input domain for the finite-difference checks: x > 0 for log, sqrt
// and a fractional power, off_zero's [-1, -0.05] and [0.05, 1] for the others (off abs's
// kink and a negative power's pole); clamp's bounds are not within eps of any input.
enum class Op { Neg, Exp, Log, Sqrt, Pow2_5, Pow3, PowNeg2, Pow0, Abs, Clamp, ClampMin, ClampMax };
struct UnaryCase {
  const char* name;
  Op op;
  bool positive;  // inputs in [0.1, 2) rather than off_zero's
};
const UnaryCase kCases[] = {
    {"neg", Op::Neg, false},          {"exp", Op::Exp, false},         {"log", Op::Log, true},
    {"sqrt", Op::Sqrt, true},         {"pow 2.5", Op::Pow2_5, true},   {"pow 3", Op::Pow3, false},
    {"pow -2", Op::PowNeg2, false},   {"pow 0", Op::Pow0, false},      {"abs", Op::Abs, false},
    {"clamp", Op::Clamp, false},      {"clamp min", Op::ClampMin, false}, {"clamp max", Op::ClampMax, false},
};

template <class T>
Value apply(Op op, Tape<T>& t, Value x) {
  switch (op) {
    case Op::Neg: return neg(t, x);
    case Op::Exp: return ad::exp(t, x);
    case Op::Log: return ad::log(t, x);
    case Op::Sqrt: return ad::sqrt(t, x);
    case Op::Pow2_5: return ad::pow(t, x, 2.5);
    case Op::Pow3: return ad::pow(t, x, 3.0);
    case Op::PowNeg2: return ad::pow(t, x, -2.0);
    case Op::Pow0: return ad::pow(t, x, 0.0);
    case Op::Abs: return ad::abs(t, x);
    case Op::Clamp: return clamp(t, x, -0.5, 0.5);
    case Op::ClampMin: return clamp(t, x, 0.3, std::nullopt);
    case Op::ClampMax: return clamp(t, x, std::nullopt, -0.3);
  }
  return Value{};
}

T64 draw(const UnaryCase& c, const Shape& s, uint64_t seed) {
  return c.positive ? uniform(s, seed, 0.1, 2.0) : off_zero(s, seed);
}

TEST(UnaryOps, VjpsMatchFiniteDifferences) {
  for (const UnaryCase& c : kCases)
    for (const Shape& s : {Shape{2, 3, 4}, Shape{1}, Shape{}}) {
      SCOPED_TRACE(fmt::format("{} {}", c.name, shape_str(s)));
      auto f = [&](Tape<double>& t, const std::vector<Value>& v) { return apply(c.op, t, v[0]); };
      EXPECT_GRADCHECK(f, std::vector<T64>{draw(c, s, s.size() + 7)}, std::vector<std::string>{"x"});
    }
}

TEST(UnaryOps, FanOutAddsBothContributions) {
  for (const UnaryCase& c : kCases) {
    SCOPED_TRACE(c.name);
    // the op's input used twice (by the op and by mul), and its output used twice
    auto f = [&](Tape<double>& t, const std::vector<Value>& v) {
      const Value y = apply(c.op, t, v[0]);
      return add(t, mul(t, y, v[0]), y);
    };
    EXPECT_GRADCHECK(f, std::vector<T64>{draw(c, {3, 4}, 5)}, std::vector<std::string>{"x"});
  }
}

// The gradient of each op at x, seeded with 1.
T64 grad_at(const std::function<Value(Tape<double>&, Value)>& op, const T64& x) {
  Tape<double> t;
  Parameter<double> p("x", x);
  const Value y = op(t, t.param(p));
  t.backward(y, T64(xt::ones<double>(x.shape())));
  return p.grad;
}

TEST(UnaryOps, DerivativesAtKinksAndDomainEdgesAreThoseOfPyTorch) {
  // abs: sgn(x), 0 at 0 and at NaN (torch.sign(nan) = 0 in PyTorch 1.13).
  EXPECT_EQ(grad_at([](Tape<double>& t, Value x) { return ad::abs(t, x); }, T64{-2.0, 0.0, 3.0, kInf}),
            (T64{-1.0, 0.0, 1.0, 1.0}));
  EXPECT_EQ(grad_at([](Tape<double>& t, Value x) { return ad::abs(t, x); }, T64{kNaN})(0), 0.0);
  // clamp: 1 on [min, max] with the bounds included, 0 outside and at NaN.
  EXPECT_EQ(grad_at([](Tape<double>& t, Value x) { return clamp(t, x, -1.0, 1.0); }, T64{-2.0, -1.0, 0.0, 1.0, 2.0, kNaN}),
            (T64{0.0, 1.0, 1.0, 1.0, 0.0, 0.0}));
  EXPECT_EQ(grad_at([](Tape<double>& t, Value x) { return clamp(t, x, std::nullopt, 1.0); }, T64{-kInf, 1.0, 2.0, kNaN}),
            (T64{1.0, 1.0, 0.0, 0.0}));
  // min > max: max everywhere (torch.clamp), and no gradient anywhere.
  Tape<double> t;
  EXPECT_EQ(t.value(clamp(t, t.input(T64{-1.0, 1.5, 3.0}), 2.0, 1.0)), (T64{1.0, 1.0, 1.0}));
  EXPECT_EQ(grad_at([](Tape<double>& t, Value x) { return clamp(t, x, 2.0, 1.0); }, T64{-1.0, 1.5, 3.0}),
            (T64{0.0, 0.0, 0.0}));
  // pow: p x^(p-1), and 0 for p = 0 even where 0 * 0^-1 would be NaN.
  EXPECT_EQ(grad_at([](Tape<double>& t, Value x) { return ad::pow(t, x, 0.0); }, T64{0.0, -1.0, kNaN}),
            (T64{0.0, 0.0, 0.0}));
  EXPECT_EQ(grad_at([](Tape<double>& t, Value x) { return ad::pow(t, x, -1.0); }, T64{0.0, 4.0}), (T64{-kInf, -0.0625}));
  EXPECT_EQ(grad_at([](Tape<double>& t, Value x) { return ad::pow(t, x, 2.5); }, T64{0.0, 4.0}), (T64{0.0, 20.0}));
  // log and sqrt at and below 0: IEEE, as PyTorch (1/0 = inf; log'(-1) = -1; sqrt'(-1) NaN).
  EXPECT_EQ(grad_at([](Tape<double>& t, Value x) { return ad::log(t, x); }, T64{0.0, -1.0, 4.0}), (T64{kInf, -1.0, 0.25}));
  const T64 gs = grad_at([](Tape<double>& t, Value x) { return ad::sqrt(t, x); }, T64{0.0, -1.0, 4.0});
  EXPECT_EQ(gs(0), kInf);
  EXPECT_TRUE(std::isnan(gs(1)));
  EXPECT_EQ(gs(2), 0.25);
  EXPECT_EQ(grad_at([](Tape<double>& t, Value x) { return neg(t, x); }, T64{kNaN, 2.0}), (T64{-1.0, -1.0}));
}

TEST(UnaryOps, NaNInNaNOutAndInfinitiesAsPyTorch) {
  Tape<double> t;
  const Value x = t.input(T64{kNaN, kInf, -kInf, 0.0});
  const auto y = [&](Value v) { return t.value(v); };
  const T64 n = y(neg(t, x)), e = y(ad::exp(t, x)), l = y(ad::log(t, x)), s = y(ad::sqrt(t, x));
  const T64 p = y(ad::pow(t, x, 2.0)), p0 = y(ad::pow(t, x, 0.0)), a = y(ad::abs(t, x)), c = y(clamp(t, x, -1.0, 1.0));
  for (const T64* r : {&n, &e, &l, &s, &p, &a, &c}) EXPECT_TRUE(std::isnan((*r)(0)));
  EXPECT_EQ(p0(0), 1.0);  // NaN^0 = 1 (IEEE pow, and torch.pow)
  EXPECT_EQ(e(1), kInf);
  EXPECT_EQ(e(2), 0.0);
  EXPECT_EQ(e(3), 1.0);
  EXPECT_EQ(l(1), kInf);
  EXPECT_TRUE(std::isnan(l(2)));
  EXPECT_EQ(l(3), -kInf);
  EXPECT_EQ(a(2), kInf);
  EXPECT_EQ(c(1), 1.0);
  EXPECT_EQ(c(2), -1.0);
  EXPECT_EQ(n(3), 0.0);
  EXPECT_TRUE(std::signbit(n(3)));  // -0
}

TEST(UnaryOps, ClampWithoutBoundsIsRefused) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 2}, 1));
  EXPECT_TRUE(throws_shape_error([&] { clamp(t, x, std::nullopt, std::nullopt); },
                                 {"clamp: at least one of min and max must be given"}));
  EXPECT_EQ(t.nodes().size(), 1u);
}

TEST(UnaryOps, AnEmptyBatchGivesAnEmptyResult) {
  for (const UnaryCase& c : kCases) {
    SCOPED_TRACE(c.name);
    Tape<double> t;
    Parameter<double> x("x", T64(Shape{0, 3}));
    const Value y = apply(c.op, t, t.param(x));
    EXPECT_EQ(t.shape(y), (Shape{0, 3}));
    t.backward(y, T64(Shape{0, 3}));
    EXPECT_EQ(x.grad.size(), 0u);
  }
}

TEST(UnaryOps, GradcheckNodesChecksEachOpAndSkipsItsKinks) {
  Tape<float> t;
  Parameter<float> p("x", xt::cast<float>(uniform({3, 4}, 1, 0.2, 1.5)));
  const Value x = t.param(p);
  Value y = add(t, ad::log(t, x), ad::sqrt(t, x));
  y = add(t, y, ad::pow(t, x, 1.5));
  y = add(t, y, neg(t, ad::exp(t, x)));
  y = add(t, y, ad::abs(t, sub(t, x, t.input(Tensor<float>(0.7f)))));
  y = add(t, y, clamp(t, x, 0.5, 1.0));
  t.backward(sum(t, y));
  NodeGradcheckResult r = gradcheck_nodes(t);
  EXPECT_TRUE(r.ok) << r.report;
  // At the kinks themselves (abs at 0, clamp at its bounds) central differences would
  // average two slopes: those elements are skipped, not failed.
  Tape<double> k;
  Parameter<double> q("q", T64{0.0, 0.5, -0.5, 2.0, 1.0});
  k.backward(sum(k, add(k, ad::abs(k, k.param(q)), clamp(k, k.param(q), -0.5, 1.0))));
  r = gradcheck_nodes(k);
  EXPECT_TRUE(r.ok) << r.report;
  std::size_t skipped = 0;
  for (const NodeGradcheck& n : r.nodes) skipped += n.skipped;
  EXPECT_EQ(skipped, 3u);  // abs at 0; clamp at -0.5 and at 1.0
}

TEST(UnaryOps, AttributesArePrintedOnTheTape) {
  Tape<double> t;
  const Value x = t.input(uniform({2}, 1));
  ad::pow(t, x, 2.5);
  clamp(t, x, -1.0, 1.0);
  clamp(t, x, std::nullopt, 6.0);
  clamp(t, x, 0.0, std::nullopt);
  EXPECT_NE(format_node(t, 1).find("pow(#0) -> (2) exponent=2.5"), std::string::npos) << format_node(t, 1);
  EXPECT_NE(format_node(t, 2).find("clamp(#0) -> (2) min=-1 max=1 @"), std::string::npos) << format_node(t, 2);
  EXPECT_NE(format_node(t, 3).find("clamp(#0) -> (2) max=6 @"), std::string::npos) << format_node(t, 3);
  EXPECT_NE(format_node(t, 4).find("clamp(#0) -> (2) min=0 @"), std::string::npos) << format_node(t, 4);
}

TEST(UnaryOps, FloatMatchesDoubleOnTheParallelPath) {
  const T64 x = uniform({70000}, 1, 0.1, 2.0), g = uniform({70000}, 2);  // above 65,536: OpenMP loops
  for (const UnaryCase& c : kCases) {
    SCOPED_TRACE(c.name);
    Tape<double> td;
    Parameter<double> pd("x", x);
    const Value yd = apply(c.op, td, td.param(pd));
    td.backward(yd, g);
    Tape<float> tf;
    Parameter<float> pf("x", xt::cast<float>(x));
    const Value yf = apply(c.op, tf, tf.param(pf));
    tf.backward(yf, Tensor<float>(xt::cast<float>(g)));
    EXPECT_TRUE(all_close(xt::cast<double>(tf.value(yf)), td.value(yd), 1e-5, 1e-6)) << "forward";
    EXPECT_TRUE(all_close(xt::cast<double>(pf.grad), pd.grad, 1e-5, 1e-6)) << "gradient";
  }
}

}  // namespace
}  // namespace ad::test::test_unary
