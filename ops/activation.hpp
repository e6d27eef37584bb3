// Elementwise activations I = f(Z) and their VJPs dJ/dZ = dJ/dI .* f'(Z).
// Design document: section 2 (f_activation) and section 3.1.4.
#pragma once

#include <source_location>

#include "autodiff/tape.hpp"

namespace ad {

// leaky_relu's node attributes.
struct LeakyReluAttrs {
  static constexpr const char* kType = "ad::LeakyReluAttrs";
  double slope = 0.01;
};

extern const OpDef relu_op, leaky_relu_op, sigmoid_op, tanh_op, relu_backward_op, leaky_relu_backward_op;
namespace OpKind {
inline constexpr OpId Relu = &relu_op;
inline constexpr OpId LeakyRelu = &leaky_relu_op;
inline constexpr OpId Sigmoid = &sigmoid_op;
inline constexpr OpId Tanh = &tanh_op;
inline constexpr OpId ReluBackward = &relu_backward_op;
inline constexpr OpId LeakyReluBackward = &leaky_relu_backward_op;
}  // namespace OpKind

// Forwards: y = f(x), y already shaped like x. Any shape.
template <class T> void relu_forward(const Tensor<T>& x, Tensor<T>& y);
template <class T> void leaky_relu_forward(const Tensor<T>& x, T slope, Tensor<T>& y);
template <class T> void sigmoid_forward(const Tensor<T>& x, Tensor<T>& y);
template <class T> void tanh_forward(const Tensor<T>& x, Tensor<T>& y);

// VJPs: grad_x += grad_out .* f'. ReLU and leaky ReLU read x (f'(0) = 0 resp. slope,
// as in PyTorch); sigmoid and tanh read their output y.
template <class T> void relu_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, Tensor<T>* grad_x);
template <class T> void leaky_relu_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, T slope, Tensor<T>* grad_x);
template <class T> void sigmoid_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, Tensor<T>* grad_x);
template <class T> void tanh_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, Tensor<T>* grad_x);

// Record on the tape.
template <class T> Value relu(Tape<T>& tape, Value x, std::source_location loc = std::source_location::current());
template <class T> Value leaky_relu(Tape<T>& tape, Value x, double slope = 0.01, std::source_location loc = std::source_location::current());
template <class T> Value sigmoid(Tape<T>& tape, Value x, std::source_location loc = std::source_location::current());
template <class T> Value tanh(Tape<T>& tape, Value x, std::source_location loc = std::source_location::current());

// The VJPs of relu and leaky_relu as ops, for higher-order gradients (autodiff/higher_order.hpp):
// y = g .* f'(x) for g and x of one shape, the mask read from x as relu_vjp / leaky_relu_vjp do.
// Linear in g with the same mask, so VJP: gg += u .* f'(x); and, f' being piecewise constant,
// nothing for x (zero almost everywhere; undefined at the kink x = 0).
template <class T> Value relu_backward(Tape<T>& tape, Value grad_out, Value x, std::source_location loc = std::source_location::current());
template <class T> Value leaky_relu_backward(Tape<T>& tape, Value grad_out, Value x, double slope,
                                             std::source_location loc = std::source_location::current());

}  // namespace ad
