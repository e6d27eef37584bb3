// Losses, forward and VJP.
// Softmax cross-entropy, fused: with p = softmax(z) and y the one-hot label,
//   J_n = log sum_k exp(z_nk) - z_n,label = lse_n - z_n,label,
//   dJ/dz_nk = (p_nk - y_nk) / N   for the batch mean (N: the rows not ignored, see
//   CrossEntropyOptions::ignore_index; an ignored row's logits get no gradient),
// which is the design document's dJ/dZ^[3] = dJ/dA^[3] dA^[3]/dZ^[3] (section 3.1.1)
// multiplied out for A^[3] = softmax(Z^[3]) and J = cross-entropy.
// MSE: J = 1/M sum_i (p_i - t_i)^2, dJ/dp_i = 2 (p_i - t_i) / M = -dJ/dt_i.
#include "ops/loss.hpp"

#include <algorithm>
#include <cmath>

#include "autodiff/higher_order.hpp"
#include "ops/elementwise.hpp"
#include "ops/scratch.hpp"
#include "ops/shape.hpp"
#include "ops/shape_check.hpp"

namespace ad {

template <class T>
Value softmax_cross_entropy(Tape<T>& tape, Value logits, const std::vector<int>& labels, const CrossEntropyOptions& opt,
                            std::source_location loc) {
  const char* op = "softmax_cross_entropy";
  const Shape zs = tape.shape(logits);
  check_rank(op, "logits", zs, 2, "(N, K)");
  check_nonempty_but_batch(op, "logits", zs);  // N = 0: the mean of nothing, NaN
  const std::size_t N = zs[0], K = zs[1];
  if (labels.size() != N)
    shape_error(op, "logits {} and labels ({}) disagree on N ({} vs {})", shape_str(zs), labels.size(), N, labels.size());
  const int ignore = opt.ignore_index;
  for (std::size_t n = 0; n < N; ++n)
    if (labels[n] != ignore && (labels[n] < 0 || static_cast<std::size_t>(labels[n]) >= K))
      shape_error(op, "label {} at position {} is out of range for logits {}: labels must be in [0, {}) or the "
                  "ignore_index ({})", labels[n], n, shape_str(zs), K, ignore);

  Value y = tape.new_value(Shape{}, tape.any_requires_grad({logits}));
  Node<T>* node = tape.record(OpKind::SoftmaxCrossEntropy, {logits}, y, Attrs{}, loc);
  const T* z = tape.value(logits).data();
  // Probabilities are kept for the VJP only when a gradient will be asked for; the
  // labels too, an ignored row's as kIgnoredLabel (see loss.hpp).
  T* p = nullptr;
  if (node && tape.requires_grad(y)) {
    node->saved.resize(zs);
    p = node->saved.data();
    node->saved_index.resize(N);
    for (std::size_t n = 0; n < N; ++n) node->saved_index[n] = labels[n] == ignore ? kIgnoredLabel : labels[n];
  }
  T total = 0;
  std::size_t counted = 0;  // M, the rows not ignored
  for (std::size_t n = 0; n < N; ++n) {
    const T* zn = z + n * K;
    if (labels[n] == ignore) {
      if (p) std::fill(p + n * K, p + (n + 1) * K, T(0));
      continue;
    }
    T m = zn[0];
    for (std::size_t k = 1; k < K; ++k) m = std::max(m, zn[k]);
    T s = 0;
    for (std::size_t k = 0; k < K; ++k) s += std::exp(zn[k] - m);
    const T lse = m + std::log(s);  // log sum_k exp(z_nk), shifted by the max
    total += lse - zn[labels[n]];
    ++counted;
    if (p)
      for (std::size_t k = 0; k < K; ++k) p[n * K + k] = std::exp(zn[k] - lse);
  }
  tape.mutable_value(y).data()[0] = total / static_cast<T>(counted);  // 0/0 = NaN when nothing counted
  return y;
}

template <class T>
void softmax_cross_entropy_vjp(const Tensor<T>& grad_out, const Tensor<T>& probs, const std::vector<int32_t>& labels,
                               Tensor<T>* grad_logits) {
  if (!grad_logits) return;
  const std::size_t N = probs.shape()[0], K = probs.shape()[1];
  const auto counted_row = [&](std::size_t n) { return labels[n] >= 0 && static_cast<std::size_t>(labels[n]) < K; };
  std::size_t M = 0;
  for (std::size_t n = 0; n < N; ++n) M += counted_row(n);
  if (M == 0) return;  // every row ignored (or none): no logit affects J
  const T scale = grad_out.data()[0] / static_cast<T>(M);
  T* gz = grad_logits->data();
  // dz[n,k] += g/M (p[n,k] - [k == label_n]) on the rows not ignored
  for (std::size_t n = 0; n < N; ++n) {
    if (!counted_row(n)) continue;
    for (std::size_t k = 0; k < K; ++k)
      gz[n * K + k] += scale * (probs.data()[n * K + k] - (static_cast<int32_t>(k) == labels[n] ? T(1) : T(0)));
  }
}

template <class T>
Value mse(Tape<T>& tape, Value pred, Value target, std::source_location loc) {
  const Shape ps = tape.shape(pred), ts = tape.shape(target);
  if (ps != ts) shape_error("mse", "prediction {} and target {} must have the same shape", shape_str(ps), shape_str(ts));
  check_nonempty("mse", "prediction", ps);
  Value y = tape.new_value(Shape{}, tape.any_requires_grad({pred, target}));
  const Tensor<T>& p = tape.value(pred);
  const Tensor<T>& t = tape.value(target);
  T s = 0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    const T d = p.data()[i] - t.data()[i];
    s += d * d;
  }
  tape.mutable_value(y).data()[0] = s / static_cast<T>(p.size());
  tape.record(OpKind::Mse, {pred, target}, y, Attrs{}, loc);
  return y;
}

