// Elementwise maths, forward and VJP. As for the activations (design document, section
// 3.1.4), the Jacobian of an elementwise f is diagonal with f'(x) on the diagonal, so the
// VJP is dJ/dx[i] = dJ/dy[i] f'(x[i]), element by element:
//   neg:   f' = -1
//   exp:   f' = e^x = y                  (the saved output, as PyTorch)
//   log:   f' = 1/x
//   sqrt:  f' = 1/(2 sqrt(x)) = 1/(2 y)  (the saved output, as PyTorch)
//   pow:   f' = p x^(p-1), and 0 for p = 0 (PyTorch's pow_backward: even at x = 0)
//   abs:   f' = sgn(x), with sgn(0) = 0 at the kink and sgn(NaN) = 0 (PyTorch's sign)
//   clamp: f' = [min <= x <= max]: 1 on the closed interval, the bounds included
//          (PyTorch's clamp_backward), so 0 for NaN and for every x when min > max.
#include "ops/unary.hpp"

#include <cmath>

#include "autodiff/parallel.hpp"
#include "autodiff/higher_order.hpp"
#include "ops/elementwise.hpp"

namespace ad {

namespace {

// y[i] = f(x[i])
template <class T, class F>
void map_into(const Tensor<T>& x, Tensor<T>& y, F f) {
  const T* xp = x.data();
  T* yp = y.data();
  for_each_index(x.size(), [=](std::size_t i) { yp[i] = f(xp[i]); });
}

// gx[i] += d(g[i], s[i]), s the saved x or y.
template <class T, class D>
void accumulate_into(const Tensor<T>& g, const Tensor<T>& s, Tensor<T>* grad_x, D d) {
  if (!grad_x) return;
  const T* gp = g.data();
  const T* sp = s.data();
  T* gx = grad_x->data();
  for_each_index(g.size(), [=](std::size_t i) { gx[i] += d(gp[i], sp[i]); });
}

}  // namespace

template <class T> void neg_forward(const Tensor<T>& x, Tensor<T>& y) {
  map_into(x, y, [](T v) { return -v; });
}
template <class T> void exp_forward(const Tensor<T>& x, Tensor<T>& y) {
  map_into(x, y, [](T v) { return std::exp(v); });
}
template <class T> void log_forward(const Tensor<T>& x, Tensor<T>& y) {
  map_into(x, y, [](T v) { return std::log(v); });
}
template <class T> void sqrt_forward(const Tensor<T>& x, Tensor<T>& y) {
  map_into(x, y, [](T v) { return std::sqrt(v); });
}
template <class T> void pow_forward(const Tensor<T>& x, T exponent, Tensor<T>& y) {
  map_into(x, y, [exponent](T v) { return std::pow(v, exponent); });
}
template <class T> void abs_forward(const Tensor<T>& x, Tensor<T>& y) {
  map_into(x, y, [](T v) { return std::abs(v); });
}
template <class T> void clamp_forward(const Tensor<T>& x, const ClampAttrs& a, Tensor<T>& y) {
  // min(max(x, lo), hi) as torch.clamp, written with comparisons that are false for NaN,
  // so NaN passes through; lo > hi gives hi.
  const T lo = static_cast<T>(a.min), hi = static_cast<T>(a.max);
  map_into(x, y, [lo, hi](T v) {
    const T up = v < lo ? lo : v;
    return up > hi ? hi : up;
  });
}

// dx[i] -= g[i]
template <class T> void neg_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_x) {
  accumulate_into(grad_out, grad_out, grad_x, [](T g, T) { return -g; });
}
// dx[i] += g[i] y[i]
template <class T> void exp_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, Tensor<T>* grad_x) {
  accumulate_into(grad_out, y, grad_x, [](T g, T e) { return g * e; });
}
// dx[i] += g[i] / x[i]
template <class T> void log_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, Tensor<T>* grad_x) {
  accumulate_into(grad_out, x, grad_x, [](T g, T v) { return g / v; });
}
// dx[i] += g[i] / (2 y[i])
template <class T> void sqrt_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, Tensor<T>* grad_x) {
  accumulate_into(grad_out, y, grad_x, [](T g, T r) { return g / (T(2) * r); });
}
// dx[i] += g[i] (p x[i]^(p-1)); nothing for p = 0
template <class T> void pow_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, T exponent, Tensor<T>* grad_x) {
  if (exponent == T(0)) return;
  accumulate_into(grad_out, x, grad_x, [p = exponent](T g, T v) { return g * (p * std::pow(v, p - T(1))); });
}
// dx[i] += g[i] sgn(x[i])
template <class T> void abs_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, Tensor<T>* grad_x) {
  accumulate_into(grad_out, x, grad_x, [](T g, T v) { return v > T(0) ? g : v < T(0) ? -g : T(0); });
}
// dx[i] += min <= x[i] <= max ? g[i] : 0
template <class T> void clamp_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const ClampAttrs& a, Tensor<T>* grad_x) {
  const T lo = static_cast<T>(a.min), hi = static_cast<T>(a.max);
  accumulate_into(grad_out, x, grad_x, [lo, hi](T g, T v) { return v >= lo && v <= hi ? g : T(0); });
}

