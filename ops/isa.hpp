// Which instruction set the vector kernels use, chosen at run time.
//
// The hot kernels (conv2d's direct convolution: ops/conv2d_simd.inc) are compiled once
// per instruction set, with the vector width as a parameter: Baseline (16-byte vectors,
// the build's own flags), Avx2 (32 bytes, AVX2 + FMA), Avx512 (64 bytes, AVX-512
// F/BW/DQ/VL). At the first use the widest one the processor runs is chosen, unless the
// environment variable AD_ISA names one (baseline | avx2 | avx512 | avx512-emulated): then that one, or a
// std::runtime_error if this processor cannot run it. One build thus uses the widest
// vectors of whatever x86-64 machine it runs on; on other processors only Baseline exists.
//
// Avx512Emulated is not an instruction set: it is the Avx512 variant's code (64-byte
// vectors, its tiles and blocks) compiled for AVX2, each vector operation done as two.
// It is never chosen by itself (AD_ISA=avx512-emulated or set_isa select it) and is
// slow; it lets a machine without AVX-512 check the AVX-512 variant's logic, and the
// tests run it wherever AVX2 runs (kernel_variants()).
#pragma once

#include <string>
#include <vector>

namespace ad {

enum class Isa { Baseline, Avx2, Avx512, Avx512Emulated };

const char* isa_name(Isa isa);

// Compiled into this build and executable on this processor.
bool isa_supported(Isa isa);

// Every supported instruction set, narrowest first (Avx512Emulated is not one).
std::vector<Isa> supported_isas();

// Every variant of the kernels this processor can run: supported_isas(), then
// Avx512Emulated where AVX2 runs. What the tests check.
std::vector<Isa> kernel_variants();

// The instruction set the kernels use now (see above for the first choice).
Isa active_isa();

// An AMD processor. conv2d's AVX-512 kernels prefer Winograd there and the direct
// kernel elsewhere (ops/isa/conv2d_avx512.cpp says what was measured).
bool cpu_vendor_amd();

// Uses `isa` from now on (tests run every variant); throws std::runtime_error when
// this processor cannot run it. Not thread-safe against kernels running concurrently.
void set_isa(Isa isa);

}  // namespace ad