template <class T>
void mse_vjp(const Tensor<T>& grad_out, const Tensor<T>& pred, const Tensor<T>& target, Tensor<T>* grad_pred,
             Tensor<T>* grad_target) {
  const T c = T(2) * grad_out.data()[0] / static_cast<T>(pred.size());
  for (std::size_t i = 0; i < pred.size(); ++i) {
    const T d = c * (pred.data()[i] - target.data()[i]);  // 2 g (p_i - t_i) / M
    if (grad_pred) grad_pred->data()[i] += d;
    if (grad_target) grad_target->data()[i] -= d;
  }
}

// ---- softmax_cross_entropy_backward (higher-order gradients; derivation in loss.hpp) ----

namespace {
// Softmax of each row of z (N, K) into p; rows with a label outside [0, K) are left 0.
template <class T>
void softmax_rows(const Tensor<T>& z, std::span<const int32_t> labels, Tensor<T>& p) {
  const std::size_t N = z.shape()[0], K = z.shape()[1];
  zero_fill(p);
  for (std::size_t n = 0; n < N; ++n) {
    if (labels[n] < 0 || static_cast<std::size_t>(labels[n]) >= K) continue;
    const T* zn = z.data() + n * K;
    T m = zn[0];
    for (std::size_t k = 1; k < K; ++k) m = std::max(m, zn[k]);
    T s = 0;
    for (std::size_t k = 0; k < K; ++k) s += std::exp(zn[k] - m);
    const T lse = m + std::log(s);
    for (std::size_t k = 0; k < K; ++k) p.data()[n * K + k] = std::exp(zn[k] - lse);
  }
}
std::size_t counted_rows(std::span<const int32_t> labels, std::size_t K) {
  std::size_t M = 0;
  for (int32_t l : labels) M += l >= 0 && static_cast<std::size_t>(l) < K;
  return M;
}
}  // namespace

template <class T>
Value softmax_cross_entropy_backward(Tape<T>& tape, Value logits, Value grad_out, std::span<const int32_t> labels,
                                     std::source_location loc) {
  const char* op = "softmax_cross_entropy_backward";
  const Shape zs = tape.shape(logits);
  check_rank(op, "logits", zs, 2, "(N, K)");
  if (tape.value(grad_out).size() != 1)
    shape_error(op, "grad_out {} must be a scalar", shape_str(tape.shape(grad_out)));
  if (labels.size() != zs[0]) shape_error(op, "logits {} and labels ({}) disagree on N", shape_str(zs), labels.size());
  Value y = tape.new_value(zs, tape.any_requires_grad({logits, grad_out}));
  Tensor<T>& yv = tape.mutable_value(y);
  Tensor<T> probs(zs);
  softmax_rows(tape.value(logits), labels, probs);
  zero_fill(yv);
  const std::vector<int32_t> lab(labels.begin(), labels.end());
  softmax_cross_entropy_vjp(tape.value(grad_out), probs, lab, &yv);
  if (Node<T>* node = tape.record(OpKind::SoftmaxCrossEntropyBackward, {logits, grad_out}, y, Attrs{}, loc)) {
    node->saved = std::move(probs);
    node->saved_index = lab;
  }
  return y;
}

