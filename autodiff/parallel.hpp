// The elementwise loops on OpenMP threads above a size threshold: the op families', the
// tape's zeroing and copies (autodiff/tensor.hpp).
//
// The branch is in C++ rather than in an OpenMP `if` clause: a parallel region costs a
// few microseconds even when its `if` clause is false (libgomp still builds a team of
// one), which is most of the time of an op on a few thousand elements; and a loop whose
// body is a lambda vectorized poorly when outlined behind an `if` clause (add's VJP on
// 802,816 floats: 760 us instead of 90 us on one thread, GCC 12).
#pragma once

#include <cstddef>

namespace ad {

// Elementwise loops go parallel above this many elements (as the activations).
inline constexpr std::size_t kParallelElements = 65536;

// f(i) for i = 0 .. n-1, in parallel when `parallel`; f(i) for distinct i must touch
// distinct data.
template <class F>
void parallel_for(std::size_t n, bool parallel, F f) {
  if (parallel) {
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < n; ++i) f(i);
  } else {
    for (std::size_t i = 0; i < n; ++i) f(i);
  }
}

// f(i) for i = 0 .. n-1, a vectorizable elementwise loop, in parallel above `threshold`
// elements.
template <class F>
void for_each_index(std::size_t n, F f, std::size_t threshold = kParallelElements) {
  if (n > threshold) {
#pragma omp parallel for simd schedule(static)
    for (std::size_t i = 0; i < n; ++i) f(i);
  } else {
#pragma omp simd
    for (std::size_t i = 0; i < n; ++i) f(i);
  }
}

}  // namespace ad
