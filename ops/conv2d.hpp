// conv2d: cross-correlation of (N, C_in, H, W) images with (C_out, C_in, KH, KW)
// kernels plus a per-channel bias. Design document: section 2 (forward), 3.1.5 and
// 3.1.6 (VJPs), appendix A (derivative of a convolution).
#pragma once

#include <array>
#include <cstddef>
#include <functional>
#include <source_location>

#include "autodiff/tape.hpp"

namespace ad {

// Also the node's attributes (Node::attrs.get<Conv2dOptions>()).
struct Conv2dOptions {
  static constexpr const char* kType = "ad::Conv2dOptions";
  std::array<int, 2> padding{0, 0};  // (h_p, w_p), zeros on both sides
  std::array<int, 2> stride{1, 1};   // (h_s, w_s)
  std::array<int, 2> dilation{1, 1};  // (h_d, w_d): tap (p, q) reads x[.., i*h_s + p*h_d - h_p, ..]
  int groups = 1;  // C_in and C_out in `groups` blocks; output block g reads input block g only
                   // (kernel (C_out, C_in/groups, KH, KW); groups = C_in: depthwise)
};

// The document's convolution: no dilation, one group. Other options take the general
// path (ops/conv2d_general.cpp).
inline bool is_plain(const Conv2dOptions& a) { return a.dilation[0] == 1 && a.dilation[1] == 1 && a.groups == 1; }

extern const OpDef conv2d_op;
namespace OpKind {
inline constexpr OpId Conv2d = &conv2d_op;
}

// Checks x (N,C_in,H,W), k (C_out,C_in/groups,KH,KW), b (C_out) or none, and returns the
// output shape (N, C_out, OH, OW), OH = floor((H + 2 h_p - KH) / h_s) + 1 (the
// document's note), with dilation floor((H + 2 h_p - h_d (KH - 1) - 1) / h_s) + 1 (as
// PyTorch). Throws ShapeError naming the argument, both shapes and the rule.
Shape conv2d_output_shape(const Shape& x, const Shape& k, const Shape* b, const Conv2dOptions& a);

// y = x * k + b, with y already shaped by conv2d_output_shape. b may be null.
template <class T>
void conv2d_forward(const Tensor<T>& x, const Tensor<T>& k, const Tensor<T>* b, const Conv2dOptions& a,
                    Tensor<T>& y);

// Adds dJ/dx, dJ/dk, dJ/db for dJ/dy = grad_out into the non-null buffers. x is read
// only for dJ/dk (for dJ/dx alone only its shape is used: conv_transpose2d relies on it).
template <class T>
void conv2d_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a,
                Tensor<T>* grad_x, Tensor<T>* grad_k, Tensor<T>* grad_b);

// Records a convolution-like op of (input, kernel, optional bias) with its options as the
// node's attributes: output_shape checks the shapes, forward fills the new value
// (conv2d, conv_transpose2d).
template <class T, class Options>
Value record_conv(Tape<T>& tape, OpId op, Value x, Value k, Value b, const Options& opt, const std::source_location& loc,
                  Shape (*output_shape)(const Shape&, const Shape&, const Shape*, const Options&),
                  void (*forward)(const Tensor<T>&, const Tensor<T>&, const Tensor<T>*, const Options&, Tensor<T>&)) {
  const Shape bs = b.valid() ? tape.shape(b) : Shape{};
  const Shape ys = output_shape(tape.shape(x), tape.shape(k), b.valid() ? &bs : nullptr, opt);
  Value y = tape.new_value(ys, tape.any_requires_grad({x, k, b}));
  forward(tape.value(x), tape.value(k), b.valid() ? &tape.value(b) : nullptr, opt, tape.mutable_value(y));
  tape.record(op, {x, k, b}, y, Attrs::of(opt), loc);
  return y;
}

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