namespace {
// gz[n,:] += g/M (p .* u_n - p <p, u_n>),  gg += 1/M sum_n <u_n, p_n - onehot_n>  (counted rows)
template <class T> void softmax_cross_entropy_backward_node_vjp(Tape<T>* tape, const Node<T>& node) {
  const Tensor<T>& u = tape->grad_out(node);
  const Tensor<T>& p = node.saved;
  const std::size_t N = p.shape()[0], K = p.shape()[1];
  const std::size_t M = counted_rows(node.saved_index, K);
  if (M == 0) return;
  const T g = tape->input_value(node, 1).data()[0];
  Tensor<T>* gz = tape->input_grad(node, 0);
  Tensor<T>* gg = tape->input_grad(node, 1);
  T dg = 0;
  for (std::size_t n = 0; n < N; ++n) {
    const int32_t l = node.saved_index[n];
    if (l < 0 || static_cast<std::size_t>(l) >= K) continue;
    const T* pn = p.data() + n * K;
    const T* un = u.data() + n * K;
    T pu = 0;
    for (std::size_t k = 0; k < K; ++k) pu += pn[k] * un[k];
    if (gz)
      for (std::size_t k = 0; k < K; ++k) gz->data()[n * K + k] += g / static_cast<T>(M) * pn[k] * (un[k] - pu);
    dg += pu - un[l];
  }
  if (gg) gg->data()[0] += dg / static_cast<T>(M);
}
// Recorded VJP of softmax_cross_entropy_backward (the loss's third derivative and up), the
// formulas above as ops: with p = softmax(z) recorded, m[n] = 1/M on counted rows (0 on the
// others) and e the one-hot labels (both constants),
//   gz = g m .* (p .* u - p .* sum_k(p .* u)),   gg = sum(m .* (u .* (p - e))).
template <class T>
void softmax_cross_entropy_backward_record_vjp(Tape<T>& t, int32_t n, Value u, uint32_t want, std::span<Value> gi) {
  const std::vector<int32_t> labels = t.nodes()[static_cast<std::size_t>(n)].saved_index;  // a copy: nodes grow
  const Value z = node_input(t, n, 0), g = node_input(t, n, 1);
  const Shape zs = t.shape(z);
  const std::size_t N = zs[0], K = zs[1], M = counted_rows(labels, K);
  Tensor<T> mask(Shape{N, 1}), onehot(zs);
  zero_fill(onehot);
  for (std::size_t r = 0; r < N; ++r) {
    const bool counted = labels[r] >= 0 && static_cast<std::size_t>(labels[r]) < K;
    mask.data()[r] = counted ? T(1) / static_cast<T>(M) : T(0);
    if (counted) onehot.data()[r * K + static_cast<std::size_t>(labels[r])] = T(1);
  }
  const Value m = t.input(mask, "1/M on counted rows");
  const Value p = softmax(t, z, 1);
  const Value pu = mul(t, p, u);
  if (wants(want, 0)) {
    const Value jp = sub(t, pu, mul(t, p, sum_to(t, pu, Shape{N, 1})));
    gi[0] = mul(t, mul(t, jp, m), g);
  }
  if (wants(want, 1)) {
    const Value s = sum(t, mul(t, mul(t, u, sub(t, p, t.input(onehot, "one-hot labels"))), m));
    const Shape gs = t.shape(g);
    gi[1] = gs == t.shape(s) ? s : reshape(t, s, std::vector<int64_t>(gs.begin(), gs.end()));
  }
}

Value softmax_cross_entropy_backward_replay(Tape<double>& t, const ReplayArgs& r) {
  return softmax_cross_entropy_backward(t, r.inputs[0], r.inputs[1], r.saved_index);
}
// Recorded VJPs: softmax_cross_entropy: gz = softmax_cross_entropy_backward(z, g, labels).
// mse: gp = 2 g (p - t) / size = -gt, recorded with sub, mul (g broadcast) and scale.
template <class T>
void softmax_cross_entropy_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const std::vector<int32_t> labels = t.nodes()[static_cast<std::size_t>(n)].saved_index;  // a copy: nodes grow
  gi[0] = softmax_cross_entropy_backward(t, node_input(t, n, 0), g, std::span<const int32_t>(labels));
}
template <class T> void mse_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  const Value p = node_input(t, n, 0), y = node_input(t, n, 1);
  const double c = 2.0 / static_cast<double>(t.value(p).size());
  const Value d = scale(t, mul(t, sub(t, p, y), g), c);
  if (wants(want, 0)) gi[0] = d;
  if (wants(want, 1)) gi[1] = scale(t, d, -1.0);
}
}  // namespace

constinit const OpDef softmax_cross_entropy_backward_op{
    .name = "softmax_cross_entropy_backward", .input_names = {"logits", "grad_out"},
    .vjp_float = softmax_cross_entropy_backward_node_vjp<float>,
    .vjp_double = softmax_cross_entropy_backward_node_vjp<double>, .replay = softmax_cross_entropy_backward_replay,
    .record_vjp_float = softmax_cross_entropy_backward_record_vjp<float>,
    .record_vjp_double = softmax_cross_entropy_backward_record_vjp<double>};
AD_REGISTER_OP(softmax_cross_entropy_backward_op);

