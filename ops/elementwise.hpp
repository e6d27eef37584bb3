// Elementwise arithmetic (add, sub, mul, div with NumPy broadcasting; scale), the
// channel bias add, and reductions to a scalar.
#pragma once

#include <array>
#include <source_location>

#include "autodiff/tape.hpp"

namespace ad {

// scale's node attributes.
struct ScaleAttrs {
  static constexpr const char* kType = "ad::ScaleAttrs";
  double factor = 1.0;
};

// sum_to's and broadcast_to's node attributes: the target shape (rank <= 6).
struct TargetShapeAttrs {
  static constexpr const char* kType = "ad::TargetShapeAttrs";
  uint32_t rank = 0;
  std::array<uint32_t, 6> shape{};
  static TargetShapeAttrs of(const Shape& s);
  Shape get() const { return Shape(shape.begin(), shape.begin() + rank); }
};

extern const OpDef add_op, sub_op, mul_op, div_op, scale_op, bias_add_op, sum_op, mean_op, sum_to_op,
    broadcast_to_op;
namespace OpKind {
inline constexpr OpId Add = &add_op;
inline constexpr OpId Sub = &sub_op;
inline constexpr OpId Mul = &mul_op;
inline constexpr OpId Div = &div_op;
inline constexpr OpId Scale = &scale_op;
inline constexpr OpId BiasAdd = &bias_add_op;
inline constexpr OpId Sum = &sum_op;
inline constexpr OpId Mean = &mean_op;
inline constexpr OpId SumTo = &sum_to_op;
inline constexpr OpId BroadcastTo = &broadcast_to_op;
}  // namespace OpKind

// The binary ops broadcast a and b in NumPy's way (ops/broadcast.hpp): shapes aligned from
// the right, each pair of sizes equal or one of them 1; c has the broadcast shape, e.g.
// (N,C,H,W) op (1,C,1,1), (C,1,1), (1) or () is (N,C,H,W). Shapes that do not broadcast
// are a ShapeError naming both. Each VJP sums the gradient over the axes its operand was
// stretched along, back to the operand's shape: ga = sum_to_a(dc/da g).
// c = a + b.                                     VJP: ga += g, gb += g.
template <class T> Value add(Tape<T>& tape, Value a, Value b, std::source_location loc = std::source_location::current());
// c = a - b.                                     VJP: ga += g, gb -= g.
template <class T> Value sub(Tape<T>& tape, Value a, Value b, std::source_location loc = std::source_location::current());
// c = a .* b.                                    VJP: ga += g .* b, gb += g .* a.
template <class T> Value mul(Tape<T>& tape, Value a, Value b, std::source_location loc = std::source_location::current());
// c = a ./ b (IEEE: b = 0 gives inf or NaN).     VJP: ga += g ./ b, gb -= g .* (a ./ b) ./ b.
template <class T> Value div(Tape<T>& tape, Value a, Value b, std::source_location loc = std::source_location::current());
// y = s x.                                       VJP: gx += s g.
template <class T> Value scale(Tape<T>& tape, Value x, double s, std::source_location loc = std::source_location::current());
// y[n,c,...] = x[n,c,...] + b[c] for x (N, C, ...) and b (C): the b_j 1 term of section 2.
// VJP: gx += g, gb[c] += sum of g over every axis but 1 (section 3.1.5, dJ/db).
template <class T> Value bias_add(Tape<T>& tape, Value x, Value b, std::source_location loc = std::source_location::current());
// Scalar () sum / mean of every element.         VJP: gx += g (sum), g / size (mean).
template <class T> Value sum(Tape<T>& tape, Value x, std::source_location loc = std::source_location::current());
template <class T> Value mean(Tape<T>& tape, Value x, std::source_location loc = std::source_location::current());

// The two halves of broadcasting, as ops (the VJPs of the binary ops, recorded for
// higher-order gradients; each is the other's VJP). `shape` must broadcast to x's shape
// (sum_to) or x's shape to `shape` (broadcast_to); the same shape returns x, recording nothing.
// y = x summed over the axes where `shape` is 1 or missing, to `shape`.   VJP: gx += broadcast_to(g).
template <class T> Value sum_to(Tape<T>& tape, Value x, const Shape& shape, std::source_location loc = std::source_location::current());
// y = x stretched to `shape` (NumPy's broadcast_to, a copy).             VJP: gx += sum_to(g).
template <class T> Value broadcast_to(Tape<T>& tape, Value x, const Shape& shape, std::source_location loc = std::source_location::current());

// The forwards: c already has the broadcast shape of a and b.
template <class T> void add_forward(const Tensor<T>& a, const Tensor<T>& b, Tensor<T>& c);
template <class T> void sub_forward(const Tensor<T>& a, const Tensor<T>& b, Tensor<T>& c);
template <class T> void mul_forward(const Tensor<T>& a, const Tensor<T>& b, Tensor<T>& c);
template <class T> void div_forward(const Tensor<T>& a, const Tensor<T>& b, Tensor<T>& c);

// The VJPs, called by backward(). grad_out has the broadcast shape; grad_a and grad_b
// (either may be null) have their operand's shape, which the VJP reads from them.
template <class T> void add_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_a, Tensor<T>* grad_b);
template <class T> void sub_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_a, Tensor<T>* grad_b);
template <class T> void mul_vjp(const Tensor<T>& grad_out, const Tensor<T>& a, const Tensor<T>& b, Tensor<T>* grad_a, Tensor<T>* grad_b);
template <class T> void div_vjp(const Tensor<T>& grad_out, const Tensor<T>& a, const Tensor<T>& b, Tensor<T>* grad_a, Tensor<T>* grad_b);
template <class T> void scale_vjp(const Tensor<T>& grad_out, T s, Tensor<T>* grad_x);
template <class T> void bias_add_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_x, Tensor<T>* grad_b);
// grad_out is a scalar (); grad_x += grad_out * factor everywhere (1 for sum, 1/size for mean).
template <class T> void broadcast_scalar_vjp(const Tensor<T>& grad_out, T factor, Tensor<T>* grad_x);

}  // namespace ad
