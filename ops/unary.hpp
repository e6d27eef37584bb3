// Elementwise maths y = f(x), any shape: neg, exp, log, sqrt, pow (scalar exponent), abs
// and clamp, with their VJPs dJ/dx = dJ/dy .* f'(x). PyTorch's semantics throughout,
// including its choices where f is not differentiable (abs at 0, clamp at its bounds).
#pragma once

#include <limits>
#include <optional>
#include <source_location>

#include "autodiff/tape.hpp"

namespace ad {

// pow's node attributes.
struct PowAttrs {
  static constexpr const char* kType = "ad::PowAttrs";
  double exponent = 1.0;
};

// clamp's node attributes; an absent bound is an infinite one.
struct ClampAttrs {
  static constexpr const char* kType = "ad::ClampAttrs";
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
};

extern const OpDef neg_op, exp_op, log_op, sqrt_op, pow_op, abs_op, clamp_op;
namespace OpKind {
inline constexpr OpId Neg = &neg_op;
inline constexpr OpId Exp = &exp_op;
inline constexpr OpId Log = &log_op;
inline constexpr OpId Sqrt = &sqrt_op;
inline constexpr OpId Pow = &pow_op;
inline constexpr OpId Abs = &abs_op;
inline constexpr OpId Clamp = &clamp_op;
}  // namespace OpKind

// Record on the tape; y has x's shape. IEEE 754 outside the domain, as PyTorch: log of a
// negative number is NaN, of 0 is -inf; sqrt of a negative number is NaN.
// y = -x.                                   VJP: gx -= g.
template <class T> Value neg(Tape<T>& tape, Value x, std::source_location loc = std::source_location::current());
// y = e^x.                                  VJP: gx += g y.
template <class T> Value exp(Tape<T>& tape, Value x, std::source_location loc = std::source_location::current());
// y = ln x.                                 VJP: gx += g / x.
template <class T> Value log(Tape<T>& tape, Value x, std::source_location loc = std::source_location::current());
// y = sqrt(x).                              VJP: gx += g / (2 y).
template <class T> Value sqrt(Tape<T>& tape, Value x, std::source_location loc = std::source_location::current());
// y = x^p for a scalar p.                   VJP: gx += g p x^(p-1); 0 when p = 0 (PyTorch).
template <class T> Value pow(Tape<T>& tape, Value x, double exponent, std::source_location loc = std::source_location::current());
// y = |x|.                                  VJP: gx += g sgn(x), sgn(0) = sgn(NaN) = 0 (PyTorch).
template <class T> Value abs(Tape<T>& tape, Value x, std::source_location loc = std::source_location::current());
// y = min(max(x, min), max), either bound optional (not both), as torch.clamp: min > max
// gives max everywhere; NaN stays NaN.
// VJP: gx += g where min <= x <= max (bounds included, as PyTorch's clamp_backward), else 0.
template <class T>
Value clamp(Tape<T>& tape, Value x, std::optional<double> min, std::optional<double> max,
            std::source_location loc = std::source_location::current());

// The forwards: y already shaped like x.
template <class T> void neg_forward(const Tensor<T>& x, Tensor<T>& y);
template <class T> void exp_forward(const Tensor<T>& x, Tensor<T>& y);
template <class T> void log_forward(const Tensor<T>& x, Tensor<T>& y);
template <class T> void sqrt_forward(const Tensor<T>& x, Tensor<T>& y);
template <class T> void pow_forward(const Tensor<T>& x, T exponent, Tensor<T>& y);
template <class T> void abs_forward(const Tensor<T>& x, Tensor<T>& y);
template <class T> void clamp_forward(const Tensor<T>& x, const ClampAttrs& a, Tensor<T>& y);

// The VJPs: grad_x += grad_out .* f'. exp and sqrt read their output y, the others x.
template <class T> void neg_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_x);
template <class T> void exp_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, Tensor<T>* grad_x);
template <class T> void log_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, Tensor<T>* grad_x);
template <class T> void sqrt_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, Tensor<T>* grad_x);
template <class T> void pow_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, T exponent, Tensor<T>* grad_x);
template <class T> void abs_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, Tensor<T>* grad_x);
template <class T> void clamp_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const ClampAttrs& a, Tensor<T>* grad_x);

}  // namespace ad
