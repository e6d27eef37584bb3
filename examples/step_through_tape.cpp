// Step through backward one node at a time and look at the gradients between steps,
// on a small CNN: conv -> relu -> max-pool -> flatten -> linear -> cross-entropy.
// A gradient hook shows what flows into the convolution's output.
#include <autodiff/ad.hpp>
#include <xtensor/xrandom.hpp>

using ad::Parameter, ad::Value;

struct Model {
  Parameter<double> k{"k", 0.5 * xt::random::randn<double>({2, 1, 3, 3})}, b{"b", xt::zeros<double>({2})};
  Parameter<double> w{"w", 0.3 * xt::random::randn<double>({2 * 3 * 3, 3})};

  // Records the forward pass; returns (conv output, loss).
  std::pair<Value, Value> record(ad::Tape<double>& tape, const ad::Tensor<double>& images) {
    const Value x = tape.input(images, "images");
    const Value z = tape.set_label(ad::conv2d(tape, x, tape.param(k), tape.param(b), {.padding = {1, 1}}), "conv");
    const Value a = tape.set_label(ad::max_pool2d(tape, ad::relu(tape, z)), "pool");
    const Value y = tape.set_label(ad::linear(tape, ad::flatten(tape, a), tape.param(w), Value{}), "fc");
    return {z, tape.set_label(ad::softmax_cross_entropy(tape, y, {0, 2}), "loss")};
  }
};

int main() {
  xt::random::seed(1);
  Model m;
  const ad::Tensor<double> images = xt::random::rand<double>({2, 1, 6, 6});
  ad::Tape<double> tape;
  const auto [z, loss] = m.record(tape, images);
  fmt::print("{}\n", tape);

  // Called once dJ/dz is complete, before conv2d's own VJP runs; it may also replace it.
  tape.add_hook(z, [](ad::Tensor<double>& g) {
    fmt::print("    hook: dJ/d(conv output) is complete: {}\n", ad::format_summary(ad::summarize(g)));
  });

  tape.backward_begin(loss);
  while (!tape.backward_done()) {
    const int i = tape.backward_next();
    fmt::print("step {}\n", ad::format_node(tape, static_cast<std::size_t>(i)));
    tape.backward_step();
    // Each input of the node that needs a gradient has received this node's contribution.
    for (int32_t id : tape.nodes()[static_cast<std::size_t>(i)].inputs)
      if (id >= 0 && tape.requires_grad(Value{id}))
        fmt::print("    dJ/d(#{}) {} {}\n", tape.slot(Value{id}).producer, ad::shape_str(tape.grad(Value{id}).shape()),
                   ad::format_summary(ad::summarize(tape.grad(Value{id}))));
  }

  // backward() runs this same loop: the gradients agree exactly.
  const ad::Tensor<double> stepped = m.k.grad;
  m.k.zero_grad(), m.b.zero_grad(), m.w.zero_grad();
  ad::Tape<double> again;
  again.backward(m.record(again, images).second);
  const bool same = m.k.grad == stepped;
  fmt::print("dJ/dk from stepping {} backward()\n", same ? "matches" : "DIFFERS FROM");
  return same ? 0 : 1;
}