// ---- the registry entries (autodiff/op.hpp) ----

namespace {
// The node saved the softmax probabilities and the labels.
template <class T> void softmax_cross_entropy_node_vjp(Tape<T>* tape, const Node<T>& node) {
  softmax_cross_entropy_vjp(tape->grad_out(node), node.saved, node.saved_index, tape->input_grad(node, 0));
}
template <class T> void mse_node_vjp(Tape<T>* tape, const Node<T>& node) {
  mse_vjp(tape->grad_out(node), tape->input_value(node, 0), tape->input_value(node, 1), tape->input_grad(node, 0),
          tape->input_grad(node, 1));
}
Value softmax_cross_entropy_replay(Tape<double>& t, const ReplayArgs& r) {
  // Ignored rows were saved as kIgnoredLabel, whatever the caller's ignore_index was.
  return softmax_cross_entropy(t, r.inputs[0], std::vector<int>(r.saved_index.begin(), r.saved_index.end()),
                               {.ignore_index = kIgnoredLabel});
}
Value mse_replay(Tape<double>& t, const ReplayArgs& r) { return mse(t, r.inputs[0], r.inputs[1]); }
std::string softmax_cross_entropy_format(const Attrs&, std::span<const int32_t> labels) {
  return labels.empty() ? std::string() : fmt::format("labels={}", labels.size());
}
}  // namespace

constinit const OpDef softmax_cross_entropy_op{.name = "softmax_cross_entropy",
                                               .input_names = {"logits"},
                                               .vjp_float = softmax_cross_entropy_node_vjp<float>,
                                               .vjp_double = softmax_cross_entropy_node_vjp<double>,
                                               .replay = softmax_cross_entropy_replay,
                                               .format_attrs = softmax_cross_entropy_format,
                                               .record_vjp_float = softmax_cross_entropy_record_vjp<float>,
                                               .record_vjp_double = softmax_cross_entropy_record_vjp<double>};
constinit const OpDef mse_op{.name = "mse", .input_names = {"prediction", "target"}, .vjp_float = mse_node_vjp<float>,
                             .vjp_double = mse_node_vjp<double>, .replay = mse_replay,
                             .record_vjp_float = mse_record_vjp<float>, .record_vjp_double = mse_record_vjp<double>};
AD_REGISTER_OP(softmax_cross_entropy_op);
AD_REGISTER_OP(mse_op);

#define AD_INSTANTIATE(T)                                                                                     \
  template Value softmax_cross_entropy<T>(Tape<T>&, Value, const std::vector<int>&, const CrossEntropyOptions&, \
                                          std::source_location);                                              \
  template void softmax_cross_entropy_vjp<T>(const Tensor<T>&, const Tensor<T>&, const std::vector<int32_t>&, \
                                             Tensor<T>*);                                                     \
  template Value softmax_cross_entropy_backward<T>(Tape<T>&, Value, Value, std::span<const int32_t>,          \
                                                   std::source_location);                                     \
  template Value mse<T>(Tape<T>&, Value, Value, std::source_location);                                       \
  template void mse_vjp<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, Tensor<T>*, Tensor<T>*);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

// ==== softmax, log_softmax and nll_loss (separate ops) ====
// Along an axis of K entries, per position of the other axes (index form, k and j along
// the axis; S = sum_j exp(x_j), shifted by the maximum m in the code):
//   softmax:      y_k = exp(x_k) / S,   dy_k/dx_j = y_k (delta_kj - y_j),
//                 dJ/dx_j = sum_k g_k y_k (delta_kj - y_j) = y_j (g_j - sum_k g_k y_k).
//   log_softmax:  y_k = x_k - log S,    dy_k/dx_j = delta_kj - exp(y_j)   (exp(y_j) = softmax_j),
//                 dJ/dx_j = g_j - exp(y_j) sum_k g_k.
// Both VJPs read the op's output y (no saved tensor).
//   nll_loss:     J = -1/N' sum_{n in V} lp[n, l_n], V the samples whose label l_n is not
//                 ignore_index and N' = |V|;  dJ/dlp[n,k] = -[n in V] [k = l_n] / N'.
// The node of nll_loss saves the labels (saved_index).

