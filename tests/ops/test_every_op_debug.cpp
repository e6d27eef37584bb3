// Every registered op works with the debugging tools: one double tape that records each
// op of the registry at least once (in a model-like chain and its recorded first and
// second backward), printed by format_tape with
// its attributes, drawn by to_dot, and checked node by node by gradcheck_nodes. A new op
// that is registered but missing here fails the first test: add it to the chain.
#include <algorithm>
#include <set>
#include <string>

#include "test_util.hpp"

namespace ad::test::test_every_op_debug {
namespace {

// The ops this chain leaves to their own tests: the leaves (every tape has them) and the
// user-defined op (tests/autodiff/test_custom*.cpp).
const std::set<std::string> kElsewhere = {"input", "param", "custom"};

// Kernels of small weights keep the values near 1 (large values make central differences
// of a node's sum lose digits to cancellation).
struct EveryOpTape {
  Tape<double> tape;
  T64 running_mean = xt::zeros<double>({2}), running_var = xt::ones<double>({2});
  Parameter<double> x{"x", uniform({2, 2, 6, 6}, 1)};
  Parameter<double> k1{"k1", uniform({4, 1, 3, 3}, 2, -0.4, 0.4)}, b1{"b1", uniform({4}, 3)};
  Parameter<double> k2{"k2", uniform({4, 4, 3, 3}, 4, -0.2, 0.2)};
  Parameter<double> kf{"kf", uniform({4, 2, 3, 3}, 14, -0.4, 0.4)};
  Parameter<double> kt{"kt", uniform({4, 2, 3, 3}, 5, -0.2, 0.2)}, bt{"bt", uniform({2}, 6)};
  Parameter<double> gamma{"gamma", uniform({2}, 7, 0.5, 1.5)}, beta{"beta", uniform({2}, 8)};
  Parameter<double> per_channel{"per_channel", uniform({1, 2, 1, 1}, 9)};
  Parameter<double> scalar{"scalar", uniform({}, 10, 0.5, 1.5)};
  Parameter<double> w{"w", uniform({8, 3}, 11)}, wb{"wb", uniform({3}, 12)};
  Parameter<double> m{"m", uniform({3, 3}, 13)};
  Value loss;

