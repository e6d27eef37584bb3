// The tape: a Wengert list of plain nodes, and reverse-mode backward over it.
//
// A forward pass appends one Node per op. Values (inputs, parameters, op results)
// live in slots on the tape and are named by light `Value` handles. `backward(loss)`
// walks the nodes once, last to first, and calls each node's VJP through the op's
// registry entry (autodiff/op.hpp: node.op->vjp), a table of named functions declared
// in the op's own file, so `break conv2d_vjp` and `p tape.nodes()[7]` work in gdb.
// The same reverse loop can be run one node at a time (backward_begin/backward_step),
// with NaN/Inf checks (set_anomaly_mode) and gradient hooks (add_hook).
//
// The VJP contract, stated once for every op: given grad_out = dJ/d(output) of the
// output's shape, a VJP ADDS (+=) dJ/d(input) into each non-null grad_<input>
// buffer, which already has the input's shape. It never overwrites: a value used by
// two ops gets both contributions. A null buffer means "no gradient wanted" and the
// VJP skips that work.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <source_location>
#include <string>
#include <string_view>
#include <vector>

#include "autodiff/op.hpp"
#include "autodiff/tensor.hpp"

namespace ad {

// Where an op was recorded (file:line), captured by std::source_location.
struct SourceLoc {
  const char* file = "";
  uint32_t line = 0;
  const char* function = "";
  static SourceLoc from(const std::source_location& l) {
    return {l.file_name(), l.line(), l.function_name()};
  }
  // "model.cpp" for "/home/me/src/model.cpp".
  std::string_view basename() const {
    const std::string_view f(file);
    const std::size_t slash = f.find_last_of('/');
    return slash == std::string_view::npos ? f : f.substr(slash + 1);
  }
};

// One recorded op. Plain data: print it, copy it, look at it in a debugger.
template <class T>
struct Node {
  OpId op = OpKind::Input;       // the op's registry entry (autodiff/op.hpp): p *node.op
  std::vector<int32_t> inputs;   // value ids, in the op's order; -1 = an absent optional input
  int32_t output = -1;           // value id of the result
  Attrs attrs;                   // the op's attribute struct, named by attrs.type
  Tensor<T> saved;                   // extra tensor saved for backward (softmax probabilities), or for the
                                     // next op (conv2d_relu_max_pool2d: its output pixel-major)
  std::vector<int32_t> saved_index;  // integer data saved for backward (max-pool switches, labels)
  std::string label;                 // optional, e.g. "conv1.pool"
  SourceLoc where;                   // call site of the op
  int32_t custom = -1;               // OpKind::Custom: index into Tape::custom_ops()
  int32_t custom_saved = -1;         // OpKind::Custom: index into Tape::custom_saved(), what its forward saved
  // Recorded by a backward with create_graph (autodiff/higher_order.hpp): the index of
  // the forward node whose VJP this node is part of; -1 for a forward node.
  int32_t grad_of = -1;

  // The inputs present (absent optional ones, id -1, not counted).
  int num_inputs() const {
    int n = 0;
    for (int32_t id : inputs) n += id >= 0;
    return n;
  }
};

// A trainable tensor that outlives any one tape. backward() accumulates into
// `grad` (same shape as `value`); call zero_grad() between steps.
template <class T>
struct Parameter {
  std::string name;
  Tensor<T> value;
  Tensor<T> grad;

  Parameter() = default;
  Parameter(std::string n, Tensor<T> v) : name(std::move(n)), value(std::move(v)) { zero_grad(); }
  void zero_grad() {
    grad.resize(value.shape());
    grad.fill(T(0));
  }
};

// One value on the tape.
template <class T>
struct Slot {
  Tensor<T> data;                // the value (unused for parameters: see param)
  Tensor<T> grad;                // dJ/d(value) during backward (unused for parameters)
  Parameter<T>* param = nullptr; // set for parameter leaves: value and grad live there
  // A parameter's shape when tape.param() recorded it: ops and their VJPs were sized by
  // it, so a value reshaped since is refused (TapeError) rather than read out of bounds.
  typename Tensor<T>::shape_type param_shape;
  int32_t producer = -1;         // index of the node that produced it; -1 for leaves
  bool requires_grad = false;    // some parameter upstream: backward must reach it
  bool grad_ready = false;       // this backward has written a gradient for it
};

struct BackwardOptions {
  // Keep the tape usable for another backward(). Without it a second call throws
  // instead of silently adding the same gradients twice.
  bool retain_graph = false;
  // Record the backward itself as differentiable ops on this tape (higher-order
  // gradients, autodiff/higher_order.hpp): each parameter's gradient is then also a
  // Value (grad_value), and tape.grad() reads what was recorded. Implies retain_graph.
  // Gradient hooks and anomaly checks of the reverse loop do not run in this mode.
  bool create_graph = false;
};

template <class T>
class Tape {
 public:
  Tape() = default;
  Tape(const Tape&) = delete;  // parameters and slots point into each other
  Tape& operator=(const Tape&) = delete;