namespace {

// x as (outer, K, inner) around the axis: element (o, k, i) at (o K + k) inner + i.
struct AxisGeom {
  std::size_t outer = 1, K = 1, inner = 1;
};

AxisGeom axis_geom(const Shape& s, std::size_t axis) {
  AxisGeom g;
  if (s.empty()) return g;  // a scalar: one entry along its one axis
  for (std::size_t d = 0; d < axis; ++d) g.outer *= s[d];
  g.K = s[axis];
  for (std::size_t d = axis + 1; d < s.size(); ++d) g.inner *= s[d];
  return g;
}

// `axis` in [-rank, rank) (a scalar has rank 1 here, as in PyTorch), as a 0-based axis.
std::size_t normalise_axis(const char* op, const Shape& s, int axis) {
  const int rank = std::max(static_cast<int>(s.size()), 1);
  if (axis < -rank || axis >= rank)
    shape_error(op, "axis {} is out of range for input {}: it must be in [{}, {})", axis, shape_str(s), -rank, rank);
  return static_cast<std::size_t>(axis < 0 ? axis + rank : axis);
}

// The tag of the ThreadScratch buffers of a block's columns: the running maximum (0)
// and sum (1) of the forward, the sum of a VJP (0).
struct SoftmaxScratch {};

// body(o) for every outer index, in parallel above 65,536 elements.
template <class F>
void for_each_block(const AxisGeom& g, F body) {
  const auto outer = static_cast<std::ptrdiff_t>(g.outer);
#pragma omp parallel for schedule(static) if (g.outer > 1 && g.outer * g.K * g.inner > 65536)
  for (std::ptrdiff_t o = 0; o < outer; ++o) body(static_cast<std::size_t>(o));
}

// The (K, inner) block o of softmax (Log = false) or log_softmax (Log = true), with the
// log-sum-exp shift by the column maximum m_i.
template <class T, bool Log>
void softmax_block(const T* x, std::size_t K, std::size_t I, T* y) {
  T* m = ThreadScratch<T, SoftmaxScratch>::get(I, 0);
  T* s = ThreadScratch<T, SoftmaxScratch>::get(I, 1);
  std::copy(x, x + I, m);
  for (std::size_t k = 1; k < K; ++k)
    for (std::size_t i = 0; i < I; ++i) m[i] = std::max(m[i], x[k * I + i]);
  std::fill(s, s + I, T(0));
  for (std::size_t k = 0; k < K; ++k)
    for (std::size_t i = 0; i < I; ++i) {
      const T e = std::exp(x[k * I + i] - m[i]);
      if (!Log) y[k * I + i] = e;
      s[i] += e;
    }
  if (Log) {
    for (std::size_t i = 0; i < I; ++i) s[i] = m[i] + std::log(s[i]);  // log S
    for (std::size_t k = 0; k < K; ++k)
      for (std::size_t i = 0; i < I; ++i) y[k * I + i] = x[k * I + i] - s[i];  // y_k = x_k - log S
  } else {
    for (std::size_t k = 0; k < K; ++k)
      for (std::size_t i = 0; i < I; ++i) y[k * I + i] /= s[i];  // y_k = exp(x_k - m) / S'
  }
}

template <class T, bool Log>
void softmax_impl(const Tensor<T>& x, std::size_t axis, Tensor<T>& y) {
  const AxisGeom g = axis_geom(to_shape(x.shape()), axis);
  if (x.size() == 0) return;
  const std::size_t block = g.K * g.inner;
  for_each_block(g, [&](std::size_t o) { softmax_block<T, Log>(x.data() + o * block, g.K, g.inner, y.data() + o * block); });
}

template <class T, bool Log>
Value record_softmax(Tape<T>& tape, Value x, int axis, std::source_location loc) {
  const char* op = Log ? "log_softmax" : "softmax";
  const Shape xs = tape.shape(x);
  const std::size_t a = normalise_axis(op, xs, axis);
  Value y = tape.new_value(xs, tape.any_requires_grad({x}));
  softmax_impl<T, Log>(tape.value(x), a, tape.mutable_value(y));
  tape.record(Log ? OpKind::LogSoftmax : OpKind::Softmax, {x}, y, Attrs::of(SoftmaxAttrs{static_cast<int>(a)}), loc);
  return y;
}

}  // namespace

template <class T>
void softmax_forward(const Tensor<T>& x, std::size_t axis, Tensor<T>& y) {
  softmax_impl<T, false>(x, axis, y);
}
template <class T>
void log_softmax_forward(const Tensor<T>& x, std::size_t axis, Tensor<T>& y) {
  softmax_impl<T, true>(x, axis, y);
}
template <class T>
Value softmax(Tape<T>& tape, Value x, int axis, std::source_location loc) {
  return record_softmax<T, false>(tape, x, axis, loc);
}
template <class T>
Value log_softmax(Tape<T>& tape, Value x, int axis, std::source_location loc) {
  return record_softmax<T, true>(tape, x, axis, loc);
}

