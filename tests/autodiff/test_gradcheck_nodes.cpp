// Custom ops (a user's forward and VJP recorded like any op) and the per-node gradient
// check that finds the node whose VJP is wrong.
#include <cmath>

#include "test_util.hpp"

namespace ad::test::test_gradcheck_nodes {
namespace {

// cube(x) = x^3 with a VJP chosen by the test: right (3x^2 g), wrong (2x g), or
// overwriting its gradient buffer instead of adding to it.
enum class CubeVjp { Right, Wrong, Overwrites };
struct Cube {
  CubeVjp kind = CubeVjp::Right;
  std::string name() const { return "cube"; }
  Shape output_shape(std::span<const Shape> in) const { return in[0]; }
  template <class T>
  void forward(std::span<const Tensor<T>* const> in, Tensor<T>& out) const {
    for (std::size_t i = 0; i < out.size(); ++i) out.data()[i] = std::pow(in[0]->data()[i], T(3));
  }
  template <class T>
  void vjp(const Tensor<T>& g, std::span<const Tensor<T>* const> in, const Tensor<T>&,
           std::span<Tensor<T>* const> grad_in) const {
    if (!grad_in[0]) return;
    for (std::size_t i = 0; i < g.size(); ++i) {
      const T x = in[0]->data()[i];
      T& gx = grad_in[0]->data()[i];
      if (kind == CubeVjp::Right) gx += T(3) * x * x * g.data()[i];
      if (kind == CubeVjp::Wrong) gx += T(2) * x * g.data()[i];  // the derivative of x^2, not x^3
      if (kind == CubeVjp::Overwrites) gx = T(3) * x * x * g.data()[i];
    }
  }
};

// weighted_sum(a, b) = a + w .* b, two inputs with different shapes rules.
struct AddScaled {
  std::string name() const { return "add_scaled"; }
  Shape output_shape(std::span<const Shape> in) const {
    if (in.size() != 2 || in[0] != in[1])
      shape_error("add_scaled", "operands {} and {} must have the same shape", shape_str(in[0]), shape_str(in.back()));
    return in[0];
  }
  template <class T>
  void forward(std::span<const Tensor<T>* const> in, Tensor<T>& out) const {
    for (std::size_t i = 0; i < out.size(); ++i) out.data()[i] = in[0]->data()[i] + T(0.5) * in[1]->data()[i];
  }
  template <class T>
  void vjp(const Tensor<T>& g, std::span<const Tensor<T>* const>, const Tensor<T>&,
           std::span<Tensor<T>* const> grad_in) const {
    for (std::size_t i = 0; i < g.size(); ++i) {
      if (grad_in[0]) grad_in[0]->data()[i] += g.data()[i];
      if (grad_in[1]) grad_in[1]->data()[i] += T(0.5) * g.data()[i];
    }
  }
};

TEST(CustomOp, IsRecordedAsANodeAndItsVjpRunsInBackward) {
  Tape<double> t;
  Parameter<double> p("x", T64{1.0, -2.0});
  const Value x = t.param(p);
  const Value y = t.set_label(custom(t, make_custom_op<Cube>(), {x}), "cube1");
  const int line = __LINE__ - 1;
  EXPECT_EQ(t.value(y), (T64{1.0, -8.0}));
  t.backward(sum(t, y));
  EXPECT_EQ(p.grad, (T64{3.0, 12.0}));
  const Node<double>& n = t.nodes()[1];
  EXPECT_EQ(n.op, OpKind::Custom);
  EXPECT_EQ(node_op_name(t, n), "cube");
  EXPECT_EQ(format_node(t, 1), fmt::format("#1 cube(#0) -> (2) \"cube1\" @ test_gradcheck_nodes.cpp:{}", line));
  EXPECT_NE(to_dot(t).find("#1 cube\\n(2)\\ncube1\", style=\"rounded,dashed\""), std::string::npos) << to_dot(t);
}

TEST(CustomOp, TakesSeveralInputsChecksShapesAndWorksInFloat) {
  Tape<float> t;
  Parameter<float> a("a", Tensor<float>{1.f, 2.f}), b("b", Tensor<float>{4.f, 8.f});
  const auto op = make_custom_op<AddScaled>();
  const Value y = custom(t, op, {t.param(a), t.param(b)});
  EXPECT_EQ(t.value(y), (Tensor<float>{3.f, 6.f}));
  t.backward(sum(t, y));
  EXPECT_EQ(a.grad, (Tensor<float>{1.f, 1.f}));
  EXPECT_EQ(b.grad, (Tensor<float>{0.5f, 0.5f}));
  EXPECT_EQ(t.num_custom_ops(), 1u);
  custom(t, op, {y, y});
  EXPECT_EQ(t.num_custom_ops(), 1u);  // registered once per tape
  Tape<float> u;
  EXPECT_TRUE(throws_shape_error([&] { custom(u, op, {u.input(Tensor<float>{1.f}), u.input(Tensor<float>{1.f, 2.f})}); },
                                 {"add_scaled", "operands (1) and (2)"}));
  const Value c = u.input(Tensor<float>{1.f});
  EXPECT_TRUE(throws_shape_error([&] { custom(u, op, {c, c, c, c}); }, {"add_scaled", "operands"}));  // its own rule
  EXPECT_TRUE(throws_shape_error([&] { custom(u, op, std::span<const Value>()); }, {"add_scaled", "at least one input"}));
  t.reset();
  EXPECT_EQ(t.num_custom_ops(), 0u);
}

TEST(GradcheckNodes, PassesEveryNodeOfAFloatCnnAndSkipsKinksAndTies) {
  Parameter<float> k1("k1", xt::cast<float>(0.5 * uniform({4, 1, 3, 3}, 1))), b1("b1", Tensor<float>(Shape{4}, 0.f));
  Parameter<float> w("w", xt::cast<float>(0.3 * uniform({4 * 4 * 4, 3}, 2))), b("b", Tensor<float>(Shape{3}, 0.f));
  Tensor<float> images = xt::cast<float>(uniform({2, 1, 8, 8}, 3, 0, 1));
  for (std::size_t i = 0; i < 32; ++i) images.data()[i] = 0.f;  // a blank region: exact zeros, ReLU kinks, pooling ties
  Tape<float> t;
  const Value x = t.input(images, "images");
  const Value z = t.set_label(conv2d(t, x, t.param(k1), t.param(b1), {.padding = {1, 1}}), "conv1");
  const Value a = t.set_label(max_pool2d(t, relu(t, z)), "conv1.pool");
  const Value y = linear(t, flatten(t, leaky_relu(t, a, 0.1)), t.param(w), t.param(b));
  const Value loss = add(t, softmax_cross_entropy(t, y, {0, 2}), mean(t, ad::tanh(t, sigmoid(t, y))));
  t.backward(loss);
  const NodeGradcheckResult r = gradcheck_nodes(t);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_EQ(r.first_failure(), nullptr);
  EXPECT_EQ(r.nodes.size(), 11u);  // conv2d relu max_pool2d leaky_relu flatten linear sce sigmoid tanh mean add
  std::size_t skipped = 0;
  for (const NodeGradcheck& n : r.nodes) skipped += n.skipped;
  EXPECT_GT(skipped, 0u) << "the blank region should put ReLU inputs at 0 and tie pooling windows";
  EXPECT_NE(r.report.find("gradcheck_nodes passed: 11 nodes checked"), std::string::npos) << r.report;
}

TEST(GradcheckNodes, AtAKinkCentralDifferencesCannotBeTrustedWhichIsWhyItSkips) {
  // relu at exactly 0: the VJP says 0 (as PyTorch), central differences say 1/2.
  const GradcheckResult direct = gradcheck([](Tape<double>& t, const std::vector<Value>& v) { return relu(t, v[0]); },
                                           {T64{0.0, 1.0}});
  EXPECT_FALSE(direct.ok);
  Tape<double> t;
  Parameter<double> p("x", T64{0.0, 1.0});
  t.backward(sum(t, relu(t, t.param(p))));
  const NodeGradcheckResult r = gradcheck_nodes(t);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_EQ(r.nodes[0].skipped, 1u);
}

TEST(GradcheckNodes, NamesTheCustomOpWhoseVjpIsWrong) {
  Tape<double> t;
  Parameter<double> k("k", uniform({2, 1, 3, 3}, 1)), w("w", uniform({2 * 4 * 4, 2}, 2));
  const Value x = t.input(uniform({1, 1, 4, 4}, 3), "images");
  const Value z = t.set_label(conv2d(t, x, t.param(k), Value{}, {.padding = {1, 1}}), "conv1");
  const Value c = t.set_label(custom(t, make_custom_op<Cube>(Cube{CubeVjp::Wrong}), {z}), "features.cube");
  const int line = __LINE__ - 1;
  const Value y = linear(t, flatten(t, ad::tanh(t, c)), t.param(w), Value{});
  t.backward(sum(t, y));
  const NodeGradcheckResult r = gradcheck_nodes(t);
  ASSERT_FALSE(r.ok);
  const NodeGradcheck* bad = r.first_failure();
  ASSERT_NE(bad, nullptr);
  EXPECT_EQ(bad->index, 3u);
  EXPECT_EQ(bad->op, "cube");
  EXPECT_EQ(bad->label, "features.cube");
  EXPECT_EQ(bad->where, fmt::format("test_gradcheck_nodes.cpp:{}", line));
  EXPECT_EQ(bad->result.input, "input0");
  EXPECT_NEAR(bad->result.analytic / bad->result.numeric, 2.0 / (3.0 * t.value(z).data()[bad->result.index]), 1e-4);
  EXPECT_NE(r.report.find(fmt::format("First failing node: #3 cube \"features.cube\" @ test_gradcheck_nodes.cpp:{}: its "
                                      "VJP disagrees with finite differences w.r.t. input0 (#2 \"conv1\") at input0[",
                                      line)),
            std::string::npos)
      << r.report;
  for (const NodeGradcheck& n : r.nodes)
    if (n.index != 3) {
      EXPECT_TRUE(n.result.ok) << "#" << n.index << " " << n.op << ": " << n.result.report;
    }
}

TEST(GradcheckNodes, NamesAVjpThatOverwritesInsteadOfAdding) {
  Tape<double> t;
  Parameter<double> p("x", uniform({3}, 1));
  const Value y = t.set_label(custom(t, make_custom_op<Cube>(Cube{CubeVjp::Overwrites}), {t.param(p)}), "c");
  t.backward(sum(t, y));
  const NodeGradcheckResult r = gradcheck_nodes(t);
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.first_failure()->op, "cube");
  EXPECT_TRUE(r.first_failure()->result.values_ok);
  EXPECT_FALSE(r.first_failure()->result.accumulation_ok);
  EXPECT_NE(r.report.find("overwrites a gradient buffer instead of adding"), std::string::npos) << r.report;
}

TEST(GradcheckNodes, RefusesToCheckNodesWhoseInputsChangedSinceTheForward) {
  Tape<double> t;
  Parameter<double> p("w", uniform({3}, 1));
  const Value y = t.set_label(scale(t, t.param(p), 2.0), "scaled");
  t.backward(sum(t, y));
  p.value -= 0.1 * p.grad;  // an optimizer step before the check
  const NodeGradcheckResult r = gradcheck_nodes(t);
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.first_failure()->label, "scaled");
  EXPECT_NE(r.report.find("optimizer step"), std::string::npos) << r.report;
}

