// The tape: recording, accumulation, leaves, no-grad, backward twice, reuse.
#include "test_util.hpp"

namespace ad::test::test_tape {
namespace {

TEST(Tape, RecordsOneNodePerOpWithInputsAttributesAndCallSite) {
  Tape<double> t;
  Parameter<double> k("conv1.weight", uniform({2, 1, 3, 3}, 1));
  const Value x = t.input(uniform({1, 1, 5, 5}, 2), "images");
  const Value y = conv2d(t, x, t.param(k), Value{}, {.padding = {1, 0}, .stride = {2, 1}});
  const int line = __LINE__ - 1;
  t.set_label(y, "conv1");
  ASSERT_EQ(t.nodes().size(), 3u);
  const Node<double>& n = t.nodes()[2];
  EXPECT_EQ(n.op, OpKind::Conv2d);
  EXPECT_EQ(op_name(n.op), "conv2d");
  EXPECT_EQ(n.inputs[0], x.id);
  EXPECT_EQ(n.inputs[2], -1);
  EXPECT_EQ(n.output, y.id);
  EXPECT_EQ(n.attrs.get<Conv2dOptions>().padding, (std::array<int, 2>{1, 0}));
  EXPECT_EQ(n.attrs.get<Conv2dOptions>().stride, (std::array<int, 2>{2, 1}));
  EXPECT_EQ(n.label, "conv1");
  EXPECT_EQ(n.where.line, static_cast<uint32_t>(line));
  EXPECT_NE(std::string(n.where.file).find("test_tape.cpp"), std::string::npos);
  EXPECT_EQ(t.nodes()[0].label, "images");
  EXPECT_EQ(t.nodes()[1].label, "conv1.weight");
}

TEST(Tape, GradientsAccumulateOverEveryUse) {
  // J = sum(x*x + x) => dJ/dx = 2x + 1, with x used three times.
  Tape<double> t;
  Parameter<double> p("x", T64{1.0, -2.0, 3.0});
  const Value x = t.param(p);
  t.backward(sum(t, add(t, mul(t, x, x), x)));
  EXPECT_EQ(p.grad, (T64{3.0, -3.0, 7.0}));
}

// An intermediate value used by three different ops: its gradient buffer is zeroed
// when the first consumer's VJP asks for it and every later VJP adds to it. The tape is
// reset and the step run again, so the buffer handed back holds the previous step's
// gradient: it must be zeroed again, not added to.
TEST(Tape, GradientsAccumulateWhenAnIntermediateValueFansOut) {
  Tape<double> t;
  Parameter<double> p("x", T64{1.0, -2.0, 0.5});
  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE(step);
    t.reset();
    p.zero_grad();
    const Value h = scale(t, t.param(p), 3.0);  // h = 3x
    // J = sum(h*h) + sum(5h) + sum(relu(h)): dJ/dh = 2h + 5 + [h > 0]
    const Value j = add(t, add(t, sum(t, mul(t, h, h)), sum(t, scale(t, h, 5.0))), sum(t, relu(t, h)));
    t.backward(j);
    EXPECT_EQ(t.grad(h), (T64{6.0 + 5 + 1, -12.0 + 5, 3.0 + 5 + 1}));
    EXPECT_EQ(p.grad, (T64{3 * 12.0, 3 * -7.0, 3 * 9.0}));
  }
}

// A parameter reshaped between its tape.param() and backward would be read (or have
// its gradient written) with the shape the ops were recorded for: a heap overflow.
// The tape remembers the shape at param() and throws a TapeError instead.
TEST(Tape, AParameterReshapedAfterParamIsATapeError) {
  {
    Tape<double> t;
    Parameter<double> k("k", uniform({4, 2, 3, 3}, 1));
    const Value y = conv2d(t, t.input(uniform({2, 2, 5, 5}, 2)), t.param(k), Value{}, {.padding = {1, 1}});
    const Value j = sum(t, y);
    k.value = uniform({2, 2, 3, 3}, 3);  // smaller: conv2d_vjp would read past it
    EXPECT_TRUE(throws_tape_error([&] { t.backward(j); },
                                  {"parameter \"k\"", "reshaped from (4,2,3,3) to (2,2,3,3)", "after tape.param()"}));
  }
  {
    Tape<double> t;
    Parameter<double> w("w", uniform({3, 4}, 4)), b("b", uniform({4}, 5));
    const Value j = sum(t, linear(t, t.input(uniform({2, 3}, 6)), t.param(w), t.param(b)));
    b.value = uniform({2}, 7);  // only b's gradient is written: linear's VJP adds 4 values into it
    b.zero_grad();
    EXPECT_TRUE(throws_tape_error([&] { t.backward(j); }, {"parameter \"b\"", "from (4) to (2)"}));
  }
  {
    Tape<double> t;
    Parameter<double> w("w", uniform({3, 4}, 4));
    const Value pw = t.param(w);
    w.value = uniform({4, 3}, 8);  // same size, another shape: refused too
    EXPECT_TRUE(throws_tape_error([&] { t.value(pw); }, {"from (3,4) to (4,3)"}));
    EXPECT_TRUE(throws_tape_error([&] { linear(t, t.input(uniform({2, 3}, 6)), pw, Value{}); }, {"reshaped"}));
  }
  // New values of the same shape (an optimizer step) and a reshape between steps are fine.
  Tape<double> t;
  Parameter<double> w("w", uniform({3, 4}, 4));
  const Value j = sum(t, linear(t, t.input(uniform({2, 3}, 6)), t.param(w), Value{}));
  w.value *= 2.0;
  EXPECT_NO_THROW(t.backward(j));
  t.reset();
  w.value = uniform({3, 2}, 9);
  w.zero_grad();
  EXPECT_NO_THROW(t.backward(sum(t, linear(t, t.input(uniform({2, 3}, 6)), t.param(w), Value{}))));
}

TEST(Tape, IntermediateGradientsAreReadable) {
  Tape<double> t;
  Parameter<double> p("x", T64{1.0, 2.0});
  const Value h = scale(t, t.param(p), 3.0);
  t.backward(sum(t, mul(t, h, h)));  // J = sum(h^2), dJ/dh = 2h
  EXPECT_EQ(t.grad(h), (T64{6.0, 12.0}));
  EXPECT_EQ(p.grad, (T64{18.0, 36.0}));
}

TEST(Tape, ConstantsGetNoGradientAndCostNoVjpWork) {
  Tape<double> t;
  Parameter<double> p("w", T64{2.0});
  const Value c = t.input(T64{5.0});
  const Value y = mul(t, c, t.param(p));
  EXPECT_FALSE(t.requires_grad(c));
  t.backward(sum(t, y));
  EXPECT_EQ(p.grad, (T64{5.0}));
  EXPECT_THROW(t.grad(c), TapeError);
}

TEST(Tape, ParameterGradientsAccumulateAcrossStepsUntilZeroed) {
  Parameter<double> p("w", T64{2.0});
  for (int step = 0; step < 2; ++step) {
    Tape<double> t;
    t.backward(sum(t, scale(t, t.param(p), 3.0)));
  }
  EXPECT_EQ(p.grad, (T64{6.0}));
  p.zero_grad();
  EXPECT_EQ(p.grad, (T64{0.0}));
}

TEST(Tape, SecondBackwardThrowsUnlessRetained) {
  Tape<double> t;
  Parameter<double> p("w", T64{2.0});
  const Value j = sum(t, scale(t, t.param(p), 3.0));
  t.backward(j, BackwardOptions{.retain_graph = true});
  t.backward(j);  // allowed once more: gradients add up
  EXPECT_EQ(p.grad, (T64{6.0}));
  try {
    t.backward(j);
    FAIL() << "third backward did not throw";
  } catch (const TapeError& e) {
    EXPECT_NE(std::string(e.what()).find("retain_graph"), std::string::npos) << e.what();
  }
  EXPECT_EQ(p.grad, (T64{6.0}));  // nothing was added by the refused call
}

TEST(Tape, NoGradGuardRecordsNothing) {
  Tape<double> t;
  Parameter<double> p("w", T64{2.0});
  Value y;
  {
    NoGradGuard guard(t);
    y = scale(t, t.param(p), 3.0);
  }
  EXPECT_TRUE(t.nodes().empty());
  EXPECT_EQ(t.value(y), (T64{6.0}));
  EXPECT_FALSE(t.requires_grad(y));
  EXPECT_THROW(t.backward(y), TapeError);
  EXPECT_TRUE(t.grad_enabled());
}

TEST(Tape, SeedShapeAndNonScalarAreChecked) {
  Tape<double> t;
  Parameter<double> p("w", T64{1.0, 2.0});
  const Value y = scale(t, t.param(p), 2.0);
  EXPECT_TRUE(throws_shape_error([&] { t.backward(y, T64{1.0, 2.0, 3.0}); }, {"backward", "seed gradient (3)", "(2)"}));
  EXPECT_THROW(t.backward(y), TapeError);  // not a scalar and no seed
  t.backward(y, T64{1.0, 10.0});
  EXPECT_EQ(p.grad, (T64{2.0, 20.0}));
}

TEST(Tape, UnknownHandleIsAClearError) {
  Tape<double> t;
  try {
    t.value(Value{3});
    FAIL();
  } catch (const TapeError& e) {
    EXPECT_NE(std::string(e.what()).find("#3"), std::string::npos);
  }
}

TEST(Tape, HandleKeptAcrossResetOrFromAnotherTapeIsRefused) {
  Tape<double> t;
  const Value x = t.input(T64{1.0, 2.0});
  const Value y = relu(t, x);
  t.reset();
  const Value x2 = t.input(T64{3.0, 4.0});  // the same slot index as x
  ASSERT_EQ(x2.id, x.id);
  for (const Value stale : {x, y}) {
    try {
      t.value(stale);
      ADD_FAILURE() << "a handle from before reset() was accepted";
    } catch (const TapeError& e) {
      EXPECT_NE(std::string(e.what()).find("reset()"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(fmt::format("#{}", stale.id)), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(relu(t, x), TapeError);  // ops refuse it too, before recording anything
  EXPECT_EQ(t.nodes().size(), 1u);
  Tape<double> other;
  other.input(T64{5.0, 6.0});
  EXPECT_THROW(other.value(x2), TapeError);
  // The current recording's handles and raw ids (a debugger walking nodes()) work.
  EXPECT_EQ(t.value(x2), (T64{3.0, 4.0}));
  EXPECT_EQ(t.value(Value{x2.id}), (T64{3.0, 4.0}));
  EXPECT_NE(t.recording(), other.recording());
  EXPECT_FALSE(x == x2);  // the same slot, another recording
  EXPECT_TRUE(Value{x2.id} == x2);
  Tape<float> tf;
  const Value xf = tf.input(ad::Tensor<float>{1.0f});
  EXPECT_THROW(t.value(xf), TapeError);
}

TEST(Tape, RecordingNumbersAreUniqueAcrossElementTypes) {
  // With a counter per element type, one of the two chases below would catch up with
  // the other type's number; with one counter for the process neither can.
  const Tape<double> d;
  const Tape<float> f;
  ASSERT_NE(f.recording(), d.recording());
  for (int i = 0; i < 5000; ++i) {
    ASSERT_NE(Tape<float>().recording(), d.recording()) << "after " << i << " float tapes";
    ASSERT_NE(Tape<double>().recording(), f.recording()) << "after " << i << " double tapes";
  }
}

TEST(Tape, ResetReusesEveryBufferForTheSameStep) {
  Tape<float> t;
  Parameter<float> k("k", xt::cast<float>(uniform({4, 1, 3, 3}, 1)));
  const Tensor<float> x = xt::cast<float>(uniform({8, 1, 10, 10}, 2));
  std::vector<const float*> first;
  for (int step = 0; step < 3; ++step) {
    t.reset();
    const Value h = max_pool2d(t, relu(t, conv2d(t, t.input(x), t.param(k), Value{}, {.padding = {1, 1}})));
    t.backward(sum(t, h));
    std::vector<const float*> ptrs;
    for (std::size_t v = 0; v < t.num_values(); ++v) {
      const Slot<float>& s = t.slot(Value{static_cast<int32_t>(v)});
      if (!s.param) ptrs.push_back(s.data.data()), ptrs.push_back(s.grad.data());
    }
    for (const auto& n : t.nodes()) ptrs.push_back(reinterpret_cast<const float*>(n.saved_index.data()));
    if (step == 0) first = ptrs;
    else EXPECT_EQ(ptrs, first) << "step " << step << " reallocated a buffer";
  }
}

// Max pooling's switches go through Tape::saved_index_for_overwrite: a reset tape hands
// each such node the buffer its position had, with its old size and contents, and the
// forward writes every entry. Steps whose shapes grow, shrink and whose op order
// changes (a label-saving loss before or after the pools, one pool or two) must give
// the gradients of a fresh tape, and the labels node must never see switches.
TEST(Tape, RecycledSwitchBuffersGiveTheGradientsOfAFreshTape) {
  Tape<double> reused;
  Parameter<double> w("w", uniform({5, 6}, 9));
  struct Step {
    std::size_t hw;
    bool loss_first, two_pools;
  };
  const Step steps[] = {{8, false, true}, {8, false, true}, {12, false, true}, {4, true, false},
                        {8, true, true},  {6, false, false}, {8, false, true}};
  int seed = 20;
  for (const Step& st : steps) {
    const Tensor<double> x = uniform({2, 3, st.hw, st.hw}, ++seed);
    const Tensor<double> z = uniform({6, 5}, ++seed);
    Parameter<double> px("x", x);
    auto run = [&](Tape<double>& t) {
      w.zero_grad();
      px.zero_grad();
      const Value xin = t.param(px);
      const Value logits = matmul(t, t.input(z), t.param(w));
      const Value loss = softmax_cross_entropy(t, logits, {0, 4, 2, 1, 3, 0});
      Value pooled = max_pool2d(t, xin);
      if (st.two_pools) pooled = max_pool2d(t, pooled);
      const Value total = st.loss_first ? add(t, loss, sum(t, mul(t, pooled, pooled)))
                                        : add(t, sum(t, mul(t, pooled, pooled)), loss);
      t.backward(total);
      return std::pair{Tensor<double>(px.grad), Tensor<double>(w.grad)};
    };
    reused.reset();
    const auto [gx, gw] = run(reused);
    Tape<double> fresh;
    const auto [fx, fw] = run(fresh);
    EXPECT_EQ(gx, fx) << "input " << st.hw << "x" << st.hw;
    EXPECT_EQ(gw, fw) << "input " << st.hw << "x" << st.hw;
    for (const Node<double>& n : reused.nodes()) {
      if (n.op == OpKind::SoftmaxCrossEntropy) {
        EXPECT_EQ(n.saved_index, (std::vector<int32_t>{0, 4, 2, 1, 3, 0}));
      }
      if (n.op == OpKind::MaxPool2d) {
        EXPECT_EQ(n.saved_index.size(), reused.value(reused.handle(n.output)).size());
      }
    }
  }
}

// grad_buffer_for_overwrite: the first contribution to a value's gradient may write it;
// a later one, a parameter's, and a node input that is also another input of the node
// (two gradients in one buffer) must add.
TEST(Tape, GradBufferForOverwriteOnlyForAValuesFirstGradient) {
  Tape<double> t;
  Parameter<double> p("p", uniform({2, 3}, 1));
  const Value x = t.param(p);
  const Value y = exp(t, x);
  const Value z = mul(t, y, y);  // y twice: one buffer for both of z's input gradients
  t.backward(sum(t, z));
  const Node<double>& mul_node = t.nodes()[static_cast<std::size_t>(t.slot(z).producer)];
  bool overwrite = true;
  EXPECT_EQ(t.input_grad_for_overwrite(mul_node, 0, &overwrite), &t.grad(y));
  EXPECT_FALSE(overwrite);  // an input of the node twice
  EXPECT_EQ(t.grad_buffer_for_overwrite(x, &overwrite), &p.grad);
  EXPECT_FALSE(overwrite);  // a parameter's gradient adds up across passes

  Tape<double> u;
  const Value a = u.input(uniform({2, 3}, 2));
  Parameter<double> q("q", uniform({2, 3}, 3));
  const Value b = add(u, u.param(q), a);
  u.backward(sum(u, b));  // b's gradient is ready now; `a` needs none (an input)
  EXPECT_EQ(u.grad_buffer_for_overwrite(a, &overwrite), nullptr);
  EXPECT_FALSE(overwrite);
  EXPECT_EQ(u.grad_buffer_for_overwrite(b, &overwrite), &u.grad(b));
  EXPECT_FALSE(overwrite);  // already has its gradient
  const Value c = exp(u, u.param(q));
  Tensor<double>* gc = u.grad_buffer_for_overwrite(c, &overwrite);
  ASSERT_NE(gc, nullptr);
  EXPECT_TRUE(overwrite);  // its first gradient
  EXPECT_EQ(gc->shape(), u.value(c).shape());
  EXPECT_EQ(u.grad_buffer_for_overwrite(c, &overwrite), gc);
  EXPECT_FALSE(overwrite);  // the second asks to add
}

TEST(Tape, SavedIndexForOverwriteRefusesANodeOfAnotherTape) {
  Tape<float> a, b;
  const Tensor<float> x = xt::ones<float>({1, 1, 4, 4});
  max_pool2d(a, a.input(x));
  Node<float> stray;
  EXPECT_THROW(b.saved_index_for_overwrite(stray, 4), std::logic_error);
}

}  // namespace
}  // namespace ad::test::test_tape