  // A constant leaf (input image, target): copied into a reused slot, no gradient.
  Value input(const Tensor<T>& x, std::string label = {},
              std::source_location loc = std::source_location::current());
  // A parameter leaf: the value is read from `p`, the gradient accumulates into p.grad.
  // `p` must outlive the tape's use of it, and keep its shape: reading a parameter
  // whose value was reshaped since param() (by an op, backward or value()) throws
  // TapeError. Changing its values in place (an optimizer step) is allowed.
  Value param(Parameter<T>& p, std::source_location loc = std::source_location::current());

  const Tensor<T>& value(Value v) const;
  // dJ/dv after backward(). Throws if v needs no gradient or backward did not reach it.
  const Tensor<T>& grad(Value v) const;
  bool requires_grad(Value v) const { return slot(v).requires_grad; }
  Shape shape(Value v) const { return to_shape(value(v).shape()); }

  // After a backward with create_graph: dJ/dv as a Value on this tape (differentiable
  // again). Throws if that backward gave v no gradient.
  Value grad_value(Value v) const;

  // Names the node that produced v (shown when the tape is printed). Returns v.
  Value set_label(Value v, std::string label);

  // Reverse pass from a scalar (shape () or size 1) value, seeded with 1.
  void backward(Value loss, BackwardOptions opt = {});
  // Reverse pass seeded with dJ/d(out) = seed (same shape as out).
  void backward(Value out, const Tensor<T>& seed, BackwardOptions opt = {});

  // The same reverse pass, one node at a time: backward_begin seeds it (same checks
  // and options as backward), each backward_step runs the next node that has work
  // (its output needs a gradient and received one) and returns that node's index,
  // or -1 once the pass is complete. Between steps every gradient written so far is
  // readable with grad(). backward() is backward_begin plus steps until done.
  void backward_begin(Value loss, BackwardOptions opt = {});
  void backward_begin(Value out, const Tensor<T>& seed, BackwardOptions opt = {});
  int backward_step();
  // Index of the node the next backward_step will run; -1 when there is none.
  int backward_next() const { return cursor_; }
  bool backward_done() const { return cursor_ < 0; }

  // Anomaly mode: every forward result and every gradient a VJP writes is checked
  // for NaN and infinities; the first one throws AnomalyError naming the node (index,
  // op, label, call site). A forward result is checked as soon as the next op starts
  // recording (ops may fill their result after recording it), or by backward_begin.
  // Off by default; when off it costs one branch per node.
  void set_anomaly_mode(bool on) { anomaly_ = on; }
  bool anomaly_mode() const { return anomaly_; }
  // Checks the forward results not yet checked now (anomaly mode only).
  void check_anomalies() { if (anomaly_) check_forward(); }

  // A gradient hook on v: during backward, once dJ/dv is complete (every consumer of
  // v has run its VJP, just before v's producer runs its own), hook(grad) is called
  // and may read or overwrite grad in place (keeping its shape); what it leaves is
  // what flows upstream. For a parameter, grad is Parameter::grad, i.e. including
  // what earlier backward passes accumulated since zero_grad(). Hooks are cleared by
  // reset(). Not called for a value backward does not reach.
  using GradHook = std::function<void(Tensor<T>& grad)>;
  void add_hook(Value v, GradHook hook);

