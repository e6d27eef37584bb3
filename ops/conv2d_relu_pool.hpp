// conv2d -> ReLU -> max pooling as one op: the document's convolution layer (section 2,
// Z = A * K + b, then the activation and the pool of section 3.1.3) in one pass over
// the convolution's output, which then never exists as a tensor. Same values and
// gradients as max_pool2d(relu(conv2d(x, k, b))) (ops/conv2d_relu_pool.cpp gives the
// derivation); faster and lighter: the (N, C_out, OH, OW) activations of the two middle
// ops are neither written, read again, nor kept for backward.
#pragma once

#include <cstdint>
#include <source_location>
#include <vector>

#include "autodiff/tape.hpp"
#include "ops/conv2d.hpp"
#include "ops/pool.hpp"

namespace ad {

// The node's attributes: the convolution's and the pool's options.
struct Conv2dReluMaxPool2dAttrs {
  static constexpr const char* kType = "ad::Conv2dReluMaxPool2dAttrs";
  Conv2dOptions conv;
  Pool2dOptions pool;
};

extern const OpDef conv2d_relu_max_pool2d_op;
namespace OpKind {
inline constexpr OpId Conv2dReluMaxPool2d = &conv2d_relu_max_pool2d_op;
}

// y = max_pool2d(relu(conv2d(x, k, b, conv)), pool): x (N, C_in, H, W), k (C_out, C_in/groups,
// KH, KW), b (C_out) or Value{}; y (N, C_out, PH, PW) by the two ops' shape rules, whose
// errors it raises under its own name. Any options of the two ops; with a 2x2 window at
// stride 2 without padding (the usual CNN pool) on conv2d's direct or Winograd path, the
// pool and ReLU run inside the convolution's output pass, image by image, in cache.
template <class T>
Value conv2d_relu_max_pool2d(Tape<T>& tape, Value x, Value k, Value b, const Conv2dOptions& conv = {},
                             const Pool2dOptions& pool = {},
                             std::source_location loc = std::source_location::current());

// The bytes a switch takes on the tape (Node::saved_index): 1 where the pool runs in the
// convolution's output pass (the switches are then codes: the winner's place in its
// window, four to an element of saved_index, whose last element is padded with zeros),
// else 4 (max_pool2d's indices).
std::size_t conv2d_relu_max_pool2d_switch_bytes(const Shape& k, const Conv2dOptions& conv, const Pool2dOptions& pool);

// The elements of the output's pixel-major copy that a recording (float) keeps in the
// node's `saved`, for the next conv2d_relu_max_pool2d to read instead of transposing it
// again (its forward's and dJ/dK's Winograd input): 0 for T = double and where the
// switches are not codes. y: the output shape (N, C_out, PH, PW).
std::size_t conv2d_relu_max_pool2d_pixel_copy_elements(const Shape& y, const Shape& k, const Conv2dOptions& conv,
                                                       const Pool2dOptions& pool, std::size_t element_bytes);

// The output shape (N, C_out, PH, PW); throws ShapeError naming conv2d_relu_max_pool2d.
Shape conv2d_relu_max_pool2d_output_shape(const Shape& x, const Shape& k, const Shape* b, const Conv2dOptions& conv,
                                          const Pool2dOptions& pool);

// The forward: y (shaped by the function above) and, where argmax is not null, one
// switch per element of y: the winner's index h*OW + w in its (OH, OW) plane of the
// convolution's output, or -1 where a padding zero won (MaxPoolPadding::Zero).
template <class T>
void conv2d_relu_max_pool2d_forward(const Tensor<T>& x, const Tensor<T>& k, const Tensor<T>* b,
                                    const Conv2dOptions& conv, const Pool2dOptions& pool, Tensor<T>& y,
                                    int32_t* argmax);

// Adds dJ/dx, dJ/dk, dJ/db (the non-null ones) for dJ/dy = grad_out, given the forward's
// output y and switches; dJ/dx is written instead where overwrite_x (its buffer's
// contents then do not matter: Tape::grad_buffer_for_overwrite). On conv2d's plain path
// dJ/dz (the convolution output's gradient) is made image by image inside conv2d's VJP
// (detail::conv2d_vjp_pixels), so it too never exists for the whole batch.
template <class T>
void conv2d_relu_max_pool2d_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, const std::vector<int32_t>& argmax,
                                const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& conv, Tensor<T>* grad_x,
                                Tensor<T>* grad_k, Tensor<T>* grad_b, bool overwrite_x = false);

}  // namespace ad