namespace {
// y = f(x) on the tape, y shaped like x: `forward` is the op's *_forward with its
// attributes bound.
template <class T, class Forward>
Value record_map(Tape<T>& tape, OpId op, Value x, const Attrs& attrs, std::source_location loc, Forward forward) {
  const Tensor<T>& xv = tape.value(x);
  const Value y = tape.new_value(to_shape(xv.shape()), tape.any_requires_grad({x}));
  forward(xv, tape.mutable_value(y));
  tape.record(op, {x}, y, attrs, loc);
  return y;
}
}  // namespace

template <class T> Value neg(Tape<T>& tape, Value x, std::source_location loc) {
  return record_map(tape, OpKind::Neg, x, Attrs{}, loc, neg_forward<T>);
}
template <class T> Value exp(Tape<T>& tape, Value x, std::source_location loc) {
  return record_map(tape, OpKind::Exp, x, Attrs{}, loc, exp_forward<T>);
}
template <class T> Value log(Tape<T>& tape, Value x, std::source_location loc) {
  return record_map(tape, OpKind::Log, x, Attrs{}, loc, log_forward<T>);
}
template <class T> Value sqrt(Tape<T>& tape, Value x, std::source_location loc) {
  return record_map(tape, OpKind::Sqrt, x, Attrs{}, loc, sqrt_forward<T>);
}
template <class T> Value pow(Tape<T>& tape, Value x, double exponent, std::source_location loc) {
  return record_map(tape, OpKind::Pow, x, Attrs::of(PowAttrs{exponent}), loc,
                    [exponent](const Tensor<T>& in, Tensor<T>& out) { pow_forward(in, static_cast<T>(exponent), out); });
}
template <class T> Value abs(Tape<T>& tape, Value x, std::source_location loc) {
  return record_map(tape, OpKind::Abs, x, Attrs{}, loc, abs_forward<T>);
}
template <class T>
Value clamp(Tape<T>& tape, Value x, std::optional<double> min, std::optional<double> max, std::source_location loc) {
  if (!min && !max) shape_error("clamp", "at least one of min and max must be given (as torch.clamp)");
  ClampAttrs a;
  if (min) a.min = *min;
  if (max) a.max = *max;
  return record_map(tape, OpKind::Clamp, x, Attrs::of(a), loc,
                    [a](const Tensor<T>& in, Tensor<T>& out) { clamp_forward(in, a, out); });
}

// ---- the registry entries (autodiff/op.hpp) ----