namespace {

// The VJP of block o, (K, inner): softmax (Log = false) dx_j += y_j (g_j - sum_k g_k y_k),
// log_softmax (Log = true) dx_j += g_j - exp(y_j) sum_k g_k.
template <class T, bool Log>
void softmax_vjp_impl(const Tensor<T>& grad_out, const Tensor<T>& y, std::size_t axis, Tensor<T>* grad_x) {
  if (!grad_x || y.size() == 0) return;
  const AxisGeom g = axis_geom(to_shape(y.shape()), axis);
  const std::size_t K = g.K, I = g.inner;
  for_each_block(g, [&](std::size_t o) {
    const T* gb = grad_out.data() + o * K * I;
    const T* yb = y.data() + o * K * I;
    T* dx = grad_x->data() + o * K * I;
    T* t = ThreadScratch<T, SoftmaxScratch>::get(I, 0);
    std::fill(t, t + I, T(0));
    for (std::size_t k = 0; k < K; ++k)  // t = sum_k g_k y_k (softmax), sum_k g_k (log_softmax)
      for (std::size_t i = 0; i < I; ++i) t[i] += Log ? gb[k * I + i] : gb[k * I + i] * yb[k * I + i];
    for (std::size_t k = 0; k < K; ++k)
      for (std::size_t i = 0; i < I; ++i) {
        const std::size_t e = k * I + i;
        dx[e] += Log ? gb[e] - std::exp(yb[e]) * t[i] : yb[e] * (gb[e] - t[i]);
      }
  });
}

}  // namespace

template <class T>
void softmax_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, std::size_t axis, Tensor<T>* grad_x) {
  softmax_vjp_impl<T, false>(grad_out, y, axis, grad_x);
}
template <class T>
void log_softmax_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, std::size_t axis, Tensor<T>* grad_x) {
  softmax_vjp_impl<T, true>(grad_out, y, axis, grad_x);
}

template <class T>
Value nll_loss(Tape<T>& tape, Value log_probs, const std::vector<int>& labels, const NllLossOptions& opt,
               std::source_location loc) {
  const char* op = "nll_loss";
  const Shape s = tape.shape(log_probs);
  check_rank(op, "log_probs", s, 2, "(N, K)");
  const std::size_t N = s[0], K = s[1];
  if (labels.size() != N)
    shape_error(op, "log_probs {} and labels ({}) disagree on N ({} vs {})", shape_str(s), labels.size(), N,
                labels.size());
  for (std::size_t n = 0; n < N; ++n)
    if (labels[n] != opt.ignore_index && (labels[n] < 0 || static_cast<std::size_t>(labels[n]) >= K))
      shape_error(op, "label {} at position {} is out of range for log_probs {}: labels must be in [0, {}) or be "
                      "ignore_index ({})",
                  labels[n], n, shape_str(s), K, opt.ignore_index);
  Value y = tape.new_value(Shape{}, tape.any_requires_grad({log_probs}));
  const T* lp = tape.value(log_probs).data();
  T total = 0;
  std::size_t count = 0;
  for (std::size_t n = 0; n < N; ++n) {
    if (labels[n] == opt.ignore_index) continue;
    total += lp[n * K + static_cast<std::size_t>(labels[n])];
    ++count;
  }
  tape.mutable_value(y).data()[0] = -total / static_cast<T>(count);  // 0/0 = NaN when nothing counts
  if (Node<T>* node = tape.record(OpKind::NllLoss, {log_probs}, y, Attrs::of(opt), loc))
    node->saved_index.assign(labels.begin(), labels.end());
  return y;
}

template <class T>
void nll_loss_vjp(const Tensor<T>& grad_out, const std::vector<int32_t>& labels, int ignore_index,
                  Tensor<T>* grad_log_probs) {
  if (!grad_log_probs) return;
  std::size_t count = 0;
  for (int32_t l : labels) count += l != ignore_index;
  if (count == 0) return;  // J is NaN and depends on nothing: no gradient (as PyTorch: zeros)
  const std::size_t K = grad_log_probs->shape()[1];
  const T scale = grad_out.data()[0] / static_cast<T>(count);
  T* gl = grad_log_probs->data();
  for (std::size_t n = 0; n < labels.size(); ++n)  // dlp[n, l_n] -= g / N'
    if (labels[n] != ignore_index) gl[n * K + static_cast<std::size_t>(labels[n])] -= scale;
}

template <class T>
Value nll_loss_backward(Tape<T>& tape, Value grad_out, std::span<const int32_t> labels, std::size_t K,
                        const NllLossOptions& opt, std::source_location loc) {
  const char* op = "nll_loss_backward";
  if (tape.value(grad_out).size() != 1) shape_error(op, "grad_out {} must be a scalar", shape_str(tape.shape(grad_out)));
  for (int32_t l : labels)
    if (l != opt.ignore_index && (l < 0 || static_cast<std::size_t>(l) >= K))
      shape_error(op, "label {} is out of range [0, {})", l, K);
  Value y = tape.new_value(Shape{labels.size(), K}, tape.any_requires_grad({grad_out}));
  Tensor<T>& yv = tape.mutable_value(y);
  zero_fill(yv);
  const std::vector<int32_t> lab(labels.begin(), labels.end());
  nll_loss_vjp(tape.value(grad_out), lab, opt.ignore_index, &yv);
  const NllLossBackwardAttrs a{opt.ignore_index, static_cast<uint32_t>(labels.size()), static_cast<uint32_t>(K)};
  if (Node<T>* node = tape.record(OpKind::NllLossBackward, {grad_out}, y, Attrs::of(a), loc)) node->saved_index = lab;
  return y;
}

