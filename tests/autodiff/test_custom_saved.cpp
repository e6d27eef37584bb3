// Custom ops that keep tensors from their forward for their VJP (CustomSaved): a
// user's normalisation op that saves its mean and 1/std instead of recomputing them.
#include "autodiff/gradcheck_nodes.hpp"
#include "test_util.hpp"

namespace ad::test::test_custom_saved {
namespace {

// y = (x - mean(x)) / sqrt(var(x) + eps) over all elements (biased variance), a batch
// norm over one group. The forward saves mean and 1/sqrt(var + eps); the VJP reads them:
//   dx = inv_std * (g - mean(g) - xhat * mean(g * xhat)),  xhat = (x - mean) * inv_std
// and counts how often the forward ran, so a test can see the VJP did not recompute.
struct Normalise {
  std::shared_ptr<int> forwards = std::make_shared<int>(0);
  std::string name() const { return "normalise"; }
  Shape output_shape(std::span<const Shape> in) const { return in[0]; }
  template <class T>
  void forward(std::span<const Tensor<T>* const> in, Tensor<T>& out, CustomSaved<T>& saved) const {
    ++*forwards;
    const Tensor<T>& x = *in[0];
    const T n = static_cast<T>(x.size());
    T mean = 0, var = 0;
    for (const T v : x) mean += v;
    mean /= n;
    for (const T v : x) var += (v - mean) * (v - mean);
    var /= n;
    Tensor<T>& stats = saved.save_new({2});
    stats(0) = mean;
    stats(1) = T(1) / std::sqrt(var + T(1e-5));
    for (std::size_t i = 0; i < x.size(); ++i) out.data()[i] = (x.data()[i] - mean) * stats(1);
  }
  template <class T>
  void vjp(const Tensor<T>& g, std::span<const Tensor<T>* const> in, const Tensor<T>& out,
           std::span<Tensor<T>* const> grad_in, const CustomSaved<T>& saved) const {
    if (!grad_in[0]) return;
    const T inv_std = saved[0](1);
    const T n = static_cast<T>(g.size());
    T mean_g = 0, mean_gx = 0;
    for (std::size_t i = 0; i < g.size(); ++i) mean_g += g.data()[i], mean_gx += g.data()[i] * out.data()[i];
    mean_g /= n, mean_gx /= n;
    for (std::size_t i = 0; i < g.size(); ++i)
      grad_in[0]->data()[i] += inv_std * (g.data()[i] - mean_g - out.data()[i] * mean_gx);
  }
};

// Saves its input once per call, to see buffers and order; its VJP reads saved[k].
struct SaveInputs {
  std::size_t read = 0;  // the saved index the VJP reads
  std::string name() const { return "save_inputs"; }
  Shape output_shape(std::span<const Shape> in) const { return in[0]; }
  template <class T>
  void forward(std::span<const Tensor<T>* const> in, Tensor<T>& out, CustomSaved<T>& saved) const {
    for (const Tensor<T>* x : in) saved.save(*x);
    out = *in[0];
  }
  template <class T>
  void vjp(const Tensor<T>& g, std::span<const Tensor<T>* const>, const Tensor<T>&, std::span<Tensor<T>* const> grad_in,
           const CustomSaved<T>& saved) const {
    if (grad_in[0]) *grad_in[0] += g * saved[read];
  }
};

TEST(CustomSaved, TheVjpReadsWhatTheForwardSavedWithoutRecomputing) {
  const auto impl = Normalise{};
  const auto forwards = impl.forwards;
  const auto op = make_custom_op<Normalise>(impl);
  Tape<double> t;
  Parameter<double> p("x", uniform({2, 3}, 1));
  const Value y = custom(t, op, {t.param(p)});
  EXPECT_EQ(*forwards, 1);
  t.backward(y, uniform({2, 3}, 2));
  EXPECT_EQ(*forwards, 1) << "the VJP ran the forward again";
  ASSERT_EQ(t.nodes()[1].custom_saved, 0);
  EXPECT_EQ(t.custom_saved(0).size(), 1u);
  EXPECT_NEAR(t.custom_saved(0)[0](0), xt::mean(p.value)(), 1e-15);
}

TEST(CustomSaved, GradcheckAndGradcheckNodesPassInDouble) {
  const auto op = make_custom_op<Normalise>();
  const GradcheckResult r = gradcheck([&](Tape<double>& t, const std::vector<Value>& in) { return custom(t, op, {in[0]}); },
                                      {uniform({3, 4}, 3)}, {"x"});
  EXPECT_TRUE(r.ok) << r.report;
  // On a float tape, node by node: the replay in double saves its own statistics.
  Tape<float> t;
  Parameter<float> p("x", xt::cast<float>(uniform({2, 5}, 4)));
  const Value y = custom(t, op, {t.param(p)});
  t.backward(sum(t, mul(t, y, y)));
  const NodeGradcheckResult nr = gradcheck_nodes(t);
  EXPECT_TRUE(nr.ok) << nr.report;
  EXPECT_EQ(nr.nodes.front().op, "normalise");
}

TEST(CustomSaved, EachNodeKeepsItsOwnTensorsAndTheBuffersAreReusedAfterReset) {
  const auto op = make_custom_op<SaveInputs>(SaveInputs{.read = 1});  // grad x0 += g * x1
  Tape<double> t;
  Parameter<double> a("a", T64{1.0, 2.0}), b("b", T64{3.0, 4.0});
  Value y = custom(t, op, {t.param(a), t.input(T64{10.0, 20.0})});
  y = custom(t, op, {y, t.input(T64{100.0, 200.0})});  // a second node, its own list
  t.backward(sum(t, y));
  // d/da of a .* 100-ish: the second node multiplies g by its own saved 100/200, the
  // first by its 10/20.
  EXPECT_EQ(a.grad, (T64{1000.0, 4000.0}));
  const double* buffer = t.custom_saved(1)[1].data();
  a.zero_grad();
  t.reset();
  y = custom(t, op, {t.param(a), t.input(T64{1.0, 1.0})});
  y = custom(t, op, {y, t.input(T64{5.0, 6.0})});
  EXPECT_EQ(t.custom_saved(1)[1].data(), buffer) << "the next step allocated new saved tensors";
  t.backward(sum(t, y));
  EXPECT_EQ(a.grad, (T64{5.0, 6.0}));
  // Under NoGradGuard nothing is recorded, and nothing kept.
  t.reset();
  {
    NoGradGuard g(t);
    custom(t, op, {t.input(T64{1.0})});
  }
  EXPECT_THROW(t.custom_saved(0), TapeError);
}

TEST(CustomSaved, ReadingATensorTheForwardDidNotSaveIsATapeError) {
  const auto op = make_custom_op<SaveInputs>(SaveInputs{.read = 3});
  Tape<double> t;
  Parameter<double> a("a", T64{1.0});
  const Value y = sum(t, custom(t, op, {t.param(a)}));
  EXPECT_TRUE(throws_error<TapeError>([&] { t.backward(y); }, {"saved tensor 3 was not saved", "saved 1"}));
}

}  // namespace
}  // namespace ad::test::test_custom_saved
