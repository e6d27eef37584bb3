// Training loop parts.
#include "nn/train.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <numeric>
#include <optional>

#include "ops/conv2d_relu_pool.hpp"

namespace nn {

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

NonFiniteLossError::NonFiniteLossError(std::size_t step_, std::size_t first_image, std::size_t images, double loss_)
    : std::runtime_error(fmt::format("the loss is {} at step {} of the epoch (images {} to {} of the epoch): the "
                                     "run diverged; that step changed no parameter",
                                     loss_, step_, first_image + 1, first_image + images)),
      step(step_),
      loss(loss_) {}

template <class T>
EpochStats train_epoch(Module<T>& model, Optimizer<T>& opt, BatchIterator& batches, ad::Tape<T>& tape,
                       const ProgressFn& progress, const std::function<double(double)>& lr_at,
                       std::source_location loc) {
  const auto t0 = std::chrono::steady_clock::now();
  EpochStats s;
  ad::Tensor<T> images;
  std::vector<int> labels;
  double loss_sum = 0;
  std::size_t correct = 0, steps = 0;
  while (batches.next(images, labels)) {
    if (lr_at) opt.set_lr(lr_at(static_cast<double>(s.images) / static_cast<double>(batches.size())));
    tape.reset();
    const Value logits = model(tape, tape.input(images, "images", loc), loc);
    const Value loss = tape.set_label(ad::softmax_cross_entropy(tape, logits, labels, {}, loc), "loss");
    // A NaN or infinite loss stops the run here, before backward and the update, so
    // the model (and any checkpoint saved from it) keeps its last finite state.
    const double step_loss = static_cast<double>(tape.value(loss)());
    if (!std::isfinite(step_loss)) throw NonFiniteLossError(++steps, s.images, labels.size(), step_loss);
    ++steps;
    opt.zero_grad();
    tape.backward(loss);
    opt.step();
    loss_sum += step_loss * static_cast<double>(labels.size());
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
  // The checksum only says the file is the one that was written, not that its values
  // make a model: a NaN weight trains on as NaN, a negative Adam second moment or step
  // count gives NaN updates. Every value is checked before anything is copied.
  for (const auto& [name, t] : expected) {
    const float* v = t->data();
    const std::size_t bad = static_cast<std::size_t>(std::find_if(v, v + t->size(), [](float x) { return !std::isfinite(x); }) - v);
    if (bad < t->size())
      throw CheckpointError(fmt::format("checkpoint {}: tensor \"{}\" holds {} at flat index {}: not a usable model "
                                        "(was it saved from a diverged run?)", path, name, v[bad], bad));
  }
  for (std::size_t i = 0; i < opt_refs.size(); ++i)
    if (const std::string defect = opt.state_defect(i, opt_staging[i]); !defect.empty())
      throw CheckpointError(fmt::format("checkpoint {}: optimizer state \"{}\" {}", path, opt_refs[i].first, defect));
  // The epoch count must also be a whole number a float holds exactly, or the cast
  // below is undefined.
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
  // What VJPs need saved (max-pool's argmax) and the fused op's pixel-major copy of its
  // output; an unused `saved` is a 0-d xarray of size 1.
  for (const ad::Node<T>& n : probe.nodes()) {
    bytes += (n.saved.dimension() ? n.saved.size() * sizeof(T) : 0) + n.saved_index.size() * sizeof(int32_t);
    if (n.op == ad::OpKind::Conv2dReluMaxPool2d) {  // its VJP's dJ/dz, the convolution's output shape
      const ad::Shape zs = ad::conv2d_output_shape(probe.shape(ad::Value{n.inputs[0]}), probe.shape(ad::Value{n.inputs[1]}),
                                                   nullptr, n.attrs.template get<ad::Conv2dReluMaxPool2dAttrs>().conv);
      bytes += std::accumulate(zs.begin(), zs.end(), std::size_t{1}, std::multiplies<>()) * sizeof(T);
    }
  }
  return bytes;
}

CnnFootprint cnn_footprint(const CnnConfig& cfg, std::size_t element_bytes) {
  // The model make_cnn builds, layer by layer, with the ops' own shape rules; per
  // example, what step_bytes_per_example counts on its tape: the input (no gradient),
  // every op's output and its gradient, and max pooling's switches (int32 indices, or
  // the fused op's one-byte codes: ops/conv2d_relu_pool.hpp) and, in float, the fused
  // op's pixel-major copy of its output.
  const ad::Conv2dOptions conv{.padding = {cfg.padding, cfg.padding}, .stride = {cfg.stride, cfg.stride}};
  const ad::Pool2dOptions pool{.window = {cfg.pool_window, cfg.pool_window}, .stride = {cfg.pool_stride, cfg.pool_stride}};
  const bool max_pool = cfg.pool == PoolKind::Max;
  // make_cnn's Sequential records conv -> ReLU -> max pool as one fused op: only its
  // pooled output and gradient are on the tape, and its VJP adds a dJ/dz buffer of the
  // convolution's output shape.
  const bool fused = max_pool && cfg.activation == Activation::Relu;
  ad::Shape s{1, std::size_t(cfg.in_channels), std::size_t(cfg.height), std::size_t(cfg.width)};
  const auto size = [](const ad::Shape& sh) { return std::accumulate(sh.begin(), sh.end(), std::size_t{1}, std::multiplies<>()); };
  CnnFootprint f;
  std::size_t elements = size(s);  // the input
  std::size_t with_grad = 0;       // values that also get a gradient
  std::size_t c_in = std::size_t(cfg.in_channels);
  for (int l = 0; l < 2; ++l) {
    const std::size_t c_out = std::size_t(cfg.channels[l]), k = std::size_t(cfg.kernel);
    s = ad::conv2d_output_shape(s, {c_out, c_in, k, k}, nullptr, conv);
    if (fused) f.step_bytes_per_example += size(s) * element_bytes;  // dJ/dz
    else with_grad += 2 * size(s);  // conv, activation
    s = ad::pool2d_output_shape(max_pool ? "max_pool2d" : "avg_pool2d", s, pool);
    with_grad += size(s);
    if (max_pool) {  // the switches: int32 indices, or one-byte codes four to an int32 (the fused op's)
      const std::size_t b = fused ? ad::conv2d_relu_max_pool2d_switch_bytes({c_out, c_in, k, k}, conv, pool) : 4;
      f.step_bytes_per_example += (size(s) * b + 3) / 4 * 4;
    }
    if (fused)  // the fused op's pixel-major copy of its output (float)
      f.step_bytes_per_example +=
          ad::conv2d_relu_max_pool2d_pixel_copy_elements(s, {c_out, c_in, k, k}, conv, pool, element_bytes) *
          element_bytes;
    f.parameters += c_out * c_in * k * k + c_out;
    c_in = c_out;
  }
  const std::size_t features = size(s);
  with_grad += features + std::size_t(cfg.classes);  // flatten, linear
  f.parameters += features * std::size_t(cfg.classes) + std::size_t(cfg.classes);
  f.step_bytes_per_example += (elements + 2 * with_grad) * element_bytes;
  return f;
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
  template std::size_t step_bytes_per_example<T>(Module<T>&, const ad::Shape&);                             \
  template std::size_t count_correct<T>(const ad::Tensor<T>&, const std::vector<int>&);
NN_INSTANTIATE(float)
NN_INSTANTIATE(double)
#undef NN_INSTANTIATE

}  // namespace nn