namespace {

// exp and sqrt read their output (the saved y), the others their input.
template <class T> const Tensor<T>& output_value(Tape<T>* tape, const Node<T>& node) {
  return tape->value(Value{node.output});
}

template <class T> void neg_node_vjp(Tape<T>* tape, const Node<T>& node) {
  neg_vjp(tape->grad_out(node), tape->input_grad(node, 0));
}
template <class T> void exp_node_vjp(Tape<T>* tape, const Node<T>& node) {
  exp_vjp(tape->grad_out(node), output_value(tape, node), tape->input_grad(node, 0));
}
template <class T> void log_node_vjp(Tape<T>* tape, const Node<T>& node) {
  log_vjp(tape->grad_out(node), tape->input_value(node, 0), tape->input_grad(node, 0));
}
template <class T> void sqrt_node_vjp(Tape<T>* tape, const Node<T>& node) {
  sqrt_vjp(tape->grad_out(node), output_value(tape, node), tape->input_grad(node, 0));
}
template <class T> void pow_node_vjp(Tape<T>* tape, const Node<T>& node) {
  pow_vjp(tape->grad_out(node), tape->input_value(node, 0), static_cast<T>(attrs_as<PowAttrs>(node.attrs).exponent),
          tape->input_grad(node, 0));
}
template <class T> void abs_node_vjp(Tape<T>* tape, const Node<T>& node) {
  abs_vjp(tape->grad_out(node), tape->input_value(node, 0), tape->input_grad(node, 0));
}
template <class T> void clamp_node_vjp(Tape<T>* tape, const Node<T>& node) {
  clamp_vjp(tape->grad_out(node), tape->input_value(node, 0), attrs_as<ClampAttrs>(node.attrs), tape->input_grad(node, 0));
}

Value neg_replay(Tape<double>& t, const ReplayArgs& r) { return neg(t, r.inputs[0]); }
Value exp_replay(Tape<double>& t, const ReplayArgs& r) { return ad::exp(t, r.inputs[0]); }
Value log_replay(Tape<double>& t, const ReplayArgs& r) { return ad::log(t, r.inputs[0]); }
Value sqrt_replay(Tape<double>& t, const ReplayArgs& r) { return ad::sqrt(t, r.inputs[0]); }
Value pow_replay(Tape<double>& t, const ReplayArgs& r) { return ad::pow(t, r.inputs[0], r.attrs.get<PowAttrs>().exponent); }
Value abs_replay(Tape<double>& t, const ReplayArgs& r) { return ad::abs(t, r.inputs[0]); }
Value clamp_replay(Tape<double>& t, const ReplayArgs& r) {
  const auto a = r.attrs.get<ClampAttrs>();
  return clamp(t, r.inputs[0], a.min, a.max);
}

std::string pow_format(const Attrs& attrs, std::span<const int32_t>) {
  return fmt::format("exponent={:g}", attrs.get<PowAttrs>().exponent);
}
// Only the bounds given: "min=-1 max=1", "max=6".
// ---- recorded VJPs (higher-order gradients): the VJPs above with ops ----
//   neg: gx = -g    exp: gx = g y    log: gx = g / x    sqrt: gx = g / (2 y)
//   pow: gx = g p x^(p-1) (nothing for p = 0)
//   abs, clamp: gx = g .* c, with c = sgn(x) resp. [min <= x <= max] recorded as a constant:
//   piecewise constant in x, so its derivative is zero away from the corners.
template <class T> void neg_record_vjp(Tape<T>& t, int32_t, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0)) gi[0] = neg(t, g);
}
template <class T> void exp_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0)) gi[0] = mul(t, g, node_output(t, n));
}
template <class T> void log_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0)) gi[0] = div(t, g, node_input(t, n, 0));
}
template <class T> void sqrt_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0)) gi[0] = div(t, g, scale(t, node_output(t, n), 2.0));
}
template <class T> void pow_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  const double p = attrs_as<PowAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs).exponent;
  if (wants(want, 0) && p != 0) gi[0] = mul(t, g, scale(t, pow(t, node_input(t, n, 0), p - 1), p));
}
template <class T, class F>
Value masked(Tape<T>& t, int32_t n, Value g, F factor, const char* label) {
  const Tensor<T>& x = t.value(node_input(t, n, 0));
  Tensor<T> c(x.shape());
  for (std::size_t i = 0; i < x.size(); ++i) c.data()[i] = factor(x.data()[i]);
  return mul(t, g, t.input(c, label));
}
template <class T> void abs_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0))
    gi[0] = masked(t, n, g, [](T v) { return v > T(0) ? T(1) : v < T(0) ? T(-1) : T(0); }, "sgn(x)");
}
template <class T> void clamp_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const auto a = attrs_as<ClampAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs);
  gi[0] = masked(t, n, g, [a](T v) { return static_cast<double>(v) >= a.min && static_cast<double>(v) <= a.max ? T(1) : T(0); },
                 "[min <= x <= max]");
}

