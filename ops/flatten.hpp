// flatten: (N, C, H, W) -> (N, C*H*W), design document section 3.1.2.
#pragma once

#include <source_location>

#include "autodiff/tape.hpp"

namespace ad {

extern const OpDef flatten_op;
namespace OpKind {
inline constexpr OpId Flatten = &flatten_op;
}

// Checks x has rank >= 2 and returns (N, product of the other axes).
Shape flatten_output_shape(const Shape& x);

// Row-major: y[n, (c*H + h)*W + w] = x[n,c,h,w]. Channel-major blocks as the
// document's B = [vec(A_1); vec(A_2); ...]; within a channel rows come one after the
// other (the document's vec stacks columns; see the README for the mapping).
template <class T> void flatten_forward(const Tensor<T>& x, Tensor<T>& y);
// grad_x += grad_out seen in x's shape (the document's reshape of dJ/dB into dJ/d_vA).
// overwrite: grad_x is written, not added to (Tape::grad_buffer_for_overwrite).
template <class T> void flatten_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_x, bool overwrite = false);

template <class T>
Value flatten(Tape<T>& tape, Value x, std::source_location loc = std::source_location::current());

}  // namespace ad
