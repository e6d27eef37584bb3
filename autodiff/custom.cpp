// Recording a user-defined op; its VJP is dispatched from autodiff/backward.cpp.
#include "autodiff/custom.hpp"

#include <array>

namespace ad {

template <class T>
Value custom(Tape<T>& tape, const std::shared_ptr<const CustomOp>& op, std::initializer_list<Value> inputs,
             std::source_location loc) {
  if (!op) throw TapeError("custom: the op is null");
  const std::string name = op->name();
  if (inputs.size() < 1 || inputs.size() > 3)
    shape_error(name.c_str(), "a custom op takes 1 to 3 inputs, not {}", inputs.size());
  const std::size_t n = inputs.size();
  std::array<Value, 3> in{};
  std::array<Shape, 3> shapes{};
  std::array<const Tensor<T>*, 3> xs{};
  std::size_t i = 0;
  for (Value v : inputs) {
    if (!v.valid()) shape_error(name.c_str(), "input {} is not a value (Value{{}})", i);
    in[i] = v;
    shapes[i] = tape.shape(v);
    xs[i] = &tape.value(v);
    ++i;
  }
  const Shape ys = op->output_shape(std::span<const Shape>(shapes.data(), n));
  Value y = tape.new_value(ys, tape.any_requires_grad(inputs));
  // The slots live in a deque: xs stay valid while new_value appends.
  op->forward(std::span<const Tensor<T>* const>(xs.data(), n), tape.mutable_value(y));
  if (tape.shape(y) != ys)
    throw TapeError(fmt::format("custom op {}: forward changed the output shape from {} to {}", name,
                                shape_str(ys), shape_str(tape.shape(y))));
  if (Node<T>* node = tape.record(OpKind::Custom, in, y, Attrs{}, loc)) node->custom = tape.add_custom_op(op);
  return y;
}

template <class T>
void custom_vjp(const CustomOp& op, const Tensor<T>& grad_out, std::span<const Tensor<T>* const> inputs,
                const Tensor<T>& out, std::span<Tensor<T>* const> grad_inputs) {
  op.vjp(grad_out, inputs, out, grad_inputs);
}

#define AD_INSTANTIATE(T)                                                                                   \
  template Value custom<T>(Tape<T>&, const std::shared_ptr<const CustomOp>&, std::initializer_list<Value>, \
                           std::source_location);                                                          \
  template void custom_vjp<T>(const CustomOp&, const Tensor<T>&, std::span<const Tensor<T>* const>,        \
                              const Tensor<T>&, std::span<Tensor<T>* const>);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
