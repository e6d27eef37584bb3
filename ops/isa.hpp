// Which instruction set the vector kernels use, chosen at run time.
//
// The hot kernels (conv2d's direct convolution: ops/conv2d_simd.inc) are compiled once
// per instruction set, with the vector width as a parameter: Baseline (16-byte vectors,
// the build's own flags), Avx2 (32 bytes, AVX2 + FMA), Avx512 (64 bytes, AVX-512
// F/BW/DQ/VL). At the first use the widest one the processor runs is chosen, unless the
// environment variable AD_ISA names one (baseline | avx2 | avx512): then that one, or a
// std::runtime_error if this processor cannot run it. One build thus uses the widest
// vectors of whatever x86-64 machine it runs on; on other processors only Baseline exists.
#pragma once

#include <string>
#include <vector>

namespace ad {

enum class Isa { Baseline, Avx2, Avx512 };

const char* isa_name(Isa isa);

// Compiled into this build and executable on this processor.
bool isa_supported(Isa isa);

// Every supported instruction set, narrowest first.
std::vector<Isa> supported_isas();

// The instruction set the kernels use now (see above for the first choice).
Isa active_isa();

// An AMD processor. conv2d's AVX-512 kernels prefer Winograd there and the direct
// kernel elsewhere (ops/isa/conv2d_avx512.cpp says what was measured).
bool cpu_vendor_amd();

// Uses `isa` from now on (tests run every variant); throws std::runtime_error when
// this processor cannot run it. Not thread-safe against kernels running concurrently.
void set_isa(Isa isa);

}  // namespace ad
