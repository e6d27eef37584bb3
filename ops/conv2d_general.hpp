// conv2d with dilation and groups (the options is_plain() refuses): the shape rule, the
// forward and the VJP, called by conv2d_output_shape, conv2d_forward and conv2d_vjp
// (ops/conv2d.cpp) for those options. Same contracts as theirs (ops/conv2d.hpp).
#pragma once

#include <array>

#include "ops/conv2d.hpp"

namespace ad {

// The options conv2d's general path and conv_transpose2d share: stride >= 1, padding
// >= 0, dilation >= 1 on both axes, groups >= 1 dividing C_in of x (N, C_in, H, W).
void check_conv_options(const char* op, const Shape& x, std::array<int, 2> stride, std::array<int, 2> padding,
                        std::array<int, 2> dilation, int groups);

// x (N, C_in, H, W), k (C_out, C_in/groups, KH, KW), b (C_out) or none; C_in and C_out
// divisible by groups; OH = floor((H + 2 h_p - h_d (KH - 1) - 1) / h_s) + 1.
Shape conv2d_general_output_shape(const Shape& x, const Shape& k, const Shape* b, const Conv2dOptions& a);

template <class T>
void conv2d_general_forward(const Tensor<T>& x, const Tensor<T>& k, const Tensor<T>* b, const Conv2dOptions& a,
                            Tensor<T>& y);

template <class T>
void conv2d_general_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a,
                        Tensor<T>* grad_x, Tensor<T>* grad_k, Tensor<T>* grad_b);

}  // namespace ad
