// resnet_fmnist: trains a small ResNet (nn/resnet.hpp: conv-BN-ReLU stem, residual
// blocks with batch norm and strided 1x1-conv downsampling, global average pooling,
// linear) on Fashion-MNIST, with random shifts and flips of the training images, SGD
// with Nesterov momentum and a cosine schedule. `./run.sh train --model resnet --help`.
//
// A training loop of one's own around the library's parts: nn::train_epoch with a
// progress bar (nn::ProgressBar) and the training curve (nn::TrainingCurve) recording
// every batch, nn::evaluate (the model in evaluation mode: batch norm's running
// statistics), checkpoints with the batch-norm buffers (nn::save_model / load_model).
//
// Exit codes: 0 success, 1 runtime error (bad data, bad checkpoint, ...), 2 usage error.
// The last line printed on success is exactly "test accuracy: 0.XXXX".
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>

#include "train_flags.hpp"
#include "nn/curve.hpp"
#include "nn/progress.hpp"
#include "nn/resnet.hpp"
#include "nn/train.hpp"

namespace {

constexpr std::size_t kEvalBatch = 500;

struct Options {
  std::string data = nn::kDefaultFashionMnistDir;
  // The defaults are the recipe measured in README "A ResNet" (0.9313 in 8 min 56 s on
  // the project's 2-core machine).
  int epochs = 9;
  std::size_t batch = 128;
  std::string optimizer = "momentum";
  double lr = 0;  // 0: 0.1 for momentum, 0.002 for adam
  double weight_decay = 5e-4;
  int threads = 0;
  uint64_t seed = 1;
  std::size_t limit = 0;
  std::vector<int> widths{32, 64, 128};
  int blocks = 1;
  int first_stride = 2;
  int shift = 1;
  bool flip = true;
  std::string save, load, curve;
  double max_memory_mb = 0;
};

int run(const Options& o) {
  examples::check_writable("--save", o.save);
  examples::check_writable("--curve", o.curve);
  ad::set_num_threads(o.threads);
  const auto t0 = std::chrono::steady_clock::now();
  const nn::Dataset train = nn::load_fashion_mnist(o.data, "train");
  const nn::Dataset test = nn::load_fashion_mnist(o.data, "t10k");
  fmt::print("data: {} ({} training images{}, {} test images, {}x{})\n", o.data, train.count,
             o.limit && o.limit < train.count ? fmt::format(", using the first {}", o.limit) : "", test.count, train.rows,
             train.cols);

  nn::ResNetConfig cfg;
  cfg.height = static_cast<int>(train.rows), cfg.width = static_cast<int>(train.cols);
  cfg.classes = static_cast<int>(std::max<std::size_t>(train.num_classes, 10));
  cfg.widths = o.widths;
  cfg.blocks = o.blocks;
  cfg.first_stride = o.first_stride;
  nn::ResNet<float> model(cfg, o.seed);
  std::size_t n_params = 0;
  for (auto* p : model.parameters()) n_params += p->value.size();

  const double lr = o.lr > 0 ? o.lr : o.optimizer == "adam" ? 2e-3 : 0.1;
  std::unique_ptr<nn::Optimizer<float>> optimizer;
  if (o.optimizer == "adam")
    optimizer = std::make_unique<nn::Adam<float>>(model.parameters(), nn::AdamOptions{.lr = lr, .weight_decay = o.weight_decay});
  else
    optimizer = std::make_unique<nn::Sgd<float>>(
        model.parameters(), nn::SgdOptions{.lr = lr, .momentum = 0.9, .nesterov = true, .weight_decay = o.weight_decay});
  nn::Optimizer<float>& opt = *optimizer;
  fmt::print("model: {} ({} parameters, {} buffers); optimizer {} lr {:g} (cosine), weight decay {:g}, batch {}, "
             "augmentation shift {} flip {}, {} threads, seed {}\n",
             cfg.tag(), n_params, model.named_buffers().size(), o.optimizer, lr, o.weight_decay, o.batch, o.shift,
             o.flip ? "on" : "off", ad::num_threads(), o.seed);
  std::fflush(stdout);

  // Refuse a run that cannot fit before it starts: the tape of one step (measured by
  // recording one example through the model), the parameters with their gradients and
  // optimizer state, the data.
  const std::size_t step_batch = std::min<std::size_t>(o.batch, o.limit ? std::min(o.limit, train.count) : train.count);
  const std::size_t tape_batch = std::max(step_batch, std::min(kEvalBatch, test.count));
  nn::check_memory(nn::step_bytes_per_example(model, {1, train.rows, train.cols}) * tape_batch +
                       4 * n_params * sizeof(float) + (train.count + test.count) * (train.rows * train.cols + 1),
                   static_cast<std::size_t>(o.max_memory_mb * 1e6),
                   fmt::format("--batch {}: training {} images a step", o.batch, step_batch));

  int start = 0;
  if (!o.load.empty()) {
    start = nn::load_model(o.load, model, opt, cfg.tag());
    fmt::print("loaded {}: {} epochs done\n", o.load, start);
  }

  nn::BatchIterator batches(train, o.batch, /*shuffle=*/true, o.seed, o.limit);
  batches.set_augmentation({.max_shift = o.shift, .horizontal_flip = o.flip});
  ad::Tape<float> tape;
  nn::TrainingCurve curve;
  nn::EpochStats te;
  bool evaluated = false;
  for (int e = start; e < o.epochs; ++e) {
    batches.start_epoch(static_cast<uint64_t>(e));
    nn::ProgressBar bar(e + 1, o.epochs, batches.size());
    const auto lr_at = [&](double frac) { return nn::scheduled_lr("cosine", lr, e + frac, o.epochs); };
    const nn::EpochStats tr = nn::train_epoch(model, opt, batches, tape, curve.recorder(e, batches.size(), std::ref(bar)), lr_at);
    te = nn::evaluate(model, test, kEvalBatch, tape);
    evaluated = true;
    curve.add_epoch({e + 1, tr.loss, tr.accuracy, te.loss, te.accuracy});
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("epoch {}/{}: train loss {:.4f} acc {:.4f} | test loss {:.4f} acc {:.4f} | {:.1f} s, {:.0f} img/s | {} elapsed\n",
               e + 1, o.epochs, tr.loss, tr.accuracy, te.loss, te.accuracy, tr.seconds,
               static_cast<double>(tr.images) / tr.seconds, nn::format_duration(elapsed));
    std::fflush(stdout);
    if (!o.save.empty()) nn::save_model(o.save, model, opt, e + 1, cfg.tag());
  }
  if (!o.curve.empty() && !curve.epochs().empty()) {
    curve.write_svg(o.curve, {fmt::format("resnet_fmnist: {}, {} parameters, {} training images{}", cfg.tag(), n_params,
                                          batches.size(), o.load.empty() ? "" : ", resumed from " + o.load),
                              fmt::format("optimizer {} lr {:g} (cosine), weight decay {:g}, batch {}, augmentation "
                                          "shift {} flip {}, {} epochs, {} threads, seed {}",
                                          o.optimizer, lr, o.weight_decay, o.batch, o.shift, o.flip ? "on" : "off",
                                          o.epochs, ad::num_threads(), o.seed)},
                    "--curve");
    fmt::print("training curve: {}\n", o.curve);
  }
  if (!evaluated) te = nn::evaluate(model, test, kEvalBatch, tape);
  fmt::print("test accuracy: {:.4f}\n", te.accuracy);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using examples::whole_in, examples::number_in;
  Options o;
  CLI::App app{"Train a small ResNet on Fashion-MNIST (batch norm, residual blocks, augmentation)."};
  app.add_option("--data", o.data, "directory with the Fashion-MNIST IDX files (.gz or raw)")->capture_default_str();
  app.add_option("--epochs", o.epochs, "total epochs (a resumed run continues up to this)")->capture_default_str()
      ->transform(whole_in(1, examples::kMaxEpochs));
  app.add_option("--batch", o.batch, "mini-batch size")->capture_default_str()->transform(whole_in(2, examples::kMaxBatch));
  app.add_option("--optimizer", o.optimizer, "momentum (SGD, Nesterov 0.9) | adam")->capture_default_str()
      ->check(CLI::IsMember({"momentum", "adam"}));
  app.add_option("--lr", o.lr, "peak learning rate of the cosine schedule (default: momentum 0.1, adam 0.002)")
      ->check(number_in(0, 1000, false));
  app.add_option("--weight-decay", o.weight_decay, "L2 weight decay on conv and linear weights")->capture_default_str()
      ->check(number_in(0, 1, true));
  app.add_option("--threads", o.threads, "worker threads (0 = all cores)")->capture_default_str()
      ->transform(whole_in(0, examples::kMaxThreads));
  app.add_option("--seed", o.seed, "seed for initialisation, shuffling and augmentation")->capture_default_str()
      ->transform(whole_in(0, UINT64_MAX));
  app.add_option("--limit", o.limit, "use only the first N training images (0 = all)")->capture_default_str()
      ->transform(whole_in(0, UINT64_MAX));
  app.add_option("--widths", o.widths, "channels of each stage (each stage after the first halves the resolution)")
      ->capture_default_str()->transform(whole_in(1, examples::kMaxChannels));
  app.add_option("--blocks", o.blocks, "residual blocks per stage")->capture_default_str()->transform(whole_in(1, 64));
  app.add_option("--first-stride", o.first_stride, "stride of the first stage: 1 (keep the stem's resolution) or 2")
      ->capture_default_str()->transform(whole_in(1, 2));
  app.add_option("--shift", o.shift, "augmentation: random shift of up to this many pixels (0 = none)")->capture_default_str()
      ->transform(whole_in(0, 8));
  app.add_option("--flip", o.flip, "augmentation: random horizontal flips (true | false)")->capture_default_str();
  app.add_option("--save", o.save, "write a checkpoint after every epoch (atomically)");
  app.add_option("--load", o.load, "resume from a checkpoint (parameters, batch-norm statistics, optimizer state, epochs)");
  app.add_option("--curve", o.curve, "write the training curve (every batch's loss, per-epoch loss and accuracy) as SVG")
      ->check(CLI::Validator([](std::string& v) { return nn::svg_path_problem(v); }, "FILE.svg"));
  app.add_option("--max-memory", o.max_memory_mb,
                 "refuse to start when the run would need more than this many MB (default: 80% of the memory available)")
      ->check(number_in(0, 1e9, false));
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "\nresnet_fmnist: error: {}\n", e.what());
    return 1;
  }
}
