// A progress bar for any training loop: pass it to train_epoch as its ProgressFn, or
// call it after each batch of a loop of your own.
//
//   nn::ProgressBar bar(epoch + 1, epochs, batches.size());
//   nn::train_epoch(model, opt, batches, tape, std::ref(bar));
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <string>

namespace nn {

// "1:05" for 65 seconds.
std::string format_duration(double seconds);

struct ProgressBarOptions {
  std::FILE* out = stdout;
  // A terminal gets one line redrawn at most ~8 times a second (bar, percent, images/s,
  // running loss, ETA) and cleared at the end; anything else (a pipe, a log file) a plain
  // line every quarter of the epoch. Default: whether `out` is a terminal.
  enum class Style { Auto, Terminal, Lines } style = Style::Auto;
};

class ProgressBar {
 public:
  // Epoch `epoch` of `epochs` (1-based, as printed), `total` images in the epoch.
  ProgressBar(int epoch, int epochs, std::size_t total, ProgressBarOptions opt = {});
  // After a batch: images done so far this epoch and the running mean loss.
  void operator()(std::size_t done, double running_loss);

 private:
  using clock = std::chrono::steady_clock;
  int epoch_, epochs_;
  std::size_t total_;
  std::FILE* out_;
  bool terminal_;
  clock::time_point t0_;
  double last_ = -1;
  std::size_t quarter_ = 0;
};

}  // namespace nn
