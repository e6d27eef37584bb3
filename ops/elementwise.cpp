// Elementwise ops and reductions, forward and VJP. The bias add is the b_j 1 term of
// the design document's section 2; its VJP is section 3.1.5's dJ/db = (dJ/d_vZ 1)^T.
//
// The binary ops broadcast (ops/broadcast.hpp). With c[i] = f(a[ia(i)], b[ib(i)]), where
// ia(i) is the element of a that element i of the result reads (the same element for every
// i along an axis a is stretched on), the chain rule gives
//     dJ/da[j] = sum_{i : ia(i) = j} g[i] df/da(a[j], b[ib(i)]),
// the sum over the stretched axes; likewise for b. The partial derivatives:
//   add: 1, 1    sub: 1, -1    mul: b, a    div: 1/b, -a/b^2 (written -(a/b)/b as PyTorch)
#include "ops/elementwise.hpp"

#include <cmath>

#include "ops/broadcast.hpp"
#include "ops/shape_check.hpp"

namespace ad {

namespace {

template <class T>
void add_into(const Tensor<T>& g, T factor, Tensor<T>* dst) {
  if (!dst) return;
  const T* gp = g.data();
  T* d = dst->data();
  for (std::size_t i = 0; i < g.size(); ++i) d[i] += factor * gp[i];
}

// c[i] = f(a[ia(i)], b[ib(i)]) for c of the broadcast shape.
template <class T, class F>
void binary_forward(const char* op, const Tensor<T>& a, const Tensor<T>& b, Tensor<T>& c, F f) {
  const Broadcast bc = broadcast(op, to_shape(a.shape()), to_shape(b.shape()));
  const T* ap = a.data();
  const T* bp = b.data();
  T* cp = c.data();
  if (bc.same) {  // no broadcasting: one flat loop
    for_each_index(c.size(), [=](std::size_t i) { cp[i] = f(ap[i], bp[i]); });
    return;
  }
  const std::size_t sa = bc.inner_a, sb = bc.inner_b;
  for_each_block(bc, true, [&](std::size_t i, std::size_t ia, std::size_t ib, std::size_t len) {
    for (std::size_t k = 0; k < len; ++k) cp[i + k] = f(ap[ia + k * sa], bp[ib + k * sb]);
  });
}

// grad[j] += sum_{i : i reads element j of the operand} d(i, ia(i), ib(i)): the gradient of
// operand a (`of_a`) or b, summed over the axes it is stretched on. `a_shape` and `b_shape`
// are the operands' shapes; d reads g, a and b at the indices it is given.
template <class T, class D>
void accumulate_operand(const char* op, const Shape& a_shape, const Shape& b_shape, bool of_a, Tensor<T>* grad, D d) {
  if (!grad) return;
  const Broadcast bc = broadcast(op, a_shape, b_shape);
  T* gx = grad->data();
  if (bc.same) {
    for_each_index(grad->size(), [=](std::size_t i) { gx[i] += d(i, i, i); });
    return;
  }
  const std::size_t sa = bc.inner_a, sb = bc.inner_b, sx = of_a ? sa : sb;
  // Without stretching, blocks write disjoint elements and may run in parallel;
  // a stretched operand's blocks add into the same elements.
  const bool stretched = grad->size() < bc.size();
  for_each_block(bc, !stretched, [&](std::size_t i, std::size_t ia, std::size_t ib, std::size_t len) {
    const std::size_t j = of_a ? ia : ib;
    if (sx == 0) {  // the operand is fixed along the block: one sum
      T s = 0;
      for (std::size_t k = 0; k < len; ++k) s += d(i + k, ia + k * sa, ib + k * sb);
      gx[j] += s;
    } else {
      for (std::size_t k = 0; k < len; ++k) gx[j + k] += d(i + k, ia + k * sa, ib + k * sb);
    }
  });
}

// The VJP of a binary op: grad_a and grad_b (either may be null) receive the terms
// da(i, ia, ib) and db(i, ia, ib), each summed over the axes its operand is stretched on.
template <class T, class DA, class DB>
void binary_vjp(const char* op, const Shape& a_shape, const Shape& b_shape, Tensor<T>* grad_a, Tensor<T>* grad_b,
                DA da, DB db) {
  if (grad_a && grad_b && a_shape == b_shape) {  // no broadcasting: one pass for both (as before broadcasting)
    T* ga = grad_a->data();
    T* gb = grad_b->data();  // may be ga (x op x): both terms still add, in order
    for_each_index(grad_a->size(), [=](std::size_t i) {
      ga[i] += da(i, i, i);
      gb[i] += db(i, i, i);
    });
    return;
  }
  accumulate_operand(op, a_shape, b_shape, true, grad_a, da);
  accumulate_operand(op, a_shape, b_shape, false, grad_b, db);
}

// The shape of an operand whose value the VJP does not read: from its gradient buffer,
// or (no gradient wanted) the result's, which broadcasts with anything that did.
template <class T>
Shape operand_shape(const Tensor<T>* grad, const Tensor<T>& grad_out) {
  return to_shape(grad ? grad->shape() : grad_out.shape());
}

}  // namespace

template <class T> void add_forward(const Tensor<T>& a, const Tensor<T>& b, Tensor<T>& c) {
  binary_forward("add", a, b, c, [](T x, T y) { return x + y; });
}
template <class T> void sub_forward(const Tensor<T>& a, const Tensor<T>& b, Tensor<T>& c) {
  binary_forward("sub", a, b, c, [](T x, T y) { return x - y; });
}
template <class T> void mul_forward(const Tensor<T>& a, const Tensor<T>& b, Tensor<T>& c) {
  binary_forward("mul", a, b, c, [](T x, T y) { return x * y; });
}
template <class T> void div_forward(const Tensor<T>& a, const Tensor<T>& b, Tensor<T>& c) {
  binary_forward("div", a, b, c, [](T x, T y) { return x / y; });
}

// The lambdas give one term of the sum: d(i, ia, ib) for result element i, reading a[ia], b[ib].
using std::size_t;

// ga[j] += sum_{i : ia(i) = j} g[i];  gb[j] += sum_{i : ib(i) = j} g[i]
template <class T> void add_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_a, Tensor<T>* grad_b) {
  const T* g = grad_out.data();
  binary_vjp("add_vjp", operand_shape(grad_a, grad_out), operand_shape(grad_b, grad_out), grad_a, grad_b,
             [g](size_t i, size_t, size_t) { return g[i]; }, [g](size_t i, size_t, size_t) { return g[i]; });
}