namespace {
// ---- recorded VJPs of softmax, log_softmax, nll_loss (higher-order gradients) ----
// The shape of x with the softmax axis kept at size 1: sum_to to it sums along the axis.
Shape keep_axis(const Shape& s, std::size_t axis) {
  Shape k = s;
  k[axis] = 1;
  return k;
}
// softmax: gx = y .* g - y .* sum_axis(g .* y)   (y the output; the Jacobian diag(y) - y y^T)
template <class T> void softmax_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const auto axis = static_cast<std::size_t>(attrs_as<SoftmaxAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs).axis);
  const Value y = node_output(t, n);
  const Value gy = mul(t, g, y);
  gi[0] = sub(t, gy, mul(t, y, sum_to(t, gy, keep_axis(t.shape(y), axis))));
}
// log_softmax: gx = g - softmax(x) .* sum_axis(g)   (softmax(x) recorded: differentiable again)
template <class T> void log_softmax_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const int axis = attrs_as<SoftmaxAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs).axis;
  const Value x = node_input(t, n, 0);
  const Value p = softmax(t, x, axis);
  gi[0] = sub(t, g, mul(t, p, sum_to(t, g, keep_axis(t.shape(x), static_cast<std::size_t>(axis)))));
}
// nll_loss: gx = nll_loss_backward(g); nll_loss_backward: gg = nll_loss(u).
template <class T> void nll_loss_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const Node<T>& node = t.nodes()[static_cast<std::size_t>(n)];
  const std::vector<int32_t> labels = node.saved_index;  // a copy: nodes grow
  const auto opt = attrs_as<NllLossOptions>(node.attrs);
  const std::size_t K = t.shape(node_input(t, n, 0))[1];
  gi[0] = nll_loss_backward(t, g, std::span<const int32_t>(labels), K, opt);
}
template <class T> void nll_loss_backward_record_vjp(Tape<T>& t, int32_t n, Value u, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const Node<T>& node = t.nodes()[static_cast<std::size_t>(n)];
  const std::vector<int> labels(node.saved_index.begin(), node.saved_index.end());
  const auto a = attrs_as<NllLossBackwardAttrs>(node.attrs);
  gi[0] = nll_loss(t, u, labels, NllLossOptions{a.ignore_index});
}
// gg = -1/N' sum_n u[n, label_n]
template <class T> void nll_loss_backward_node_vjp(Tape<T>* tape, const Node<T>& node) {
  Tensor<T>* gg = tape->input_grad(node, 0);
  if (!gg) return;
  const auto a = attrs_as<NllLossBackwardAttrs>(node.attrs);
  const Tensor<T>& u = tape->grad_out(node);
  T s = 0;
  std::size_t count = 0;
  for (std::size_t i = 0; i < node.saved_index.size(); ++i) {
    const int32_t l = node.saved_index[i];
    if (l == a.ignore_index) continue;
    s += u.data()[i * a.K + static_cast<std::size_t>(l)];
    ++count;
  }
  if (count) gg->data()[0] -= s / static_cast<T>(count);
}
Value nll_loss_backward_replay(Tape<double>& t, const ReplayArgs& r) {
  const auto a = r.attrs.get<NllLossBackwardAttrs>();
  return nll_loss_backward(t, r.inputs[0], r.saved_index, a.K, NllLossOptions{a.ignore_index});
}
std::string nll_loss_backward_format(const Attrs& attrs, std::span<const int32_t>) {
  const auto a = attrs.get<NllLossBackwardAttrs>();
  return fmt::format("ignore_index={} shape=({},{})", a.ignore_index, a.N, a.K);
}
}  // namespace

constinit const OpDef nll_loss_backward_op{
    .name = "nll_loss_backward", .input_names = {"grad_out"}, .vjp_float = nll_loss_backward_node_vjp<float>,
    .vjp_double = nll_loss_backward_node_vjp<double>, .replay = nll_loss_backward_replay,
    .format_attrs = nll_loss_backward_format, .record_vjp_float = nll_loss_backward_record_vjp<float>,
    .record_vjp_double = nll_loss_backward_record_vjp<double>};
AD_REGISTER_OP(nll_loss_backward_op);

