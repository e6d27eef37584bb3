// The AVX-512 kernels' code run on AVX2: ops/conv2d_simd.inc compiled exactly as
// ops/isa/conv2d_avx512.cpp compiles it (64-byte vectors, 24 accumulator registers, the
// same tiles, blocks and Winograd choice), but for AVX2 + FMA, so that GCC does each
// 64-byte vector operation as two 32-byte ones. Slow, and never chosen by itself: it
// exists so that the AVX-512 variant's logic (its tile shapes, tails, transposes and
// masks at 16 float lanes) is checked on every AVX2 machine the tests run on, not only
// on the machines that have AVX-512 (ops/isa.hpp, Isa::Avx512Emulated).
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "ops/conv2d_direct.hpp"

#if defined(__x86_64__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
// A 64-byte vector passed or returned by value would change the ABI without AVX-512;
// conv2d_simd.inc passes vectors by reference only, and no function here is called
// from code compiled with other flags except through the table.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
namespace ad::conv::isa_avx512_emulated {
constexpr std::size_t kVectorBytes = 64;
constexpr std::size_t kAccRegs = 24;
constexpr Isa kIsa = Isa::Avx512Emulated;
// The same choice as the AVX-512 variant's (ops/isa/conv2d_avx512.cpp).
bool winograd_preferred() { return cpu_vendor_amd(); }
#include "ops/conv2d_simd.inc"
}  // namespace ad::conv::isa_avx512_emulated
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

namespace ad::conv {
template <class T>
const Kernels<T>& kernels_avx512_emulated() {
  return isa_avx512_emulated::table<T>();
}
template const Kernels<float>& kernels_avx512_emulated<float>();
template const Kernels<double>& kernels_avx512_emulated<double>();
}  // namespace ad::conv

#endif  // __x86_64__
