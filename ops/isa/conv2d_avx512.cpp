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
#include <immintrin.h>  // one conversion GCC's vector extensions split (ops/conv2d_simd.inc)

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
// Which conv2 path is faster on AVX-512 depends on the processor (bench/README.md). On a
// 16-core Intel Xeon the direct kernel ran conv2 forward in 2.1-2.3 ms, Winograd in
// 2.7-3.5 ms: its transforms do not widen with the vectors. On a 2-core AMD EPYC (family
// 1Ah, Zen 5) Winograd gave 8-16% more ref-CNN training and inference img/s at 1 and
// 2 threads. AD_WINOGRAD=0|1 overrides the choice.
bool winograd_preferred() { return cpu_vendor_amd(); }
#define AD_CONV_AVX512_INTRINSICS
#include "ops/conv2d_simd.inc"
#undef AD_CONV_AVX512_INTRINSICS
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
