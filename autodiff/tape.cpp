// The tape: slots, node recording, buffer reuse between steps, the reverse loop (run
// whole or one node at a time), gradient hooks and anomaly checks. The per-op
// work of each node is its op's VJP, found through the node's registry entry
// (autodiff/op.hpp).
#include "autodiff/tape.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>

#include "autodiff/custom.hpp"
#include "autodiff/higher_order.hpp"

// gdb loads our pretty-printers (tools/gdb/ad_printers.py) for every binary that links
// the tape: this entry in .debug_gdb_scripts names the script by the relative name CMake
// sets, which gdb looks up in the current directory and then along its source path
// (`directory`), so no path of the build machine is compiled in. gdb runs it once
// `add-auto-load-safe-path` allows the directory; see the README, "Step through it in
// gdb". "MS" + entry size 1: identical entries merge at link time.
#if defined(__ELF__) && defined(AD_GDB_PRINTERS_PATH)
asm(".pushsection \".debug_gdb_scripts\", \"MS\",@progbits,1\n"
    ".byte 1\n"  // 1 = a Python script file name follows
    ".asciz \"" AD_GDB_PRINTERS_PATH "\"\n"
    ".popsection\n");
#endif

namespace ad {

namespace {

// Counts of non-finite elements in a tensor and where the first one is.
struct NonFinite {
  std::size_t nan = 0, inf = 0, first = 0;
  double first_value = 0;
  bool any() const { return nan + inf > 0; }
};

template <class T>
NonFinite scan_non_finite(const Tensor<T>& t) {
  NonFinite r;
  const T* p = t.data();
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (std::isfinite(p[i])) continue;
    if (!r.any()) r.first = i, r.first_value = static_cast<double>(p[i]);
    if (std::isnan(p[i])) ++r.nan;
    else ++r.inf;
  }
  return r;
}

// "[0,3,1,2]": the row-major multi-index of flat element i of a tensor of shape s.
template <class S>
std::string index_str(const S& s, std::size_t i) {
  std::vector<std::size_t> idx(s.size());
  for (std::size_t d = s.size(); d-- > 0;) {
    idx[d] = s[d] ? i % s[d] : 0;
    i = s[d] ? i / s[d] : 0;
  }
  return fmt::format("[{}]", fmt::join(idx, ","));
}

// `#7 max_pool2d "conv1.pool" (recorded at model.cpp:42)`
template <class T>
std::string describe(const Tape<T>& tape, const Node<T>& node, std::size_t index) {
  return fmt::format("node #{} {}{} (recorded at {}:{})", index, node_op_name(tape, node),
                     node.label.empty() ? std::string() : fmt::format(" \"{}\"", node.label), node.where.basename(),
                     node.where.line);
}

template <class T>
AnomalyError anomaly(const Tape<T>& tape, const Node<T>& node, std::size_t index, std::string what, bool backward) {
  AnomalyError e(std::move(what));
  e.node = static_cast<int>(index);
  e.op = node_op_name(tape, node);
  e.label = node.label;
  e.where = fmt::format("{}:{}", node.where.basename(), node.where.line);
  e.in_backward = backward;
  return e;
}

}  // namespace

template <class T>
std::string node_op_name(const Tape<T>& tape, const Node<T>& node) {
  if (node.op == OpKind::Custom && node.custom >= 0 && static_cast<std::size_t>(node.custom) < tape.num_custom_ops())
    return tape.custom_op(node.custom).name();
  return std::string(op_name(node.op));
}

namespace {
// One counter for the tapes of every element type, so that no two recordings in the
// process (a Tape<float>'s and a Tape<double>'s included) share a number.
std::atomic<uint32_t> g_recordings{0};
}  // namespace

template <class T>
uint32_t Tape<T>::next_recording() {
  uint32_t r = 0;
  while (r == 0) r = g_recordings.fetch_add(1, std::memory_order_relaxed) + 1;  // 0 is "raw id"
  return r;
}

template <class T>
const Slot<T>& Tape<T>::slot(Value v) const {
  if (v.recording != 0 && v.recording != recording_)
    throw TapeError(fmt::format("tape: value #{} belongs to another recording (number {}; this tape's is {}): "
                                "it was recorded before tape.reset() or on another tape",
                                v.id, v.recording, recording_));
  if (v.id < 0 || static_cast<std::size_t>(v.id) >= slots_.size())
    throw TapeError(fmt::format("tape: value #{} is not on this tape (it holds {} values; was the "
                                "tape reset since the value was made?)",
                                v.id, slots_.size()));
  return slots_[static_cast<std::size_t>(v.id)];
}

