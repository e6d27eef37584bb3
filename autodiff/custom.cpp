// Recording a user-defined op, and the one registry entry every custom node shares.
#include "autodiff/custom.hpp"

#include <array>
#include <vector>

namespace ad {

template <class T>
Value custom(Tape<T>& tape, const std::shared_ptr<const CustomOp>& op, std::span<const Value> inputs,
             std::source_location loc) {
  if (!op) throw TapeError("custom: the op is null");
  const std::string name = op->name();
  if (inputs.empty()) shape_error(name.c_str(), "a custom op takes at least one input");
  const std::size_t n = inputs.size();
  std::vector<Shape> shapes(n);
  std::vector<const Tensor<T>*> xs(n);
  bool needs_grad = false;
  for (std::size_t i = 0; i < n; ++i) {
    if (!inputs[i].valid()) shape_error(name.c_str(), "input {} is not a value (Value{{}})", i);
    shapes[i] = tape.shape(inputs[i]);
    xs[i] = &tape.value(inputs[i]);
    needs_grad = needs_grad || tape.any_requires_grad({inputs[i]});
  }
  const Shape ys = op->output_shape(std::span<const Shape>(shapes));
  Value y = tape.new_value(ys, needs_grad);
  // What the forward saves lives on the tape when the node is recorded, and is dropped
  // with this scratch list in no-grad mode.
  std::vector<Tensor<T>> scratch;
  int32_t saved_index = -1;
  CustomSaved<T> saved(tape.grad_enabled() ? tape.new_custom_saved(&saved_index) : scratch);
  // The slots live in a deque: xs stay valid while new_value appends.
  op->forward(std::span<const Tensor<T>* const>(xs), tape.mutable_value(y), saved);
  saved.trim();
  if (tape.shape(y) != ys)
    throw TapeError(fmt::format("custom op {}: forward changed the output shape from {} to {}", name,
                                shape_str(ys), shape_str(tape.shape(y))));
  if (Node<T>* node = tape.record(OpKind::Custom, inputs, y, Attrs{}, loc)) {
    node->custom = tape.add_custom_op(op);
    node->custom_saved = saved_index;
  }
  return y;
}

template <class T>
Value custom(Tape<T>& tape, const std::shared_ptr<const CustomOp>& op, std::initializer_list<Value> inputs,
             std::source_location loc) {
  return custom(tape, op, std::span<const Value>(inputs.begin(), inputs.size()), loc);
}

template <class T>
void custom_vjp(const CustomOp& op, const Tensor<T>& grad_out, std::span<const Tensor<T>* const> inputs,
                const Tensor<T>& out, std::span<Tensor<T>* const> grad_inputs, const CustomSaved<T>& saved) {
  op.vjp(grad_out, inputs, out, grad_inputs, saved);
}

template <class T>
void custom_vjp(const CustomOp& op, const Tensor<T>& grad_out, std::span<const Tensor<T>* const> inputs,
                const Tensor<T>& out, std::span<Tensor<T>* const> grad_inputs) {
  const std::vector<Tensor<T>> none;
  custom_vjp(op, grad_out, inputs, out, grad_inputs, CustomSaved<T>::reading(none));
}

template <class T>
void CustomSaved<T>::out_of_range(std::size_t i) const {
  throw TapeError(fmt::format("custom op: saved tensor {} was not saved (the forward saved {})", i, size()));
}

template <class T>
void CustomSaved<T>::read_only() const {
  throw TapeError("custom op: a VJP cannot save tensors; save them in the forward");
}

// The plain forms, for ops that implement only the forms with CustomSaved (the tape
// never calls these on them).
namespace {
[[noreturn]] void not_implemented(const CustomOp& op, const char* what) {
  throw TapeError(fmt::format("custom op {}: implements neither {}(...) nor {}(..., saved)", op.name(), what, what));
}
}  // namespace
void CustomOp::forward(std::span<const Tensor<float>* const>, Tensor<float>&) const { not_implemented(*this, "forward"); }
void CustomOp::forward(std::span<const Tensor<double>* const>, Tensor<double>&) const { not_implemented(*this, "forward"); }
void CustomOp::vjp(const Tensor<float>&, std::span<const Tensor<float>* const>, const Tensor<float>&,
                   std::span<Tensor<float>* const>) const {
  not_implemented(*this, "vjp");
}
void CustomOp::vjp(const Tensor<double>&, std::span<const Tensor<double>* const>, const Tensor<double>&,
                   std::span<Tensor<double>* const>) const {
  not_implemented(*this, "vjp");
}

namespace {

// The registry's VJP of every custom node: gathers the node's inputs and gradient
// buffers and calls custom_vjp (the op's virtual vjp).
template <class T>
void custom_node_vjp(Tape<T>* tape, const Node<T>& node) {
  const std::size_t n = node.inputs.size();
  std::vector<const Tensor<T>*> xs(n);
  std::vector<Tensor<T>*> grads(n);
  for (std::size_t i = 0; i < n; ++i) {
    xs[i] = &tape->value(Value{node.inputs[i]});
    grads[i] = tape->grad_buffer(Value{node.inputs[i]});
  }
  const Value out{node.output};
  // A node recorded without a saved list (custom_saved -1) reads an empty one.
  const std::vector<Tensor<T>> none;
  const auto saved = CustomSaved<T>::reading(node.custom_saved >= 0 ? tape->custom_saved(node.custom_saved) : none);
  custom_vjp(tape->custom_op(node.custom), tape->slot(out).grad, std::span<const Tensor<T>* const>(xs),
             tape->value(out), std::span<Tensor<T>* const>(grads), saved);
}

Value custom_replay(Tape<double>& t, const ReplayArgs& args) {
  if (!args.custom || !*args.custom) throw TapeError("custom: replay without the op");
  return custom(t, *args.custom, args.inputs);
}

}  // namespace

constinit const OpDef custom_op_def{.name = "custom", .vjp_float = custom_node_vjp<float>,
                                    .vjp_double = custom_node_vjp<double>, .replay = custom_replay};
AD_REGISTER_OP(custom_op_def);

#define AD_INSTANTIATE(T)                                                                                   \
  template Value custom<T>(Tape<T>&, const std::shared_ptr<const CustomOp>&, std::span<const Value>,      \
                           std::source_location);                                                          \
  template Value custom<T>(Tape<T>&, const std::shared_ptr<const CustomOp>&, std::initializer_list<Value>, \
                           std::source_location);                                                          \
  template void custom_vjp<T>(const CustomOp&, const Tensor<T>&, std::span<const Tensor<T>* const>,        \
                              const Tensor<T>&, std::span<Tensor<T>* const>);                             \
  template void custom_vjp<T>(const CustomOp&, const Tensor<T>&, std::span<const Tensor<T>* const>,        \
                              const Tensor<T>&, std::span<Tensor<T>* const>, const CustomSaved<T>&);      \
  template class CustomSaved<T>;
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
