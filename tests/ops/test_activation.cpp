// Activations: elementwise VJPs against finite differences (inputs kept off the
// ReLU kink), accumulation, and numerically safe extremes.
#include "test_util.hpp"

namespace ad::test::test_activation {
namespace {

using Unary = Value (*)(Tape<double>&, Value);

Value leaky(Tape<double>& t, Value x) { return leaky_relu(t, x, 0.1); }
Value relu_d(Tape<double>& t, Value x) { return relu(t, x); }
Value sigmoid_d(Tape<double>& t, Value x) { return sigmoid(t, x); }
Value tanh_d(Tape<double>& t, Value x) { return ad::tanh(t, x); }

void check_unary(Unary op, double scale) {
  for (const Shape& s : {Shape{2, 3, 4, 5}, Shape{7, 3}, Shape{1}}) {
    T64 x = off_zero(s, s.size() * 11) * scale;
    auto f = [&](Tape<double>& t, const std::vector<Value>& v) { return op(t, v[0]); };
    EXPECT_GRADCHECK(f, std::vector<T64>{x}, std::vector<std::string>{"x"});
    // used twice: y = op(x) + op(x)
    auto g = [&](Tape<double>& t, const std::vector<Value>& v) { return add(t, op(t, v[0]), op(t, v[0])); };
    EXPECT_GRADCHECK(g, std::vector<T64>{x}, std::vector<std::string>{"x"});
  }
}

TEST(Relu, VjpMatchesFiniteDifferences) { check_unary(relu_d, 3.0); }
TEST(LeakyRelu, VjpMatchesFiniteDifferences) { check_unary(leaky, 3.0); }
TEST(Sigmoid, VjpMatchesFiniteDifferences) { check_unary(sigmoid_d, 4.0); }
TEST(Tanh, VjpMatchesFiniteDifferences) { check_unary(tanh_d, 2.0); }

TEST(Relu, GradientAtZeroIsZeroAsInPyTorch) {
  Tape<double> t;
  Parameter<double> p("x", T64{-1.0, 0.0, 2.0});
  t.backward(sum(t, relu(t, t.param(p))));
  EXPECT_EQ(p.grad, (T64{0.0, 0.0, 1.0}));
}

// At exactly 0 leaky ReLU's derivative is its slope (PyTorch: x > 0 ? g : slope g),
// in double and in float, on the scalar loop and the parallel one.
TEST(LeakyRelu, GradientAtZeroIsTheSlopeAsInPyTorch) {
  Tape<double> t;
  Parameter<double> p("x", T64{-1.0, 0.0, -0.0, 2.0});
  t.backward(sum(t, leaky_relu(t, t.param(p), 0.1)));
  EXPECT_EQ(p.grad, (T64{0.1, 0.1, 0.1, 1.0}));
  Tape<float> tf;
  Parameter<float> pf("x", Tensor<float>(xt::zeros<float>({100000})));  // above the threshold for threads
  tf.backward(sum(tf, leaky_relu(tf, tf.param(pf), 0.25)));
  for (float g : pf.grad) ASSERT_EQ(g, 0.25f);
}

TEST(Sigmoid, StaysFiniteForLargeInputs) {
  Tape<float> t;
  Parameter<float> p("x", Tensor<float>{-200.f, -50.f, 0.f, 50.f, 200.f});
  const Value y = sigmoid(t, t.param(p));
  t.backward(sum(t, y));
  for (float v : t.value(y)) EXPECT_TRUE(std::isfinite(v));
  for (float g : p.grad) EXPECT_TRUE(std::isfinite(g));
  EXPECT_FLOAT_EQ(t.value(y)(2), 0.5f);
  EXPECT_FLOAT_EQ(p.grad(2), 0.25f);
}

}  // namespace
}  // namespace ad::test::test_activation
