// Losses J: softmax cross-entropy with integer labels (fused VJP) and mean squared
// error. They close the design document's network: J is a function of A^[3] =
// softmax(Z^[3]) (section 3.1.1, dJ/dZ^[3] = dJ/dA^[3] dA^[3]/dZ^[3]).
#pragma once

#include <source_location>
#include <span>
#include <vector>

#include "autodiff/tape.hpp"

namespace ad {

extern const OpDef softmax_cross_entropy_op, mse_op;
namespace OpKind {
inline constexpr OpId SoftmaxCrossEntropy = &softmax_cross_entropy_op;
inline constexpr OpId Mse = &mse_op;
}  // namespace OpKind

struct CrossEntropyOptions {
  // Rows whose label equals ignore_index (padded or unlabelled examples) take no part:
  // the loss is the mean over the other rows, and their logits get no gradient.
  // PyTorch's default, -100; any value may be used, a class index included.
  int ignore_index = -100;
};

// J = -1/M sum_n log softmax(z_n)[label_n] for logits (N, K) and N labels, each in
// [0, K) or ignore_index, summed over the M rows not ignored. Returns a scalar ().
// Computed with the log-sum-exp shift, so no overflow for large z. As in PyTorch, an
// empty batch (N = 0) or one where every row is ignored gives NaN (0/0).
template <class T>
Value softmax_cross_entropy(Tape<T>& tape, Value logits, const std::vector<int>& labels,
                            const CrossEntropyOptions& opt = {},
                            std::source_location loc = std::source_location::current());
// grad_logits += g / M * (softmax(z) - onehot(labels)) on the rows whose label is in
// [0, K); probs is the saved softmax. Any other label marks an ignored row (the forward
// saves ignored rows' labels as kIgnoredLabel), so M is the count of labels in [0, K).
template <class T>
void softmax_cross_entropy_vjp(const Tensor<T>& grad_out, const Tensor<T>& probs,
                               const std::vector<int32_t>& labels, Tensor<T>* grad_logits);

// The label a SoftmaxCrossEntropy node saves for an ignored row, whatever the
// ignore_index was: outside [0, K) for every K, and PyTorch's default ignore_index, so
// replaying the node with its saved labels and default options (gradcheck_nodes) ignores
// the same rows. (Op registry: the node needs no attribute for ignore_index.)
inline constexpr int32_t kIgnoredLabel = -100;

// softmax_cross_entropy's VJP as an op, for higher-order gradients (autodiff/higher_order.hpp):
// logits z (N, K), the scalar gradient g of J and the labels (as the forward saved them:
// an ignored row's as kIgnoredLabel) give y (N, K) = g / M (softmax(z) - onehot) on the M
// rows whose label is in [0, K), 0 on the others. Its VJP for a cotangent u (N, K), per
// counted row n, with p = softmax(z_n) and the softmax Jacobian diag(p) - p p^T:
//   gz[n,:] += g / M (p .* u_n - p <p, u_n>),   gg += 1/M sum_n <u_n, p - onehot_n>.
// Its recorded VJP writes these with softmax, mul, sum_to and constants (mask, one-hot), so
// every order is available.
extern const OpDef softmax_cross_entropy_backward_op;
namespace OpKind {
inline constexpr OpId SoftmaxCrossEntropyBackward = &softmax_cross_entropy_backward_op;
}
template <class T>
Value softmax_cross_entropy_backward(Tape<T>& tape, Value logits, Value grad_out, std::span<const int32_t> labels,
                                     std::source_location loc = std::source_location::current());

// J = 1/size sum (pred - target)^2, pred and target of the same shape. Scalar ().
template <class T>
Value mse(Tape<T>& tape, Value pred, Value target, std::source_location loc = std::source_location::current());
// grad_pred += g 2 (pred - target) / size; grad_target -= the same.
template <class T>
void mse_vjp(const Tensor<T>& grad_out, const Tensor<T>& pred, const Tensor<T>& target, Tensor<T>* grad_pred,
             Tensor<T>* grad_target);

// ---- softmax, log_softmax and nll_loss: separate ops (the fused softmax_cross_entropy
// stays). log_softmax followed by nll_loss is cross-entropy, with the gradient of each. ----

// softmax and log_softmax's node attributes: the axis, counted from 0 (a negative axis
// given by the caller is stored as axis + rank).
struct SoftmaxAttrs {
  static constexpr const char* kType = "ad::SoftmaxAttrs";
  int axis = -1;
};

// nll_loss's options, also its node attributes.
struct NllLossOptions {
  static constexpr const char* kType = "ad::NllLossOptions";
  int ignore_index = -100;  // samples with this label count neither in the sum nor in N (as PyTorch)
};

extern const OpDef softmax_op, log_softmax_op, nll_loss_op;
namespace OpKind {
inline constexpr OpId Softmax = &softmax_op;
inline constexpr OpId LogSoftmax = &log_softmax_op;
inline constexpr OpId NllLoss = &nll_loss_op;
}  // namespace OpKind

// y = softmax(x) along `axis`: y_k = exp(x_k - m) / sum_j exp(x_j - m), m the maximum
// along the axis (no overflow). x of any rank >= 1 (a scalar counts as rank 1); axis in
// [-rank, rank), negative from the end, as PyTorch's dim. y has x's shape.
template <class T>
Value softmax(Tape<T>& tape, Value x, int axis, std::source_location loc = std::source_location::current());
// y = log_softmax(x) along `axis`: y_k = x_k - m - log sum_j exp(x_j - m).
template <class T>
Value log_softmax(Tape<T>& tape, Value x, int axis, std::source_location loc = std::source_location::current());
// The forwards, with `axis` already in [0, rank); y shaped like x.
template <class T>
void softmax_forward(const Tensor<T>& x, std::size_t axis, Tensor<T>& y);
template <class T>
void log_softmax_forward(const Tensor<T>& x, std::size_t axis, Tensor<T>& y);
// grad_x += y .* (g - sum_axis(g .* y)), y the softmax output.
template <class T>
void softmax_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, std::size_t axis, Tensor<T>* grad_x);
// grad_x += g - exp(y) .* sum_axis(g), y the log_softmax output.
template <class T>
void log_softmax_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, std::size_t axis, Tensor<T>* grad_x);

