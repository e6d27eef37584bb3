// Record-time argument checks shared by the op families. Each throws ShapeError
// with the op, the argument, its shape and the rule it breaks.
#pragma once

#include <array>
#include <cstdint>

#include "autodiff/tensor.hpp"

namespace ad {

// `what` (e.g. "input") must have rank `rank`; `dims` names the axes, e.g. "(N, C, H, W)".
inline void check_rank(const char* op, const char* what, const Shape& s, std::size_t rank,
                       const char* dims) {
  if (s.size() != rank)
    shape_error(op, "{} {} must have rank {} {}, not rank {}", what, shape_str(s), rank, dims,
                s.size());
}

// No axis of `what` may be empty (e.g. an empty batch).
inline void check_nonempty(const char* op, const char* what, const Shape& s) {
  for (std::size_t i = 0; i < s.size(); ++i)
    if (s[i] == 0) shape_error(op, "{} {} is empty along axis {}; every axis must be >= 1", what, shape_str(s), i);
}

// The same for every axis but the batch axis 0: an empty batch (N = 0) is accepted, as
// in PyTorch (a data loader's empty last shard), and gives an empty output.
inline void check_nonempty_but_batch(const char* op, const char* what, const Shape& s) {
  for (std::size_t i = 1; i < s.size(); ++i)
    if (s[i] == 0)
      shape_error(op, "{} {} is empty along axis {}; every axis but the batch axis 0 must be >= 1", what,
                  shape_str(s), i);
}

// Sliding-window geometry on an (N, C, H, W) input: stride >= 1, padding >= 0, and
// the window (KH, KW) fits inside the padded input. Returns (OH, OW) by the
// document's note: floor((H + 2 h_p - KH) / h_s) + 1.
inline std::array<std::size_t, 2> check_window(const char* op, const char* window_name,
                                               const Shape& x, std::array<std::size_t, 2> window,
                                               std::array<int, 2> stride,
                                               std::array<int, 2> padding) {
  if (stride[0] < 1 || stride[1] < 1)
    shape_error(op, "stride ({},{}) must be >= 1 on both axes", stride[0], stride[1]);
  if (padding[0] < 0 || padding[1] < 0)
    shape_error(op, "padding ({},{}) must be >= 0 on both axes", padding[0], padding[1]);
  if (window[0] < 1 || window[1] < 1)
    shape_error(op, "{} ({},{}) must be >= 1 on both axes", window_name, window[0], window[1]);
  std::array<std::size_t, 2> out{};
  const char* axis[2] = {"H", "W"};
  for (int d = 0; d < 2; ++d) {
    const std::size_t padded = x[2 + d] + 2 * static_cast<std::size_t>(padding[d]);
    if (window[d] > padded)
      shape_error(op, "{} ({},{}) is larger than input {} with padding ({},{}): {} {} > {} + 2*{} = {}",
                  window_name, window[0], window[1], shape_str(x), padding[0], padding[1],
                  d == 0 ? "KH" : "KW", window[d], axis[d], padding[d], padded);
    out[d] = (padded - window[d]) / static_cast<std::size_t>(stride[d]) + 1;
  }
  return out;
}

// An output shape (N, C, OH, OW) computed from the arguments must have an element count
// a tensor can hold: at most kMaxOutputElements, so that even a double tensor's byte
// size fits in a signed 64-bit integer. Without this, a huge padding can make
// N*C*OH*OW wrap around to a small number and the forward write past its buffer.
inline constexpr std::uint64_t kMaxOutputElements = std::uint64_t{1} << 60;
inline void check_output_size(const char* op, const Shape& x, const Shape& out, std::array<int, 2> stride,
                              std::array<int, 2> padding) {
  std::uint64_t n = 1;
  for (std::size_t d : out) {
    // n <= 2^60 before the product; compare by division so it cannot overflow.
    if (d != 0 && n > kMaxOutputElements / d)
      shape_error(op, "output {} for input {} with padding ({},{}) and stride ({},{}) has more than 2^60 elements",
                  shape_str(out), shape_str(x), padding[0], padding[1], stride[0], stride[1]);
    n *= d;
  }
}

// An axis as PyTorch takes it, -rank <= axis < rank (negative: from the end), as an index
// 0 .. rank-1 of `what` (shape s). `name` says which argument it was ("axis", "dim0").
inline std::size_t normalize_axis(const char* op, const char* name, int axis, const char* what, const Shape& s) {
  const auto rank = static_cast<std::ptrdiff_t>(s.size());
  if (rank == 0) shape_error(op, "{} () has rank 0: it has no axis for {} {}", what, name, axis);
  if (axis < -rank || axis >= rank)
    shape_error(op, "{} {} is out of range for {} {} of rank {} (allowed: {} to {})", name, axis, what, shape_str(s),
                rank, -rank, rank - 1);
  return static_cast<std::size_t>(axis < 0 ? axis + rank : axis);
}

}  // namespace ad
