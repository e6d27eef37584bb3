// conv_transpose2d: the adjoint (transpose) of conv2d with respect to its input, as
// PyTorch's F.conv_transpose2d: (N, C_in, H, W) images and (C_in, C_out/groups, KH, KW)
// kernels give (N, C_out, OH, OW), OH = (H - 1) h_s - 2 h_p + h_d (KH - 1) + output_padding + 1.
// It shares conv2d's kernels: its forward is conv2d's VJP w.r.t. the input, its VJP
// w.r.t. the input is conv2d's forward (derivation in ops/conv_transpose2d.cpp).
#pragma once

#include <array>
#include <source_location>

#include "autodiff/tape.hpp"
#include "ops/conv2d.hpp"

namespace ad {

// Also the node's attributes (Node::attrs.get<ConvTranspose2dOptions>()).
struct ConvTranspose2dOptions {
  static constexpr const char* kType = "ad::ConvTranspose2dOptions";
  std::array<int, 2> padding{0, 0};         // of the convolution it transposes: trims h_p rows each side
  std::array<int, 2> stride{1, 1};          // input pixels land h_s apart in the output
  std::array<int, 2> output_padding{0, 0};  // extra rows/columns at the bottom/right; < stride or < dilation
  std::array<int, 2> dilation{1, 1};
  int groups = 1;  // C_in and C_out in `groups` blocks, as conv2d's
};

extern const OpDef conv_transpose2d_op;
namespace OpKind {
inline constexpr OpId ConvTranspose2d = &conv_transpose2d_op;
}

// The conv2d whose input-adjoint this is: the same padding, stride, dilation and groups.
inline Conv2dOptions transposed_conv(const ConvTranspose2dOptions& a) {
  return {.padding = a.padding, .stride = a.stride, .dilation = a.dilation, .groups = a.groups};
}

// Checks x (N, C_in, H, W), k (C_in, C_out/groups, KH, KW), b (C_out) or none and the
// options, and returns (N, C_out, OH, OW). N may be 0 (an empty output, as PyTorch).
// Throws ShapeError naming the argument, the shapes and the rule.
Shape conv_transpose2d_output_shape(const Shape& x, const Shape& k, const Shape* b, const ConvTranspose2dOptions& a);

// y = conv2d's input-adjoint applied to x, plus b per channel; y shaped by
// conv_transpose2d_output_shape. b may be null.
template <class T>
void conv_transpose2d_forward(const Tensor<T>& x, const Tensor<T>& k, const Tensor<T>* b,
                              const ConvTranspose2dOptions& a, Tensor<T>& y);

// Adds dJ/dx, dJ/dk, dJ/db for dJ/dy = grad_out into the non-null buffers.
template <class T>
void conv_transpose2d_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const Tensor<T>& k,
                          const ConvTranspose2dOptions& a, Tensor<T>* grad_x, Tensor<T>* grad_k, Tensor<T>* grad_b);

// Records conv_transpose2d on the tape. Pass Value{} as b for no bias.
template <class T>
Value conv_transpose2d(Tape<T>& tape, Value x, Value k, Value b, const ConvTranspose2dOptions& opt = {},
                       std::source_location loc = std::source_location::current());

}  // namespace ad