template <class T>
Slot<T>& Tape<T>::slot_mut(Value v) {
  return const_cast<Slot<T>&>(static_cast<const Tape&>(*this).slot(v));
}

template <class T>
Parameter<T>& Tape<T>::checked_param(const Slot<T>& s, int32_t id) const {
  Parameter<T>& p = *s.param;
  if (p.value.shape() != s.param_shape)
    throw TapeError(fmt::format("tape: parameter \"{}\" (value #{}) was reshaped from {} to {} after tape.param() "
                                "recorded it; the ops on the tape were sized for {}. Reshape a parameter only "
                                "between steps (before tape.param(), after backward)",
                                p.name, id, shape_str(s.param_shape), shape_str(p.value.shape()),
                                shape_str(s.param_shape)));
  return p;
}

template <class T>
const Tensor<T>& Tape<T>::value(Value v) const {
  const Slot<T>& s = slot(v);
  return s.param ? checked_param(s, v.id).value : s.data;
}

template <class T>
Tensor<T>& Tape<T>::mutable_value(Value v) {
  Slot<T>& s = slot_mut(v);
  if (s.param) throw TapeError(fmt::format("tape: value #{} is a parameter; ops never write it", v.id));
  return s.data;
}

template <class T>
const Tensor<T>& Tape<T>::grad(Value v) const {
  const Slot<T>& s = slot(v);
  if (!s.requires_grad)
    throw TapeError(fmt::format("tape: value #{} has no gradient: no parameter flows into it", v.id));
  if (s.param) return s.param->grad;
  if (!s.grad_ready)
    throw TapeError(fmt::format("tape: value #{} has no gradient yet: run backward() on a value that "
                                "depends on it",
                                v.id));
  return s.grad;
}

template <class T>
bool Tape<T>::any_requires_grad(std::initializer_list<Value> vs) const {
  if (!grad_enabled_) return false;
  for (Value v : vs)
    if (v.valid() && slot(v).requires_grad) return true;
  return false;
}

template <class T>
Value Tape<T>::new_value(const Shape& shape, bool requires_grad) {
  if (anomaly_) check_forward();  // the previous op has finished writing its result
  Slot<T>& s = slots_.emplace_back();
  if (next_data_ < spare_data_.size()) s.data = std::move(spare_data_[next_data_++]);
  if (next_grad_ < spare_grad_.size()) s.grad = std::move(spare_grad_[next_grad_++]);
  s.data.resize(shape);  // no reallocation when the size matches last step's
  s.requires_grad = requires_grad && grad_enabled_;
  return Value{static_cast<int32_t>(slots_.size() - 1), recording_};
}

template <class T>
Value Tape<T>::input(const Tensor<T>& x, std::string label, std::source_location loc) {
  Value v = new_value(to_shape(x.shape()), false);
  parallel_copy(x.data(), x.size(), slots_.back().data.data());
  if (Node<T>* n = record(OpKind::Input, {}, v, Attrs{}, loc)) n->label = std::move(label);
  return v;
}

template <class T>
Value Tape<T>::param(Parameter<T>& p, std::source_location loc) {
  Slot<T>& s = slots_.emplace_back();
  s.param = &p;
  s.param_shape = p.value.shape();  // an svector: no allocation up to rank 4
  s.requires_grad = grad_enabled_;
  Value v{static_cast<int32_t>(slots_.size() - 1), recording_};
  if (Node<T>* n = record(OpKind::Parameter, {}, v, Attrs{}, loc)) n->label = p.name;
  return v;
}

template <class T>
Node<T>* Tape<T>::record(OpId op, std::initializer_list<Value> inputs, Value out, const Attrs& attrs,
                         const std::source_location& loc) {
  return record(op, std::span<const Value>(inputs.begin(), inputs.size()), out, attrs, loc);
}

