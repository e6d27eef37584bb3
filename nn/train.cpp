// Training loop parts.
#include "nn/train.hpp"

#include <chrono>
#include <cmath>
#include <fstream>
#include <optional>

namespace nn {

namespace {

// Correct predictions in logits (N, K) against labels.
template <class T>
std::size_t count_correct(const ad::Tensor<T>& logits, const std::vector<int>& labels) {
  const std::size_t N = logits.shape()[0], K = logits.shape()[1];
  std::size_t correct = 0;
  for (std::size_t n = 0; n < N; ++n) {
    const T* row = logits.data() + n * K;
    const std::size_t best = static_cast<std::size_t>(std::max_element(row, row + K) - row);
    correct += static_cast<int>(best) == labels[n];
  }
  return correct;
}

}  // namespace

template <class T>
EpochStats train_epoch(Module<T>& model, Optimizer<T>& opt, BatchIterator& batches, ad::Tape<T>& tape,
                       const ProgressFn& progress, const std::function<double(double)>& lr_at,
                       std::source_location loc) {
  const auto t0 = std::chrono::steady_clock::now();
  EpochStats s;
  ad::Tensor<T> images;
  std::vector<int> labels;
  double loss_sum = 0;
  std::size_t correct = 0;
  while (batches.next(images, labels)) {
    if (lr_at) opt.set_lr(lr_at(static_cast<double>(s.images) / static_cast<double>(batches.size())));
    tape.reset();
    const Value logits = model(tape, tape.input(images, "images", loc), loc);
    const Value loss = tape.set_label(ad::softmax_cross_entropy(tape, logits, labels, loc), "loss");
    opt.zero_grad();
    tape.backward(loss);
    opt.step();
    loss_sum += static_cast<double>(tape.value(loss)()) * static_cast<double>(labels.size());
    correct += count_correct(tape.value(logits), labels);
    s.images += labels.size();
    if (progress) progress(s.images, loss_sum / static_cast<double>(s.images));
  }
  s.loss = s.images ? loss_sum / static_cast<double>(s.images) : 0.0;
  s.accuracy = s.images ? static_cast<double>(correct) / static_cast<double>(s.images) : 0.0;
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

template <class T>
EpochStats evaluate(Module<T>& model, const Dataset& data, std::size_t batch, ad::Tape<T>& tape) {
  const auto t0 = std::chrono::steady_clock::now();
  // Evaluation mode for the whole model, each module's own mode restored on the way out
  // (in pre-order: a parent's train() sets its children, whose own entries follow).
  struct RestoreModes {
    std::vector<std::pair<Module<T>*, bool>> modes;
    ~RestoreModes() {
      for (auto& [m, on] : modes) m->train(on);
    }
  } restore;
  for (auto& [name, m] : model.named_modules()) restore.modes.emplace_back(m, m->is_training());
  model.eval();
  BatchIterator it(data, batch, /*shuffle=*/false, /*seed=*/0);
  EpochStats s;
  ad::Tensor<T> images;
  std::vector<int> labels;
  double loss_sum = 0;
  std::size_t correct = 0;
  ad::NoGradGuard guard(tape);
  while (it.next(images, labels)) {
    tape.reset();
    const Value logits = model(tape, tape.input(images));
    const Value loss = ad::softmax_cross_entropy(tape, logits, labels);
    loss_sum += static_cast<double>(tape.value(loss)()) * static_cast<double>(labels.size());
    correct += count_correct(tape.value(logits), labels);
    s.images += labels.size();
  }
  s.loss = s.images ? loss_sum / static_cast<double>(s.images) : 0.0;
  s.accuracy = s.images ? static_cast<double>(correct) / static_cast<double>(s.images) : 0.0;
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

template <class T>
void save_model(const std::string& path, Module<T>& model, Optimizer<T>& opt, int epochs_done,
                const std::string& tag) {
  std::vector<NamedTensor> ts;
  for (auto& [name, p] : model.named_parameters()) ts.push_back({name, xt::cast<float>(p->value)});
  for (auto& [name, b] : model.named_buffers()) ts.push_back({name, xt::cast<float>(*b)});
  for (auto& s : opt.state("optim.")) ts.push_back(std::move(s));
  ts.push_back({"meta.epochs", xt::xarray<float>({static_cast<float>(epochs_done)})});
  save_checkpoint(path, ts, tag);
}

template <class T>
int load_model(const std::string& path, Module<T>& model, Optimizer<T>& opt, const std::string& tag) {
  // Load into float staging tensors of the model's shapes, then copy: nothing in the
  // model changes unless load_checkpoint_into accepted the whole file. Parameters and
  // buffers alike: (name, the model's tensor).
  std::vector<std::pair<std::string, ad::Tensor<T>*>> tensors;
  for (auto& [name, p] : model.named_parameters()) tensors.emplace_back(name, &p->value);
  for (auto& [name, b] : model.named_buffers()) tensors.emplace_back(name, b);
  std::vector<std::pair<std::string, xt::xarray<float>*>> expected;
  std::vector<xt::xarray<float>> staging;
  staging.reserve(tensors.size());
  for (auto& [name, t] : tensors) staging.push_back(xt::zeros<float>(t->shape()));
  for (std::size_t i = 0; i < tensors.size(); ++i) expected.emplace_back(tensors[i].first, &staging[i]);
  std::vector<xt::xarray<float>> opt_staging;
  auto opt_refs = opt.state_refs("optim.");
  opt_staging.reserve(opt_refs.size());
  for (auto& [name, t] : opt_refs) opt_staging.push_back(*t);
  for (std::size_t i = 0; i < opt_refs.size(); ++i) expected.emplace_back(opt_refs[i].first, &opt_staging[i]);
  xt::xarray<float> epochs = xt::zeros<float>({1});
  expected.emplace_back("meta.epochs", &epochs);
  load_checkpoint_into(path, expected, tag);
  // The checksum only says the file is the one that was written; the epoch count must
  // also be a whole number a float holds exactly, or the cast below is undefined.
  const float e = epochs(0);
  if (!(e >= 0.0f && e <= 16777216.0f) || e != std::floor(e))
    throw CheckpointError(fmt::format("{}: meta.epochs is {}, not a whole number of epochs in [0, 2^24]", path, e));
  for (std::size_t i = 0; i < tensors.size(); ++i) *tensors[i].second = xt::cast<T>(staging[i]);
  for (std::size_t i = 0; i < opt_refs.size(); ++i) *opt_refs[i].second = opt_staging[i];
  return static_cast<int>(epochs(0));
}

template <class T>
std::size_t step_bytes_per_example(Module<T>& model, const ad::Shape& example_shape) {
  ad::Shape shape{1};
  shape.insert(shape.end(), example_shape.begin(), example_shape.end());
  // The probe's forward must leave the model as it was: batch norm in training mode
  // updates its running statistics.
  std::vector<std::pair<ad::Tensor<T>*, ad::Tensor<T>>> buffers;
  for (auto& [name, b] : model.named_buffers()) buffers.emplace_back(b, *b);
  struct RestoreBuffers {
    std::vector<std::pair<ad::Tensor<T>*, ad::Tensor<T>>>& saved;
    ~RestoreBuffers() {
      for (auto& [b, v] : saved) *b = v;
    }
  } restore{buffers};
  ad::Tape<T> probe;
  model(probe, probe.input(ad::Tensor<T>(xt::zeros<T>(shape))));
  std::size_t bytes = 0;
  for (std::size_t i = 0; i < probe.num_values(); ++i) {
    const ad::Slot<T>& s = probe.slot(ad::Value{static_cast<int32_t>(i)});
    if (s.param) continue;
    bytes += s.data.size() * sizeof(T) * (s.requires_grad ? 2 : 1);  // the value and its gradient
  }
  // What VJPs need saved (max-pool's argmax); an unused `saved` is a 0-d xarray of size 1.
  for (const ad::Node<T>& n : probe.nodes())
    bytes += (n.saved.dimension() ? n.saved.size() * sizeof(T) : 0) + n.saved_index.size() * sizeof(int32_t);
  return bytes;
}

namespace {

// The first number in `path` (e.g. /proc or /sys files), or nullopt.
std::optional<std::size_t> read_number(const char* path) {
  std::ifstream f(path);
  std::size_t v = 0;
  if (f >> v) return v;
  return std::nullopt;
}

}  // namespace

std::size_t available_memory_bytes() {
  std::size_t avail = 0;
  std::ifstream f("/proc/meminfo");
  std::string key, unit;
  std::size_t kb = 0;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") {
      avail = kb * 1024;
      break;
    }
  // A cgroup v2 limit (a container) can be far below what the host has free.
  const auto max = read_number("/sys/fs/cgroup/memory.max");  // "max" when unlimited: no number
  const auto cur = read_number("/sys/fs/cgroup/memory.current");
  if (max && cur) {
    const std::size_t left = *max > *cur ? *max - *cur : 1;  // at the limit: 1, not "unknown"
    avail = avail ? std::min(avail, left) : left;
  }
  return avail;
}

void check_memory(std::size_t bytes, std::size_t budget, const std::string& what) {
  const auto gb = [](std::size_t b) { return static_cast<double>(b) / 1e9; };
  std::string limit;
  if (budget == 0) {
    const std::size_t avail = available_memory_bytes();
    if (avail == 0) return;  // unknown: nothing to check against
    budget = static_cast<std::size_t>(0.8 * static_cast<double>(avail));
    limit = fmt::format("80% of the {:.2f} GB of memory available", gb(avail));
  } else {
    limit = fmt::format("the budget of {:.3f} GB", gb(budget));
  }
  if (bytes > budget) throw std::runtime_error(fmt::format("{} needs about {:.2f} GB, more than {}", what, gb(bytes), limit));
}

#define NN_INSTANTIATE(T)                                                                                      \
  template EpochStats train_epoch<T>(Module<T>&, Optimizer<T>&, BatchIterator&, ad::Tape<T>&, const ProgressFn&,  \
                                     const std::function<double(double)>&, std::source_location);              \
  template EpochStats evaluate<T>(Module<T>&, const Dataset&, std::size_t, ad::Tape<T>&);                     \
  template void save_model<T>(const std::string&, Module<T>&, Optimizer<T>&, int, const std::string&);        \
  template int load_model<T>(const std::string&, Module<T>&, Optimizer<T>&, const std::string&);               \
  template std::size_t step_bytes_per_example<T>(Module<T>&, const ad::Shape&);
NN_INSTANTIATE(float)
NN_INSTANTIATE(double)
#undef NN_INSTANTIATE

}  // namespace nn