  EveryOpTape() {
    Tape<double>& t = tape;
    // convolutions: grouped (plain kernel path), dilated (general path), transposed
    const Value xv = t.param(x), k1v = t.param(k1);
    const Value c1 = conv2d(t, xv, k1v, t.param(b1), {.padding = {1, 1}, .groups = 2});  // (2,4,6,6)
    const Value c2 = conv2d(t, c1, t.param(k2), Value{}, {.padding = {2, 2}, .dilation = {2, 2}});       // (2,4,6,6)
    const Value ct = conv_transpose2d(t, c2, t.param(kt), t.param(bt),
                                      {.padding = {1, 1}, .stride = {2, 2}, .output_padding = {1, 1}});  // (2,2,12,12)
    // batch norm in training mode (and once in eval mode, on the statistics it updated)
    const Value bn = batch_norm2d(t, ct, t.param(gamma), t.param(beta), &running_mean, &running_var);
    const Value bn_eval = batch_norm2d(t, ct, t.param(gamma), t.param(beta), &running_mean, &running_var,
                                      {.training = false});
    // activations and pools
    const Value pooled_max = max_pool2d(t, relu(t, bn));                                        // (2,2,6,6)
    // the three fused (the images straight in: (2,4,3,3))
    const Value fused = conv2d_relu_max_pool2d(t, xv, t.param(kf), t.param(b1), {.padding = {1, 1}});
    const Value pooled_avg = avg_pool2d(t, leaky_relu(t, bn_eval, 0.1), {.window = {3, 3}, .stride = {2, 2},
                                                                        .padding = {1, 1}});  // (2,2,6,6)
    const Value squashed = add(t, sigmoid(t, pooled_max), tanh(t, pooled_avg));
    const Value dropped = dropout(t, squashed, 0.25, true, 42);
    // broadcasting arithmetic: a per-channel operand and a scalar
    const Value arith = div(t, mul(t, sub(t, dropped, t.param(per_channel)), t.param(scalar)),
                            exp(t, t.param(per_channel)));
    // elementwise maths on positive arguments where the op needs them
    const Value pos = exp(t, scale(t, arith, 0.5));
    const Value maths = add(t, add(t, ad::log(t, pos), ad::sqrt(t, pos)),
                            add(t, ad::pow(t, pos, 1.5), add(t, ad::abs(t, neg(t, arith)), clamp(t, arith, -0.5, 0.5))));
    // shape ops
    const Value r = reshape(t, maths, {2, 2, 36});
    const Value p = permute(t, r, {0, 2, 1});                       // (2,36,2)
    const Value tr = transpose(t, p, 1, 2);                         // (2,2,36)
    const std::vector<Value> halves = split(t, tr, {12, 24}, 2);    // narrow nodes
    const std::vector<Value> thirds = chunk(t, halves[1], 3, 2);    // (2,2,8) each
    const Value joined = concat(t, {thirds[2], halves[0], thirds[0]}, 2);  // (2,2,28)
    const Value cut = narrow(t, joined, 2, 3, 16);                        // (2,2,16)
    const Value planes = reshape(t, cut, {2, 2, 4, 4});
    const Value features = flatten(t, add(t, planes, global_avg_pool2d(t, planes)));  // (2,32)
    // heads and losses
    const Value h = linear(t, narrow(t, features, 1, 0, 8), t.param(w), t.param(wb));  // (2,3)
    const Value logits = bias_add(t, matmul(t, h, t.param(m)), t.param(wb));
    const std::vector<int> labels = {2, 0};
    const Value ce = softmax_cross_entropy(t, logits, labels);
    // (times a parameter: the gradient reaching nll_loss's node then depends on one, so the
    // recorded nll_loss_backward has something to check)
    const Value nll = mul(t, nll_loss(t, log_softmax(t, logits, 1), labels), t.param(scalar));
    const Value sq = mse(t, softmax(t, logits, 1), scale(t, h, 0.1));
    const Value forward_loss = add(t, add(t, add(t, ce, nll), mean(t, fused)),
                                   add(t, sq, scale(t, add(t, sum(t, h), mean(t, features)), 0.01)));
    // Higher order (autodiff/higher_order.hpp): the gradients w.r.t. the images and the first
    // kernel recorded on the tape (the ops of the recorded VJPs: *_backward, sum_to,
    // broadcast_to, ...), then the gradient of their squared norm, recorded again (the
    // VJP of max_pool2d_backward records max_pool2d_gather).
    const std::vector<Value> g = grad(t, {forward_loss}, {xv, k1v}, {}, {.create_graph = true});
    const Value penalty = add(t, sum(t, mul(t, g[0], g[0])), sum(t, mul(t, g[1], g[1])));
    const std::vector<Value> gg = grad(t, {penalty}, {xv}, {}, {.create_graph = true});
    loss = add(t, forward_loss, add(t, penalty, mean(t, gg[0])));
  }
};

TEST(EveryOp, IsRecordedByThisChainSoTheToolsBelowSeeIt) {
  // Naming every op kind links every op's file of the static library into this test,
  // so all of them are registered here.
  for (const auto& [op, name] : all_op_kinds()) ASSERT_EQ(find_op(name), op) << name;
  EveryOpTape e;
  std::set<std::string> on_tape;
  for (const auto& node : e.tape.nodes()) on_tape.insert(std::string(op_name(node.op)));
  for (OpId op : registered_ops()) {
    const std::string name = op->name;
    if (kElsewhere.count(name)) continue;
    EXPECT_TRUE(on_tape.count(name)) << "the op " << name
                                     << " is registered but not recorded by EveryOpTape: add it to the chain";
  }
}

TEST(EveryOp, IsPrintedWithItsAttributesAndDrawn) {
  EveryOpTape e;
  const std::string printed = format_tape(e.tape);
  const std::string dot = to_dot(e.tape);
  for (std::size_t i = 0; i < e.tape.nodes().size(); ++i) {
    const auto& node = e.tape.nodes()[i];
    const std::string line = format_node(e.tape, i);
    const std::string name(op_name(node.op));
    EXPECT_NE(line.find(name), std::string::npos) << line;
    EXPECT_NE(printed.find(line), std::string::npos) << "format_tape lacks node " << i << ": " << line;
    EXPECT_NE(dot.find(name), std::string::npos) << "to_dot lacks " << name;
    if (node.op->format_attrs) {
      const std::string attrs = node.op->format_attrs(node.attrs, node.saved_index);
      EXPECT_NE(line.find(attrs), std::string::npos) << name << "'s attributes '" << attrs << "' not in: " << line;
    }
  }
  // a few attributes spelled out, as a reader of the tape sees them
  for (const char* expected : {"groups=2", "dilation=2x2", "out_pad=1x1", "eval", "p=0.25", "exponent=1.5"})
    EXPECT_NE(printed.find(expected), std::string::npos) << "no '" << expected << "' in\n" << printed;
}

TEST(EveryOp, PassesGradcheckNodesInDouble) {
  EveryOpTape e;
  const NodeGradcheckResult r = gradcheck_nodes(e.tape);
  EXPECT_TRUE(r.ok) << r.report;
  for (const NodeGradcheck& n : r.nodes) if (!n.result.ok) { std::fprintf(stderr, "BAD %s\n", format_node(e.tape, n.index).c_str()); for (int32_t in : e.tape.nodes()[n.index].inputs) if (in >= 0) std::fprintf(stderr, "  IN %s\n", format_node(e.tape, std::size_t(in)).c_str()); }
  std::set<std::string> checked;
  for (const NodeGradcheck& n : r.nodes) checked.insert(std::string(op_name(e.tape.nodes()[n.index].op)));
  for (OpId op : registered_ops()) {
    if (!kElsewhere.count(op->name)) {
      EXPECT_TRUE(checked.count(op->name)) << op->name << " was not checked";
    }
  }
}

}  // namespace
}  // namespace ad::test::test_every_op_debug
