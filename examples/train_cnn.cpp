// train_cnn: trains the design document's 3-layer CNN (default: the reference CNN)
// on Fashion-MNIST with a progress bar, evaluates on the test set after every epoch,
// and can save, resume from, and load checkpoints. `./run.sh train --help`.
//
// Exit codes: 0 success, 1 runtime error (bad data, bad checkpoint, ...), 2 usage error.
// The last line printed on success is exactly "test accuracy: 0.XXXX".
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "nn/curve.hpp"
#include "nn/data.hpp"
#include "nn/layers.hpp"
#include "nn/optim.hpp"
#include "nn/progress.hpp"
#include "nn/train.hpp"

namespace {

// Test-set batch: big enough to keep the GEMMs efficient, small enough that the
// activations of one batch stay a few tens of MB (peak RSS).
constexpr std::size_t kEvalBatch = 250;

// Flag limits: far above any sensible run, low enough that sizes cannot overflow and a
// typo (--batch 64000000) is a usage error rather than an allocation failure mid-run.
constexpr int kMaxEpochs = 100000;
constexpr std::size_t kMaxBatch = 65536;
constexpr int kMaxThreads = 1024;
constexpr int kMaxChannels = 1024;

// A whole number in [lo, hi], written in decimal digits only. It rewrites the value
// without leading zeros: CLI11 parses integers with base 0, so "010" would be 8 and
// "0x10" 16, and it wraps "-1" into an unsigned flag.
CLI::Validator whole_in(std::uint64_t lo, std::uint64_t hi) {
  return CLI::Validator(
      [=](std::string& v) {
        std::uint64_t x = 0;
        const char* end = v.data() + v.size();
        const bool digits = !v.empty() && v.find_first_not_of("0123456789") == std::string::npos;
        const auto [ptr, ec] = std::from_chars(v.data(), end, x);
        if (!digits || ec != std::errc() || ptr != end || x < lo || x > hi)
          return fmt::format("Value {} is not a whole number in [{}, {}]", v, lo, hi);
        v = std::to_string(x);
        return std::string();
      },
      fmt::format("in [{}, {}]", lo, hi));
}

// A number in (lo, hi] (or [lo, hi] when lo is included); the message shows the bounds
// as written rather than CLI11's six decimals.
CLI::Validator number_in(double lo, double hi, bool lo_included) {
  return CLI::Validator(
      [=](std::string& v) {
        double x = 0;
        const bool ok = CLI::detail::lexical_cast(v, x) && (lo_included ? x >= lo : x > lo) && x <= hi;
        return ok ? std::string()
                  : fmt::format("Value {} is not a number in {}{:g}, {:g}]", v, lo_included ? "[" : "(", lo, hi);
      },
      fmt::format("in {}{:g}, {:g}]", lo_included ? "[" : "(", lo, hi));
}

// --save and --curve are written after the first epoch: check up front that they can
// be, so a typo in the directory does not cost a training run.
void check_writable(const char* flag, const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) return;
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  if (fs::is_directory(p, ec))
    throw std::runtime_error(fmt::format("{} {}: is a directory, expected a file name", flag, path));
  if (!fs::is_directory(dir, ec))
    throw std::runtime_error(fmt::format("{} {}: the directory {} does not exist", flag, path, dir.string()));
  if (access(dir.c_str(), W_OK) != 0)
    throw std::runtime_error(fmt::format("{} {}: the directory {} is not writable", flag, path, dir.string()));
}

struct Options {
  std::string data = nn::kDefaultFashionMnistDir;
  int epochs = 5;
  std::size_t batch = 64;
  double lr = 0;  // 0: the optimizer's default
  double weight_decay = 0;
  std::string optimizer = "adam";
  std::string schedule = "auto";
  int threads = 0;
  uint64_t seed = 1;
  std::size_t limit = 0;
  std::string save, load, curve;
  std::string pool = "max", activation = "relu", init = "torch";
  std::array<int, 2> channels{16, 32};
  double max_memory_mb = 0;  // 0: 80% of the memory available
};

