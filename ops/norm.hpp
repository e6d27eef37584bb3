// Batch normalisation of (N, C, H, W) images, per channel over the batch and the plane
// (Ioffe and Szegedy 2015; PyTorch's F.batch_norm). Not in the design document, which
// has no normalisation layer; the derivation of the VJP is in ops/norm.cpp.
#pragma once

#include <source_location>
#include <type_traits>

#include "autodiff/tape.hpp"

namespace ad {

// Also the node's attributes (Node::attrs.get<BatchNorm2dOptions>()).
struct BatchNorm2dOptions {
  static constexpr const char* kType = "ad::BatchNorm2dOptions";
  bool training = true;   // normalise by the batch statistics (and update the running ones)
  double momentum = 0.1;  // running = (1 - momentum) * running + momentum * batch statistic
  double eps = 1e-5;      // added to the variance
};

extern const OpDef batch_norm2d_op;
namespace OpKind {
inline constexpr OpId BatchNorm2d = &batch_norm2d_op;
}

// Checks x (N, C, H, W), weight and bias (C) or none, the running statistics (C) or
// none (both or neither; eval mode needs them), and, in training mode, more than one
// value per channel (N*H*W != 1). Throws ShapeError naming the argument and the rule.
void batch_norm2d_check(const Shape& x, const Shape* weight, const Shape* bias, const Shape* running_mean,
                        const Shape* running_var, const BatchNorm2dOptions& opt);

// y[n,c,h,w] = w[c] * (x[n,c,h,w] - mean[c]) * inv_std[c] + b[c], y shaped like x;
// weight/bias null = 1/0. Training mode: mean and the biased variance of channel c over
// its N*H*W values, and, when the running buffers are given, running_mean and
// running_var updated with momentum (the variance unbiased, times M/(M-1)); an empty
// batch leaves them as they are (as PyTorch). Eval mode: the running statistics.
// `stats` becomes (2, C): the mean and inv_std = 1/sqrt(var + eps) used, for the VJP.
template <class T>
void batch_norm2d_forward(const Tensor<T>& x, const Tensor<T>* weight, const Tensor<T>* bias,
                          Tensor<T>* running_mean, Tensor<T>* running_var, const BatchNorm2dOptions& opt,
                          Tensor<T>& y, Tensor<T>& stats);

// Adds dJ/dx, dJ/dweight, dJ/dbias for dJ/dy = grad_out into the non-null buffers.
// Training mode: the full VJP through the batch mean and variance; eval mode: the
// statistics are constants. `stats` is the forward's (2, C).
template <class T>
void batch_norm2d_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const Tensor<T>* weight,
                      const Tensor<T>& stats, const BatchNorm2dOptions& opt, Tensor<T>* grad_x,
                      Tensor<T>* grad_weight, Tensor<T>* grad_bias);

// Records batch_norm2d on the tape. weight and bias are Values (Value{} for none: no
// affine transform); running_mean and running_var are the caller's buffers of shape
// (C), not values on the tape: read in eval mode, updated in training mode (pass
// nullptr for neither, training mode only). They must outlive the call, not the tape.
// (type_identity: T comes from the tape, so nullptr needs no cast.)
template <class T>
Value batch_norm2d(Tape<T>& tape, Value x, Value weight, Value bias, std::type_identity_t<Tensor<T>>* running_mean,
                   std::type_identity_t<Tensor<T>>* running_var, const BatchNorm2dOptions& opt = {},
                   std::source_location loc = std::source_location::current());

}  // namespace ad
