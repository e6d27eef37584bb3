// Higher-order gradients (autodiff/higher_order.hpp): ad::grad and backward with
// create_graph against the first-order backward, the marks recorded nodes carry, the
// refusals, Hessian-vector products against finite differences, and which registered
// ops have no recorded VJP yet.
#include <algorithm>

#include "autodiff/custom.hpp"
#include "test_util.hpp"

namespace ad::test::test_higher_order {
namespace {

// The document's 3-layer CNN at toy size, in double, with its parameters.
struct RefCnn {
  Parameter<double> k1{"k1", uniform({2, 1, 3, 3}, 101, -0.5, 0.5)}, b1{"b1", uniform({2}, 102, -0.1, 0.1)};
  Parameter<double> k2{"k2", uniform({3, 2, 3, 3}, 103, -0.4, 0.4)}, b2{"b2", uniform({3}, 104, -0.1, 0.1)};
  Parameter<double> w3{"w3", uniform({12, 4}, 105, -0.5, 0.5)}, b3{"b3", uniform({4}, 106, -0.1, 0.1)};
  T64 images = uniform({2, 1, 8, 8}, 107);
  std::vector<int> labels{1, 3};
  std::vector<Parameter<double>*> params() { return {&k1, &b1, &k2, &b2, &w3, &b3}; }

