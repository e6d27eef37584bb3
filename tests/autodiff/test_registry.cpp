// The op registry (autodiff/op.hpp): every op the program links is registered once,
// with a name, a VJP for both element types and a replay; an entry without them stops
// the program at start-up; custom ops go through the same table.
#include <set>
#include <span>
#include <string>

#include "test_util.hpp"

namespace ad::test::test_registry {
namespace {

TEST(OpRegistry, EveryRegisteredOpHasANameAVjpAndAReplay) {
  std::set<std::string> names;
  ASSERT_FALSE(registered_ops().empty());
  for (OpId op : registered_ops()) {
    ASSERT_NE(op, nullptr);
    const std::string name = op->name ? op->name : "";
    EXPECT_FALSE(name.empty()) << "an op without a name";
    EXPECT_TRUE(names.insert(name).second) << "two ops named " << name;
    EXPECT_EQ(find_op(name), op) << name;
    if (op->leaf) continue;
    EXPECT_NE(op->vjp_float, nullptr) << name << " has no float VJP";
    EXPECT_NE(op->vjp_double, nullptr) << name << " has no double VJP";
    EXPECT_NE(op->replay, nullptr) << name << " has no replay";
  }
}

// Every op kind the library declares (each ops/ header's OpKind constants) is in the
// registry under the name the tape prints.
TEST(OpRegistry, EveryOpKindIsRegisteredUnderItsName) {
  for (const auto& [op, name] : all_op_kinds()) {
    EXPECT_EQ(op_name(op), name);
    EXPECT_EQ(find_op(name), op) << name << " is declared but not registered (AD_REGISTER_OP missing?)";
  }
}

// A registration without its VJP or replay is a programming error, reported at once.
TEST(OpRegistryDeathTest, AnEntryWithoutAReplayStopsTheProgram) {
  static constinit const OpDef incomplete{.name = "incomplete_test_op",
                                          .vjp_float = [](Tape<float>*, const Node<float>&) {},
                                          .vjp_double = [](Tape<double>*, const Node<double>&) {}};
  EXPECT_DEATH(OpRegistration{incomplete}, "op \"incomplete_test_op\" is registered without replay");
  static constinit const OpDef nameless{};
  EXPECT_DEATH(OpRegistration{nameless}, "registered without a name");
  EXPECT_DEATH(OpRegistration{conv2d_op}, "two ops are registered as \"conv2d\"");
}

// Attributes are the op's own struct; asking a node for another op's struct is an error.
TEST(OpRegistry, AttrsHoldTheOpsOwnStructAndRefuseAnother) {
  Tape<double> t;
  const Value x = t.input(uniform({1, 1, 4, 4}, 1));
  max_pool2d(t, x, {.window = {2, 2}, .stride = {1, 2}, .padding = {1, 0}});
  const Node<double>& n = t.nodes().back();
  EXPECT_STREQ(n.attrs.type, "ad::Pool2dOptions");
  EXPECT_EQ(n.attrs.get<Pool2dOptions>().stride, (std::array<int, 2>{1, 2}));
  EXPECT_THROW(n.attrs.get<Conv2dOptions>(), std::logic_error);
  relu(t, x);
  EXPECT_EQ(t.nodes().back().attrs.type, nullptr);
}

// A custom op of four inputs (the old limit was three): a weighted sum a*x0 + b*x1 +
// c*x2 + d*x3 with the weights as inputs too would need eight; four plain inputs suffice.
struct Sum4 {
  std::string name() const { return "sum4"; }
  Shape output_shape(std::span<const Shape> in) const { return in[0]; }
  template <class T>
  void forward(std::span<const Tensor<T>* const> in, Tensor<T>& out) const {
    out = *in[0] + 2.0 * *in[1] + 3.0 * *in[2] + 4.0 * *in[3];
  }
  template <class T>
  void vjp(const Tensor<T>& g, std::span<const Tensor<T>* const>, const Tensor<T>&,
           std::span<Tensor<T>* const> grad_in) const {
    for (std::size_t i = 0; i < 4; ++i)
      if (grad_in[i]) *grad_in[i] += static_cast<T>(i + 1) * g;
  }
};

TEST(OpRegistry, CustomOpOfFourInputsGoesThroughTheSameTable) {
  Tape<double> t;
  Parameter<double> p0("p0", uniform({2, 3}, 1)), p1("p1", uniform({2, 3}, 2)), p2("p2", uniform({2, 3}, 3)),
      p3("p3", uniform({2, 3}, 4));
  const Value y = custom(t, make_custom_op<Sum4>(), {t.param(p0), t.param(p1), t.param(p2), t.param(p3)});
  EXPECT_EQ(t.nodes().back().op, OpKind::Custom);
  EXPECT_EQ(t.nodes().back().inputs.size(), 4u);
  t.backward(sum(t, y));
  EXPECT_DOUBLE_EQ(p3.grad(1, 2), 4.0);
  EXPECT_DOUBLE_EQ(p1.grad(0, 0), 2.0);
  const NodeGradcheckResult r = gradcheck_nodes(t);
  EXPECT_TRUE(r.ok) << r.report;
}

}  // namespace
}  // namespace ad::test::test_registry