namespace detail {
// Whether conv2d_forward_pixels and conv2d_vjp_pixels apply to a kernel of shape k
// (C_out, C_in, KH, KW) with these options: the plain path, not a 1x1 GEMM.
bool conv2d_pixels_path(const Shape& k, const Conv2dOptions& a);

// x pixel-major as well, where the op that made it had it so (conv2d_relu_max_pool2d's
// pooled output, ops/conv2d_relu_pool.cpp): image n at data + n*H*W*stride, its pixel
// (h, w)'s C_in channels at + (h*W + w) * stride (stride >= C_in). The paths below that
// read x pixel-major (Winograd's) read it from here instead of transposing x again.
template <class T>
struct PixelCopy {
  const T* data = nullptr;  // null: none
  std::size_t stride = 0;
  // image n of `pixels` (H*W) pixels; null where there is no copy
  const T* image(std::size_t n, std::size_t pixels) const { return data ? data + n * pixels * stride : nullptr; }
};

// conv2d's plain path (is_plain, not a 1x1 GEMM) image by image, without its output
// pass: calls out(n, yt, Opad, oa, ob) in parallel for every image n and every range
// [oa, ob) of its output channels (all of [0, Opad) in one call, or, where the batch
// has fewer images than the team has threads, a few ranges of whole vectors in calls of
// their own), with yt image n's convolution without bias, pixel-major (OH*OW, Opad), in
// a buffer of the calling thread, valid in the columns [oa, ob) (Opad: C_out rounded up
// to the kernels' channel block, those extra channels zero). The fused ops' output
// passes use it (ops/conv2d_relu_pool.cpp). Returns false, calling nothing, where the
// path does not apply. xpx: x pixel-major too, or none.
template <class T>
bool conv2d_forward_pixels(const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a,
                           const std::function<void(std::size_t n, const T* yt, std::size_t Opad, std::size_t oa,
                                                    std::size_t ob)>& out,
                           const PixelCopy<T>& xpx = {});

// The same with ReLU and 2x2/2 max pooling as the output pass, for inference (no
// switches), where conv2d runs as Winograd (float; false, calling nothing, elsewhere):
// calls out(n, pt, Opad, oa, ob) with pt (PH*PW, Opad) = relu(max_2x2(conv + bias)) of
// image n, pixel-major, valid in the columns [oa, ob), in a buffer of the calling thread;
// bias has Opad entries (zero past C_out). The values are relu_pool_planes' on
// conv2d_forward_pixels' yt, bit for bit, without yt written and read.
template <class T>
bool conv2d_relu_pool_pixels(const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a, const T* bias,
                             const std::function<void(std::size_t n, const T* pt, std::size_t Opad, std::size_t oa,
                                                      std::size_t ob)>& out);

// conv2d_vjp with dJ/dy made image by image instead of read from a tensor: in the VJP's
// parallel loop over the images, grad_image(n, gn) writes image n's dJ/dy (C_out, OH,
// OW) into gn, a buffer of the calling thread (contents unspecified before), which the
// VJP then reads while it is in cache. The fused ops' VJPs scatter into it
// (ops/conv2d_relu_pool.cpp), so the (N, C_out, OH, OW) gradient is never written in
// full. Same results as conv2d_vjp on the tensor of those images. Returns false,
// calling nothing, where the plain path does not apply (dilation, groups).
template <class T>
bool conv2d_vjp_images(const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a,
                       const std::function<void(std::size_t n, T* gn)>& grad_image, Tensor<T>* grad_x,
                       Tensor<T>* grad_k, Tensor<T>* grad_b);
// The same with dJ/dy made pixel-major: grad_pixels(n, gt, Opad) writes image n's dJ/dy
// as gt[(i*OW + j) * Opad + o] (OH*OW rows of Opad >= C_out entries, zero for o >=
// C_out), the layout the VJP's kernels read it in; a planar copy is made only where a
// path needs one (a 1x1 kernel, dJ/dx not by Winograd). Same results as conv2d_vjp;
// overwrite_x: grad_x is written, not added to (Tape::grad_buffer_for_overwrite); xpx:
// x pixel-major too, or none.
template <class T>
bool conv2d_vjp_pixels(const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a,
                       const std::function<void(std::size_t n, T* gt, std::size_t Opad)>& grad_pixels,
                       Tensor<T>* grad_x, Tensor<T>* grad_k, Tensor<T>* grad_b, bool overwrite_x = false,
                       const PixelCopy<T>& xpx = {});
}  // namespace detail

// ---- conv2d's VJPs as ops, for higher-order gradients (autodiff/higher_order.hpp) ----

// conv2d_backward_kernel's attributes: the convolution's options and the kernel's (KH, KW).
struct Conv2dBackwardKernelAttrs {
  static constexpr const char* kType = "ad::Conv2dBackwardKernelAttrs";
  Conv2dOptions conv;
  uint32_t KH = 0, KW = 0;
};
extern const OpDef conv2d_backward_kernel_op;
namespace OpKind {
inline constexpr OpId Conv2dBackwardKernel = &conv2d_backward_kernel_op;
}

// dJ/dK of conv2d as an op: the correlation of the input x (N, C_in, H, W) with the output
// gradient g (N, C_out, OH, OW), a kernel (C_out, C_in/groups, KH, KW):
//   y[o,c,p,q] = sum_{n,i,j} g[n,o,i,j] x[n, c, i*h_s + p*h_d - h_p, j*w_s + q*w_d - w_p]
// (section 3.1.5). Bilinear in (x, g); with u of y's shape, VJP:
//   gx = conv2d's input gradient for kernel u and output gradient g (conv_transpose2d(g, u)),
//   gg = conv2d(x, u) (no bias).
template <class T>
Value conv2d_backward_kernel(Tape<T>& tape, Value x, Value grad_out, std::size_t KH, std::size_t KW,
                             const Conv2dOptions& opt = {}, std::source_location loc = std::source_location::current());
// dJ/dx of conv2d as recorded ops: conv_transpose2d(g, k) with the output padding that
// gives back x's (H, W) `input_shape` (section 3.1.6: a full convolution with the flipped kernel).
template <class T>
Value conv2d_backward_input(Tape<T>& tape, Value grad_out, Value k, const Shape& input_shape,
                            const Conv2dOptions& opt = {}, std::source_location loc = std::source_location::current());

}  // namespace ad
