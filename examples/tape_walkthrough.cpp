// A walk through the tape of the document's 3-layer CNN (the README's model): print
// it, print it again with value and gradient summaries after backward, draw it
// (tape.dot, and tape.svg when Graphviz's `dot` is installed), and re-check every
// node's VJP with the per-node gradcheck.
//
//   tape_walkthrough [output directory, default .]
#include <autodiff/ad.hpp>
#include <xtensor/xrandom.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>

int main(int argc, char** argv) {
  using ad::Parameter, ad::Value;
  const std::filesystem::path out = argc > 1 ? argv[1] : ".";
  std::filesystem::create_directories(out);

  xt::random::seed(0);
  Parameter<float> k1("k1", 0.3f * xt::random::randn<float>({4, 1, 3, 3})), b1("b1", xt::zeros<float>({4}));
  Parameter<float> k2("k2", 0.2f * xt::random::randn<float>({8, 4, 3, 3})), b2("b2", xt::zeros<float>({8}));
  Parameter<float> w3("w3", 0.05f * xt::random::randn<float>({8 * 7 * 7, 10})), b3("b3", xt::zeros<float>({10}));
  const ad::Tensor<float> images = xt::random::rand<float>({16, 1, 28, 28});
  const std::vector<int> labels = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5};

  ad::Tape<float> tape;
  const Value x = tape.input(images, "images");
  const Value z1 = tape.set_label(ad::conv2d(tape, x, tape.param(k1), tape.param(b1), {.padding = {1, 1}}), "conv1");
  const Value a1 = tape.set_label(ad::max_pool2d(tape, tape.set_label(ad::relu(tape, z1), "conv1.relu")), "conv1.pool");
  const Value z2 = tape.set_label(ad::conv2d(tape, a1, tape.param(k2), tape.param(b2), {.padding = {1, 1}}), "conv2");
  const Value a2 = tape.set_label(ad::max_pool2d(tape, tape.set_label(ad::relu(tape, z2), "conv2.relu")), "conv2.pool");
  const Value z3 = tape.set_label(ad::linear(tape, ad::flatten(tape, a2), tape.param(w3), tape.param(b3)), "fc");
  const Value loss = tape.set_label(ad::softmax_cross_entropy(tape, z3, labels), "loss");

  fmt::print("The tape after the forward pass ({} nodes):\n{}\n", tape.nodes().size(), tape);
  tape.backward(loss);
  fmt::print("After backward, with value and gradient summaries:\n");
  ad::print_tape(tape, {.values = true, .grads = true});

  // The picture: nodes with op, shape, attributes and label; inputs and parameters apart.
  const std::filesystem::path dot = out / "tape.dot", svg = out / "tape.svg";
  std::ofstream(dot) << ad::to_dot(tape);
  fmt::print("\nwrote {}\n", dot.string());
  if (std::system("command -v dot >/dev/null 2>&1") == 0) {
    const std::string cmd = fmt::format("dot -Tsvg '{}' -o '{}'", dot.string(), svg.string());
    if (std::system(cmd.c_str()) != 0) {
      fmt::print(stderr, "`{}` failed\n", cmd);
      return 1;
    }
    fmt::print("wrote {}\n", svg.string());
  } else {
    fmt::print("Graphviz's dot is not installed: no tape.svg (apt-get install graphviz)\n");
  }

  // Which op to blame when a gradient is wrong: every node's VJP against finite differences.
  const ad::NodeGradcheckResult check = ad::gradcheck_nodes(tape);
  fmt::print("\n{}\n", check.report);
  return check.ok ? 0 : 1;
}
