// Activations, forward and VJP. Design document: section 3.1.4. The Jacobian
// d_vI/d_vZ of an elementwise f is diagonal with f'(z) on the diagonal, so the VJP
// is dJ/dz = dJ/di * f'(z), element by element:
//   relu:       f'(z) = [z > 0]
//   leaky_relu: f'(z) = z > 0 ? 1 : slope
//   sigmoid:    f'(z) = s (1 - s), s = sigmoid(z) = the saved output
//   tanh:       f'(z) = 1 - t^2,   t = tanh(z)    = the saved output
#include "ops/activation.hpp"

#include <cmath>

#include "autodiff/higher_order.hpp"
#include "ops/elementwise.hpp"
#include "ops/shape_check.hpp"

namespace ad {

namespace {

// y[i] = f(x[i]) over raw buffers.
template <class T, class F>
void map(const Tensor<T>& x, Tensor<T>& y, F f) {
  const T* xp = x.data();
  T* yp = y.data();
  const std::size_t n = x.size();
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) yp[i] = f(xp[i]);
}

// gx[i] += g[i] * d(s[i]) where s is the saved x or y.
template <class T, class D>
void accumulate(const Tensor<T>& g, const Tensor<T>& s, Tensor<T>* grad_x, D d) {
  if (!grad_x) return;
  const T* gp = g.data();
  const T* sp = s.data();
  T* gx = grad_x->data();
  const std::size_t n = g.size();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) gx[i] += gp[i] * d(sp[i]);
}

// A sigmoid that neither overflows exp for large |x| nor loses precision.
template <class T>
T stable_sigmoid(T x) {
  if (x >= 0) return T(1) / (T(1) + std::exp(-x));
  const T e = std::exp(x);
  return e / (T(1) + e);
}

template <class T, class Forward>
Value record_unary(Tape<T>& tape, OpId op, Value x, const Attrs& attrs, std::source_location loc, Forward fwd) {
  Value y = tape.new_value(tape.shape(x), tape.any_requires_grad({x}));
  fwd(tape.value(x), tape.mutable_value(y));
  tape.record(op, {x}, y, attrs, loc);
  return y;
}

}  // namespace

template <class T> void relu_forward(const Tensor<T>& x, Tensor<T>& y) {
  // !(v <= 0) rather than v > 0: NaN passes through, as in PyTorch (still a select).
  map(x, y, [](T v) { return !(v <= T(0)) ? v : T(0); });
}
template <class T> void leaky_relu_forward(const Tensor<T>& x, T slope, Tensor<T>& y) {
  map(x, y, [slope](T v) { return v > T(0) ? v : slope * v; });
}
template <class T> void sigmoid_forward(const Tensor<T>& x, Tensor<T>& y) { map(x, y, stable_sigmoid<T>); }
template <class T> void tanh_forward(const Tensor<T>& x, Tensor<T>& y) {
  map(x, y, [](T v) { return std::tanh(v); });
}

template <class T> void relu_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, Tensor<T>* grad_x) {
  if (!grad_x) return;
  // dz[i] += z[i] > 0 ? g[i] : 0: a select, not g * [z > 0], so the loop vectorizes
  // without a branch on the sign (and a masked g that is inf or NaN gives 0, as in PyTorch).
  // Written !(z <= 0): a NaN input, which the forward let through, passes g on as
  // PyTorch's threshold_backward does.
  const T* gp = grad_out.data();
  const T* zp = x.data();
  T* gx = grad_x->data();
  const std::size_t n = grad_out.size();
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) gx[i] += !(zp[i] <= T(0)) ? gp[i] : T(0);
}
template <class T> void leaky_relu_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, T slope, Tensor<T>* grad_x) {
  accumulate(grad_out, x, grad_x, [slope](T z) { return z > T(0) ? T(1) : slope; });
}
template <class T> void sigmoid_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, Tensor<T>* grad_x) {
  accumulate(grad_out, y, grad_x, [](T s) { return s * (T(1) - s); });
}
template <class T> void tanh_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, Tensor<T>* grad_x) {
  accumulate(grad_out, y, grad_x, [](T t) { return T(1) - t * t; });
}

