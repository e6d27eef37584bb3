// linear (fully connected) and matmul. Design document: section 3.1.1,
// Z^[3] = (W^[3])^T B^[2] + b^[3], batched with one sample per row.
#pragma once

#include <source_location>

#include "autodiff/tape.hpp"

namespace ad {

extern const OpDef linear_op, matmul_op;
namespace OpKind {
inline constexpr OpId Linear = &linear_op;
inline constexpr OpId Matmul = &matmul_op;
}  // namespace OpKind

// y (N, D_out) = x (N, D_in) W (D_in, D_out) + b (D_out). W has the document's
// layout: W^[3] is (D_in, D_out) and each row of y is (W^T B)^T for B one row of x.
// b may be null. Throws ShapeError on mismatch.
Shape linear_output_shape(const Shape& x, const Shape& w, const Shape* b);
template <class T>
void linear_forward(const Tensor<T>& x, const Tensor<T>& w, const Tensor<T>* b, Tensor<T>& y);
// grad_x += g W^T (= where overwrite_x: Tape::grad_buffer_for_overwrite), grad_w += x^T g,
// grad_b += sum over rows of g.
template <class T>
void linear_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const Tensor<T>& w, Tensor<T>* grad_x,
                Tensor<T>* grad_w, Tensor<T>* grad_b, bool overwrite_x = false);

// c (M, N) = a (M, K) b (K, N).
Shape matmul_output_shape(const Shape& a, const Shape& b);
// grad_a += g b^T (= where overwrite_a), grad_b += a^T g.
template <class T>
void matmul_vjp(const Tensor<T>& grad_out, const Tensor<T>& a, const Tensor<T>& b, Tensor<T>* grad_a,
                Tensor<T>* grad_b, bool overwrite_a = false);

// Record on the tape. Pass Value{} as b for a linear map without bias.
template <class T>
Value linear(Tape<T>& tape, Value x, Value w, Value b, std::source_location loc = std::source_location::current());
template <class T>
Value matmul(Tape<T>& tape, Value a, Value b, std::source_location loc = std::source_location::current());

}  // namespace ad
