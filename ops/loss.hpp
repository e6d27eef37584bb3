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

// J = -1/N sum_n log softmax(z_n)[label_n] for logits (N, K) and N labels in [0, K).
// Returns a scalar (). Computed with the log-sum-exp shift, so no overflow for large z.
template <class T>
Value softmax_cross_entropy(Tape<T>& tape, Value logits, const std::vector<int>& labels,
                            std::source_location loc = std::source_location::current());
// grad_logits += g / N * (softmax(z) - onehot(labels)); probs is the saved softmax.
template <class T>
void softmax_cross_entropy_vjp(const Tensor<T>& grad_out, const Tensor<T>& probs,
                               const std::vector<int32_t>& labels, Tensor<T>* grad_logits);

// J = 1/size sum (pred - target)^2, pred and target of the same shape. Scalar ().
template <class T>
Value mse(Tape<T>& tape, Value pred, Value target, std::source_location loc = std::source_location::current());
// grad_pred += g 2 (pred - target) / size; grad_target -= the same.
template <class T>
void mse_vjp(const Tensor<T>& grad_out, const Tensor<T>& pred, const Tensor<T>& target, Tensor<T>* grad_pred,
             Tensor<T>* grad_target);

}  // namespace ad
