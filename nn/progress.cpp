// The progress bar (moved here from examples/train_cnn.cpp).
#include "nn/progress.hpp"

#include <unistd.h>

#include <fmt/format.h>

namespace nn {

std::string format_duration(double s) {
  const int t = static_cast<int>(s + 0.5);
  return fmt::format("{}:{:02}", t / 60, t % 60);
}

ProgressBar::ProgressBar(int epoch, int epochs, std::size_t total, ProgressBarOptions opt)
    : epoch_(epoch),
      epochs_(epochs),
      total_(total),
      out_(opt.out),
      terminal_(opt.style == ProgressBarOptions::Style::Auto ? isatty(fileno(opt.out)) != 0
                                                              : opt.style == ProgressBarOptions::Style::Terminal),
      t0_(clock::now()) {}

void ProgressBar::operator()(std::size_t done, double loss) {
  if (total_ == 0) return;
  const double el = std::chrono::duration<double>(clock::now() - t0_).count();
  const double rate = el > 0 ? static_cast<double>(done) / el : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0;
  const double frac = static_cast<double>(done) / static_cast<double>(total_);
  if (terminal_) {
    if (done < total_ && el - last_ < 0.125) return;
    last_ = el;
    const int width = 30, fill = static_cast<int>(width * frac);
    fmt::print(out_, "\repoch {}/{} [{}{}] {:3.0f}% {:>6} img/s  loss {:.4f}  ETA {} ", epoch_, epochs_,
               std::string(static_cast<std::size_t>(fill), '='), std::string(static_cast<std::size_t>(width - fill), ' '),
               100.0 * frac, static_cast<long>(rate), loss, format_duration(eta));
    if (done == total_) fmt::print(out_, "\r\033[K");
    std::fflush(out_);
  } else if (done * 4 / total_ > quarter_ && done < total_) {
    quarter_ = done * 4 / total_;
    fmt::print(out_, "epoch {}/{}: {}/{} images, {:.0f} img/s, loss {:.4f}, ETA {}\n", epoch_, epochs_, done, total_, rate,
               loss, format_duration(eta));
    std::fflush(out_);
  }
}

}  // namespace nn