template <class T>
Node<T>* Tape<T>::record(OpId op, std::span<const Value> inputs, Value out, const Attrs& attrs,
                         const std::source_location& loc) {
  if (!grad_enabled_) return nullptr;
  if (anomaly_) check_forward();
  Node<T>& n = nodes_.emplace_back();
  n.op = op;
  if (next_inputs_ < spare_inputs_.size()) n.inputs = std::move(spare_inputs_[next_inputs_++]);
  n.inputs.clear();
  for (Value v : inputs) n.inputs.push_back(v.id);
  n.output = out.id;
  n.attrs = attrs;
  n.where = SourceLoc::from(loc);
  n.grad_of = grad_of_;
  if (next_saved_ < spare_saved_.size()) n.saved = std::move(spare_saved_[next_saved_++]);
  if (next_index_ < spare_index_.size()) n.saved_index = std::move(spare_index_[next_index_++]);
  n.saved_index.clear();
  slot_mut(out).producer = static_cast<int32_t>(nodes_.size() - 1);
  return &n;
}

template <class T>
int32_t* Tape<T>::saved_index_for_overwrite(Node<T>& node, std::size_t n) {
  const std::less<const Node<T>*> before;
  if (before(&node, nodes_.data()) || !before(&node, nodes_.data() + nodes_.size()))
    throw std::logic_error("Tape::saved_index_for_overwrite: the node is not on this tape");
  const std::size_t i = static_cast<std::size_t>(&node - nodes_.data());
  if (!overwrite_nodes_.empty() && overwrite_nodes_.back() > i)
    throw std::logic_error("Tape::saved_index_for_overwrite: call it for the node just recorded");
  if (overwrite_nodes_.empty() || overwrite_nodes_.back() != i) {
    if (next_overwrite_ < spare_overwrite_.size() && node.saved_index.empty())
      node.saved_index = std::move(spare_overwrite_[next_overwrite_++]);
    overwrite_nodes_.push_back(i);
  }
  node.saved_index.resize(n);  // a no-op when the buffer has this size from the step before
#ifndef NDEBUG
  std::fill(node.saved_index.begin(), node.saved_index.end(), std::numeric_limits<int32_t>::max());
#endif
  return node.saved_index.data();
}

template <class T>
Value Tape<T>::set_label(Value v, std::string label) {
  const Slot<T>& s = slot(v);
  if (s.producer >= 0) nodes_[static_cast<std::size_t>(s.producer)].label = std::move(label);
  return v;
}

template <class T>
void Tape<T>::reset() {
  // Keep every buffer, in recording order, so that the next step with the same
  // sequence of ops gets back buffers of exactly the sizes it needs.
  spare_data_.clear();
  spare_grad_.clear();
  spare_saved_.clear();
  spare_index_.clear();
  spare_inputs_.clear();
  spare_overwrite_.clear();
  for (Slot<T>& s : slots_) {
    if (s.param) continue;
    spare_data_.push_back(std::move(s.data));
    spare_grad_.push_back(std::move(s.grad));
  }
  std::size_t k = 0;  // into overwrite_nodes_
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    Node<T>& n = nodes_[i];
    spare_saved_.push_back(std::move(n.saved));
    if (k < overwrite_nodes_.size() && overwrite_nodes_[k] == i) {
      spare_overwrite_.push_back(std::move(n.saved_index));  // not cleared: see saved_index_for_overwrite
      spare_index_.emplace_back();                           // keeps the positions of the others
      ++k;
    } else {
      spare_index_.push_back(std::move(n.saved_index));
    }
    spare_inputs_.push_back(std::move(n.inputs));
  }
  overwrite_nodes_.clear();
  next_data_ = next_grad_ = next_saved_ = next_index_ = next_inputs_ = next_overwrite_ = 0;
  slots_.clear();
  nodes_.clear();
  consumed_ = false;
  cursor_ = -1;
  checked_ = 0;
  hooks_.clear();
  custom_ops_.clear();
  custom_names_.clear();
  next_custom_saved_ = 0;  // the lists and their buffers stay for the next step
  grad_of_ = -1;
  graph_grads_.clear();
  recording_ = next_recording();
}

template <class T>
Tensor<T>* Tape<T>::grad_buffer(Value v) {
  if (!v.valid()) return nullptr;
  Slot<T>& s = slot_mut(v);
  if (!s.requires_grad) return nullptr;
  if (s.param) {
    Parameter<T>& p = checked_param(s, v.id);
    if (p.grad.shape() != p.value.shape()) p.zero_grad();
    s.grad_ready = true;
    return &p.grad;
  }
  if (!s.grad_ready) {
    s.grad.resize(s.data.shape());
    zero_fill(s.grad);
    s.grad_ready = true;
  }
  return &s.grad;
}

