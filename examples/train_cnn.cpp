// train_cnn: trains the design document's 3-layer CNN (default: the reference CNN)
// on Fashion-MNIST with a progress bar, evaluates on the test set after every epoch,
// and can save, resume from, and load checkpoints. `./run.sh train --help`.
//
// Exit codes: 0 success, 1 runtime error (bad data, bad checkpoint, a non-finite loss,
// lost output, ...), 2 usage error, 130 / 143 after SIGINT / SIGTERM.
// The last line printed on success is exactly "test accuracy: 0.XXXX".
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <span>

#include "train_flags.hpp"
#include "nn/checkpoint.hpp"
#include "nn/curve.hpp"
#include "nn/data.hpp"
#include "nn/layers.hpp"
#include "nn/optim.hpp"
#include "nn/progress.hpp"
#include "nn/train.hpp"
#include "nn/weights.hpp"

namespace {

using examples::check_writable, examples::number_in, examples::whole_in;
using examples::kMaxBatch, examples::kMaxChannels, examples::kMaxEpochs, examples::kMaxThreads;

// Test-set batch: big enough to keep the GEMMs efficient, small enough that the
// activations of one batch stay a few tens of MB (peak RSS).
constexpr std::size_t kEvalBatch = 250;

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
  // --import / --export: weights in PyTorch's state_dict names and layouts (nn/weights.hpp).
  std::string import_weights, export_weights;
};

// The program's output. Writing it never throws and never kills the process: SIGPIPE
// is ignored, a failed write is remembered, and finish_output() reports it at the end
// (exit 1), after the training and its checkpoints, which do not depend on stdout.
int g_stdout_errno = 0;

void flush_out() {
  if (std::fflush(stdout) != 0 && g_stdout_errno == 0) g_stdout_errno = errno ? errno : EIO;
}

template <class... Args>
void out(fmt::format_string<Args...> f, Args&&... args) {
  const std::string s = fmt::format(f, std::forward<Args>(args)...);
  if (std::fwrite(s.data(), 1, s.size(), stdout) != s.size() && g_stdout_errno == 0) g_stdout_errno = errno ? errno : EIO;
}

// Throws when anything written to stdout was lost (a closed pipe, a full disk).
void finish_output() {
  flush_out();
  if (g_stdout_errno != 0 || std::ferror(stdout))
    throw std::runtime_error(fmt::format("standard output: the results could not be written: {}",
                                         std::strerror(g_stdout_errno ? g_stdout_errno : EIO)));
}

// --export: a .safetensors file, or else a directory of .npy files; checked before training.
void check_export(const std::string& path) {
  if (path.empty()) return;
  if (path.ends_with(".safetensors")) return check_writable("--export", path);
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_directory(path, ec))
    throw std::runtime_error(fmt::format("--export {}: exists and is not a directory (a name without .safetensors is a "
                                         "directory of .npy files)", path));
}

