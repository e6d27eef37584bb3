// Shared helpers for the tests: seeded random tensors (off kinks and ties on
// request) and the one gradient-check assertion every op test uses.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <span>
#include <utility>

#include "autodiff/ad.hpp"

namespace ad::test {

using T64 = Tensor<double>;

// Uniform in [lo, hi), seeded.
inline T64 uniform(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) {
  T64 t(s);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  for (double& e : t) e = u(rng);
  return t;
}

// Uniform in [-1, 1) with |x| >= min_abs: keeps ReLU-type kinks out of reach of the
// central differences.
inline T64 off_zero(const Shape& s, uint64_t seed, double min_abs = 0.05) {
  T64 t = uniform(s, seed);
  for (double& e : t) e = e >= 0 ? min_abs + e * (1 - min_abs) : -min_abs + e * (1 - min_abs);
  return t;
}

// All elements distinct and at least `gap` apart (a shuffled grid in [-1, 1]): no
// max-pool window holds a tie.
inline T64 distinct(const Shape& s, uint64_t seed) {
  T64 t(s);
  std::vector<std::size_t> order(t.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  const double step = 2.0 / static_cast<double>(std::max<std::size_t>(t.size(), 2));
  for (std::size_t i = 0; i < t.size(); ++i) t.data()[i] = -1.0 + step * static_cast<double>(order[i]);
  return t;
}

// gradcheck with a readable failure: the report names the input, element and values.
#define EXPECT_GRADCHECK(fn, inputs, names)                          \
  do {                                                               \
    const ::ad::GradcheckResult r_ = ::ad::gradcheck(fn, inputs, names); \
    EXPECT_TRUE(r_.ok) << r_.report;                                 \
  } while (0)

// Elementwise |a - b| <= rtol |b| + atol, reporting the first bad element.
inline ::testing::AssertionResult all_close(const T64& a, const T64& b, double rtol, double atol = 0) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << "sizes differ: " << a.size() << " vs " << b.size();
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double x = a.data()[i], y = b.data()[i];
    if (!(std::abs(x - y) <= rtol * std::abs(y) + atol))
      return ::testing::AssertionFailure() << "element " << i << ": " << fmt::format("{:.17g} vs expected {:.17g}", x, y);
  }
  return ::testing::AssertionSuccess();
}

