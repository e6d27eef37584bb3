// The program the gdb test (tests/autodiff/test_gdb.cpp) debugs: the document's
// 3-layer CNN at toy size, one forward and one backward. It is built at -O0 -g with
// its own copy of the tape and the ops, so that `break conv2d_vjp`, `up`,
// `print node` and `print *this` show everything even in a Release build tree.
#include <autodiff/ad.hpp>

int main() {
  using ad::Parameter, ad::Value;
  // Deterministic values, no RNG: the transcript in the README stays the same.
  auto ramp = [](ad::Shape s, float scale) {
    ad::Tensor<float> t(s);
    for (std::size_t i = 0; i < t.size(); ++i) t.data()[i] = scale * static_cast<float>((i * 7) % 11) - scale * 5;
    return t;
  };
  Parameter<float> k1("k1", ramp({2, 1, 3, 3}, 0.1f)), b1("b1", ad::Tensor<float>({0.1f, -0.1f}));
  Parameter<float> k2("k2", ramp({3, 2, 3, 3}, 0.05f)), b2("b2", ad::Tensor<float>({0.0f, 0.1f, -0.1f}));
  Parameter<float> w3("w3", ramp({12, 4}, 0.02f)), b3("b3", ad::Tensor<float>({0.f, 0.f, 0.f, 0.f}));

  ad::Tape<float> tape;
  const Value x = tape.input(ramp({2, 1, 8, 8}, 0.2f), "images");
  const Value z1 = tape.set_label(ad::conv2d(tape, x, tape.param(k1), tape.param(b1), {.padding = {1, 1}}), "conv1");
  const Value a1 = tape.set_label(ad::max_pool2d(tape, ad::relu(tape, z1)), "conv1.pool");
  const Value z2 = tape.set_label(ad::conv2d(tape, a1, tape.param(k2), tape.param(b2), {.padding = {1, 1}}), "conv2");
  const Value a2 = tape.set_label(ad::max_pool2d(tape, ad::relu(tape, z2)), "conv2.pool");
  const Value z3 = tape.set_label(ad::linear(tape, ad::flatten(tape, a2), tape.param(w3), tape.param(b3)), "fc");
  const Value loss = tape.set_label(ad::softmax_cross_entropy(tape, z3, {1, 3}), "loss");
  tape.backward(loss);
  fmt::print("loss {:.6f}, dJ/dk1 sum {:.6f}\n", tape.value(loss)(), xt::sum(k1.grad)());

  // A backward recorded on its tape (higher-order gradients): its nodes are marked with
  // the forward node they differentiate, "(d/d#2)", in gdb as in format_tape.
  ad::Tape<float> tape2;
  Parameter<float> p("p", ramp({1, 1, 4, 4}, 0.2f));
  const Value y = ad::max_pool2d(tape2, ad::relu(tape2, tape2.param(p)));
  tape2.backward(ad::sum(tape2, ad::mul(tape2, y, y)), ad::BackwardOptions{.create_graph = true});
  void show_recorded_backward(const ad::Tape<float>& tape);  // below main: the lines above stay put
  show_recorded_backward(tape2);
}

// The gdb test stops here to print a tape holding a recorded backward.
[[gnu::noinline]] void show_recorded_backward(const ad::Tape<float>& tape) {
  fmt::print("{} nodes after the recorded backward\n", tape.nodes().size());
}
