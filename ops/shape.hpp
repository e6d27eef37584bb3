// Shape ops: reshape, permute and transpose, concat, and narrow with split and chunk.
// They move elements and never compute with them, so each VJP moves the gradient back:
// its Jacobian is a 0/1 matrix (a permutation, or a selection of rows).
//
// Unlike PyTorch, where reshape, permute, transpose, narrow and split return views, every
// op here writes a new tensor (copy semantics): a value on the tape never aliases another.
// Axes may be negative (counted from the end, -1 the last) as in PyTorch.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <source_location>
#include <span>
#include <vector>

#include "autodiff/tape.hpp"

namespace ad {

// The most axes reshape's and permute's node attributes hold.
inline constexpr std::size_t kMaxShapeRank = 6;

// reshape's node attributes: the result's shape, -1 resolved (axes past `rank` unused).
struct ReshapeAttrs {
  static constexpr const char* kType = "ad::ReshapeAttrs";
  uint32_t rank = 0;
  std::array<uint32_t, kMaxShapeRank> shape{};
};
// permute's: result axis k is input axis dims[k] (non-negative; past `rank` unused).
struct PermuteAttrs {
  static constexpr const char* kType = "ad::PermuteAttrs";
  uint32_t rank = 0;
  std::array<int32_t, kMaxShapeRank> dims{};
};
// transpose's: the two axes swapped (non-negative).
struct TransposeAttrs {
  static constexpr const char* kType = "ad::TransposeAttrs";
  int32_t dim0 = 0, dim1 = 0;
};
// concat's: the axis (non-negative).
struct ConcatAttrs {
  static constexpr const char* kType = "ad::ConcatAttrs";
  int32_t axis = 0;
};
// narrow's: elements [start, start + length) along axis (non-negative).
struct NarrowAttrs {
  static constexpr const char* kType = "ad::NarrowAttrs";
  int32_t axis = 0;
  uint64_t start = 0, length = 0;
};

extern const OpDef reshape_op, permute_op, transpose_op, concat_op, narrow_op;
namespace OpKind {
inline constexpr OpId Reshape = &reshape_op;
inline constexpr OpId Permute = &permute_op;
inline constexpr OpId Transpose = &transpose_op;
inline constexpr OpId Concat = &concat_op;
inline constexpr OpId Narrow = &narrow_op;
}  // namespace OpKind

// x reshaped to `shape` (row-major order kept, a copy): at most one size may be -1,
// inferred from x's size; the sizes must hold exactly x's elements; rank <= 6.
// VJP: gx += g read in x's shape.
template <class T>
Value reshape(Tape<T>& tape, Value x, const std::vector<int64_t>& shape,
              std::source_location loc = std::source_location::current());

// y = x with its axes reordered: y's axis k is x's axis dims[k] (dims lists each of x's
// axes once; rank <= 6), so y.shape[k] = x.shape[dims[k]].
// y[i_0, ..., i_{r-1}] = x[j] with j[dims[k]] = i_k.   VJP: gx[j] += g[i], the inverse move.
template <class T>
Value permute(Tape<T>& tape, Value x, const std::vector<int>& dims,
              std::source_location loc = std::source_location::current());
// x with axes dim0 and dim1 swapped (any rank); a permute, recorded as its own op.
template <class T>
Value transpose(Tape<T>& tape, Value x, int dim0, int dim1, std::source_location loc = std::source_location::current());

// The inputs joined along `axis`: every input has the same rank (>= 1) and the same sizes
// except along axis; the result's size there is the sum (zero-size inputs allowed).
// VJP: input k's gradient is its block of g along axis.
template <class T>
Value concat(Tape<T>& tape, std::span<const Value> xs, int axis = 0,
             std::source_location loc = std::source_location::current());
template <class T>
Value concat(Tape<T>& tape, std::initializer_list<Value> xs, int axis = 0,
             std::source_location loc = std::source_location::current()) {
  return concat(tape, std::span<const Value>(xs.begin(), xs.size()), axis, loc);
}

// Elements [start, start + length) of x along axis (as torch.narrow; start >= 0).
// VJP: gx[.., start + k, ..] += g[.., k, ..].
template <class T>
Value narrow(Tape<T>& tape, Value x, int axis, std::size_t start, std::size_t length,
             std::source_location loc = std::source_location::current());
// x cut along axis into consecutive pieces of the given sizes, which must sum to x's
// size there (as torch.split with a list). Each piece is one narrow node.
template <class T>
std::vector<Value> split(Tape<T>& tape, Value x, const std::vector<std::size_t>& sizes, int axis = 0,
                         std::source_location loc = std::source_location::current());
// x cut along axis into `chunks` pieces of ceil(size / chunks) elements, the last one
// smaller, as torch.chunk (which then may give fewer than `chunks` pieces; an empty axis
// gives `chunks` empty pieces). Each piece is one narrow node.
template <class T>
std::vector<Value> chunk(Tape<T>& tape, Value x, std::size_t chunks, int axis = 0,
                         std::source_location loc = std::source_location::current());

// The forwards (y already shaped) and VJPs (grad_x may be null: nothing to do).
template <class T> void reshape_forward(const Tensor<T>& x, Tensor<T>& y);
// overwrite: grad_x is written, not added to (Tape::grad_buffer_for_overwrite).
template <class T> void reshape_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_x, bool overwrite = false);
// dims as in permute, non-negative.
template <class T> void permute_forward(const Tensor<T>& x, std::span<const std::size_t> dims, Tensor<T>& y);
template <class T> void permute_vjp(const Tensor<T>& grad_out, std::span<const std::size_t> dims, Tensor<T>* grad_x);
// y is the inputs' concatenation along axis; grad_xs[k] (null: skipped) is input k's
// gradient, sizes[k] input k's size along axis.
template <class T> void concat_forward(std::span<const Tensor<T>* const> xs, std::size_t axis, Tensor<T>& y);
template <class T>
void concat_vjp(const Tensor<T>& grad_out, std::size_t axis, std::span<const std::size_t> sizes,
                std::span<Tensor<T>* const> grad_xs);
template <class T> void narrow_forward(const Tensor<T>& x, std::size_t axis, std::size_t start, Tensor<T>& y);
template <class T> void narrow_vjp(const Tensor<T>& grad_out, std::size_t axis, std::size_t start, Tensor<T>* grad_x);

}  // namespace ad