template <class T> Value relu(Tape<T>& tape, Value x, std::source_location loc) {
  return record_unary(tape, OpKind::Relu, x, Attrs{}, loc, [](const Tensor<T>& in, Tensor<T>& out) { relu_forward(in, out); });
}
template <class T> Value leaky_relu(Tape<T>& tape, Value x, double slope, std::source_location loc) {
  return record_unary(tape, OpKind::LeakyRelu, x, Attrs::of(LeakyReluAttrs{slope}), loc,
                      [slope](const Tensor<T>& in, Tensor<T>& out) { leaky_relu_forward(in, static_cast<T>(slope), out); });
}
template <class T> Value sigmoid(Tape<T>& tape, Value x, std::source_location loc) {
  return record_unary(tape, OpKind::Sigmoid, x, Attrs{}, loc, [](const Tensor<T>& in, Tensor<T>& out) { sigmoid_forward(in, out); });
}
template <class T> Value tanh(Tape<T>& tape, Value x, std::source_location loc) {
  return record_unary(tape, OpKind::Tanh, x, Attrs{}, loc, [](const Tensor<T>& in, Tensor<T>& out) { tanh_forward(in, out); });
}

namespace {
template <class T, class Vjp>
Value record_mask_backward(Tape<T>& tape, OpId op, Value g, Value x, const Attrs& attrs, std::source_location loc,
                           Vjp vjp) {
  const Shape gs = tape.shape(g), xs = tape.shape(x);
  if (gs != xs)
    shape_error(op_name(op).data(), "gradient {} and input {} disagree in shape (they must be equal)", shape_str(gs),
                shape_str(xs));
  Value y = tape.new_value(xs, tape.any_requires_grad({g, x}));
  Tensor<T>& yv = tape.mutable_value(y);
  zero_fill(yv);
  vjp(tape.value(g), tape.value(x), &yv);
  tape.record(op, {g, x}, y, attrs, loc);
  return y;
}
}  // namespace

template <class T> Value relu_backward(Tape<T>& tape, Value grad_out, Value x, std::source_location loc) {
  return record_mask_backward(tape, OpKind::ReluBackward, grad_out, x, Attrs{}, loc,
                              [](const Tensor<T>& g, const Tensor<T>& z, Tensor<T>* out) { relu_vjp(g, z, out); });
}
template <class T> Value leaky_relu_backward(Tape<T>& tape, Value grad_out, Value x, double slope, std::source_location loc) {
  return record_mask_backward(tape, OpKind::LeakyReluBackward, grad_out, x, Attrs::of(LeakyReluAttrs{slope}), loc,
                              [slope](const Tensor<T>& g, const Tensor<T>& z, Tensor<T>* out) {
                                leaky_relu_vjp(g, z, static_cast<T>(slope), out);
                              });
}

// ---- the registry entries (autodiff/op.hpp) ----

