// flatten, forward and VJP. Design document: section 3.1.2 (B^[2] = [vec(A_1); ...]
// and the reshape of dJ/dB^[2] into the c x (h w) matrix dJ/d_vA^[2]). Flattening
// only renames entries, so its Jacobian is a permutation (the identity in our
// row-major order) and the VJP copies the gradient back.
#include "ops/flatten.hpp"

#include "autodiff/higher_order.hpp"
#include "ops/shape.hpp"

#include "ops/shape.hpp"
#include "ops/shape_check.hpp"

namespace ad {

Shape flatten_output_shape(const Shape& x) {
  if (x.size() < 2) shape_error("flatten", "input {} must have rank >= 2 (N, ...), not rank {}", shape_str(x), x.size());
  check_nonempty_but_batch("flatten", "input", x);  // N = 0: (0, C*H*W)
  std::size_t d = 1;
  for (std::size_t i = 1; i < x.size(); ++i) d *= x[i];
  return {x[0], d};
}

// Flattening is a reshape to (N, C*H*W): the same row-major elements (ops/shape.cpp).
template <class T> void flatten_forward(const Tensor<T>& x, Tensor<T>& y) { reshape_forward(x, y); }

// dx[n,c,h,w] += g[n, (c*H + h)*W + w]
template <class T> void flatten_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_x, bool overwrite) {
  reshape_vjp(grad_out, grad_x, overwrite);
}

template <class T> Value flatten(Tape<T>& tape, Value x, std::source_location loc) {
  Value y = tape.new_value(flatten_output_shape(tape.shape(x)), tape.any_requires_grad({x}));
  flatten_forward(tape.value(x), tape.mutable_value(y));
  tape.record(OpKind::Flatten, {x}, y, Attrs{}, loc);
  return y;
}

// ---- the registry entry (autodiff/op.hpp) ----

namespace {
template <class T> void flatten_node_vjp(Tape<T>* tape, const Node<T>& node) {
  bool overwrite = false;  // the first gradient of x: copied, not added to a zeroed buffer
  Tensor<T>* gx = tape->input_grad_for_overwrite(node, 0, &overwrite);
  flatten_vjp(tape->grad_out(node), gx, overwrite);
}
Value flatten_replay(Tape<double>& t, const ReplayArgs& r) { return flatten(t, r.inputs[0]); }
// Recorded VJP (higher-order gradients): gx = reshape(g, x's shape), itself linear.
template <class T> void flatten_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const Shape xs = t.shape(node_input(t, n, 0));
  gi[0] = reshape(t, g, std::vector<int64_t>(xs.begin(), xs.end()));
}
}  // namespace

constinit const OpDef flatten_op{.name = "flatten", .vjp_float = flatten_node_vjp<float>,
                                 .vjp_double = flatten_node_vjp<double>, .replay = flatten_replay,
                                 .record_vjp_float = flatten_record_vjp<float>,
                                 .record_vjp_double = flatten_record_vjp<double>};
AD_REGISTER_OP(flatten_op);

#define AD_INSTANTIATE(T)                                               \
  template void flatten_forward<T>(const Tensor<T>&, Tensor<T>&);      \
  template void flatten_vjp<T>(const Tensor<T>&, Tensor<T>*, bool);          \
  template Value flatten<T>(Tape<T>&, Value, std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
