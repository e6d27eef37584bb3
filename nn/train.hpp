// The training loop's parts: one epoch of SGD-style training, evaluation, and
// model checkpoints (parameters + optimizer state + epoch).
#pragma once

#include <functional>
#include <source_location>
#include <stdexcept>
#include <string>

#include "nn/data.hpp"
#include "nn/layers.hpp"
#include "nn/optim.hpp"

namespace nn {

struct EpochStats {
  double loss = 0;      // mean training loss over the epoch's images
  double accuracy = 0;  // training accuracy over the epoch's images
  std::size_t images = 0;
  double seconds = 0;
};

// Thrown by train_epoch when a step's loss is NaN or infinite (the run diverged). It
// is checked right after the forward, so that step changed nothing: no backward, no
// optimizer update. The message names the step and the loss.
class NonFiniteLossError : public std::runtime_error {
 public:
  NonFiniteLossError(std::size_t step, std::size_t first_image, std::size_t images, double loss);
  std::size_t step;  // 1-based step (batch) within the epoch
  double loss;
};

// Called after every batch: images seen so far this epoch, running mean loss.
using ProgressFn = std::function<void(std::size_t images_done, double running_loss)>;

// One pass over `batches` (start_epoch must have been called) with any module that
// maps images (N, C, H, W) to logits (N, K): forward, softmax cross-entropy, backward,
// optimizer step; the tape is reset and reused each step. The model runs in the mode
// it is in (a new model is in training mode; see Module::train). `lr_at` (optional)
// gives the learning rate for each step's fraction of the epoch. The nodes the
// library's layers record show `loc`, the line that called train_epoch.
// Throws NonFiniteLossError, before that step's update, when a loss is not finite.
template <class T>
EpochStats train_epoch(Module<T>& model, Optimizer<T>& opt, BatchIterator& batches, ad::Tape<T>& tape,
                       const ProgressFn& progress = {}, const std::function<double(double)>& lr_at = {},
                       std::source_location loc = std::source_location::current());

// The rows of logits (N, K) whose largest entry (the first, on a tie) is at the label's
// index: the correct predictions of a batch.
template <class T>
std::size_t count_correct(const ad::Tensor<T>& logits, const std::vector<int>& labels);

// Accuracy and mean loss on a whole dataset, in batches, recording nothing. The model
// runs in evaluation mode (batch norm uses its running statistics, dropout is off);
// every module's mode is restored afterwards.
template <class T>
EpochStats evaluate(Module<T>& model, const Dataset& data, std::size_t batch, ad::Tape<T>& tape);

// Checkpoints: every parameter and buffer (by name: model.named_parameters(),
// model.named_buffers()), the optimizer state ("optim.*") and the number of completed
// epochs ("meta.epochs"), tagged with the architecture.
template <class T>
void save_model(const std::string& path, Module<T>& model, Optimizer<T>& opt, int epochs_done,
                const std::string& tag);
// Loads into model (parameters and buffers) and optimizer after verifying tag, names,
// shapes and checksum, and the values: every tensor finite, the optimizer's state valid
// (Optimizer::state_defect), meta.epochs a whole number. Returns the epochs completed.
// Nothing changes unless everything matches; a CheckpointError names the file and the tensor.
template <class T>
int load_model(const std::string& path, Module<T>& model, Optimizer<T>& opt, const std::string& tag);

// Bytes a training step needs per example on the tape: every value the model records
// for one example of `example_shape` (e.g. {1, 28, 28}), the gradient of each value
// that needs one, and what the nodes save for backward (max-pool's argmax), found by
// recording the forward pass of one zero example (in the model's current mode; buffers
// such as running statistics are restored afterwards). Parameters and buffers are not
// counted (they are the same for any batch). Works for any module.
template <class T>
std::size_t step_bytes_per_example(Module<T>& model, const ad::Shape& example_shape);

// The same bytes per example as step_bytes_per_example(make_cnn<T>(cfg, ...), {C, H, W})
// (as make_cnn's Sequential records it: conv -> ReLU -> max pool fused, see Sequential)
// and the parameter count of that model, from shapes alone: nothing is allocated and no
// forward runs, so a program can refuse a configuration too large for memory before
// building it. Throws ad::ShapeError when the images are too small for the model.
struct CnnFootprint {
  std::size_t step_bytes_per_example = 0;
  std::size_t parameters = 0;
};
CnnFootprint cnn_footprint(const CnnConfig& cfg, std::size_t element_bytes);

// Memory this process can still use: the smaller of /proc/meminfo's MemAvailable and
// what a cgroup v2 limit leaves (memory.max - memory.current), or 0 when neither is known.
std::size_t available_memory_bytes();

// Throws std::runtime_error("<what> needs about X GB, more than ...") when `bytes`
// exceeds `budget`, or with budget 0, 80% of available_memory_bytes() (no check when
// that is unknown). Lets a program refuse a run that cannot fit before it starts,
// rather than meet the OOM killer halfway through.
void check_memory(std::size_t bytes, std::size_t budget, const std::string& what);

}  // namespace nn