TEST(GradcheckNodes, ReplaysEveryOpWithItsAttributes) {
  Tape<double> t;
  Parameter<double> x("x", distinct({2, 2, 5, 6}, 1)), k("k", uniform({3, 2, 2, 3}, 2)), kb("kb", uniform({3}, 3));
  Parameter<double> target("target", uniform({2, 3, 3, 2}, 4));
  const Value xv = t.param(x);
  const Value z = conv2d(t, xv, t.param(k), t.param(kb), {.padding = {1, 0}, .stride = {2, 3}});  // (2,3,3,2)
  const Value p1 = max_pool2d(t, xv, {.window = {3, 2}, .stride = {1, 2}, .padding = {1, 1}, .max_padding = MaxPoolPadding::Zero});
  const Value p2 = avg_pool2d(t, xv, {.window = {2, 3}, .stride = {2, 1}, .padding = {0, 1}});
  const Value m = mse(t, scale(t, z, -0.5), t.param(target));
  const Value s = add(t, sum(t, mul(t, p1, p1)), mean(t, leaky_relu(t, p2, 0.3)));
  t.backward(add(t, m, s));
  const NodeGradcheckResult r = gradcheck_nodes(t);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_EQ(r.nodes.size(), 11u);
}

}  // namespace
}  // namespace ad::test::test_gradcheck_nodes
