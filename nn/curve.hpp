// The training curve of a run, for any training loop: the loss of every batch (and its
// running average) and the per-epoch figures (training and test loss and accuracy),
// drawn as one self-contained SVG picture with axis titles, round tick values, a legend
// and the run's settings.
//
//   nn::TrainingCurve curve;
//   for (int e = 0; e < epochs; ++e) {
//     nn::EpochStats tr = nn::train_epoch(model, opt, batches, tape, curve.recorder(e, batches.size()));
//     nn::EpochStats te = nn::evaluate(model, test, 250, tape);
//     curve.add_epoch({e + 1, tr.loss, tr.accuracy, te.loss, te.accuracy});
//   }
//   curve.write_svg("curve.svg", {"adam lr 0.003, batch 64"});
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "nn/train.hpp"

namespace nn {

// The figures of one epoch (1-based), as the curve plots them.
struct EpochPoint {
  int epoch = 0;
  double train_loss = 0, train_accuracy = 0, test_loss = 0, test_accuracy = 0;
};

// Axis ticks at round values: steps of 1, 2 or 5 times a power of ten, the axis
// widened to whole steps around [lo, hi]. `integers` keeps the step at 1 or more.
struct NiceAxis {
  double lo = 0, hi = 1, step = 0.2;
  std::vector<double> ticks;
  int decimals = 1;  // enough to tell the ticks apart ("0.85", not "0.850000")
};
NiceAxis nice_axis(double lo, double hi, int max_ticks = 6, bool integers = false);

// "" when `path` can take the SVG picture (its name ends in ".svg", any case), else why
// not ("... is not an .svg file name"): for a program to refuse the name up front.
std::string svg_path_problem(const std::string& path);

class TrainingCurve {
 public:
  // Records one batch: `running_loss` is the mean loss of the epoch's first `done` of
  // `total` images (what train_epoch's ProgressFn receives), `epoch` 0-based. The
  // batch's own loss is recovered from consecutive running means.
  void add_batch(int epoch, std::size_t done, std::size_t total, double running_loss);
  // A ProgressFn that records the batches of epoch `epoch` (0-based) and then calls
  // `then` (a progress bar, say) when given.
  ProgressFn recorder(int epoch, std::size_t total, ProgressFn then = {});
  void add_epoch(const EpochPoint& p);

  // The picture: a loss panel (every batch's loss, faint; its running average; the
  // training and test loss per epoch) and an accuracy panel (training and test accuracy
  // per epoch), each with axis titles, ticks and a legend; `settings` are printed under
  // them, one line each.
  std::string svg(const std::vector<std::string>& settings = {}) const;
  // Writes svg(settings) atomically (write_file_atomically; its messages start with
  // "<who>: <path>: "). Throws std::invalid_argument for a name that is not .svg,
  // WriteError when the file cannot be written.
  void write_svg(const std::string& path, const std::vector<std::string>& settings = {},
                 std::string_view who = "training curve") const;

  struct BatchPoint {
    double x;     // epochs: epoch + done / total
    double loss;  // that batch's mean loss
  };
  const std::vector<BatchPoint>& batches() const { return batches_; }
  const std::vector<EpochPoint>& epochs() const { return epochs_; }

 private:
  std::vector<BatchPoint> batches_;
  std::vector<EpochPoint> epochs_;
  // The previous batch of the epoch being recorded, to recover each batch's loss.
  int last_epoch_ = -1;
  std::size_t last_done_ = 0;
  double last_sum_ = 0;
};

}  // namespace nn