// Runs `body` expecting an exception of type E whose message contains every one of
// `parts`; another exception, or none, fails with what happened.
template <class E, class F>
::testing::AssertionResult throws_error(F body, std::initializer_list<const char*> parts) {
  try {
    body();
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const char* p : parts)
      if (msg.find(p) == std::string::npos)
        return ::testing::AssertionFailure() << "message \"" << msg << "\" lacks \"" << p << "\"";
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw another exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

template <class F>
::testing::AssertionResult throws_shape_error(F body, std::initializer_list<const char*> parts) {
  return throws_error<ShapeError>(body, parts);
}
template <class F>
::testing::AssertionResult throws_tape_error(F body, std::initializer_list<const char*> parts) {
  return throws_error<TapeError>(body, parts);
}

// f, a generic lambda `[](auto& tape, const std::vector<Value>& v) { return op(tape, ...); }`,
// on a Tape<float> against a Tape<double> from the same inputs (as parameters) and the
// same random cotangent: the float output and every float gradient agree with the
// double ones to |f - d| <= rtol |d| + atol, or the failure names which and where.
template <class F>
::testing::AssertionResult float_agrees_with_double(F f, const std::vector<T64>& inputs, double rtol, double atol) {
  auto run = [&]<class T>(T) {
    std::vector<Parameter<T>> ps;
    ps.reserve(inputs.size());
    for (std::size_t i = 0; i < inputs.size(); ++i) ps.emplace_back(fmt::format("in{}", i), xt::cast<T>(inputs[i]));
    Tape<T> t;
    std::vector<Value> v;
    for (Parameter<T>& p : ps) v.push_back(t.param(p));
    const Value y = f(t, v);
    std::vector<T64> all = {xt::cast<double>(t.value(y))};
    t.backward(y, Tensor<T>(xt::cast<T>(uniform(to_shape(t.value(y).shape()), 99))));
    for (Parameter<T>& p : ps) all.push_back(xt::cast<double>(p.grad));
    return all;
  };
  const std::vector<T64> d = run(0.0), s = run(0.0f);
  for (std::size_t i = 0; i < d.size(); ++i)
    if (::testing::AssertionResult r = all_close(s[i], d[i], rtol, atol); !r)
      return ::testing::AssertionFailure() << (i == 0 ? std::string("output") : fmt::format("gradient of input {}", i - 1))
                                           << ", float against double: " << r.message();
  return ::testing::AssertionSuccess();
}


// Every op kind the library declares (each ops/ header's OpKind constants) with the name
// the tape prints. Add a new op here. Naming them also links every op's file into a test
// from the static library, so all of them are registered there.
inline std::span<const std::pair<OpId, const char*>> all_op_kinds() {
  static const std::pair<OpId, const char*> kinds[] = {
      {OpKind::Input, "input"},           {OpKind::Parameter, "param"},     {OpKind::Custom, "custom"},
      {OpKind::Conv2d, "conv2d"},         {OpKind::AvgPool2d, "avg_pool2d"}, {OpKind::MaxPool2d, "max_pool2d"},
      {OpKind::Relu, "relu"},             {OpKind::LeakyRelu, "leaky_relu"}, {OpKind::Sigmoid, "sigmoid"},
      {OpKind::Tanh, "tanh"},             {OpKind::Flatten, "flatten"},     {OpKind::Linear, "linear"},
      {OpKind::Matmul, "matmul"},         {OpKind::Add, "add"},             {OpKind::BiasAdd, "bias_add"},
      {OpKind::Mul, "mul"},               {OpKind::Scale, "scale"},         {OpKind::Sum, "sum"},
      {OpKind::Mean, "mean"},             {OpKind::SoftmaxCrossEntropy, "softmax_cross_entropy"},
      {OpKind::Mse, "mse"},
      {OpKind::BatchNorm2d, "batch_norm2d"}, {OpKind::Dropout, "dropout"},
      {OpKind::Softmax, "softmax"},       {OpKind::LogSoftmax, "log_softmax"}, {OpKind::NllLoss, "nll_loss"},
      {OpKind::ConvTranspose2d, "conv_transpose2d"},
      {OpKind::Sub, "sub"},               {OpKind::Div, "div"},
      {OpKind::Neg, "neg"},               {OpKind::Exp, "exp"},             {OpKind::Log, "log"},
      {OpKind::Sqrt, "sqrt"},             {OpKind::Pow, "pow"},             {OpKind::Abs, "abs"},
      {OpKind::Clamp, "clamp"},
      {OpKind::Reshape, "reshape"},       {OpKind::Permute, "permute"},     {OpKind::Transpose, "transpose"},
      {OpKind::Concat, "concat"},         {OpKind::Narrow, "narrow"},
      {OpKind::GlobalAvgPool2d, "global_avg_pool2d"},
      {OpKind::Conv2dReluMaxPool2d, "conv2d_relu_max_pool2d"},
      // the ops of the recorded VJPs (higher-order gradients)
      {OpKind::ReluBackward, "relu_backward"}, {OpKind::LeakyReluBackward, "leaky_relu_backward"},
      {OpKind::Conv2dBackwardKernel, "conv2d_backward_kernel"},
      {OpKind::SumTo, "sum_to"},               {OpKind::BroadcastTo, "broadcast_to"},
      {OpKind::SoftmaxCrossEntropyBackward, "softmax_cross_entropy_backward"},
      {OpKind::NllLossBackward, "nll_loss_backward"},
      {OpKind::MaxPool2dBackward, "max_pool2d_backward"}, {OpKind::MaxPool2dGather, "max_pool2d_gather"},
      {OpKind::AvgPool2dBackward, "avg_pool2d_backward"},
  };
  return kinds;
}

}  // namespace ad::test
