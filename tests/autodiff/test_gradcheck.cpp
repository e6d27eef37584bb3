// gradcheck itself: it passes correct gradients and names the input and element of a
// wrong one.
#include "test_util.hpp"

namespace ad::test::test_gradcheck {
namespace {

TEST(Gradcheck, PassesACorrectCompositeModel) {
  auto f = [](Tape<double>& t, const std::vector<Value>& v) {
    return ad::tanh(t, linear(t, flatten(t, v[0]), v[1], v[2]));
  };
  const auto r = gradcheck(f, {uniform({2, 2, 2, 2}, 1), uniform({8, 3}, 2), uniform({3}, 3)}, {"x", "w", "b"});
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_NE(r.report.find("passed"), std::string::npos);
}

TEST(Gradcheck, NamesTheInputAndElementOfAWrongGradient) {
  // y = x .* c where c is a *copy* of x's value recorded as a constant: the tape
  // sees dy/dx = c = x, but the true derivative of x^2 is 2x.
  auto f = [](Tape<double>& t, const std::vector<Value>& v) {
    const Value c = t.input(t.value(v[1]));
    return add(t, v[0], mul(t, v[1], c));
  };
  // Only element 1 is nonzero, so only it can disagree.
  GradcheckOptions opt;
  opt.directional = false;
  const auto r = gradcheck(f, {uniform({3}, 1), T64{0.0, -2.0, 0.0}}, {"fine", "wrong"}, opt);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.input, "wrong");
  EXPECT_EQ(r.index, 1u);
  EXPECT_EQ(r.position, "[1]");
  EXPECT_NEAR(r.numeric, 2 * r.analytic, 1e-6);
  EXPECT_NE(r.report.find("FAILED"), std::string::npos);
  EXPECT_NE(r.report.find("wrong[1]"), std::string::npos) << r.report;
}

}  // namespace
}  // namespace ad::test::test_gradcheck
