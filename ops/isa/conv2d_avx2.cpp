// conv2d's per-image kernels for AVX2 + FMA (x86-64-v3): ops/conv2d_simd.inc
// compiled with 32-byte vectors, selected at run time (ops/isa.hpp).
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "ops/conv2d_direct.hpp"

#if defined(__x86_64__)

// Only the functions defined between push and pop use the wider instructions (every
// header is included above): see ops/conv2d_simd.inc.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace ad::conv::isa_avx2 {
constexpr std::size_t kVectorBytes = 32;
constexpr std::size_t kAccRegs = 12;
constexpr Isa kIsa = Isa::Avx2;
bool winograd_preferred() { return true; }
#include "ops/conv2d_simd.inc"
}  // namespace ad::conv::isa_avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace ad::conv {
template <class T>
const Kernels<T>& kernels_avx2() {
  return isa_avx2::table<T>();
}
template const Kernels<float>& kernels_avx2<float>();
template const Kernels<double>& kernels_avx2<double>();
}  // namespace ad::conv

#endif  // __x86_64__