template <class T>
Tensor<T>* Tape<T>::grad_buffer_for_overwrite(Value v, bool* overwrite) {
  *overwrite = false;
  if (!v.valid()) return nullptr;
  Slot<T>& s = slot_mut(v);
  if (!s.requires_grad) return nullptr;
  if (s.param || s.grad_ready) return grad_buffer(v);
  s.grad.resize(s.data.shape());
#ifndef NDEBUG
  std::fill(s.grad.begin(), s.grad.end(), std::numeric_limits<T>::quiet_NaN());
#endif
  s.grad_ready = true;
  *overwrite = true;
  return &s.grad;
}

template <class T>
void Tape<T>::backward(Value loss, BackwardOptions opt) {
  if (opt.create_graph) {
    const Tensor<T>& y = value(loss);
    if (y.size() != 1)
      throw TapeError(fmt::format("backward: value #{} has shape {}; backward(v) needs a scalar, pass a "
                                  "seed gradient for other shapes",
                                  loss.id, shape_str(y.shape())));
    return backward_create_graph(loss, xt::ones<T>(y.shape()));
  }
  backward_begin(loss, opt);
  while (backward_step() >= 0) {
  }
}

template <class T>
void Tape<T>::backward(Value out, const Tensor<T>& seed, BackwardOptions opt) {
  if (opt.create_graph) return backward_create_graph(out, seed);
  backward_begin(out, seed, opt);
  while (backward_step() >= 0) {
  }
}

// backward with create_graph: the reverse pass recorded on the tape by ad::grad, w.r.t.
// every value that needs a gradient. Parameters get the numbers added into their grad
// (as a plain backward does); every value's gradient is readable with grad() and, as a
// Value, with grad_value().
template <class T>
void Tape<T>::backward_create_graph(Value out, const Tensor<T>& seed) {
  const Tensor<T>& y = value(out);
  if (seed.shape() != y.shape())
    throw ShapeError(fmt::format("backward: seed gradient {} and value #{} {} disagree in shape (they "
                                 "must be equal)",
                                 shape_str(seed.shape()), out.id, shape_str(y.shape())));
  if (!slot(out).requires_grad)
    throw TapeError(fmt::format("backward: value #{} does not depend on any parameter (or was made "
                                "under NoGradGuard); there is nothing to differentiate",
                                out.id));
  const Value seed_value = input(seed, "backward seed");
  std::vector<Value> grads = detail::record_backward(*this, {out}, {seed_value}, true);
  for (Slot<T>& s : slots_) s.grad_ready = false;
  graph_grads_.assign(grads.size(), -1);
  for (std::size_t i = 0; i < grads.size(); ++i) {
    if (!grads[i].valid()) continue;
    graph_grads_[i] = grads[i].id;
    Slot<T>& s = slots_[i];
    const Tensor<T>& g = value(grads[i]);
    if (s.param) {
      Parameter<T>& p = checked_param(s, static_cast<int32_t>(i));
      if (p.grad.shape() != p.value.shape()) p.zero_grad();
      p.grad += g;
    } else {
      s.grad = g;
    }
    s.grad_ready = true;
  }
}

template <class T>
Value Tape<T>::grad_value(Value v) const {
  slot(v);
  const auto i = static_cast<std::size_t>(v.id);
  if (i >= graph_grads_.size() || graph_grads_[i] < 0)
    throw TapeError(fmt::format("tape: value #{} has no recorded gradient: run backward(out, seed, "
                                "{{.create_graph = true}}) on a value that depends on it",
                                v.id));
  return Value{graph_grads_[i], recording_};
}

template <class T>
void Tape<T>::backward_begin(Value loss, BackwardOptions opt) {
  const Tensor<T>& y = value(loss);
  if (y.size() != 1)
    throw TapeError(fmt::format("backward: value #{} has shape {}; backward(v) needs a scalar, pass a "
                                "seed gradient for other shapes",
                                loss.id, shape_str(y.shape())));
  Tensor<T> seed = xt::ones<T>(y.shape());
  start_backward(loss, seed, opt);
}

