// The shape check the weights readers (nn/npy.cpp, nn/safetensors.cpp) give a tensor's
// header before they compare its data's size. Internal: not installed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace nn::detail {

// The element count of a tensor of `shape` whose values take `itemsize` bytes each,
// checked factor by factor so that neither it nor its size in bytes can overflow
// (xtensor's strides are signed). The non-zero dims are checked even when a zero dim
// makes the count 0: the strides are still computed from them. Past 2^63-1 bytes,
// throws fail("shape (2,3) has too many elements (more than 2^63 bytes)"); `fail`
// adds the reader's prefix and returns the exception.
template <class Fail>
std::uint64_t checked_element_count(const std::vector<std::size_t>& shape, std::size_t itemsize, const Fail& fail) {
  constexpr auto kMaxIndex = static_cast<std::uint64_t>(std::numeric_limits<std::ptrdiff_t>::max());
  const std::uint64_t max_elems = kMaxIndex / itemsize;
  std::uint64_t product = 1;  // of the non-zero dims
  bool empty = false;
  for (const std::size_t d : shape) {
    if (d == 0) {
      empty = true;
      continue;
    }
    if (d > max_elems / product)
      throw fail(fmt::format("shape ({}) has too many elements (more than 2^63 bytes)", fmt::join(shape, ",")));
    product *= d;
  }
  return empty ? 0 : product;
}

}  // namespace nn::detail
