// gradient_penalty: the ref-CNN trained on Fashion-MNIST with an input-gradient penalty,
//     J_total = J + lambda ||dJ/dx||^2     (x the batch of images, J the mean cross-entropy)
// as in WGAN-GP and robustness work, side by side with plain training from the same
// initialisation and batches: time per step, the penalty, test accuracy.
//
//   gradient_penalty [--data DIR] [--steps 300] [--batch 64] [--lambda 1] [--channels 16 32]
//
// Per step: dJ/dx is recorded on the tape by ad::grad (create_graph), squared and summed
// as ordinary ops, and one plain backward of J_total differentiates through both the
// forward and the recorded backward (second order: d||dJ/dx||^2/dK).
#include <CLI/CLI.hpp>

#include <chrono>

#include "nn/train.hpp"

namespace {

struct Run {
  double seconds_per_step = 0, last_loss = 0, last_penalty = 0, accuracy = 0;
};

Run train(const nn::Dataset& train_set, const nn::Dataset& test_set, const nn::CnnConfig& cfg, int steps,
          std::size_t batch, double lambda) {
  nn::Sequential<float> model = nn::make_cnn<float>(cfg, 42);
  nn::Adam<float> opt(model.parameters(), {.lr = 1e-3});
  nn::BatchIterator batches(train_set, batch, /*shuffle=*/true, /*seed=*/1);
  ad::Tape<float> tape;
  ad::Parameter<float> images("images", xt::zeros<float>({batch, std::size_t(1), std::size_t(28), std::size_t(28)}));
  xt::xarray<float> x_batch;
  std::vector<int> labels;
  Run r;
  double total_seconds = 0;
  std::uint64_t epoch = 0;
  batches.start_epoch(epoch);
  for (int step = 0; step < steps; ++step) {
    if (!batches.next(x_batch, labels)) {
      batches.start_epoch(++epoch);
      batches.next(x_batch, labels);
    }
    const auto t0 = std::chrono::steady_clock::now();
    tape.reset();
    // With the penalty the images are a parameter, so that the tape can differentiate with
    // respect to them; plain training records them as a constant (no dJ/dx work).
    ad::Value x;
    if (lambda != 0) {
      images.value = x_batch;
      images.zero_grad();
      x = tape.param(images);
    } else {
      x = tape.input(x_batch, "images");
    }
    const ad::Value loss = ad::softmax_cross_entropy(tape, model.forward(tape, x), labels);
    ad::Value total = loss;
    if (lambda != 0) {
      const ad::Value gx = ad::grad(tape, {loss}, {x})[0];  // dJ/dx, recorded: differentiable again
      const ad::Value penalty = ad::sum(tape, ad::mul(tape, gx, gx));
      total = ad::add(tape, loss, ad::scale(tape, penalty, lambda));
      r.last_penalty = tape.value(penalty)();
    }
    tape.backward(total);
    opt.step();
    opt.zero_grad();
    total_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.last_loss = tape.value(loss)();
  }
  r.seconds_per_step = total_seconds / steps;
  r.accuracy = nn::evaluate(model, test_set, 500, tape).accuracy;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"The ref-CNN trained with an input-gradient penalty lambda ||dJ/dx||^2, against plain training"};
  std::string dir = nn::kDefaultFashionMnistDir;
  int steps = 300;
  std::size_t batch = 64;
  double lambda = 1.0;
  std::vector<int> channels{16, 32};
  app.add_option("--data", dir, "Fashion-MNIST directory");
  app.add_option("--steps", steps, "training steps per run")->check(CLI::Range(1, 1000000));
  app.add_option("--batch", batch, "batch size")->check(CLI::Range(1, 65536));
  app.add_option("--lambda", lambda, "penalty weight")->check(CLI::Range(0.0, 1e6));
  app.add_option("--channels", channels, "the two conv layers' channels")->expected(2);
  CLI11_PARSE(app, argc, argv);
  try {
    const nn::Dataset train_set = nn::load_fashion_mnist(dir, "train"), test_set = nn::load_fashion_mnist(dir, "t10k");
    nn::CnnConfig cfg;
    cfg.channels = {channels[0], channels[1]};
    fmt::print("ref-CNN c{}-{}, {} steps of {} images, Adam lr 1e-3, lambda {}\n", channels[0], channels[1], steps,
               batch, lambda);
    const Run plain = train(train_set, test_set, cfg, steps, batch, 0.0);
    fmt::print("plain:   test accuracy {:.4f}, last loss {:.4f}, {:.2f} ms/step\n", plain.accuracy, plain.last_loss,
               1e3 * plain.seconds_per_step);
    const Run pen = train(train_set, test_set, cfg, steps, batch, lambda);
    fmt::print("penalty: test accuracy {:.4f}, last loss {:.4f}, last ||dJ/dx||^2 {:.3e}, {:.2f} ms/step ({:.2f}x)\n",
               pen.accuracy, pen.last_loss, pen.last_penalty, 1e3 * pen.seconds_per_step,
               pen.seconds_per_step / plain.seconds_per_step);
  } catch (const std::exception& e) {
    fmt::print(stderr, "gradient_penalty: {}\n", e.what());
    return 1;
  }
}