// ga[j] += sum_{i : ia(i) = j} g[i];  gb[j] -= sum_{i : ib(i) = j} g[i]
template <class T> void sub_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_a, Tensor<T>* grad_b) {
  const T* g = grad_out.data();
  binary_vjp("sub_vjp", operand_shape(grad_a, grad_out), operand_shape(grad_b, grad_out), grad_a, grad_b,
             [g](size_t i, size_t, size_t) { return g[i]; }, [g](size_t i, size_t, size_t) { return -g[i]; });
}

// ga[j] += sum_{i : ia(i) = j} g[i] b[ib(i)];  gb[j] += sum_{i : ib(i) = j} g[i] a[ia(i)]
template <class T>
void mul_vjp(const Tensor<T>& grad_out, const Tensor<T>& a, const Tensor<T>& b, Tensor<T>* grad_a, Tensor<T>* grad_b) {
  const T *g = grad_out.data(), *ap = a.data(), *bp = b.data();
  binary_vjp("mul_vjp", to_shape(a.shape()), to_shape(b.shape()), grad_a, grad_b,
             [=](size_t i, size_t, size_t ib) { return g[i] * bp[ib]; },
             [=](size_t i, size_t ia, size_t) { return g[i] * ap[ia]; });
}

// ga[j] += sum_{i : ia(i) = j} g[i] / b[ib(i)];
// gb[j] += sum_{i : ib(i) = j} -g[i] (a[ia(i)] / b[j]) / b[j]      (d(a/b)/db = -a/b^2)
template <class T>
void div_vjp(const Tensor<T>& grad_out, const Tensor<T>& a, const Tensor<T>& b, Tensor<T>* grad_a, Tensor<T>* grad_b) {
  const T *g = grad_out.data(), *ap = a.data(), *bp = b.data();
  binary_vjp("div_vjp", to_shape(a.shape()), to_shape(b.shape()), grad_a, grad_b,
             [=](size_t i, size_t, size_t ib) { return g[i] / bp[ib]; },
             [=](size_t i, size_t ia, size_t ib) { return -g[i] * ((ap[ia] / bp[ib]) / bp[ib]); });
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

namespace {
template <class T>
Value record_binary(Tape<T>& tape, OpId op, Value a, Value b, std::source_location loc,
                    void (*forward)(const Tensor<T>&, const Tensor<T>&, Tensor<T>&)) {
  const Broadcast bc = broadcast(op_name(op).data(), tape.shape(a), tape.shape(b));
  Value c = tape.new_value(bc.out, tape.any_requires_grad({a, b}));
  forward(tape.value(a), tape.value(b), tape.mutable_value(c));
  tape.record(op, {a, b}, c, Attrs{}, loc);
  return c;
}
}  // namespace

template <class T> Value add(Tape<T>& tape, Value a, Value b, std::source_location loc) {
  return record_binary(tape, OpKind::Add, a, b, loc, add_forward<T>);
}
template <class T> Value sub(Tape<T>& tape, Value a, Value b, std::source_location loc) {
  return record_binary(tape, OpKind::Sub, a, b, loc, sub_forward<T>);
}
template <class T> Value mul(Tape<T>& tape, Value a, Value b, std::source_location loc) {
  return record_binary(tape, OpKind::Mul, a, b, loc, mul_forward<T>);
}
template <class T> Value div(Tape<T>& tape, Value a, Value b, std::source_location loc) {
  return record_binary(tape, OpKind::Div, a, b, loc, div_forward<T>);
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
template <class T> void sub_node_vjp(Tape<T>* tape, const Node<T>& node) {
  sub_vjp(tape->grad_out(node), tape->input_grad(node, 0), tape->input_grad(node, 1));
}
template <class T> void mul_node_vjp(Tape<T>* tape, const Node<T>& node) {
  mul_vjp(tape->grad_out(node), tape->input_value(node, 0), tape->input_value(node, 1), tape->input_grad(node, 0),
          tape->input_grad(node, 1));
}
template <class T> void div_node_vjp(Tape<T>* tape, const Node<T>& node) {
  div_vjp(tape->grad_out(node), tape->input_value(node, 0), tape->input_value(node, 1), tape->input_grad(node, 0),
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
Value sub_replay(Tape<double>& t, const ReplayArgs& r) { return sub(t, r.inputs[0], r.inputs[1]); }
Value mul_replay(Tape<double>& t, const ReplayArgs& r) { return mul(t, r.inputs[0], r.inputs[1]); }
Value div_replay(Tape<double>& t, const ReplayArgs& r) { return div(t, r.inputs[0], r.inputs[1]); }
Value scale_replay(Tape<double>& t, const ReplayArgs& r) { return scale(t, r.inputs[0], r.attrs.get<ScaleAttrs>().factor); }
Value bias_add_replay(Tape<double>& t, const ReplayArgs& r) { return bias_add(t, r.inputs[0], r.inputs[1]); }
Value sum_replay(Tape<double>& t, const ReplayArgs& r) { return sum(t, r.inputs[0]); }
Value mean_replay(Tape<double>& t, const ReplayArgs& r) { return mean(t, r.inputs[0]); }

// a / b has a pole where b = 0: the divisor's elements within `margin` of it.
void div_kinks(const Attrs&, std::size_t k, const Tensor<double>& x, double margin, std::vector<bool>& at) {
  if (k != 1) return;
  for (std::size_t i = 0; i < x.size(); ++i) at[i] = std::abs(x.data()[i]) <= margin;
}

std::string scale_format(const Attrs& attrs, std::span<const int32_t>) {
  return fmt::format("factor={:g}", attrs.get<ScaleAttrs>().factor);
}

}  // namespace

constinit const OpDef add_op{.name = "add", .input_names = {"a", "b"}, .vjp_float = add_node_vjp<float>,
                             .vjp_double = add_node_vjp<double>, .replay = add_replay};
constinit const OpDef sub_op{.name = "sub", .input_names = {"a", "b"}, .vjp_float = sub_node_vjp<float>,
                             .vjp_double = sub_node_vjp<double>, .replay = sub_replay};
constinit const OpDef mul_op{.name = "mul", .input_names = {"a", "b"}, .vjp_float = mul_node_vjp<float>,
                             .vjp_double = mul_node_vjp<double>, .replay = mul_replay};
constinit const OpDef div_op{.name = "div", .input_names = {"a", "b"}, .vjp_float = div_node_vjp<float>,
                             .vjp_double = div_node_vjp<double>, .replay = div_replay, .kinks = div_kinks};
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
AD_REGISTER_OP(sub_op);
AD_REGISTER_OP(mul_op);
AD_REGISTER_OP(div_op);
AD_REGISTER_OP(scale_op);
AD_REGISTER_OP(bias_add_op);
AD_REGISTER_OP(sum_op);
AD_REGISTER_OP(mean_op);

#define AD_INSTANTIATE(T)                                                                                      \
  template Value add<T>(Tape<T>&, Value, Value, std::source_location);                                        \
  template Value sub<T>(Tape<T>&, Value, Value, std::source_location);                                        \
  template Value mul<T>(Tape<T>&, Value, Value, std::source_location);                                        \
  template Value div<T>(Tape<T>&, Value, Value, std::source_location);                                        \
  template void add_forward<T>(const Tensor<T>&, const Tensor<T>&, Tensor<T>&);                               \
  template void sub_forward<T>(const Tensor<T>&, const Tensor<T>&, Tensor<T>&);                               \
  template void mul_forward<T>(const Tensor<T>&, const Tensor<T>&, Tensor<T>&);                               \
  template void div_forward<T>(const Tensor<T>&, const Tensor<T>&, Tensor<T>&);                               \
  template Value scale<T>(Tape<T>&, Value, double, std::source_location);                                     \
  template Value bias_add<T>(Tape<T>&, Value, Value, std::source_location);                                   \
  template Value sum<T>(Tape<T>&, Value, std::source_location);                                               \
  template Value mean<T>(Tape<T>&, Value, std::source_location);                                              \
  template void add_vjp<T>(const Tensor<T>&, Tensor<T>*, Tensor<T>*);                                         \
  template void sub_vjp<T>(const Tensor<T>&, Tensor<T>*, Tensor<T>*);                                         \
  template void mul_vjp<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, Tensor<T>*, Tensor<T>*);     \
  template void div_vjp<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, Tensor<T>*, Tensor<T>*);     \
  template void scale_vjp<T>(const Tensor<T>&, T, Tensor<T>*);                                                \
  template void bias_add_vjp<T>(const Tensor<T>&, Tensor<T>*, Tensor<T>*);                                    \
  template void broadcast_scalar_vjp<T>(const Tensor<T>&, T, Tensor<T>*);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
