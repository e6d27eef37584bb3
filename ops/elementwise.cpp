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

#include "autodiff/higher_order.hpp"
#include "ops/broadcast.hpp"
#include "ops/shape.hpp"
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

// ---- sum_to and broadcast_to ----

TargetShapeAttrs TargetShapeAttrs::of(const Shape& s) {
  if (s.size() > 6) shape_error("sum_to", "target shape {} has rank {} (at most 6)", shape_str(s), s.size());
  TargetShapeAttrs a;
  a.rank = static_cast<uint32_t>(s.size());
  for (std::size_t d = 0; d < s.size(); ++d) a.shape[d] = static_cast<uint32_t>(s[d]);
  return a;
}

namespace {
// y (shape `to`) = x stretched: y[i] = x[ix(i)].
template <class T>
void broadcast_to_forward(const Tensor<T>& x, Tensor<T>& y) {
  const Broadcast bc = broadcast("broadcast_to", to_shape(x.shape()), to_shape(y.shape()));
  const T* xp = x.data();
  T* yp = y.data();
  const std::size_t sx = bc.inner_a;
  for_each_block(bc, true, [&](std::size_t i, std::size_t ix, std::size_t, std::size_t len) {
    for (std::size_t k = 0; k < len; ++k) yp[i + k] = xp[ix + k * sx];
  });
}
// grad_x (the smaller shape) += g summed over the stretched axes: add's VJP for operand a.
template <class T>
void sum_to_accumulate(const Tensor<T>& g, Tensor<T>& grad_x) {
  add_vjp<T>(g, &grad_x, nullptr);
}
// x's shape broadcasts to `to` and gives exactly `to`.
void check_broadcasts_to(const char* op, const Shape& from, const Shape& to) {
  const Broadcast bc = broadcast(op, from, to);
  if (bc.out != to)
    shape_error(op, "{} does not broadcast to {} (it gives {}; NumPy's rule, with the target's sizes kept)",
                shape_str(from), shape_str(to), shape_str(bc.out));
}
}  // namespace

template <class T> Value sum_to(Tape<T>& tape, Value x, const Shape& shape, std::source_location loc) {
  const Shape xs = tape.shape(x);
  if (xs == shape) return x;
  check_broadcasts_to("sum_to", shape, xs);
  Value y = tape.new_value(shape, tape.any_requires_grad({x}));
  Tensor<T>& yv = tape.mutable_value(y);
  zero_fill(yv);
  sum_to_accumulate(tape.value(x), yv);
  tape.record(OpKind::SumTo, {x}, y, Attrs::of(TargetShapeAttrs::of(shape)), loc);
  return y;
}

template <class T> Value broadcast_to(Tape<T>& tape, Value x, const Shape& shape, std::source_location loc) {
  const Shape xs = tape.shape(x);
  if (xs == shape) return x;
  check_broadcasts_to("broadcast_to", xs, shape);
  Value y = tape.new_value(shape, tape.any_requires_grad({x}));
  broadcast_to_forward(tape.value(x), tape.mutable_value(y));
  tape.record(OpKind::BroadcastTo, {x}, y, Attrs::of(TargetShapeAttrs::of(shape)), loc);
  return y;
}

// ---- the registry entries (autodiff/op.hpp) ----

namespace {

// sum_to: gx += g stretched back to x's shape.
template <class T> void sum_to_node_vjp(Tape<T>* tape, const Node<T>& node) {
  Tensor<T>* gx = tape->input_grad(node, 0);
  if (!gx) return;
  Tensor<T> stretched(gx->shape());
  broadcast_to_forward(tape->grad_out(node), stretched);
  *gx += stretched;
}
// broadcast_to: gx += g summed back to x's shape.
template <class T> void broadcast_to_node_vjp(Tape<T>* tape, const Node<T>& node) {
  if (Tensor<T>* gx = tape->input_grad(node, 0)) sum_to_accumulate(tape->grad_out(node), *gx);
}

// ---- recorded VJPs (higher-order gradients): the VJPs above written with ops ----
// Binary ops: ga = sum_to(dc/da g, a's shape), as the numeric VJPs, with
//   add: g, g    sub: g, -g    mul: g b, g a    div: g / b, -g c / b   (c = a / b, the output)
template <class T> void add_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  for (std::size_t k = 0; k < 2; ++k)
    if (wants(want, k)) gi[k] = sum_to(t, g, t.shape(node_input(t, n, k)));
}
template <class T> void sub_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0)) gi[0] = sum_to(t, g, t.shape(node_input(t, n, 0)));
  if (wants(want, 1)) gi[1] = sum_to(t, scale(t, g, -1.0), t.shape(node_input(t, n, 1)));
}
template <class T> void mul_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  const Value a = node_input(t, n, 0), b = node_input(t, n, 1);
  if (wants(want, 0)) gi[0] = sum_to(t, mul(t, g, b), t.shape(a));
  if (wants(want, 1)) gi[1] = sum_to(t, mul(t, g, a), t.shape(b));
}
template <class T> void div_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  const Value b = node_input(t, n, 1), c = node_output(t, n);
  if (wants(want, 0)) gi[0] = sum_to(t, div(t, g, b), t.shape(node_input(t, n, 0)));
  // d(a/b)/db = -a/b^2 = -c/b
  if (wants(want, 1)) gi[1] = sum_to(t, scale(t, mul(t, g, div(t, c, b)), -1.0), t.shape(b));
}
template <class T> void scale_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0)) gi[0] = scale(t, g, attrs_as<ScaleAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs).factor);
}
// bias_add: gx = g; gb[c] = sum of g over every axis but 1 = sum_to(g, (1, C, 1, ...)) read as (C).
template <class T> void bias_add_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0)) gi[0] = g;
  if (wants(want, 1)) {
    Shape keep(t.shape(g).size(), 1);
    keep[1] = t.shape(g)[1];
    gi[1] = reshape(t, sum_to(t, g, keep), {static_cast<int64_t>(keep[1])});
  }
}
// sum: gx = g stretched; mean: the same over size.
template <class T> void sum_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0)) gi[0] = broadcast_to(t, g, t.shape(node_input(t, n, 0)));
}
template <class T> void mean_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const Value x = node_input(t, n, 0);
  gi[0] = scale(t, broadcast_to(t, g, t.shape(x)), 1.0 / static_cast<double>(t.value(x).size()));
}
// sum_to and broadcast_to: each is the other's VJP (both linear).
template <class T> void sum_to_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0)) gi[0] = broadcast_to(t, g, t.shape(node_input(t, n, 0)));
}
template <class T> void broadcast_to_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0)) gi[0] = sum_to(t, g, t.shape(node_input(t, n, 0)));
}

