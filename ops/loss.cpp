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
                                               .format_attrs = softmax_cross_entropy_format};
constinit const OpDef mse_op{.name = "mse", .input_names = {"prediction", "target"}, .vjp_float = mse_node_vjp<float>,
                             .vjp_double = mse_node_vjp<double>, .replay = mse_replay};
AD_REGISTER_OP(softmax_cross_entropy_op);
AD_REGISTER_OP(mse_op);

#define AD_INSTANTIATE(T)                                                                                     \
  template Value softmax_cross_entropy<T>(Tape<T>&, Value, const std::vector<int>&, const CrossEntropyOptions&, \
                                          std::source_location);                                              \
  template void softmax_cross_entropy_vjp<T>(const Tensor<T>&, const Tensor<T>&, const std::vector<int32_t>&, \
                                             Tensor<T>*);                                                     \
  template Value mse<T>(Tape<T>&, Value, Value, std::source_location);                                       \
  template void mse_vjp<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, Tensor<T>*, Tensor<T>*);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