  static Value loss(Tape<double>& t, Value x, const std::vector<Value>& p, const std::vector<int>& labels) {
    const Value a1 = max_pool2d(t, relu(t, conv2d(t, x, p[0], p[1], {.padding = {1, 1}})));
    const Value a2 = max_pool2d(t, relu(t, conv2d(t, a1, p[2], p[3], {.padding = {1, 1}})));
    return softmax_cross_entropy(t, linear(t, flatten(t, a2), p[4], p[5]), labels);
  }
  Value record(Tape<double>& t, std::vector<Value>& p) {
    p.clear();
    for (Parameter<double>* q : params()) p.push_back(t.param(*q));
    return loss(t, t.input(images), p, labels);
  }
};

TEST(Grad, MatchesFirstOrderBackwardOnTheRefCnn) {
  RefCnn m;
  std::vector<Value> p;
  {
    Tape<double> t;
    t.backward(m.record(t, p));
  }
  for (bool create_graph : {true, false}) {
    Tape<double> t;
    const Value loss = m.record(t, p);
    const std::vector<Value> g = grad(t, {loss}, p, {}, {.create_graph = create_graph});
    for (std::size_t k = 0; k < p.size(); ++k)
      EXPECT_TRUE(all_close(t.value(g[k]), m.params()[k]->grad, 1e-12, 1e-14))
          << m.params()[k]->name << (create_graph ? " (create_graph)" : " (values only)");
    EXPECT_EQ(t.requires_grad(g[0]), create_graph);
  }
}

TEST(Grad, WithoutCreateGraphRecordsNoNode) {
  RefCnn m;
  std::vector<Value> p;
  Tape<double> t;
  const Value loss = m.record(t, p);
  const std::size_t before = t.nodes().size();
  grad(t, {loss}, p, {}, {.create_graph = false});
  EXPECT_EQ(t.nodes().size(), before);
}

TEST(Grad, RecordedNodesNameTheForwardNodeTheyDifferentiate) {
  Parameter<double> x("x", T64{-1.0, 2.0, 3.0});
  Tape<double> t;
  const Value y = relu(t, t.param(x));          // #1
  const Value s = sum(t, y);                    // #2
  const std::vector<Value> g = grad(t, {s}, {Value{0}});  // #3 seed, #4 broadcast_to, #5 relu_backward
  EXPECT_TRUE(all_close(t.value(g[0]), T64{0.0, 1.0, 1.0}, 0));
  ASSERT_EQ(t.nodes().size(), 6u);
  EXPECT_EQ(t.nodes()[2].grad_of, -1);
  EXPECT_EQ(t.nodes()[4].grad_of, 2);
  EXPECT_EQ(t.nodes()[5].grad_of, 1);
  const std::string text = format_tape(t);
  // (the call site of a recorded node is the op's recorded VJP, in the library)
  EXPECT_NE(text.find("#4 broadcast_to(#3) -> (3) shape=(3) (d/d#2) @ elementwise.cpp:"), std::string::npos) << text;
  EXPECT_NE(text.find("#5 relu_backward(#4, #0) -> (3) (d/d#1) @ activation.cpp:"), std::string::npos) << text;
  EXPECT_EQ(text.find("#1 relu(#0) -> (3) (d/d"), std::string::npos) << text;  // forward nodes carry no mark
  EXPECT_NE(format_node(t.nodes()[5]).find("(d/d#1)"), std::string::npos);
  EXPECT_NE(to_dot(t).find("\\nd/d#1\""), std::string::npos) << to_dot(t);
}

TEST(Grad, FanOutIsSummedByARecordedAdd) {
  Parameter<double> x("x", T64{0.5, -2.0});
  Tape<double> t;
  const Value xv = t.param(x);
  const Value y = mul(t, xv, xv);  // #1: both operands are x
  const Value g = grad(t, {sum(t, y)}, {xv})[0];
  EXPECT_TRUE(all_close(t.value(g), T64{1.0, -4.0}, 1e-15));
  EXPECT_EQ(t.nodes()[static_cast<std::size_t>(t.slot(g).producer)].op, OpKind::Add);
  EXPECT_EQ(t.nodes()[static_cast<std::size_t>(t.slot(g).producer)].grad_of, 1);
}

TEST(Grad, GradOutputsMayThemselvesDependOnParameters) {
  // d<u, x .* x>/dx = 2 u .* x with u a parameter too: d/du of sum(that) = 2x.
  Parameter<double> x("x", T64{1.0, -3.0}), u("u", T64{0.5, 2.0});
  Tape<double> t;
  const Value xv = t.param(x), uv = t.param(u);
  const Value g = grad(t, {mul(t, xv, xv)}, {xv}, {uv})[0];
  EXPECT_TRUE(all_close(t.value(g), T64{1.0, -12.0}, 1e-15));
  t.backward(sum(t, g));
  EXPECT_TRUE(all_close(u.grad, T64{2.0, -6.0}, 1e-15));
  EXPECT_TRUE(all_close(x.grad, T64{1.0, 4.0}, 1e-15));
}

struct Cube {  // y = x^3, first order only
  std::string name() const { return "cube"; }
  Shape output_shape(std::span<const Shape> in) const { return in[0]; }
  template <class T>
  void forward(std::span<const Tensor<T>* const> in, Tensor<T>& out) const {
    for (std::size_t i = 0; i < out.size(); ++i) out.data()[i] = std::pow(in[0]->data()[i], T(3));
  }
  template <class T>
  void vjp(const Tensor<T>& g, std::span<const Tensor<T>* const> in, const Tensor<T>&, std::span<Tensor<T>* const> gi) const {
    if (gi[0])
      for (std::size_t i = 0; i < g.size(); ++i) gi[0]->data()[i] += T(3) * in[0]->data()[i] * in[0]->data()[i] * g.data()[i];
  }
};

TEST(Grad, RefusesAnOpWithoutRecordedVjpNamingIt) {
  Parameter<double> x("x", T64{1.0, 2.0});
  Tape<double> t;
  const Value y = sum(t, custom(t, make_custom_op<Cube>(), {t.param(x)}));
  EXPECT_TRUE(throws_error<TapeError>([&] { grad(t, {y}, {Value{0}}); },
                                      {"node #1 cube", "no recorded VJP yet", "test_higher_order.cpp:"}));
}

TEST(Grad, RefusesWhatItCannotDifferentiate) {
  Parameter<double> x("x", T64{1.0, 2.0});
  Tape<double> t;
  const Value c = t.input(T64{1.0, 1.0});
  const Value xv = t.param(x);
  const Value y = mul(t, xv, c);
  EXPECT_TRUE(throws_error<TapeError>([&] { grad(t, {y}, {xv}); }, {"shape (2)", "grad_outputs"}));
  EXPECT_TRUE(throws_error<TapeError>([&] { grad(t, {sum(t, y)}, {c}); }, {"needs no gradient", "tape.param()"}));
  EXPECT_TRUE(throws_error<TapeError>([&] { grad(t, {sum(t, c)}, {xv}); }, {"does not depend on any parameter"}));
  EXPECT_TRUE(throws_error<ShapeError>([&] { grad(t, {y}, {xv}, {t.input(T64{1.0})}); }, {"disagree in shape"}));
  Parameter<double> unused("unused", T64{1.0});
  const Value uv = t.param(unused);
  EXPECT_TRUE(throws_error<TapeError>([&] { grad(t, {sum(t, y)}, {uv}); }, {"no output depends on input 0"}));
  EXPECT_FALSE(grad(t, {sum(t, y)}, {uv}, {}, {.allow_unused = true})[0].valid());
}

TEST(BackwardCreateGraph, AddsIntoParameterGradsAndGivesDifferentiableGradients) {
  Parameter<double> x("x", T64{1.0, -2.0, 0.5});
  Tape<double> t;
  const Value xv = t.param(x);
  const Value sq = mul(t, xv, xv);
  const Value j = sum(t, mul(t, sq, xv));  // J = sum x^3
  t.backward(j, BackwardOptions{.create_graph = true});
  EXPECT_TRUE(all_close(x.grad, T64{3.0, 12.0, 0.75}, 1e-15));     // 3 x^2, added into Parameter::grad
  EXPECT_TRUE(all_close(t.grad(sq), T64{1.0, -2.0, 0.5}, 1e-15));  // dJ/d(x^2) = x, readable as usual
  const Value g = t.grad_value(xv);
  EXPECT_TRUE(t.requires_grad(g));
  x.zero_grad();
  t.backward(sum(t, g));  // d(sum 3 x^2)/dx = 6 x: a plain backward through both passes
  EXPECT_TRUE(all_close(x.grad, T64{6.0, -12.0, 3.0}, 1e-15));
  EXPECT_TRUE(throws_error<TapeError>([&] { t.grad_value(t.input(T64{1.0})); }, {"no recorded gradient"}));
}

TEST(BackwardCreateGraph, GradientPenaltyMatchesFiniteDifferences) {
  // P(x) = ||dJ/dx||^2 for the ref-CNN's loss J, x the images: dP/dx by a plain backward
  // through the recorded backward, against central differences of P (computed from
  // first-order backwards) along a random direction.
  RefCnn m;
  auto penalty = [&](const T64& images, T64* grad_images) {
    Parameter<double> x("x", images);
    Tape<double> t;
    std::vector<Value> p;
    for (Parameter<double>* q : m.params()) p.push_back(t.param(*q));
    const Value xv = t.param(x);
    const Value gx = grad(t, {RefCnn::loss(t, xv, p, m.labels)}, {xv})[0];
    const Value pen = sum(t, mul(t, gx, gx));
    if (grad_images) {
      t.backward(pen);
      *grad_images = x.grad;
    }
    return t.value(pen)();
  };
  T64 analytic;
  penalty(m.images, &analytic);
  const T64 dir = uniform(to_shape(m.images.shape()), 7);
  const double eps = 1e-6;
  const T64 plus = m.images + eps * dir, minus = m.images - eps * dir;
  const double numeric = (penalty(plus, nullptr) - penalty(minus, nullptr)) / (2 * eps);
  const double a = xt::sum(analytic * dir)();
  EXPECT_NEAR(a, numeric, 1e-6 * std::max(1.0, std::abs(numeric))) << "analytic " << a << " numeric " << numeric;
  EXPECT_GT(std::abs(a), 1e-4);  // not trivially zero
}

TEST(Hvp, MatchesFiniteDifferencesOfTheGradientOnTheRefCnn) {
  RefCnn m;
  LossFn<double> f = [&](Tape<double>& t, const std::vector<Value>& p) { return RefCnn::loss(t, t.input(m.images), p, m.labels); };
  std::vector<T64> v;
  for (Parameter<double>* q : m.params()) v.push_back(uniform(to_shape(q->value.shape()), 200 + v.size()));
  const std::vector<T64> hv = hvp(f, m.params(), v);
  // (grad(p + eps v) - grad(p - eps v)) / (2 eps), from first-order backwards
  auto gradient_at = [&](double s) {
    std::vector<Parameter<double>> shifted;
    for (std::size_t k = 0; k < v.size(); ++k) shifted.emplace_back(m.params()[k]->name, m.params()[k]->value + s * v[k]);
    Tape<double> t;
    std::vector<Value> p;
    for (auto& q : shifted) p.push_back(t.param(q));
    t.backward(f(t, p));
    std::vector<T64> g;
    for (auto& q : shifted) g.push_back(q.grad);
    return g;
  };
  const double eps = 1e-5;
  const std::vector<T64> gp = gradient_at(eps), gm = gradient_at(-eps);
  for (std::size_t k = 0; k < v.size(); ++k) {
    const T64 numeric = (gp[k] - gm[k]) / (2 * eps);
    EXPECT_TRUE(all_close(hv[k], numeric, 1e-5, 1e-7)) << m.params()[k]->name;
    EXPECT_EQ(m.params()[k]->grad, xt::zeros<double>(m.params()[k]->value.shape()));  // the caller's grads untouched
  }
}

TEST(Hvp, IsSymmetric) {
  RefCnn m;
  LossFn<double> f = [&](Tape<double>& t, const std::vector<Value>& p) { return RefCnn::loss(t, t.input(m.images), p, m.labels); };
  std::vector<T64> u, v;
  for (Parameter<double>* q : m.params()) {
    u.push_back(uniform(to_shape(q->value.shape()), 300 + u.size()));
    v.push_back(uniform(to_shape(q->value.shape()), 400 + v.size()));
  }
  const std::vector<T64> hu = hvp(f, m.params(), u), hv = hvp(f, m.params(), v);
  double uhv = 0, vhu = 0;
  for (std::size_t k = 0; k < u.size(); ++k) {
    uhv += xt::sum(u[k] * hv[k])();
    vhu += xt::sum(v[k] * hu[k])();
  }
  EXPECT_NEAR(uhv, vhu, 1e-12 * std::max(1.0, std::abs(uhv)));
  EXPECT_GT(std::abs(uhv), 1e-6);
}

TEST(Hvp, WorksInFloat) {
  Parameter<float> w("w", Tensor<float>{{0.5f, -1.0f}, {2.0f, 0.25f}});
  LossFn<float> f = [](Tape<float>& t, const std::vector<Value>& p) {
    const Value y = ad::tanh(t, matmul(t, t.input(Tensor<float>{{1.0f, 2.0f}}), p[0]));
    return sum(t, mul(t, y, y));
  };
  const std::vector<Tensor<float>> hv = hvp<float>(f, {&w}, {Tensor<float>{{1.0f, 0.0f}, {0.0f, 1.0f}}});
  // The same product in double: the float result agrees to float precision.
  Parameter<double> wd("w", T64{{0.5, -1.0}, {2.0, 0.25}});
  LossFn<double> fd = [](Tape<double>& t, const std::vector<Value>& p) {
    const Value y = ad::tanh(t, matmul(t, t.input(T64{{1.0, 2.0}}), p[0]));
    return sum(t, mul(t, y, y));
  };
  const std::vector<T64> hd = hvp<double>(fd, {&wd}, {T64{{1.0, 0.0}, {0.0, 1.0}}});
  EXPECT_TRUE(all_close(xt::cast<double>(hv[0]), hd[0], 1e-5, 1e-6));
}

// Every registered op either has a recorded VJP (second order: ad::grad with
// create_graph) or is on this list, which shrinks as the issue progresses.
TEST(Registry, OpsWithoutRecordedVjpAreListed) {
  // Name one op of every op file, so that the linker keeps them all (and their registrations).
  for (OpId op : {OpKind::BatchNorm2d, OpKind::Dropout, OpKind::Neg, OpKind::Softmax, OpKind::Reshape,
                  OpKind::ConvTranspose2d, OpKind::GlobalAvgPool2d, OpKind::Conv2d, OpKind::Flatten, OpKind::Linear})
    ASSERT_NE(find_op(op->name), nullptr) << op->name;
  std::vector<std::string> missing;
  for (OpId op : registered_ops())
    if (!op->leaf && (!op->record_vjp_float || !op->record_vjp_double)) missing.emplace_back(op->name);
  std::sort(missing.begin(), missing.end());
  const std::vector<std::string> expected{
      // a user's op (autodiff/custom.hpp) has a first-order VJP only
      "custom"};
  std::vector<std::string> want = expected;
  std::sort(want.begin(), want.end());
  EXPECT_EQ(missing, want) << "ops without a recorded VJP: " << fmt::format("{}", fmt::join(missing, ", "));
}

}  // namespace
}  // namespace ad::test::test_higher_order
