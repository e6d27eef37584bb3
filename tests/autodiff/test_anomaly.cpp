// Anomaly mode: the first NaN or infinity, forward or backward, is blamed on the node
// that made it (index, op, label, call site).
#include <cmath>
#include <limits>

#include "test_util.hpp"

namespace ad::test::test_anomaly {
namespace {

const double kNan = std::numeric_limits<double>::quiet_NaN();

// sqrt(x): finite at 0, but its VJP g / (2 sqrt(x)) is infinite there.
struct Sqrt {
  std::string name() const { return "sqrt"; }
  Shape output_shape(std::span<const Shape> in) const { return in[0]; }
  template <class T>
  void forward(std::span<const Tensor<T>* const> in, Tensor<T>& out) const {
    for (std::size_t i = 0; i < out.size(); ++i) out.data()[i] = std::sqrt(in[0]->data()[i]);
  }
  template <class T>
  void vjp(const Tensor<T>& g, std::span<const Tensor<T>* const>, const Tensor<T>& out,
           std::span<Tensor<T>* const> grad_in) const {
    if (grad_in[0])
      for (std::size_t i = 0; i < out.size(); ++i) grad_in[0]->data()[i] += g.data()[i] / (T(2) * out.data()[i]);
  }
};

// Runs body, expecting an AnomalyError; returns it.
template <class F>
AnomalyError expect_anomaly(F body) {
  try {
    body();
  } catch (const AnomalyError& e) {
    return e;
  }
  ADD_FAILURE() << "no AnomalyError";
  return AnomalyError("none");
}

TEST(Anomaly, OffByDefaultNaNsPropagateSilently) {
  Tape<double> t;
  EXPECT_FALSE(t.anomaly_mode());
  Parameter<double> p("w", T64{1.0, kNan});
  const Value j = sum(t, scale(t, t.param(p), 2.0));
  t.backward(j);
  EXPECT_TRUE(std::isnan(t.value(j)()));
}

TEST(Anomaly, ForwardOverflowNamesTheOpIndexLabelAndCallSite) {
  Tape<double> t;
  t.set_anomaly_mode(true);
  Parameter<double> p("w", T64{1.0, 2.0});
  const Value w = t.param(p);
  const Value big = t.set_label(scale(t, w, 1e308), "blow_up");  // 2e308 overflows to inf
  const int line = __LINE__ - 1;
  const AnomalyError e = expect_anomaly([&] { sum(t, big); });  // checked when the next op starts
  EXPECT_EQ(e.node, 1);
  EXPECT_EQ(e.op, "scale");
  EXPECT_EQ(e.label, "blow_up");
  EXPECT_EQ(e.where, fmt::format("test_anomaly.cpp:{}", line));
  EXPECT_FALSE(e.in_backward);
  const std::string msg = e.what();
  EXPECT_NE(msg.find(fmt::format("forward: node #1 scale \"blow_up\" (recorded at test_anomaly.cpp:{}) produced 0 NaN "
                                 "and 1 infinite values in its output (2); the first at [1] = inf",
                                 line)),
            std::string::npos)
      << msg;
}

TEST(Anomaly, TheLastNodeIsCheckedWhenBackwardStarts) {
  Tape<double> t;
  t.set_anomaly_mode(true);
  Parameter<double> p("w", T64{1e300, 1e300});
  const Value j = sum(t, t.param(p));  // 2e300 is fine
  const Value k = t.set_label(scale(t, j, 1e10), "loss");
  const AnomalyError e = expect_anomaly([&] { t.backward(k); });
  EXPECT_EQ(e.node, 2);
  EXPECT_EQ(e.label, "loss");
  EXPECT_EQ(xt::sum(p.grad)(), 0.0);  // nothing ran
}

TEST(Anomaly, InputsAndParametersHoldingNaNAreNamed) {
  Tape<double> t;
  t.set_anomaly_mode(true);
  const Value x = t.input(T64{1.0, kNan, kNan}, "images");
  AnomalyError e = expect_anomaly([&] { relu(t, x); });
  EXPECT_EQ(e.node, 0);
  EXPECT_EQ(e.op, "input");
  EXPECT_NE(std::string(e.what()).find("holds 2 NaN"), std::string::npos) << e.what();

  Tape<double> u;
  u.set_anomaly_mode(true);
  Parameter<double> p("k1", T64{std::numeric_limits<double>::infinity()});
  u.param(p);
  e = expect_anomaly([&] { u.check_anomalies(); });
  EXPECT_EQ(e.op, "param");
  EXPECT_EQ(e.label, "k1");
}

TEST(Anomaly, BackwardNamesTheNodeWhoseVjpWroteTheFirstInfinity) {
  Tape<float> t;
  t.set_anomaly_mode(true);
  Parameter<float> p("x", Tensor<float>{4.0f, 0.0f});
  const Value x = t.param(p);
  const Value r = t.set_label(custom(t, make_custom_op<Sqrt>(), {x}), "root");
  const int line = __LINE__ - 1;
  const Value j = sum(t, scale(t, r, 2.0));
  const AnomalyError e = expect_anomaly([&] { t.backward(j); });
  EXPECT_EQ(e.node, 1);
  EXPECT_EQ(e.op, "sqrt");
  EXPECT_EQ(e.label, "root");
  EXPECT_EQ(e.where, fmt::format("test_anomaly.cpp:{}", line));
  EXPECT_TRUE(e.in_backward);
  EXPECT_NE(std::string(e.what()).find("backward: the VJP of node #1 sqrt \"root\""), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("input 0 (value #0, parameter \"x\", shape (2)); the first at [1] = inf"),
            std::string::npos)
      << e.what();
  EXPECT_TRUE(t.backward_done());
}

TEST(Anomaly, AHookLeavingNaNIsBlamed) {
  Tape<double> t;
  t.set_anomaly_mode(true);
  Parameter<double> p("w", T64{1.0});
  const Value h = t.set_label(scale(t, t.param(p), 2.0), "h");
  t.add_hook(h, [](Tensor<double>& g) { g(0) = kNan; });
  const AnomalyError e = expect_anomaly([&] { t.backward(sum(t, h)); });
  EXPECT_EQ(e.label, "h");
  EXPECT_NE(std::string(e.what()).find("gradient hook on value #1"), std::string::npos) << e.what();
}

TEST(Anomaly, ASeedWithNaNIsRefused) {
  Tape<double> t;
  t.set_anomaly_mode(true);
  Parameter<double> p("w", T64{1.0, 2.0});
  const Value y = scale(t, t.param(p), 2.0);
  const AnomalyError e = expect_anomaly([&] { t.backward(y, T64{1.0, kNan}); });
  EXPECT_EQ(e.node, -1);
  EXPECT_NE(std::string(e.what()).find("seed"), std::string::npos);
}

TEST(Anomaly, CleanRunsPassUntouched) {
  Tape<float> t;
  t.set_anomaly_mode(true);
  Parameter<float> k("k", xt::cast<float>(uniform({2, 1, 3, 3}, 1)));
  const Value y = max_pool2d(t, relu(t, conv2d(t, t.input(xt::cast<float>(uniform({2, 1, 6, 6}, 2))), t.param(k), Value{})));
  t.backward(sum(t, y));
  EXPECT_GT(xt::sum(xt::abs(k.grad))(), 0.0f);
}

}  // namespace
}  // namespace ad::test::test_anomaly