int run(const Options& o) {
  check_writable("--save", o.save);
  check_writable("--curve", o.curve);
  check_export(o.export_weights);
  ad::set_num_threads(o.threads);

  // Everything that decides the run's memory comes from the IDX headers, the flags and
  // the model's shapes: a run too big for this machine is refused before the data, the
  // model or the optimizer state is allocated, not by the OOM killer mid-epoch.
  const nn::IdxPairPaths train_paths = nn::fashion_mnist_paths(o.data, "train");
  const nn::IdxPairPaths test_paths = nn::fashion_mnist_paths(o.data, "t10k");
  const nn::DatasetShape train_shape = nn::read_idx_pair_shape(train_paths.images, train_paths.labels);
  const nn::DatasetShape test_shape = nn::read_idx_pair_shape(test_paths.images, test_paths.labels);
  nn::check_test_matches_train(train_shape, train_paths, test_shape, test_paths);

  nn::CnnConfig cfg;
  cfg.height = static_cast<int>(train_shape.rows), cfg.width = static_cast<int>(train_shape.cols);
  cfg.classes = static_cast<int>(nn::kFashionMnistClasses);
  cfg.pool = nn::parse_pool(o.pool);
  cfg.activation = nn::parse_activation(o.activation);
  cfg.channels = o.channels;
  cfg.torch_init = nn::parse_init(o.init) == nn::Init::Torch;
  nn::CnnFootprint footprint;
  try {
    footprint = nn::cnn_footprint(cfg, sizeof(float));
  } catch (const ad::ShapeError& e) {
    throw std::runtime_error(fmt::format("{}: {}x{} images do not fit the model {}: {}", train_paths.images,
                                         train_shape.rows, train_shape.cols, cfg.tag(), e.what()));
  }
  // The tape of one step (the same tape evaluates the test set in batches of
  // kEvalBatch, so whichever is larger), plus each parameter's value, gradient and up
  // to two optimizer buffers (Adam), plus the data set itself.
  const std::size_t step_batch =
      std::min<std::size_t>(o.batch, o.limit ? std::min(o.limit, train_shape.count) : train_shape.count);
  const std::size_t tape_batch = std::max(step_batch, std::min(kEvalBatch, test_shape.count));
  const std::size_t data_bytes = (train_shape.count + test_shape.count) * (train_shape.rows * train_shape.cols + 1);
  nn::check_memory(footprint.step_bytes_per_example * tape_batch + 4 * footprint.parameters * sizeof(float) + data_bytes,
                   static_cast<std::size_t>(o.max_memory_mb * 1e6),
                   fmt::format("--batch {}: training {} images a step", o.batch, step_batch));

  const nn::Dataset train = nn::load_idx_pair(train_paths.images, train_paths.labels, nn::kFashionMnistClasses);
  const nn::Dataset test = nn::load_idx_pair(test_paths.images, test_paths.labels, nn::kFashionMnistClasses);
  out("data: {} ({} training images{}, {} test images, {}x{})\n", o.data, train.count,
      o.limit && o.limit < train.count ? fmt::format(", using the first {}", o.limit) : "", test.count, train.rows,
      train.cols);

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
  out("model: {} ({} parameters); optimizer {} lr {:g} ({} schedule), batch {}, {} threads, seed {}\n", cfg.tag(),
      n_params, o.optimizer, lr, schedule, o.batch, ad::num_threads(), o.seed);
  flush_out();

  // Weights from PyTorch (or an earlier --export): every name and shape must match the
  // model, whose tag a file we wrote must also carry; otherwise nothing changes.
  if (!o.import_weights.empty()) {
    nn::load_weights(o.import_weights, model, {.model_tag = cfg.tag()});
    out("imported weights from {} (PyTorch's state_dict layout)\n", o.import_weights);
  }

  int start = 0;
  if (!o.load.empty()) {
    start = nn::load_model(o.load, model, *opt, cfg.tag());
    out("loaded {}: {} epochs done\n", o.load, start);
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
    nn::EpochStats tr;
    try {
      tr = nn::train_epoch(model, *opt, batches, tape, curve.recorder(e, batches.size(), std::ref(progress)), lr_at);
    } catch (const nn::NonFiniteLossError& d) {
      flush_out();
      throw std::runtime_error(fmt::format(
          "training stopped in epoch {}: {}.{} Try a lower --lr.", e + 1, d.what(),
          o.save.empty() ? std::string()
          : e > start   ? fmt::format(" {} holds epoch {}, the last one with a finite loss.", o.save, e)
                        : fmt::format(" {} was left as it was.", o.save)));
    }
    last_test = nn::evaluate(model, test, kEvalBatch, tape);
    evaluated = true;
    curve.add_epoch({e + 1, tr.loss, tr.accuracy, last_test.loss, last_test.accuracy});
    out("epoch {}/{}: train loss {:.4f} acc {:.4f} | test loss {:.4f} acc {:.4f} | {:.1f} s, {:.0f} img/s\n", e + 1,
        o.epochs, tr.loss, tr.accuracy, last_test.loss, last_test.accuracy, tr.seconds,
        static_cast<double>(tr.images) / tr.seconds);
    flush_out();
    if (!o.save.empty()) nn::save_model(o.save, model, *opt, e + 1, cfg.tag());
  }
  if (!o.curve.empty() && !curve.epochs().empty()) {
    curve.write_svg(o.curve, {fmt::format("train_cnn: {}, {} parameters, {} training images{}", cfg.tag(), n_params,
                                          batches.size(), o.load.empty() ? "" : ", resumed from " + o.load),
                              fmt::format("optimizer {} lr {:g} ({} schedule), weight decay {:g}, batch {}, {} epochs, "
                                          "{} threads, seed {}",
                                          o.optimizer, lr, schedule, o.weight_decay, o.batch, o.epochs, ad::num_threads(),
                                          o.seed)},
                    "--curve");
    out("training curve: {}\n", o.curve);
  }
  if (!evaluated) last_test = nn::evaluate(model, test, kEvalBatch, tape);
  if (!o.export_weights.empty()) {
    nn::save_weights(o.export_weights, model, {.model_tag = cfg.tag()});
    out("exported weights to {} (PyTorch's state_dict layout)\n", o.export_weights);
  }
  out("test accuracy: {:.4f}\n", last_test.accuracy);
  finish_output();
  return 0;
}

