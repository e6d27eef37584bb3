// Shared by the benchmark children (bench_ours, bench_torch, bench_onednn): flags, a clock, the
// batch source, and the line protocol the driver (bench.cpp) reads.
//
// A child measures one engine in one configuration and prints lines of the form
//   block <images per second>          one timed block of steps
//   bookkeeping <fraction>             (ours, train only) one paired tape/raw step
//   zeroing <fraction>                 (ours, train only) gradient zeroing in that step
//   loss <value>                       last loss, to show the engines really train
//   check <name> <a> <b>               (bench_onednn) its first-batch loss / gradients against ours
// The driver collects them, and the child's peak RSS from wait4().
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "nn/data.hpp"

namespace bench {

// What one child process measures.
struct ChildOptions {
  std::string mode = "train";  // train | infer
  int threads = 1;
  std::size_t batch = 64;
  int warmup = 5;              // untimed steps first (buffers, caches, thread pools)
  int blocks = 4;              // timed blocks, each printed as one `block` line
  int steps = 20;              // steps per block
  int bookkeeping_pairs = 0;   // ours only: paired tape / raw-kernel steps
  // ours only: "relu-pool" (ref-CNN: conv -> ReLU -> max pool) or "pool-relu", the same
  // function (ReLU is monotone, so it commutes with max) with ReLU on 4x fewer values.
  std::string variant = "fused";
  std::string data = nn::kDefaultFashionMnistDir;
};

inline ChildOptions parse_child_options(int argc, char** argv) {
  ChildOptions o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument("missing value after " + std::string(a));
      return argv[++i];
    };
    if (a == "--mode") o.mode = value();
    else if (a == "--threads") o.threads = std::stoi(value());
    else if (a == "--batch") o.batch = std::stoul(value());
    else if (a == "--warmup") o.warmup = std::stoi(value());
    else if (a == "--blocks") o.blocks = std::stoi(value());
    else if (a == "--steps") o.steps = std::stoi(value());
    else if (a == "--bookkeeping-pairs") o.bookkeeping_pairs = std::stoi(value());
    else if (a == "--variant") o.variant = value();
    else if (a == "--data") o.data = value();
    else throw std::invalid_argument("unknown flag " + std::string(a));
  }
  if (o.mode != "train" && o.mode != "infer") throw std::invalid_argument("--mode must be train or infer");
  if (o.variant != "fused" && o.variant != "relu-pool" && o.variant != "pool-relu")
    throw std::invalid_argument("--variant must be fused, relu-pool or pool-relu");
  return o;
}

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Full batches of real Fashion-MNIST, forever: training batches are shuffled per
// epoch (seed 0), test batches are taken in order. A partial last batch is skipped
// so every step has the same shapes in both engines.
class Batches {
 public:
  Batches(const std::string& dir, bool train, std::size_t batch)
      : data_(nn::load_fashion_mnist(dir, train ? "train" : "t10k")),
        it_(data_, batch, /*shuffle=*/train, /*seed=*/0), batch_(batch) {
    if (data_.count < batch) throw std::invalid_argument("batch larger than the dataset");
    it_.start_epoch(0);
  }
  // images (B, 1, 28, 28) in [0, 1], labels (B).
  void next(xt::xarray<float>& images, std::vector<int>& labels) {
    for (;;) {
      if (!it_.next(images, labels)) it_.start_epoch(++epoch_);
      else if (labels.size() == batch_) return;  // else: the partial last batch, skipped
    }
  }

 private:
  nn::Dataset data_;
  nn::BatchIterator it_;
  std::size_t batch_;
  std::uint64_t epoch_ = 0;
};

// The timing loop both children share: `o.warmup` untimed steps, then `o.blocks`
// blocks of `o.steps` steps, each printed as a `block <images per second>` line.
template <class Step>
void time_blocks(const ChildOptions& o, Step step) {
  for (int i = 0; i < o.warmup; ++i) step();
  for (int b = 0; b < o.blocks; ++b) {
    const auto t0 = Clock::now();
    for (int s = 0; s < o.steps; ++s) step();
    std::printf("block %.3f\n", static_cast<double>(o.steps) * static_cast<double>(o.batch) / seconds_since(t0));
  }
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace bench