namespace {

// ReLU reads its input, sigmoid and tanh their output (the saved y).
template <class T> void relu_node_vjp(Tape<T>* tape, const Node<T>& node) {
  relu_vjp(tape->grad_out(node), tape->input_value(node, 0), tape->input_grad(node, 0));
}
template <class T> void leaky_relu_node_vjp(Tape<T>* tape, const Node<T>& node) {
  leaky_relu_vjp(tape->grad_out(node), tape->input_value(node, 0),
                 static_cast<T>(attrs_as<LeakyReluAttrs>(node.attrs).slope), tape->input_grad(node, 0));
}
template <class T> void sigmoid_node_vjp(Tape<T>* tape, const Node<T>& node) {
  sigmoid_vjp(tape->grad_out(node), tape->value(Value{node.output}), tape->input_grad(node, 0));
}
template <class T> void tanh_node_vjp(Tape<T>* tape, const Node<T>& node) {
  tanh_vjp(tape->grad_out(node), tape->value(Value{node.output}), tape->input_grad(node, 0));
}

// ---- recorded VJPs (higher-order gradients) ----
// relu, leaky_relu: gx = relu_backward(g, x), the mask op above.
// sigmoid: f' = s (1 - s) = s - s^2 with s the output: gx = g .* (s - s .* s); recorded on
//   s itself, so the second derivative d(s - s^2)/dx = (1 - 2 s) s (1 - s) comes from the chain.
// tanh: f' = 1 - t^2: gx = g - g .* (t .* t); the second derivative -2 t (1 - t^2) likewise.
template <class T> void relu_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0)) gi[0] = relu_backward(t, g, node_input(t, n, 0));
}
template <class T> void leaky_relu_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0))
    gi[0] = leaky_relu_backward(t, g, node_input(t, n, 0),
                                attrs_as<LeakyReluAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs).slope);
}
template <class T> void sigmoid_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const Value s = node_output(t, n);
  gi[0] = mul(t, g, sub(t, s, mul(t, s, s)));
}
template <class T> void tanh_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const Value y = node_output(t, n);
  gi[0] = sub(t, g, mul(t, g, mul(t, y, y)));
}
// relu_backward(g, x) = g .* m(x): linear in g, so gg = relu_backward(u, x); nothing for x.
template <class T> void relu_backward_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0)) gi[0] = relu_backward(t, g, node_input(t, n, 1));
}
template <class T> void leaky_relu_backward_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0))
    gi[0] = leaky_relu_backward(t, g, node_input(t, n, 1),
                                attrs_as<LeakyReluAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs).slope);
}
template <class T> void relu_backward_node_vjp(Tape<T>* tape, const Node<T>& node) {
  relu_vjp(tape->grad_out(node), tape->input_value(node, 1), tape->input_grad(node, 0));
}
template <class T> void leaky_relu_backward_node_vjp(Tape<T>* tape, const Node<T>& node) {
  leaky_relu_vjp(tape->grad_out(node), tape->input_value(node, 1),
                 static_cast<T>(attrs_as<LeakyReluAttrs>(node.attrs).slope), tape->input_grad(node, 0));
}
Value relu_backward_replay(Tape<double>& t, const ReplayArgs& r) { return relu_backward(t, r.inputs[0], r.inputs[1]); }
Value leaky_relu_backward_replay(Tape<double>& t, const ReplayArgs& r) {
  return leaky_relu_backward(t, r.inputs[0], r.inputs[1], r.attrs.get<LeakyReluAttrs>().slope);
}
// The mask ops jump where x = 0 (input 1).
void mask_kink(const Attrs&, std::size_t k, const Tensor<double>& x, double margin, std::vector<bool>& at) {
  if (k == 1)
    for (std::size_t i = 0; i < x.size(); ++i) at[i] = std::abs(x.data()[i]) <= margin;
}

Value relu_replay(Tape<double>& t, const ReplayArgs& r) { return relu(t, r.inputs[0]); }
Value leaky_relu_replay(Tape<double>& t, const ReplayArgs& r) {
  return leaky_relu(t, r.inputs[0], r.attrs.get<LeakyReluAttrs>().slope);
}
Value sigmoid_replay(Tape<double>& t, const ReplayArgs& r) { return sigmoid(t, r.inputs[0]); }
Value tanh_replay(Tape<double>& t, const ReplayArgs& r) { return ad::tanh(t, r.inputs[0]); }

std::string leaky_relu_format(const Attrs& attrs, std::span<const int32_t>) {
  return fmt::format("slope={:g}", attrs.get<LeakyReluAttrs>().slope);
}

// The kink of ReLU and leaky ReLU is at 0.
void kink_at_zero(const Attrs&, std::size_t, const Tensor<double>& x, double margin, std::vector<bool>& at) {
  for (std::size_t i = 0; i < x.size(); ++i) at[i] = std::abs(x.data()[i]) <= margin;
}

}  // namespace

constinit const OpDef relu_op{.name = "relu",
                              .vjp_float = relu_node_vjp<float>,
                              .vjp_double = relu_node_vjp<double>,
                              .replay = relu_replay,
                              .kinks = kink_at_zero,
    .record_vjp_float = relu_record_vjp<float>, .record_vjp_double = relu_record_vjp<double>};
