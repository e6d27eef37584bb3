// conv2d's per-image kernels for the build's own instruction set (SSE2 on plain x86-64), 16-byte vectors: ops/conv2d_simd.inc
// compiled with 16-byte vectors, selected at run time (ops/isa.hpp) where no wider set runs.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "ops/conv2d_direct.hpp"

namespace ad::conv::isa_baseline {
constexpr std::size_t kVectorBytes = 16;
constexpr std::size_t kAccRegs = 12;
constexpr Isa kIsa = Isa::Baseline;
bool winograd_preferred() { return true; }
#include "ops/conv2d_simd.inc"
}  // namespace ad::conv::isa_baseline

namespace ad::conv {
template <class T>
const Kernels<T>& kernels_baseline() {
  return isa_baseline::table<T>();
}
template const Kernels<float>& kernels_baseline<float>();
template const Kernels<double>& kernels_baseline<double>();
}  // namespace ad::conv
