// Elementwise ops and reductions, forward and VJP. The bias add is the b_j 1 term of
// the design document's section 2; its VJP is section 3.1.5's dJ/db = (dJ/d_vZ 1)^T.
#include "ops/elementwise.hpp"

#include "ops/shape_check.hpp"

namespace ad {

namespace {

void check_same(const char* op, const Shape& a, const Shape& b) {
  if (a != b) shape_error(op, "operands {} and {} must have the same shape", shape_str(a), shape_str(b));
}

template <class T>
void add_into(const Tensor<T>& g, T factor, Tensor<T>* dst) {
  if (!dst) return;
  const T* gp = g.data();
  T* d = dst->data();
  for (std::size_t i = 0; i < g.size(); ++i) d[i] += factor * gp[i];
}

}  // namespace

template <class T> void add_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_a, Tensor<T>* grad_b) {
  add_into(grad_out, T(1), grad_a);
  add_into(grad_out, T(1), grad_b);
}

template <class T>
void mul_vjp(const Tensor<T>& grad_out, const Tensor<T>& a, const Tensor<T>& b, Tensor<T>* grad_a, Tensor<T>* grad_b) {
  // ga[i] += g[i] b[i];  gb[i] += g[i] a[i]
  for (std::size_t i = 0; i < grad_out.size(); ++i) {
    if (grad_a) grad_a->data()[i] += grad_out.data()[i] * b.data()[i];
    if (grad_b) grad_b->data()[i] += grad_out.data()[i] * a.data()[i];
  }
}

template <class T> void scale_vjp(const Tensor<T>& grad_out, T s, Tensor<T>* grad_x) { add_into(grad_out, s, grad_x); }

template <class T> void bias_add_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_x, Tensor<T>* grad_b) {
  add_into(grad_out, T(1), grad_x);
  if (!grad_b) return;
  // gb[c] += sum_{n, rest} g[n, c, rest]
  const std::size_t N = grad_out.shape()[0], C = grad_out.shape()[1];
  const std::size_t inner = grad_out.size() / (N * C);
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t c = 0; c < C; ++c) {
      const T* row = grad_out.data() + (n * C + c) * inner;
      T s = 0;
      for (std::size_t i = 0; i < inner; ++i) s += row[i];
      grad_b->data()[c] += s;
    }
}

template <class T> void broadcast_scalar_vjp(const Tensor<T>& grad_out, T factor, Tensor<T>* grad_x) {
  if (!grad_x) return;
  const T v = grad_out.data()[0] * factor;
  for (T& e : *grad_x) e += v;
}

template <class T> Value add(Tape<T>& tape, Value a, Value b, std::source_location loc) {
  check_same("add", tape.shape(a), tape.shape(b));
  Value y = tape.new_value(tape.shape(a), tape.any_requires_grad({a, b}));
  const Tensor<T>& av = tape.value(a);
  const Tensor<T>& bv = tape.value(b);
  T* yp = tape.mutable_value(y).data();
  for (std::size_t i = 0; i < av.size(); ++i) yp[i] = av.data()[i] + bv.data()[i];
  tape.record(OpKind::Add, {a, b}, y, Attrs{}, loc);
  return y;
}

template <class T> Value mul(Tape<T>& tape, Value a, Value b, std::source_location loc) {
  check_same("mul", tape.shape(a), tape.shape(b));
  Value y = tape.new_value(tape.shape(a), tape.any_requires_grad({a, b}));
  const Tensor<T>& av = tape.value(a);
  const Tensor<T>& bv = tape.value(b);
  T* yp = tape.mutable_value(y).data();
  for (std::size_t i = 0; i < av.size(); ++i) yp[i] = av.data()[i] * bv.data()[i];
  tape.record(OpKind::Mul, {a, b}, y, Attrs{}, loc);
  return y;
}