// SIGINT (Ctrl-C) and SIGTERM: a save in progress is abandoned (its temp file removed;
// the file it would have replaced is still the previous whole checkpoint), the process
// says so on stderr and exits with 128 + the signal (130, 143), as a shell reports a
// signal. Async-signal-safe: write(2), unlink(2) (in nn::remove_partial_file), _exit.
void write_stderr(const char* s) {
  const ssize_t ignored = ::write(STDERR_FILENO, s, std::strlen(s));
  (void)ignored;
}

extern "C" void on_terminate(int sig) {
  const bool abandoned = nn::remove_partial_file();
  write_stderr(sig == SIGINT ? "\ntrain_cnn: interrupted (SIGINT)" : "\ntrain_cnn: terminated (SIGTERM)");
  write_stderr(abandoned ? ": the save in progress was abandoned and its temporary file removed; the previous "
                           "checkpoint is intact\n"
                         : "; every checkpoint written so far is complete\n");
  ::_exit(128 + sig);
}

void install_signal_handlers() {
  // A closed pipe (train_cnn | head -1) makes writes fail with EPIPE instead of killing
  // the process before it saves; finish_output reports the lost output.
  std::signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = on_terminate;
  sigemptyset(&sa.sa_mask);
  for (const int sig : {SIGINT, SIGTERM}) {
    struct sigaction old {};
    // A signal ignored by whoever started us (nohup, a shell's background job) stays ignored.
    if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    ::sigaction(sig, &sa, nullptr);
  }
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
      ->check(number_in(1e-6, 1e9, true));  // at least one byte: a budget that rounds to 0 bytes would mean "none"
  app.add_option("--curve", o.curve,
                 "write the training curve (loss of every batch, loss and accuracy per epoch) as an SVG file (.svg)")
      ->check(CLI::Validator([](std::string& v) { return nn::svg_path_problem(v); }, "FILE.svg"));
  // Weights in and out, in PyTorch's state_dict names and layouts (README, "Weights in and out").
  app.add_option("--import", o.import_weights,
                 "start from these weights: FILE.safetensors or a directory of .npy files (PyTorch's names and layouts)")
      ->excludes("--load");
  app.add_option("--export", o.export_weights,
                 "after training, write the weights: FILE.safetensors, or else a directory of .npy files");
  install_signal_handlers();
  // A closed stdout (train_cnn >&-) would lose the results, and the next file opened
  // would take descriptor 1 and receive them: refuse before opening anything.
  if (::fcntl(STDOUT_FILENO, F_GETFD) == -1) {
    write_stderr("train_cnn: error: standard output is closed; the results would be lost\n");
    return 1;
  }
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
    flush_out();
    fmt::print(stderr, "\ntrain_cnn: error: {}\n", e.what());
    return 1;
  }
}