namespace {

template <class T> void softmax_node_vjp(Tape<T>* tape, const Node<T>& node) {
  softmax_vjp(tape->grad_out(node), tape->value(Value{node.output}),
              static_cast<std::size_t>(attrs_as<SoftmaxAttrs>(node.attrs).axis), tape->input_grad(node, 0));
}
template <class T> void log_softmax_node_vjp(Tape<T>* tape, const Node<T>& node) {
  log_softmax_vjp(tape->grad_out(node), tape->value(Value{node.output}),
                  static_cast<std::size_t>(attrs_as<SoftmaxAttrs>(node.attrs).axis), tape->input_grad(node, 0));
}
template <class T> void nll_loss_node_vjp(Tape<T>* tape, const Node<T>& node) {
  nll_loss_vjp(tape->grad_out(node), node.saved_index, attrs_as<NllLossOptions>(node.attrs).ignore_index,
               tape->input_grad(node, 0));
}
Value softmax_replay(Tape<double>& t, const ReplayArgs& r) { return softmax(t, r.inputs[0], r.attrs.get<SoftmaxAttrs>().axis); }
Value log_softmax_replay(Tape<double>& t, const ReplayArgs& r) {
  return log_softmax(t, r.inputs[0], r.attrs.get<SoftmaxAttrs>().axis);
}
Value nll_loss_replay(Tape<double>& t, const ReplayArgs& r) {
  return nll_loss(t, r.inputs[0], std::vector<int>(r.saved_index.begin(), r.saved_index.end()),
                  r.attrs.get<NllLossOptions>());
}
std::string softmax_format(const Attrs& attrs, std::span<const int32_t>) {
  return fmt::format("axis={}", attrs.get<SoftmaxAttrs>().axis);
}
std::string nll_loss_format(const Attrs& attrs, std::span<const int32_t> labels) {
  const int ignore = attrs.get<NllLossOptions>().ignore_index;
  return fmt::format("labels={}{}", labels.size(),
                     ignore == NllLossOptions{}.ignore_index ? std::string() : fmt::format(" ignore_index={}", ignore));
}

}  // namespace

constinit const OpDef softmax_op{.name = "softmax", .vjp_float = softmax_node_vjp<float>,
                                 .vjp_double = softmax_node_vjp<double>, .replay = softmax_replay,
                                 .format_attrs = softmax_format, .record_vjp_float = softmax_record_vjp<float>,
                                 .record_vjp_double = softmax_record_vjp<double>};
constinit const OpDef log_softmax_op{.name = "log_softmax", .vjp_float = log_softmax_node_vjp<float>,
                                     .vjp_double = log_softmax_node_vjp<double>, .replay = log_softmax_replay,
                                     .format_attrs = softmax_format, .record_vjp_float = log_softmax_record_vjp<float>,
                                     .record_vjp_double = log_softmax_record_vjp<double>};
constinit const OpDef nll_loss_op{.name = "nll_loss", .input_names = {"log_probs"},
                                  .vjp_float = nll_loss_node_vjp<float>, .vjp_double = nll_loss_node_vjp<double>,
                                  .replay = nll_loss_replay, .format_attrs = nll_loss_format,
                                  .record_vjp_float = nll_loss_record_vjp<float>,
                                  .record_vjp_double = nll_loss_record_vjp<double>};
AD_REGISTER_OP(softmax_op);
AD_REGISTER_OP(log_softmax_op);
AD_REGISTER_OP(nll_loss_op);

#define AD_INSTANTIATE_SOFTMAX(T)                                                                                 \
  template void softmax_forward<T>(const Tensor<T>&, std::size_t, Tensor<T>&);                                   \
  template void log_softmax_forward<T>(const Tensor<T>&, std::size_t, Tensor<T>&);                               \
  template void softmax_vjp<T>(const Tensor<T>&, const Tensor<T>&, std::size_t, Tensor<T>*);                     \
  template void log_softmax_vjp<T>(const Tensor<T>&, const Tensor<T>&, std::size_t, Tensor<T>*);                 \
  template Value softmax<T>(Tape<T>&, Value, int, std::source_location);                                        \
  template Value log_softmax<T>(Tape<T>&, Value, int, std::source_location);                                    \
  template Value nll_loss<T>(Tape<T>&, Value, const std::vector<int>&, const NllLossOptions&, std::source_location); \
  template void nll_loss_vjp<T>(const Tensor<T>&, const std::vector<int32_t>&, int, Tensor<T>*);                 \
  template Value nll_loss_backward<T>(Tape<T>&, Value, std::span<const int32_t>, std::size_t, const NllLossOptions&, \
                                      std::source_location);
AD_INSTANTIATE_SOFTMAX(float)
AD_INSTANTIATE_SOFTMAX(double)
#undef AD_INSTANTIATE_SOFTMAX

}  // namespace ad