// J = -1/N' sum_n log_probs[n, label_n] over the N' samples whose label is not
// opt.ignore_index, for log_probs (N, K) and N labels in [0, K) (or ignore_index).
// Returns a scalar (); NaN when every sample is ignored or N = 0 (0/0, as PyTorch).
template <class T>
Value nll_loss(Tape<T>& tape, Value log_probs, const std::vector<int>& labels, const NllLossOptions& opt = {},
               std::source_location loc = std::source_location::current());
// grad_log_probs[n, label_n] -= g / N' for the samples not ignored.
template <class T>
void nll_loss_vjp(const Tensor<T>& grad_out, const std::vector<int32_t>& labels, int ignore_index,
                  Tensor<T>* grad_log_probs);

// nll_loss's VJP as an op (higher-order gradients): the scalar g gives y (N, K) with
// y[n, label_n] = -g / N' on the samples not ignored, 0 elsewhere. Linear in g; its VJP is
// gg = -1/N' sum_n u[n, label_n] = nll_loss(u), and nll_loss's recorded VJP is this op:
// the two are each other's adjoint.
struct NllLossBackwardAttrs {
  static constexpr const char* kType = "ad::NllLossBackwardAttrs";
  int ignore_index = -100;
  uint32_t N = 0, K = 0;
};
extern const OpDef nll_loss_backward_op;
namespace OpKind {
inline constexpr OpId NllLossBackward = &nll_loss_backward_op;
}
template <class T>
Value nll_loss_backward(Tape<T>& tape, Value grad_out, std::span<const int32_t> labels, std::size_t K,
                        const NllLossOptions& opt = {}, std::source_location loc = std::source_location::current());

}  // namespace ad