template <class T> Value scale(Tape<T>& tape, Value x, double s, std::source_location loc) {
  Value y = tape.new_value(tape.shape(x), tape.any_requires_grad({x}));
  const Tensor<T>& xv = tape.value(x);
  T* yp = tape.mutable_value(y).data();
  for (std::size_t i = 0; i < xv.size(); ++i) yp[i] = static_cast<T>(s) * xv.data()[i];
  tape.record(OpKind::Scale, {x}, y, Attrs::of(ScaleAttrs{s}), loc);
  return y;
}

template <class T> Value bias_add(Tape<T>& tape, Value x, Value b, std::source_location loc) {
  const Shape xs = tape.shape(x), bs = tape.shape(b);
  if (xs.size() < 2) shape_error("bias_add", "input {} must have rank >= 2 (N, C, ...)", shape_str(xs));
  check_rank("bias_add", "bias", bs, 1, "(C)");
  if (bs[0] != xs[1])
    shape_error("bias_add", "input {} and bias {} disagree on C ({} vs {})", shape_str(xs), shape_str(bs), xs[1], bs[0]);
  Value y = tape.new_value(xs, tape.any_requires_grad({x, b}));
  const Tensor<T>& xv = tape.value(x);
  const Tensor<T>& bv = tape.value(b);
  T* yp = tape.mutable_value(y).data();
  const std::size_t N = xs[0], C = xs[1], inner = xv.size() / std::max<std::size_t>(N * C, 1);
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t c = 0; c < C; ++c)
      for (std::size_t i = 0; i < inner; ++i) {
        const std::size_t k = (n * C + c) * inner + i;
        yp[k] = xv.data()[k] + bv.data()[c];
      }
  tape.record(OpKind::BiasAdd, {x, b}, y, Attrs{}, loc);
  return y;
}

namespace {
template <class T>
Value reduce(Tape<T>& tape, OpId op, Value x, bool average, std::source_location loc) {
  const Tensor<T>& xv0 = tape.value(x);
  if (xv0.size() == 0) shape_error(op_name(op).data(), "input {} is empty", shape_str(xv0.shape()));
  Value y = tape.new_value(Shape{}, tape.any_requires_grad({x}));
  const Tensor<T>& xv = tape.value(x);
  T s = 0;
  for (T e : xv) s += e;
  tape.mutable_value(y).data()[0] = average ? s / static_cast<T>(xv.size()) : s;
  tape.record(op, {x}, y, Attrs{}, loc);
  return y;
}
}  // namespace

template <class T> Value sum(Tape<T>& tape, Value x, std::source_location loc) { return reduce(tape, OpKind::Sum, x, false, loc); }
template <class T> Value mean(Tape<T>& tape, Value x, std::source_location loc) { return reduce(tape, OpKind::Mean, x, true, loc); }

// ---- the registry entries (autodiff/op.hpp) ----