int run(const Options& o) {
  check_writable("--save", o.save);
  check_writable("--curve", o.curve);
  ad::set_num_threads(o.threads);
  const nn::Dataset train = nn::load_fashion_mnist(o.data, "train");
  const nn::Dataset test = nn::load_fashion_mnist(o.data, "t10k");
  fmt::print("data: {} ({} training images{}, {} test images, {}x{})\n", o.data, train.count,
             o.limit && o.limit < train.count ? fmt::format(", using the first {}", o.limit) : "", test.count, train.rows, train.cols);

  nn::CnnConfig cfg;
  cfg.height = static_cast<int>(train.rows), cfg.width = static_cast<int>(train.cols);
  cfg.classes = static_cast<int>(std::max<std::size_t>(train.num_classes, 10));
  cfg.pool = nn::parse_pool(o.pool);
  cfg.activation = nn::parse_activation(o.activation);
  cfg.channels = o.channels;
  cfg.torch_init = nn::parse_init(o.init) == nn::Init::Torch;
  nn::Sequential<float> model = nn::make_cnn<float>(cfg, o.seed);
  std::size_t n_params = 0;
  for (auto* p : model.parameters()) n_params += p->value.size();

  std::unique_ptr<nn::Optimizer<float>> opt;
  double lr = o.lr;
  if (o.optimizer == "sgd") {
    lr = lr > 0 ? lr : 0.05;
    opt = std::make_unique<nn::Sgd<float>>(model.parameters(), nn::SgdOptions{.lr = lr, .weight_decay = o.weight_decay});
  } else if (o.optimizer == "momentum") {
    lr = lr > 0 ? lr : 0.01;
    opt = std::make_unique<nn::Sgd<float>>(model.parameters(), nn::SgdOptions{.lr = lr, .momentum = 0.9, .nesterov = true, .weight_decay = o.weight_decay});
  } else {
    lr = lr > 0 ? lr : 3e-3;
    opt = std::make_unique<nn::Adam<float>>(model.parameters(), nn::AdamOptions{.lr = lr, .weight_decay = o.weight_decay});
  }
  const std::string schedule = o.schedule == "auto" ? (o.optimizer == "sgd" ? "constant" : "cosine") : o.schedule;
  nn::scheduled_lr(schedule, lr, 0, o.epochs);  // rejects an unknown name before any work
  fmt::print("model: {} ({} parameters); optimizer {} lr {:g} ({} schedule), batch {}, {} threads, seed {}\n", cfg.tag(),
             n_params, o.optimizer, lr, schedule, o.batch, ad::num_threads(), o.seed);
  std::fflush(stdout);

  // A run too big for this machine is refused here, not by the OOM killer mid-epoch:
  // the tape of one step (the same tape evaluates the test set in batches of
  // kEvalBatch, so whichever is larger), plus each parameter's value, gradient and up to
  // two optimizer buffers (Adam), plus the data set itself.
  const std::size_t step_batch = std::min<std::size_t>(o.batch, o.limit ? std::min(o.limit, train.count) : train.count);
  const std::size_t tape_batch = std::max(step_batch, std::min(kEvalBatch, test.count));
  const std::size_t data_bytes = (train.count + test.count) * (train.rows * train.cols + 1);
  nn::check_memory(nn::step_bytes_per_example(model, {1, train.rows, train.cols}) * tape_batch +
                       4 * n_params * sizeof(float) + data_bytes,
                   static_cast<std::size_t>(o.max_memory_mb * 1e6),
                   fmt::format("--batch {}: training {} images a step", o.batch, step_batch));

  int start = 0;
  if (!o.load.empty()) {
    start = nn::load_model(o.load, model, *opt, cfg.tag());
    fmt::print("loaded {}: {} epochs done\n", o.load, start);
  }

  nn::BatchIterator batches(train, o.batch, /*shuffle=*/true, o.seed, o.limit);
  ad::Tape<float> tape;
  nn::TrainingCurve curve;
  nn::EpochStats last_test;
  bool evaluated = false;
  for (int e = start; e < o.epochs; ++e) {
    batches.start_epoch(static_cast<uint64_t>(e));
    nn::ProgressBar progress(e + 1, o.epochs, batches.size());
    const auto lr_at = [&](double frac) { return nn::scheduled_lr(schedule, lr, e + frac, o.epochs); };
    const nn::EpochStats tr =
        nn::train_epoch(model, *opt, batches, tape, curve.recorder(e, batches.size(), std::ref(progress)), lr_at);
    last_test = nn::evaluate(model, test, kEvalBatch, tape);
    evaluated = true;
    curve.add_epoch({e + 1, tr.loss, tr.accuracy, last_test.loss, last_test.accuracy});
    fmt::print("epoch {}/{}: train loss {:.4f} acc {:.4f} | test loss {:.4f} acc {:.4f} | {:.1f} s, {:.0f} img/s\n", e + 1,
               o.epochs, tr.loss, tr.accuracy, last_test.loss, last_test.accuracy, tr.seconds,
               static_cast<double>(tr.images) / tr.seconds);
    std::fflush(stdout);
    if (!o.save.empty()) nn::save_model(o.save, model, *opt, e + 1, cfg.tag());
  }
  if (!o.curve.empty() && !curve.epochs().empty()) {
    curve.write_svg(o.curve, {fmt::format("train_cnn: {}, {} parameters, {} training images{}", cfg.tag(), n_params,
                                          batches.size(), o.load.empty() ? "" : ", resumed from " + o.load),
                              fmt::format("optimizer {} lr {:g} ({} schedule), weight decay {:g}, batch {}, {} epochs, "
                                          "{} threads, seed {}",
                                          o.optimizer, lr, schedule, o.weight_decay, o.batch, o.epochs, ad::num_threads(),
                                          o.seed)});
    fmt::print("training curve: {}\n", o.curve);
  }
  if (!evaluated) last_test = nn::evaluate(model, test, kEvalBatch, tape);
  fmt::print("test accuracy: {:.4f}\n", last_test.accuracy);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Train the design document's 3-layer CNN on Fashion-MNIST (default: the reference CNN)."};
  app.add_option("--data", o.data, "directory with the Fashion-MNIST IDX files (.gz or raw)")->capture_default_str();
  app.add_option("--epochs", o.epochs, "total epochs (a resumed run continues up to this)")->capture_default_str()
      ->transform(whole_in(1, kMaxEpochs));
  app.add_option("--batch", o.batch, "mini-batch size")->capture_default_str()->transform(whole_in(1, kMaxBatch));
  app.add_option("--lr", o.lr, "learning rate (default: sgd 0.05, momentum 0.01, adam 0.003)")->check(number_in(0, 1000, false));
  app.add_option("--weight-decay", o.weight_decay, "L2 weight decay added to every gradient")->capture_default_str()
      ->check(number_in(0, 1, true));
  app.add_option("--optimizer", o.optimizer, "sgd | momentum (Nesterov, 0.9) | adam")->capture_default_str()
      ->check(CLI::IsMember({"sgd", "momentum", "adam"}));
  app.add_option("--schedule", o.schedule, "learning rate schedule: auto (cosine, constant for sgd) | constant | cosine | step")
      ->capture_default_str()->check(CLI::IsMember({"auto", "constant", "cosine", "step"}));
  app.add_option("--threads", o.threads, "worker threads (0 = all cores)")->capture_default_str()->transform(whole_in(0, kMaxThreads));
  app.add_option("--seed", o.seed, "seed for initialisation and shuffling")->capture_default_str()
      ->transform(whole_in(0, UINT64_MAX));
  app.add_option("--limit", o.limit, "use only the first N training images (0 = all)")->capture_default_str()
      ->transform(whole_in(0, UINT64_MAX));
  app.add_option("--save", o.save, "write a checkpoint after every epoch (atomically)");
  app.add_option("--load", o.load, "resume from a checkpoint (parameters, optimizer state, epochs done)");
  app.add_option("--pool", o.pool, "pooling: max | avg")->capture_default_str()->check(CLI::IsMember({"max", "avg"}));
  app.add_option("--activation", o.activation, "relu | leaky_relu | sigmoid | tanh")->capture_default_str()
      ->check(CLI::IsMember({"relu", "leaky_relu", "sigmoid", "tanh"}));
  app.add_option("--init", o.init, "torch (PyTorch's default init, as LibTorch's ref-CNN) | he (He/Xavier, biases 0)")
      ->capture_default_str()->check(CLI::IsMember({"torch", "he"}));
  app.add_option("--channels", o.channels, "channels of the two conv layers")->capture_default_str()
      ->transform(whole_in(1, kMaxChannels));
  app.add_option("--max-memory", o.max_memory_mb,
                 "refuse to start when the run would need more than this many MB (default: 80% of the memory available)")
      ->check(number_in(0, 1e9, false));
  app.add_option("--curve", o.curve,
                 "write the training curve (loss of every batch, loss and accuracy per epoch) as an SVG file (.svg)")
      ->check(CLI::Validator([](std::string& v) { return nn::svg_path_problem(v); }, "FILE.svg"));
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints the message naming the flag
    return 2;
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "\ntrain_cnn: error: {}\n", e.what());
    return 1;
  }
}
