// conv2d's per-image kernels for AVX-512 F/BW/DQ/VL (x86-64-v4): ops/conv2d_simd.inc
// compiled with 64-byte vectors, selected at run time (ops/isa.hpp).
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
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512")
#endif
namespace ad::conv::isa_avx512 {
constexpr std::size_t kVectorBytes = 64;
constexpr std::size_t kAccRegs = 24;
constexpr Isa kIsa = Isa::Avx512;
// On a 16-core Xeon the direct kernel ran conv2 forward in 2.1-2.3 ms, Winograd in
// 2.7-3.5 ms (bench/README.md): its transforms do not widen with the vectors.
constexpr bool kWinogradPreferred = false;
#include "ops/conv2d_simd.inc"
}  // namespace ad::conv::isa_avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace ad::conv {
template <class T>
const Kernels<T>& kernels_avx512() {
  return isa_avx512::table<T>();
}
template const Kernels<float>& kernels_avx512<float>();
template const Kernels<double>& kernels_avx512<double>();
}  // namespace ad::conv

#endif  // __x86_64__