  // User-defined ops (autodiff/custom.hpp) recorded on this tape; Node::custom indexes
  // this list. add_custom_op returns the index of `op`, registering it once.
  int32_t add_custom_op(std::shared_ptr<const CustomOp> op);
  const CustomOp& custom_op(int32_t index) const;
  std::size_t num_custom_ops() const { return custom_ops_.size(); }
  const std::vector<std::shared_ptr<const CustomOp>>& custom_ops() const { return custom_ops_; }
  // The tensors custom nodes saved for their VJPs (CustomSaved): new_custom_saved hands
  // out the next list (reusing the previous step's buffers) and its index, which the node
  // keeps in Node::custom_saved.
  std::vector<Tensor<T>>& new_custom_saved(int32_t* index);
  const std::vector<Tensor<T>>& custom_saved(int32_t index) const;

  // Forget every node and value but keep their buffers, so the next step with the
  // same shapes allocates nothing. Parameters are untouched.
  void reset();

  // While false (see NoGradGuard), ops compute values but record no nodes.
  bool grad_enabled() const { return grad_enabled_; }
  void set_grad_enabled(bool on) { grad_enabled_ = on; }

  const std::vector<Node<T>>& nodes() const { return nodes_; }
  std::size_t num_values() const { return slots_.size(); }
  // The number of the current recording (see Value); changes at every reset().
  uint32_t recording() const { return recording_; }
  const Slot<T>& slot(Value v) const;

  // ---- for op implementations (ops/*.cpp) ----

  // A fresh result slot of the given shape (contents unspecified), reusing a
  // buffer from the previous step when there is one.
  Value new_value(const Shape& shape, bool requires_grad);
  Tensor<T>& mutable_value(Value v);
  bool any_requires_grad(std::initializer_list<Value> vs) const;
  // Appends a node producing `out` and returns it, or nullptr when nothing is recorded
  // (no-grad mode). Saved buffers in the node are recycled from the previous step.
  // `inputs` in the op's order, Value{} for an absent optional input.
  Node<T>* record(OpId op, std::initializer_list<Value> inputs, Value out, const Attrs& attrs,
                  const std::source_location& loc);
  Node<T>* record(OpId op, std::span<const Value> inputs, Value out, const Attrs& attrs,
                  const std::source_location& loc);
  // node.saved_index sized to n entries for an op whose forward then writes every one
  // (the max-pool switches): unlike resize() after record(), which hands out a cleared
  // buffer, it does not zero them. The buffer is the one this node position had the step
  // before, so with the same shapes it is a no-op (the ref-CNN's two pools: 1.2 MB
  // zeroed per step, on one thread, before this). Debug builds fill it with INT32_MAX,
  // so an entry the op forgets to write is an out-of-range index, not a stale one.
  int32_t* saved_index_for_overwrite(Node<T>& node, std::size_t n);
  // The gradient buffer of v for the current backward (zeroed on first use), or
  // nullptr if v needs no gradient. Parameters hand out their own grad.
  Tensor<T>* grad_buffer(Value v);
  // grad_buffer for an op that can write its contribution instead of adding it: where
  // this is the first contribution to v's gradient in this backward (not a parameter's),
  // *overwrite comes back true and the contents are unspecified (NaN in Debug builds):
  // the op must then write every element. Otherwise it is grad_buffer(v), to add into.
  // Saves zeroing a buffer that is about to be written in full (three per ref-CNN step).
  Tensor<T>* grad_buffer_for_overwrite(Value v, bool* overwrite);
  // For the registry's VJP adapters (OpDef::vjp_*): the gradient of node's output, the
  // value of its input k, and the gradient buffer of input k (nullptr when input k is
  // absent or needs no gradient).
  const Tensor<T>& grad_out(const Node<T>& node) const { return slots_[static_cast<std::size_t>(node.output)].grad; }
  const Tensor<T>& input_value(const Node<T>& node, std::size_t k) const { return value(Value{node.inputs.at(k)}); }
  Tensor<T>* input_grad(const Node<T>& node, std::size_t k) {
    return k < node.inputs.size() ? grad_buffer(Value{node.inputs[k]}) : nullptr;
  }
  // input_grad through grad_buffer_for_overwrite, for a VJP that writes input k's
  // gradient before it touches any other input's; never an overwrite when input k is
  // also another input of the node (both gradients go into one buffer).
  Tensor<T>* input_grad_for_overwrite(const Node<T>& node, std::size_t k, bool* overwrite) {
    *overwrite = false;
    if (k >= node.inputs.size()) return nullptr;
    for (std::size_t j = 0; j < node.inputs.size(); ++j)
      if (j != k && node.inputs[j] == node.inputs[k]) return grad_buffer(Value{node.inputs[k]});
    return grad_buffer_for_overwrite(Value{node.inputs[k]}, overwrite);
  }
  // For ad::grad (autodiff/higher_order.cpp): nodes recorded from now on are marked as
  // part of the VJP of forward node `node` (Node::grad_of; -1: ordinary nodes again).
  void set_grad_of(int32_t node) { grad_of_ = node; }
  int32_t grad_of() const { return grad_of_; }
  // A handle of the current recording to slot id (for walking nodes in ad::grad).
  Value handle(int32_t id) const { return Value{id, recording_}; }

