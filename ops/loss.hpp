// Losses J: softmax cross-entropy with integer labels (fused VJP) and mean squared
// error. They close the design document's network: J is a function of A^[3] =
// softmax(Z^[3]) (section 3.1.1, dJ/dZ^[3] = dJ/dA^[3] dA^[3]/dZ^[3]).
#pragma once

#include <source_location>
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

// J = 1/size sum (pred - target)^2, pred and target of the same shape. Scalar ().
template <class T>
Value mse(Tape<T>& tape, Value pred, Value target, std::source_location loc = std::source_location::current());
// grad_pred += g 2 (pred - target) / size; grad_target -= the same.
template <class T>
void mse_vjp(const Tensor<T>& grad_out, const Tensor<T>& pred, const Tensor<T>& target, Tensor<T>* grad_pred,
             Tensor<T>* grad_target);

}  // namespace ad