template <class T>
void Tape<T>::backward_begin(Value out, const Tensor<T>& seed, BackwardOptions opt) {
  const Tensor<T>& y = value(out);
  if (seed.shape() != y.shape())
    throw ShapeError(fmt::format("backward: seed gradient {} and value #{} {} disagree in shape (they "
                                 "must be equal)",
                                 shape_str(seed.shape()), out.id, shape_str(y.shape())));
  start_backward(out, seed, opt);
}

template <class T>
void Tape<T>::start_backward(Value out, const Tensor<T>& seed, BackwardOptions opt) {
  if (consumed_)
    throw TapeError(
        "backward: this tape was already used by a backward() without retain_graph; running it "
        "again would add the same gradients twice. Pass BackwardOptions{.retain_graph = true} to "
        "the first call, or reset() and record a new step");
  if (!slot(out).requires_grad)
    throw TapeError(fmt::format("backward: value #{} does not depend on any parameter (or was made "
                                "under NoGradGuard); there is nothing to differentiate",
                                out.id));
  if (anomaly_) {
    check_forward();
    if (const NonFinite bad = scan_non_finite(seed); bad.any()) {
      AnomalyError e(fmt::format("anomaly: the seed gradient of backward holds {} NaN and {} infinite values; "
                                 "the first at {} = {}",
                                 bad.nan, bad.inf, index_str(seed.shape(), bad.first), bad.first_value));
      e.in_backward = true;
      throw e;
    }
  }
  // A parameter reshaped since the forward would be read out of bounds by the VJPs
  // sized for its old shape: refuse before any gradient is touched.
  for (std::size_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].param) checked_param(slots_[i], static_cast<int32_t>(i));
  // From here on the pass adds into gradients: running it again needs retain_graph,
  // even if this one is abandoned half-way through (stepping) or stopped by an error.
  consumed_ = !opt.retain_graph;
  for (Slot<T>& s : slots_) s.grad_ready = false;
  Tensor<T>* g = grad_buffer(out);
  for (std::size_t i = 0; i < seed.size(); ++i) g->data()[i] += seed.data()[i];
  advance_cursor(static_cast<int>(nodes_.size()));
}

template <class T>
void Tape<T>::advance_cursor(int from) {
  // A node has work if its output needs a gradient and received one in this pass.
  // Every consumer of a value comes after its producer, so by the time the loop
  // reaches a node its output's gradient is complete.
  int i = from - 1;
  for (; i >= 0; --i) {
    const Slot<T>& o = slots_[static_cast<std::size_t>(nodes_[static_cast<std::size_t>(i)].output)];
    if (o.requires_grad && o.grad_ready) break;
  }
  cursor_ = i;
}

// The one reverse loop: backward() calls this until it returns -1.
template <class T>
int Tape<T>::backward_step() {
  const int i = cursor_;
  if (i < 0) return -1;
  try {
    run_node(i);
  } catch (...) {
    cursor_ = -1;  // the pass cannot resume past a failed node
    throw;
  }
  advance_cursor(i);
  return i;
}

template <class T>
void Tape<T>::run_node(int index) {
  const Node<T>& node = nodes_[static_cast<std::size_t>(index)];
  if (!hooks_.empty()) run_hooks(node);
  // The op's VJP, through its registry entry: e.g. conv2d_node_vjp (ops/conv2d.cpp),
  // which calls conv2d_vjp with the node's saved data.
  if (!node.op->leaf) node.op->template vjp<T>()(this, node);
  if (anomaly_) check_backward(node, index);
}

template <class T>
void Tape<T>::add_hook(Value v, GradHook hook) {
  const Slot<T>& s = slot(v);
  if (!s.requires_grad)
    throw TapeError(fmt::format("add_hook: value #{} has no gradient (no parameter flows into it), so its "
                                "hook would never run",
                                v.id));
  if (!hook) throw TapeError(fmt::format("add_hook: the hook for value #{} is empty", v.id));
  hooks_.emplace_back(v.id, std::move(hook));
}

