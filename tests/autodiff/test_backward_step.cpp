// Backward one node at a time (the same reverse loop as backward()), and gradient
// hooks: called once a value's gradient is complete, able to read or replace it.
#include "test_util.hpp"

namespace ad::test::test_backward_step {
namespace {

// conv -> relu -> max-pool -> flatten -> linear -> cross-entropy, plus an unused
// branch recorded after the loss (backward must not visit it).
struct Net {
  Parameter<double> k{"k", uniform({2, 1, 3, 3}, 1)}, b{"b", uniform({2}, 2)}, w{"w", uniform({8, 3}, 3)};
  Value x, kv, bv, z, wv, loss, unused;
  void record(Tape<double>& t) {
    x = t.input(uniform({2, 1, 4, 4}, 4), "images");
    kv = t.param(k), bv = t.param(b), wv = t.param(w);
    z = conv2d(t, x, kv, bv, {.padding = {1, 1}});
    const Value a = max_pool2d(t, relu(t, z));
    loss = softmax_cross_entropy(t, linear(t, flatten(t, a), wv, Value{}), {0, 2});
    unused = sum(t, z);
  }
  void zero() { k.zero_grad(), b.zero_grad(), w.zero_grad(); }
};

TEST(BackwardStep, VisitsTheNodesWithWorkLastToFirstAndMatchesBackward) {
  Net n;
  Tape<double> t;
  n.record(t);
  t.backward_begin(n.loss);
  std::vector<int> order;
  while (!t.backward_done()) {
    const int next = t.backward_next();
    EXPECT_EQ(t.backward_step(), next);
    order.push_back(next);
  }
  EXPECT_EQ(t.backward_step(), -1);
  EXPECT_EQ(t.backward_next(), -1);
  // nodes: #0 input, #1 k, #2 b, #3 w, #4 conv2d, #5 relu, #6 max_pool2d, #7 flatten,
  // #8 linear, #9 loss, #10 the unused sum: neither #10 nor the constant input runs.
  EXPECT_EQ(order, (std::vector<int>{9, 8, 7, 6, 5, 4, 3, 2, 1}));
  const T64 gk = n.k.grad, gb = n.b.grad, gw = n.w.grad;

  n.zero();
  Tape<double> t2;
  n.record(t2);
  t2.backward(n.loss);
  EXPECT_EQ(n.k.grad, gk);
  EXPECT_EQ(n.b.grad, gb);
  EXPECT_EQ(n.w.grad, gw);
}

TEST(BackwardStep, GradientsAreReadableBetweenSteps) {
  Net n;
  Tape<double> t;
  n.record(t);
  t.backward_begin(n.loss);
  EXPECT_EQ(t.grad(n.loss), (T64(Shape{}, 1.0)));  // the seed
  EXPECT_THROW(t.grad(n.z), TapeError);            // nothing has reached the conv output yet
  while (t.backward_next() > 5) t.backward_step();  // run down to the relu, not including it
  EXPECT_THROW(t.grad(n.z), TapeError);
  t.backward_step();                                // relu: dJ/dz is complete now
  const T64 gz = t.grad(n.z);
  EXPECT_EQ(gz.shape(), (std::vector<std::size_t>{2, 2, 4, 4}));
  EXPECT_GT(xt::sum(xt::abs(gz))(), 0.0);
  EXPECT_EQ(xt::sum(xt::abs(n.k.grad))(), 0.0);  // conv2d has not run
  while (!t.backward_done()) t.backward_step();
  EXPECT_GT(xt::sum(xt::abs(n.k.grad))(), 0.0);
}

TEST(BackwardStep, AnAbandonedPassStillCountsAsABackward) {
  Net n;
  Tape<double> t;
  n.record(t);
  t.backward_begin(n.loss);
  t.backward_step();
  EXPECT_THROW(t.backward(n.loss), TapeError);  // would add the same gradients again
  Tape<double> r;
  n.record(r);
  r.backward_begin(n.loss, BackwardOptions{.retain_graph = true});
  r.backward_step();
  r.backward(n.loss);  // allowed: retain_graph
}

TEST(GradHook, CalledOnceWithTheCompleteGradientBeforeTheProducerRuns) {
  // J = sum(h * h + h), h = 3 w: dJ/dh = 2h + 1 gets contributions from two consumers.
  Tape<double> t;
  Parameter<double> p("w", T64{1.0, 2.0});
  const Value h = scale(t, t.param(p), 3.0);
  const Value j = sum(t, add(t, mul(t, h, h), h));
  int calls = 0;
  t.add_hook(h, [&](Tensor<double>& g) {
    ++calls;
    EXPECT_EQ(g, (T64{7.0, 13.0}));
    EXPECT_EQ(p.grad, (T64{0.0, 0.0}));  // scale's VJP has not run
  });
  t.backward(j);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(p.grad, (T64{21.0, 39.0}));
}

TEST(GradHook, ReplacingTheGradientChangesWhatFlowsUpstream) {
  Tape<double> t;
  Parameter<double> p("w", T64{1.0, 2.0});
  const Value h = scale(t, t.param(p), 3.0);
  const Value j = sum(t, mul(t, h, h));
  t.add_hook(h, [](Tensor<double>& g) { g = xt::clip(g, -5.0, 5.0); });  // gradient clipping
  t.backward(j);
  EXPECT_EQ(t.grad(h), (T64{5.0, 5.0}));
  EXPECT_EQ(p.grad, (T64{15.0, 15.0}));
}

TEST(GradHook, OnAParameterSeesItsAccumulatedGradient) {
  Parameter<double> p("w", T64{2.0});
  p.grad = T64{100.0};  // from an earlier step, not zeroed
  Tape<double> t;
  const Value w = t.param(p);
  const Value j = sum(t, scale(t, w, 3.0));
  std::vector<double> seen;
  t.add_hook(w, [&](Tensor<double>& g) {
    seen.push_back(g(0));
    g(0) = -1.0;
  });
  t.backward(j);
  EXPECT_EQ(seen, (std::vector<double>{103.0}));
  EXPECT_EQ(p.grad, (T64{-1.0}));
}

TEST(GradHook, MisuseIsAClearError) {
  Tape<double> t;
  Parameter<double> p("w", T64{1.0, 2.0});
  const Value c = t.input(T64{1.0, 1.0});
  const Value h = mul(t, c, t.param(p));
  EXPECT_THROW(t.add_hook(c, [](Tensor<double>&) {}), TapeError);  // no gradient: never called
  t.add_hook(h, [](Tensor<double>& g) { g = xt::zeros<double>({3}); });
  try {
    t.backward(sum(t, h));
    FAIL() << "a hook changing the shape was accepted";
  } catch (const TapeError& e) {
    EXPECT_NE(std::string(e.what()).find("shape from (2) to (3)"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(t.backward_done());  // the pass stopped
}

TEST(GradHook, ResetClearsHooks) {
  Tape<double> t;
  Parameter<double> p("w", T64{1.0});
  int calls = 0;
  const Value h = scale(t, t.param(p), 2.0);
  t.add_hook(h, [&](Tensor<double>&) { ++calls; });
  t.backward(sum(t, h));
  t.reset();
  t.backward(sum(t, scale(t, t.param(p), 2.0)));
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace ad::test::test_backward_step