std::string clamp_format(const Attrs& attrs, std::span<const int32_t>) {
  const auto a = attrs.get<ClampAttrs>();
  std::string s;
  if (a.min != -INFINITY) s += fmt::format("min={:g}", a.min);
  if (a.max != INFINITY) s += fmt::format("{}max={:g}", s.empty() ? "" : " ", a.max);
  return s;
}

// Where each op is not differentiable (gradcheck skips the elements within `margin`).
// log and sqrt: the edge of the domain at 0 (slope unbounded, NaN below).
void kink_at_domain_edge(const Attrs&, std::size_t, const Tensor<double>& x, double margin, std::vector<bool>& at) {
  for (std::size_t i = 0; i < x.size(); ++i) at[i] = x.data()[i] <= margin;
}
// abs: the corner at 0.
void abs_kinks(const Attrs&, std::size_t, const Tensor<double>& x, double margin, std::vector<bool>& at) {
  for (std::size_t i = 0; i < x.size(); ++i) at[i] = std::abs(x.data()[i]) <= margin;
}
// x^p: smooth everywhere for a whole p >= 0; a pole at 0 for a whole p < 0; otherwise
// NaN below 0 and (for p < 1) an unbounded slope at 0.
void pow_kinks(const Attrs& attrs, std::size_t k, const Tensor<double>& x, double margin, std::vector<bool>& at) {
  const double p = attrs.get<PowAttrs>().exponent;
  if (p == std::floor(p)) {
    if (p < 0) abs_kinks(attrs, k, x, margin, at);
    return;
  }
  kink_at_domain_edge(attrs, k, x, margin, at);
}
// clamp: the corners at min and max.
void clamp_kinks(const Attrs& attrs, std::size_t, const Tensor<double>& x, double margin, std::vector<bool>& at) {
  const auto a = attrs.get<ClampAttrs>();
  for (std::size_t i = 0; i < x.size(); ++i)
    at[i] = std::abs(x.data()[i] - a.min) <= margin || std::abs(x.data()[i] - a.max) <= margin;
}

}  // namespace

constinit const OpDef neg_op{.name = "neg", .vjp_float = neg_node_vjp<float>, .vjp_double = neg_node_vjp<double>,
                             .replay = neg_replay,
    .record_vjp_float = neg_record_vjp<float>, .record_vjp_double = neg_record_vjp<double>};
constinit const OpDef exp_op{.name = "exp", .vjp_float = exp_node_vjp<float>, .vjp_double = exp_node_vjp<double>,
                             .replay = exp_replay,
    .record_vjp_float = exp_record_vjp<float>, .record_vjp_double = exp_record_vjp<double>};
constinit const OpDef log_op{.name = "log", .vjp_float = log_node_vjp<float>, .vjp_double = log_node_vjp<double>,
                             .replay = log_replay, .kinks = kink_at_domain_edge,
    .record_vjp_float = log_record_vjp<float>, .record_vjp_double = log_record_vjp<double>};