constinit const OpDef leaky_relu_op{.name = "leaky_relu",
                                    .vjp_float = leaky_relu_node_vjp<float>,
                                    .vjp_double = leaky_relu_node_vjp<double>,
                                    .replay = leaky_relu_replay,
                                    .format_attrs = leaky_relu_format,
                                    .kinks = kink_at_zero,
    .record_vjp_float = leaky_relu_record_vjp<float>, .record_vjp_double = leaky_relu_record_vjp<double>};
constinit const OpDef sigmoid_op{.name = "sigmoid",
                                 .vjp_float = sigmoid_node_vjp<float>,
                                 .vjp_double = sigmoid_node_vjp<double>,
                                 .replay = sigmoid_replay,
    .record_vjp_float = sigmoid_record_vjp<float>, .record_vjp_double = sigmoid_record_vjp<double>};
constinit const OpDef tanh_op{.name = "tanh",
                              .vjp_float = tanh_node_vjp<float>,
                              .vjp_double = tanh_node_vjp<double>,
                              .replay = tanh_replay,
    .record_vjp_float = tanh_record_vjp<float>, .record_vjp_double = tanh_record_vjp<double>};
constinit const OpDef relu_backward_op{.name = "relu_backward", .input_names = {"grad_out", "input"},
                                       .vjp_float = relu_backward_node_vjp<float>,
                                       .vjp_double = relu_backward_node_vjp<double>, .replay = relu_backward_replay,
                                       .kinks = mask_kink, .record_vjp_float = relu_backward_record_vjp<float>,
                                       .record_vjp_double = relu_backward_record_vjp<double>};
constinit const OpDef leaky_relu_backward_op{.name = "leaky_relu_backward", .input_names = {"grad_out", "input"},
                                             .vjp_float = leaky_relu_backward_node_vjp<float>,
                                             .vjp_double = leaky_relu_backward_node_vjp<double>,
                                             .replay = leaky_relu_backward_replay, .format_attrs = leaky_relu_format,
                                             .kinks = mask_kink,
                                             .record_vjp_float = leaky_relu_backward_record_vjp<float>,
                                             .record_vjp_double = leaky_relu_backward_record_vjp<double>};
AD_REGISTER_OP(relu_backward_op);
AD_REGISTER_OP(leaky_relu_backward_op);
AD_REGISTER_OP(relu_op);
AD_REGISTER_OP(leaky_relu_op);
AD_REGISTER_OP(sigmoid_op);
AD_REGISTER_OP(tanh_op);

#define AD_INSTANTIATE(T)                                                                      \
  template void relu_forward<T>(const Tensor<T>&, Tensor<T>&);                                \
  template void leaky_relu_forward<T>(const Tensor<T>&, T, Tensor<T>&);                       \
  template void sigmoid_forward<T>(const Tensor<T>&, Tensor<T>&);                             \
  template void tanh_forward<T>(const Tensor<T>&, Tensor<T>&);                                \
  template void relu_vjp<T>(const Tensor<T>&, const Tensor<T>&, Tensor<T>*);                  \
  template void leaky_relu_vjp<T>(const Tensor<T>&, const Tensor<T>&, T, Tensor<T>*);         \
  template void sigmoid_vjp<T>(const Tensor<T>&, const Tensor<T>&, Tensor<T>*);               \
  template void tanh_vjp<T>(const Tensor<T>&, const Tensor<T>&, Tensor<T>*);                  \
  template Value relu<T>(Tape<T>&, Value, std::source_location);                              \
  template Value leaky_relu<T>(Tape<T>&, Value, double, std::source_location);                \
  template Value sigmoid<T>(Tape<T>&, Value, std::source_location);                           \
  template Value tanh<T>(Tape<T>&, Value, std::source_location);                              \
  template Value relu_backward<T>(Tape<T>&, Value, Value, std::source_location);              \
  template Value leaky_relu_backward<T>(Tape<T>&, Value, Value, double, std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