Value sum_to_replay(Tape<double>& t, const ReplayArgs& r) { return sum_to(t, r.inputs[0], r.attrs.get<TargetShapeAttrs>().get()); }
Value broadcast_to_replay(Tape<double>& t, const ReplayArgs& r) {
  return broadcast_to(t, r.inputs[0], r.attrs.get<TargetShapeAttrs>().get());
}
std::string target_shape_format(const Attrs& attrs, std::span<const int32_t>) {
  return fmt::format("shape={}", shape_str(attrs.get<TargetShapeAttrs>().get()));
}

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
                             .vjp_double = add_node_vjp<double>, .replay = add_replay,
    .record_vjp_float = add_record_vjp<float>, .record_vjp_double = add_record_vjp<double>};
constinit const OpDef sub_op{.name = "sub", .input_names = {"a", "b"}, .vjp_float = sub_node_vjp<float>,
                             .vjp_double = sub_node_vjp<double>, .replay = sub_replay,
    .record_vjp_float = sub_record_vjp<float>, .record_vjp_double = sub_record_vjp<double>};
constinit const OpDef mul_op{.name = "mul", .input_names = {"a", "b"}, .vjp_float = mul_node_vjp<float>,
                             .vjp_double = mul_node_vjp<double>, .replay = mul_replay,
    .record_vjp_float = mul_record_vjp<float>, .record_vjp_double = mul_record_vjp<double>};
constinit const OpDef div_op{.name = "div", .input_names = {"a", "b"}, .vjp_float = div_node_vjp<float>,
                             .vjp_double = div_node_vjp<double>, .replay = div_replay, .kinks = div_kinks,
    .record_vjp_float = div_record_vjp<float>, .record_vjp_double = div_record_vjp<double>};
constinit const OpDef scale_op{.name = "scale", .vjp_float = scale_node_vjp<float>,
                               .vjp_double = scale_node_vjp<double>, .replay = scale_replay,
                               .format_attrs = scale_format,
    .record_vjp_float = scale_record_vjp<float>, .record_vjp_double = scale_record_vjp<double>};
constinit const OpDef bias_add_op{.name = "bias_add", .input_names = {"input", "bias"},
                                  .vjp_float = bias_add_node_vjp<float>, .vjp_double = bias_add_node_vjp<double>,
                                  .replay = bias_add_replay,
    .record_vjp_float = bias_add_record_vjp<float>, .record_vjp_double = bias_add_record_vjp<double>};
constinit const OpDef sum_op{.name = "sum", .vjp_float = sum_node_vjp<float>, .vjp_double = sum_node_vjp<double>,
                             .replay = sum_replay,
    .record_vjp_float = sum_record_vjp<float>, .record_vjp_double = sum_record_vjp<double>};
constinit const OpDef mean_op{.name = "mean", .vjp_float = mean_node_vjp<float>, .vjp_double = mean_node_vjp<double>,
                              .replay = mean_replay,
    .record_vjp_float = mean_record_vjp<float>, .record_vjp_double = mean_record_vjp<double>};
constinit const OpDef sum_to_op{.name = "sum_to", .vjp_float = sum_to_node_vjp<float>,
                                .vjp_double = sum_to_node_vjp<double>, .replay = sum_to_replay,
                                .format_attrs = target_shape_format, .record_vjp_float = sum_to_record_vjp<float>,
                                .record_vjp_double = sum_to_record_vjp<double>};
constinit const OpDef broadcast_to_op{.name = "broadcast_to", .vjp_float = broadcast_to_node_vjp<float>,
                                      .vjp_double = broadcast_to_node_vjp<double>, .replay = broadcast_to_replay,
                                      .format_attrs = target_shape_format,
                                      .record_vjp_float = broadcast_to_record_vjp<float>,
                                      .record_vjp_double = broadcast_to_record_vjp<double>};
AD_REGISTER_OP(sum_to_op);
AD_REGISTER_OP(broadcast_to_op);
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
  template Value sum_to<T>(Tape<T>&, Value, const Shape&, std::source_location);                              \
  template Value broadcast_to<T>(Tape<T>&, Value, const Shape&, std::source_location);                        \
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