namespace {

template <class T> void add_node_vjp(Tape<T>* tape, const Node<T>& node) {
  add_vjp(tape->grad_out(node), tape->input_grad(node, 0), tape->input_grad(node, 1));
}
template <class T> void mul_node_vjp(Tape<T>* tape, const Node<T>& node) {
  mul_vjp(tape->grad_out(node), tape->input_value(node, 0), tape->input_value(node, 1), tape->input_grad(node, 0),
          tape->input_grad(node, 1));
}
template <class T> void scale_node_vjp(Tape<T>* tape, const Node<T>& node) {
  scale_vjp(tape->grad_out(node), static_cast<T>(attrs_as<ScaleAttrs>(node.attrs).factor), tape->input_grad(node, 0));
}
template <class T> void bias_add_node_vjp(Tape<T>* tape, const Node<T>& node) {
  bias_add_vjp(tape->grad_out(node), tape->input_grad(node, 0), tape->input_grad(node, 1));
}
// sum: dJ/dx = g everywhere; mean: g / size.
template <class T> void sum_node_vjp(Tape<T>* tape, const Node<T>& node) {
  broadcast_scalar_vjp(tape->grad_out(node), T(1), tape->input_grad(node, 0));
}
template <class T> void mean_node_vjp(Tape<T>* tape, const Node<T>& node) {
  broadcast_scalar_vjp(tape->grad_out(node), T(1) / static_cast<T>(tape->input_value(node, 0).size()),
                       tape->input_grad(node, 0));
}

Value add_replay(Tape<double>& t, const ReplayArgs& r) { return add(t, r.inputs[0], r.inputs[1]); }
Value mul_replay(Tape<double>& t, const ReplayArgs& r) { return mul(t, r.inputs[0], r.inputs[1]); }
Value scale_replay(Tape<double>& t, const ReplayArgs& r) { return scale(t, r.inputs[0], r.attrs.get<ScaleAttrs>().factor); }
Value bias_add_replay(Tape<double>& t, const ReplayArgs& r) { return bias_add(t, r.inputs[0], r.inputs[1]); }
Value sum_replay(Tape<double>& t, const ReplayArgs& r) { return sum(t, r.inputs[0]); }
Value mean_replay(Tape<double>& t, const ReplayArgs& r) { return mean(t, r.inputs[0]); }

std::string scale_format(const Attrs& attrs, std::span<const int32_t>) {
  return fmt::format("factor={:g}", attrs.get<ScaleAttrs>().factor);
}

}  // namespace

constinit const OpDef add_op{.name = "add", .input_names = {"a", "b"}, .vjp_float = add_node_vjp<float>,
                             .vjp_double = add_node_vjp<double>, .replay = add_replay};
constinit const OpDef mul_op{.name = "mul", .input_names = {"a", "b"}, .vjp_float = mul_node_vjp<float>,
                             .vjp_double = mul_node_vjp<double>, .replay = mul_replay};
constinit const OpDef scale_op{.name = "scale", .vjp_float = scale_node_vjp<float>,
                               .vjp_double = scale_node_vjp<double>, .replay = scale_replay,
                               .format_attrs = scale_format};
constinit const OpDef bias_add_op{.name = "bias_add", .input_names = {"input", "bias"},
                                  .vjp_float = bias_add_node_vjp<float>, .vjp_double = bias_add_node_vjp<double>,
                                  .replay = bias_add_replay};
constinit const OpDef sum_op{.name = "sum", .vjp_float = sum_node_vjp<float>, .vjp_double = sum_node_vjp<double>,
                             .replay = sum_replay};
constinit const OpDef mean_op{.name = "mean", .vjp_float = mean_node_vjp<float>, .vjp_double = mean_node_vjp<double>,
                              .replay = mean_replay};
AD_REGISTER_OP(add_op);
AD_REGISTER_OP(mul_op);
AD_REGISTER_OP(scale_op);
AD_REGISTER_OP(bias_add_op);
AD_REGISTER_OP(sum_op);
AD_REGISTER_OP(mean_op);

#define AD_INSTANTIATE(T)                                                                                      \
  template Value add<T>(Tape<T>&, Value, Value, std::source_location);                                        \
  template Value mul<T>(Tape<T>&, Value, Value, std::source_location);                                        \
  template Value scale<T>(Tape<T>&, Value, double, std::source_location);                                     \
  template Value bias_add<T>(Tape<T>&, Value, Value, std::source_location);                                   \
  template Value sum<T>(Tape<T>&, Value, std::source_location);                                               \
  template Value mean<T>(Tape<T>&, Value, std::source_location);                                              \
  template void add_vjp<T>(const Tensor<T>&, Tensor<T>*, Tensor<T>*);                                         \
  template void mul_vjp<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, Tensor<T>*, Tensor<T>*);     \
  template void scale_vjp<T>(const Tensor<T>&, T, Tensor<T>*);                                                \
  template void bias_add_vjp<T>(const Tensor<T>&, Tensor<T>*, Tensor<T>*);                                    \
  template void broadcast_scalar_vjp<T>(const Tensor<T>&, T, Tensor<T>*);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
