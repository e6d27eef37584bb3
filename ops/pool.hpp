// Pooling over (N, C, H, W): average pooling (the document's P) and max pooling
// with switches. Design document: section 3.1.3 and appendix B (max-pool mask).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <source_location>
#include <utility>
#include <vector>

#include "autodiff/tape.hpp"

namespace ad {

// How padding behaves in max pooling (appendix B vs PyTorch).
enum class MaxPoolPadding : uint8_t {
  NegInf,  // padding never wins the max (PyTorch); the default
  Zero,    // padding zeros take part in the max, as in appendix B's example
};

// Also the node's attributes (Node::attrs.get<Pool2dOptions>()).
struct Pool2dOptions {
  static constexpr const char* kType = "ad::Pool2dOptions";
  std::array<int, 2> window{2, 2};   // (h_l, w_l)
  std::array<int, 2> stride{2, 2};   // (h_s, w_s)
  std::array<int, 2> padding{0, 0};  // (h_p, w_p) on both sides
  // Max pooling only: NegInf (default, PyTorch) lets padding never win; Zero lets
  // the padding zeros take part in the max, as in appendix B's worked example.
  // With NegInf the padding must be smaller than the window on each axis.
  MaxPoolPadding max_padding = MaxPoolPadding::NegInf;
};

extern const OpDef avg_pool2d_op, max_pool2d_op;
namespace OpKind {
inline constexpr OpId AvgPool2d = &avg_pool2d_op;
inline constexpr OpId MaxPool2d = &max_pool2d_op;
}  // namespace OpKind

// Checks x (N,C,H,W) against the window and returns (N, C, OH, OW),
// OH = floor((H + 2 h_p - h_l) / h_s) + 1. `op` names the caller in errors.
Shape pool2d_output_shape(const char* op, const Shape& x, const Pool2dOptions& a);

// y[n,c,i,j] = 1/(h_l w_l) sum_{p,q} x[n,c,i*sh+p-ph,j*sw+q-pw], padding zeros counted.
template <class T>
void avg_pool2d_forward(const Tensor<T>& x, const Pool2dOptions& a, Tensor<T>& y);
template <class T>
void avg_pool2d_vjp(const Tensor<T>& grad_out, const Pool2dOptions& a, Tensor<T>* grad_x);

// y[n,c,i,j] = max over the window; argmax (may be null) receives, per output element,
// the winner's flat index h*W+w within its (H, W) plane, or -1 when a padding zero won.
template <class T>
void max_pool2d_forward(const Tensor<T>& x, const Pool2dOptions& a, Tensor<T>& y, int32_t* argmax);
// Routes grad_out through the switches: grad_x[n,c,argmax] += grad_out[n,c,i,j].
template <class T>
void max_pool2d_vjp(const Tensor<T>& grad_out, const std::vector<int32_t>& argmax, Tensor<T>* grad_x);

template <class T>
Value avg_pool2d(Tape<T>& tape, Value x, const Pool2dOptions& opt = {},
                 std::source_location loc = std::source_location::current());
template <class T>
Value max_pool2d(Tape<T>& tape, Value x, const Pool2dOptions& opt = {},
                 std::source_location loc = std::source_location::current());

// ---- the pools' VJPs as ops, for higher-order gradients (autodiff/higher_order.hpp) ----

// Attributes of the pool backward ops: the pool's options and the input plane (H, W).
struct PoolBackwardAttrs {
  static constexpr const char* kType = "ad::PoolBackwardAttrs";
  Pool2dOptions pool;
  uint32_t H = 0, W = 0;
};
extern const OpDef max_pool2d_backward_op, max_pool2d_gather_op, avg_pool2d_backward_op;
namespace OpKind {
inline constexpr OpId MaxPool2dBackward = &max_pool2d_backward_op;
inline constexpr OpId MaxPool2dGather = &max_pool2d_gather_op;
inline constexpr OpId AvgPool2dBackward = &avg_pool2d_backward_op;
}  // namespace OpKind

// Scatter through max-pool switches (max_pool2d's VJP as an op): grad_out (N, C, OH, OW)
// and one switch per element of it (a flat index in the (H, W) plane, or -1) give
// y (N, C, H, W), y[n,c,s] = sum of grad_out[n,c,o] over the o with switch[o] = s.
// Linear in grad_out; VJP: the gather below through the same switches. The switches are
// constants (saved by the forward), so the op is piecewise linear in the pooled input.
template <class T>
Value max_pool2d_backward(Tape<T>& tape, Value grad_out, std::span<const int32_t> switches, std::size_t H,
                          std::size_t W, const Pool2dOptions& opt = {},
                          std::source_location loc = std::source_location::current());
// Gather through switches: x (N, C, H, W) gives y (N, C, OH, OW), y[n,c,o] = x[n,c,switch[o]]
// (0 where switch[o] = -1). VJP: the scatter above.
template <class T>
Value max_pool2d_gather(Tape<T>& tape, Value x, std::span<const int32_t> switches, std::size_t OH, std::size_t OW,
                        const Pool2dOptions& opt = {}, std::source_location loc = std::source_location::current());
// Unpool (avg_pool2d's VJP as an op): grad_out (N, C, OH, OW) gives (N, C, H, W),
// y[n,c,h,w] = 1/(h_l w_l) sum over the windows (i,j) that hold (h,w) of grad_out[n,c,i,j].
// Linear; its VJP is avg_pool2d itself (the pool and the unpool are each other's adjoint).
template <class T>
Value avg_pool2d_backward(Tape<T>& tape, Value grad_out, std::size_t H, std::size_t W, const Pool2dOptions& opt = {},
                          std::source_location loc = std::source_location::current());

// ---- global average pooling ----

extern const OpDef global_avg_pool2d_op;
namespace OpKind {
inline constexpr OpId GlobalAvgPool2d = &global_avg_pool2d_op;
}

// (N, C, H, W) -> (N, C, 1, 1), the mean of each plane: y[n,c,0,0] = 1/(HW) sum_{h,w} x[n,c,h,w]
// (PyTorch's adaptive_avg_pool2d to 1x1). H and W must be >= 1; N or C may be 0 (empty result).
// VJP: gx[n,c,h,w] += g[n,c,0,0] / (HW).
template <class T>
Value global_avg_pool2d(Tape<T>& tape, Value x, std::source_location loc = std::source_location::current());
template <class T> void global_avg_pool2d_forward(const Tensor<T>& x, Tensor<T>& y);
template <class T> void global_avg_pool2d_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_x);

namespace detail {
// The candidates of max pooling's window (i, j) over one (H, W) plane, for the kink
// finders (max_pool2d's, conv2d_relu_max_pool2d's): (value, index h*W + w) for each
// element in the window and, with MaxPoolPadding::Zero, (0, -1) for each padding
// position. Replaces the contents of cand.
void max_pool2d_window(const double* plane, std::ptrdiff_t H, std::ptrdiff_t W, std::ptrdiff_t i, std::ptrdiff_t j,
                       const Pool2dOptions& p, std::vector<std::pair<double, std::ptrdiff_t>>& cand);
}  // namespace detail

}  // namespace ad
