// conv2d: cross-correlation of (N, C_in, H, W) images with (C_out, C_in, KH, KW)
// kernels plus a per-channel bias. Design document: section 2 (forward), 3.1.5 and
// 3.1.6 (VJPs), appendix A (derivative of a convolution).
#pragma once

#include <array>
#include <source_location>

#include "autodiff/tape.hpp"

namespace ad {

struct Conv2dOptions {
  std::array<int, 2> padding{0, 0};  // (h_p, w_p), zeros on both sides
  std::array<int, 2> stride{1, 1};   // (h_s, w_s)
};

// Checks x (N,C_in,H,W), k (C_out,C_in,KH,KW), b (C_out) or none, and returns the
// output shape (N, C_out, OH, OW), OH = floor((H + 2 h_p - KH) / h_s) + 1 (the
// document's note). Throws ShapeError naming the argument, both shapes and the rule.
Shape conv2d_output_shape(const Shape& x, const Shape& k, const Shape* b, const Attrs& a);

// y = x * k + b, with y already shaped by conv2d_output_shape. b may be null.
template <class T>
void conv2d_forward(const Tensor<T>& x, const Tensor<T>& k, const Tensor<T>* b, const Attrs& a,
                    Tensor<T>& y);

// Adds dJ/dx, dJ/dk, dJ/db for dJ/dy = grad_out into the non-null buffers.
template <class T>
void conv2d_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const Tensor<T>& k, const Attrs& a,
                Tensor<T>* grad_x, Tensor<T>* grad_k, Tensor<T>* grad_b);

// Winograd F(2x2, 5x5) for float convolutions with a 5x5 kernel at stride 1 and 4..32
// input channels (forward and dJ/dx; ops/conv2d.cpp). Auto (the default): where the
// instruction set in use gains by it, AVX2 and the baseline (with AVX-512 the direct
// kernel measured faster: bench/README.md); On: wherever it applies; Off: never. The
// environment variable AD_WINOGRAD (0 = Off, 1 = On, else Auto) sets the start value.
enum class WinogradMode { Auto, On, Off };
WinogradMode conv2d_winograd();
void set_conv2d_winograd(WinogradMode m);

// Records conv2d on the tape. Pass Value{} as b for no bias.
template <class T>
Value conv2d(Tape<T>& tape, Value x, Value k, Value b, const Conv2dOptions& opt = {},
             std::source_location loc = std::source_location::current());

}  // namespace ad