constinit const OpDef sqrt_op{.name = "sqrt", .vjp_float = sqrt_node_vjp<float>, .vjp_double = sqrt_node_vjp<double>,
                              .replay = sqrt_replay, .kinks = kink_at_domain_edge,
    .record_vjp_float = sqrt_record_vjp<float>, .record_vjp_double = sqrt_record_vjp<double>};
constinit const OpDef pow_op{.name = "pow", .vjp_float = pow_node_vjp<float>, .vjp_double = pow_node_vjp<double>,
                             .replay = pow_replay, .format_attrs = pow_format, .kinks = pow_kinks,
    .record_vjp_float = pow_record_vjp<float>, .record_vjp_double = pow_record_vjp<double>};
constinit const OpDef abs_op{.name = "abs", .vjp_float = abs_node_vjp<float>, .vjp_double = abs_node_vjp<double>,
                             .replay = abs_replay, .kinks = abs_kinks,
    .record_vjp_float = abs_record_vjp<float>, .record_vjp_double = abs_record_vjp<double>};
constinit const OpDef clamp_op{.name = "clamp", .vjp_float = clamp_node_vjp<float>,
                               .vjp_double = clamp_node_vjp<double>, .replay = clamp_replay,
                               .format_attrs = clamp_format, .kinks = clamp_kinks,
    .record_vjp_float = clamp_record_vjp<float>, .record_vjp_double = clamp_record_vjp<double>};
AD_REGISTER_OP(neg_op);
AD_REGISTER_OP(exp_op);
AD_REGISTER_OP(log_op);
AD_REGISTER_OP(sqrt_op);
AD_REGISTER_OP(pow_op);
AD_REGISTER_OP(abs_op);
AD_REGISTER_OP(clamp_op);

#define AD_INSTANTIATE(T)                                                                               \
  template void neg_forward<T>(const Tensor<T>&, Tensor<T>&);                                          \
  template void exp_forward<T>(const Tensor<T>&, Tensor<T>&);                                          \
  template void log_forward<T>(const Tensor<T>&, Tensor<T>&);                                          \
  template void sqrt_forward<T>(const Tensor<T>&, Tensor<T>&);                                         \
  template void pow_forward<T>(const Tensor<T>&, T, Tensor<T>&);                                       \
  template void abs_forward<T>(const Tensor<T>&, Tensor<T>&);                                          \
  template void clamp_forward<T>(const Tensor<T>&, const ClampAttrs&, Tensor<T>&);                     \
  template void neg_vjp<T>(const Tensor<T>&, Tensor<T>*);                                              \
  template void exp_vjp<T>(const Tensor<T>&, const Tensor<T>&, Tensor<T>*);                            \
  template void log_vjp<T>(const Tensor<T>&, const Tensor<T>&, Tensor<T>*);                            \
  template void sqrt_vjp<T>(const Tensor<T>&, const Tensor<T>&, Tensor<T>*);                           \
  template void pow_vjp<T>(const Tensor<T>&, const Tensor<T>&, T, Tensor<T>*);                         \
  template void abs_vjp<T>(const Tensor<T>&, const Tensor<T>&, Tensor<T>*);                            \
  template void clamp_vjp<T>(const Tensor<T>&, const Tensor<T>&, const ClampAttrs&, Tensor<T>*);       \
  template Value neg<T>(Tape<T>&, Value, std::source_location);                                        \
  template Value exp<T>(Tape<T>&, Value, std::source_location);                                        \
  template Value log<T>(Tape<T>&, Value, std::source_location);                                        \
  template Value sqrt<T>(Tape<T>&, Value, std::source_location);                                       \
  template Value pow<T>(Tape<T>&, Value, double, std::source_location);                                \
  template Value abs<T>(Tape<T>&, Value, std::source_location);                                        \
  template Value clamp<T>(Tape<T>&, Value, std::optional<double>, std::optional<double>, std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