template <class T>
void Tape<T>::run_hooks(const Node<T>& node) {
  Slot<T>& s = slots_[static_cast<std::size_t>(node.output)];
  Tensor<T>& g = s.param ? s.param->grad : s.grad;
  for (auto& [id, hook] : hooks_) {
    if (id != node.output) continue;
    const Shape before = to_shape(g.shape());
    hook(g);
    if (to_shape(g.shape()) != before)
      throw TapeError(fmt::format("gradient hook on value #{}: the hook changed the gradient's shape from {} to "
                                  "{}; it must keep the value's shape",
                                  node.output, shape_str(before), shape_str(g.shape())));
    if (anomaly_)
      if (const NonFinite bad = scan_non_finite(g); bad.any()) {
        const auto index = static_cast<std::size_t>(s.producer);
        throw anomaly(*this, node, index,
                      fmt::format("anomaly: backward: the gradient hook on value #{} (the output of {}) left {} NaN "
                                  "and {} infinite values in its gradient {}; the first at {} = {}",
                                  node.output, describe(*this, node, index), bad.nan, bad.inf, shape_str(g.shape()),
                                  index_str(g.shape(), bad.first), bad.first_value),
                      true);
      }
  }
}

template <class T>
int32_t Tape<T>::add_custom_op(std::shared_ptr<const CustomOp> op) {
  for (std::size_t i = 0; i < custom_ops_.size(); ++i)
    if (custom_ops_[i] == op) return static_cast<int32_t>(i);
  custom_names_.push_back(op->name());
  custom_ops_.push_back(std::move(op));
  return static_cast<int32_t>(custom_ops_.size() - 1);
}

template <class T>
const CustomOp& Tape<T>::custom_op(int32_t index) const {
  if (index < 0 || static_cast<std::size_t>(index) >= custom_ops_.size())
    throw TapeError(fmt::format("tape: custom op {} is not on this tape (it holds {})", index, custom_ops_.size()));
  return *custom_ops_[static_cast<std::size_t>(index)];
}

template <class T>
std::vector<Tensor<T>>& Tape<T>::new_custom_saved(int32_t* index) {
  if (next_custom_saved_ == custom_saved_.size()) custom_saved_.emplace_back();
  *index = static_cast<int32_t>(next_custom_saved_);
  return custom_saved_[next_custom_saved_++];
}

template <class T>
const std::vector<Tensor<T>>& Tape<T>::custom_saved(int32_t index) const {
  if (index < 0 || static_cast<std::size_t>(index) >= next_custom_saved_)
    throw TapeError(fmt::format("tape: saved tensors {} are not on this tape (it holds {})", index, next_custom_saved_));
  return custom_saved_[static_cast<std::size_t>(index)];
}

template <class T>
void Tape<T>::check_forward() {
  for (; checked_ < nodes_.size(); ++checked_) {
    const Node<T>& node = nodes_[checked_];
    const Tensor<T>& y = value(Value{node.output});
    const NonFinite bad = scan_non_finite(y);
    if (!bad.any()) continue;
    const std::size_t index = checked_++;
    const char* what = node.op == OpKind::Input       ? "holds"
                       : node.op == OpKind::Parameter ? "(a parameter) holds"
                                                      : "produced";
    throw anomaly(*this, node, index,
                  fmt::format("anomaly: forward: {} {} {} NaN and {} infinite values in its output {}; the first "
                              "at {} = {}",
                              describe(*this, node, index), what, bad.nan, bad.inf, shape_str(y.shape()),
                              index_str(y.shape(), bad.first), bad.first_value),
                  false);
  }
}

template <class T>
void Tape<T>::check_backward(const Node<T>& node, int index) {
  for (std::size_t k = 0; k < node.inputs.size(); ++k) {
    const int32_t id = node.inputs[k];
    if (id < 0) continue;
    const Slot<T>& s = slots_[static_cast<std::size_t>(id)];
    if (!s.requires_grad) continue;
    const Tensor<T>& g = s.param ? s.param->grad : s.grad;
    const NonFinite bad = scan_non_finite(g);
    if (!bad.any()) continue;
    throw anomaly(*this, node, static_cast<std::size_t>(index),
                  fmt::format("anomaly: backward: the VJP of {} wrote {} NaN and {} infinite values into the "
                              "gradient of its input {} (value #{}{}, shape {}); the first at {} = {}",
                              describe(*this, node, static_cast<std::size_t>(index)), bad.nan, bad.inf, k, id,
                              s.param ? fmt::format(", parameter \"{}\"", s.param->name) : std::string(),
                              shape_str(g.shape()), index_str(g.shape(), bad.first), bad.first_value),
                  true);
  }
}

template class Tape<float>;
template class Tape<double>;
template std::string node_op_name<float>(const Tape<float>&, const Node<float>&);
template std::string node_op_name<double>(const Tape<double>&, const Node<double>&);

}  // namespace ad
