// Tensors, shapes and the error types shared by the tape and every op.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <xtensor/xarray.hpp>

#include "autodiff/parallel.hpp"

namespace ad {

// Every value on a tape is a dense row-major xarray: (N, C, H, W) for images,
// (C_out, C_in, KH, KW) for kernels, (N, D) for flattened features, () for a scalar loss.
template <class T>
using Tensor = xt::xarray<T>;

using Shape = std::vector<std::size_t>;

template <class S>
Shape to_shape(const S& s) {
  return Shape(s.begin(), s.end());
}

// "(1,3,28,28)"; "()" for a scalar.
template <class S>
std::string shape_str(const S& s) {
  return fmt::format("({})", fmt::join(s, ","));
}

// A recorded op received arguments whose shapes or attributes break its rule.
// The message names the op, the argument, both shapes and the rule.
struct ShapeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// The tape was used against its contract (unknown handle, backward twice, ...).
struct TapeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Anomaly mode found a NaN or an infinity (see Tape::set_anomaly_mode). what() is
// the whole story; the fields repeat its parts for programs and tests.
struct AnomalyError : std::runtime_error {
  using std::runtime_error::runtime_error;
  int node = -1;          // tape index of the node to blame (-1: the backward seed)
  std::string op;         // "conv2d", or a custom op's name
  std::string label;      // the node's label, "" if none
  std::string where;      // forward call site "file.cpp:42" (basename)
  bool in_backward = false;  // found in a gradient written by the node's VJP (or hook)
};

// Throws ShapeError("<op>: <formatted message>").
template <class... Args>
[[noreturn]] void shape_error(const char* op, fmt::format_string<Args...> f, Args&&... args) {
  throw ShapeError(fmt::format("{}: {}", op, fmt::format(f, std::forward<Args>(args)...)));
}

// Sets every element of t to zero, on every OpenMP thread above 64K elements. The tape
// zeroes each gradient buffer with it (11.2 MB a step for ref-CNN at batch 64; one thread
// filling them measured 9.6% of a 2-thread step). Below that, no parallel region at all
// (the loss's and the logits' gradients are zeroed every step).
template <class T>
void zero_fill(Tensor<T>& t) {
  T* p = t.data();
  for_each_index(t.size(), [=](std::size_t i) { p[i] = T(0); });
}

// dst[i] = src[i] for i < n, on every OpenMP thread above 16K elements: the tape's copy
// of an input and reshape's copy, serial time between the ops' parallel regions
// otherwise (bench/README.md, "Serial time"; the ref-CNN's batch of 64 images is 50K
// floats: 15 us a step on one thread, 10-14 us in a region of two).
template <class T>
void parallel_copy(const T* src, std::size_t n, T* dst) {
  for_each_index(n, [=](std::size_t i) { dst[i] = src[i]; }, 16384);
}

}  // namespace ad