 private:
  Slot<T>& slot_mut(Value v);
  // s.param, after checking that its value still has the shape param() recorded.
  Parameter<T>& checked_param(const Slot<T>& s, int32_t id) const;
  void start_backward(Value out, const Tensor<T>& seed, BackwardOptions opt);
  void advance_cursor(int from);           // to the next node with work below `from`
  void run_node(int index);                // hooks, VJP and anomaly checks of one node
  void run_hooks(const Node<T>& node);
  void check_forward();                    // anomaly mode: nodes [checked_, size)
  void check_backward(const Node<T>& node, int index);

  std::vector<Node<T>> nodes_;
  // A deque: references to values stay valid while new values are appended.
  std::deque<Slot<T>> slots_;
  // Buffers of the previous step, handed out again in the same order.
  std::vector<Tensor<T>> spare_data_, spare_grad_, spare_saved_;
  std::vector<std::vector<int32_t>> spare_index_, spare_inputs_;
  // saved_index buffers of the nodes that asked for saved_index_for_overwrite (their
  // indices in overwrite_nodes_, ascending), kept with their sizes and contents.
  std::vector<std::vector<int32_t>> spare_overwrite_;
  std::vector<std::size_t> overwrite_nodes_;
  std::size_t next_data_ = 0, next_grad_ = 0, next_saved_ = 0, next_index_ = 0, next_inputs_ = 0;
  std::size_t next_overwrite_ = 0;
  bool grad_enabled_ = true;
  bool consumed_ = false;  // a backward() ran without retain_graph
  int cursor_ = -1;        // next node of the reverse pass in progress, -1 if none
  bool anomaly_ = false;
  std::size_t checked_ = 0;  // anomaly mode: forward results of nodes below this are checked
  std::vector<std::pair<int32_t, GradHook>> hooks_;  // (value id, hook)
  std::vector<std::shared_ptr<const CustomOp>> custom_ops_;
  std::vector<std::string> custom_names_;  // custom_ops_[i]->name(), as plain data for debuggers
  std::vector<std::vector<Tensor<T>>> custom_saved_;  // kept across reset(): [0, next_custom_saved_) in use
  std::size_t next_custom_saved_ = 0;
  int32_t grad_of_ = -1;                   // see set_grad_of
  std::vector<int32_t> graph_grads_;       // value id -> id of its gradient (create_graph), -1 none
  void backward_create_graph(Value out, const Tensor<T>& seed);
  uint32_t recording_ = next_recording();  // see Value; unique across the tapes of the process

  static uint32_t next_recording();
};

// Scope in which ops record nothing (inference): `{ NoGradGuard g(tape); ... }`.
template <class T>
class NoGradGuard {
 public:
  explicit NoGradGuard(Tape<T>& t) : tape_(t), prev_(t.grad_enabled()) { t.set_grad_enabled(false); }
  ~NoGradGuard() { tape_.set_grad_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  Tape<T>& tape_;
  bool prev_;
};

// The op's name as printed: op_name(node.op), or a custom op's own name.
template <class T>
std::string node_op_name(const Tape<T>& tape, const Node<T>& node);

extern template class Tape<float>;
extern template class Tape<double>;

}  // namespace ad
