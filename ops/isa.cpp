// Run-time choice of the kernels' instruction set (ops/isa.hpp).
#include "ops/isa.hpp"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace ad {

namespace {

bool cpu_has(Isa isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  switch (isa) {
    case Isa::Baseline: return true;
    case Isa::Avx2:
    case Isa::Avx512Emulated: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  return false;
#else
  return isa == Isa::Baseline;
#endif
}

std::string supported_list() {
  std::string s;
  for (Isa i : kernel_variants()) s += (s.empty() ? "" : ", ") + std::string(isa_name(i));
  return s;
}

Isa first_choice() {
  if (const char* env = std::getenv("AD_ISA"); env && *env) {
    for (Isa i : {Isa::Baseline, Isa::Avx2, Isa::Avx512, Isa::Avx512Emulated})
      if (std::string(env) == isa_name(i)) {
        if (!isa_supported(i))
          throw std::runtime_error(
              fmt::format("AD_ISA={}: this processor cannot run it (it runs: {})", env, supported_list()));
        return i;
      }
    throw std::runtime_error(fmt::format("AD_ISA={}: unknown (baseline, avx2, avx512 or avx512-emulated)", env));
  }
  return supported_isas().back();
}

std::atomic<int> g_isa{-1};  // -1: not chosen yet

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Baseline: return "baseline";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Emulated: return "avx512-emulated";
  }
  return "?";
}

bool isa_supported(Isa isa) { return cpu_has(isa); }

bool cpu_vendor_amd() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_is("amd");
#else
  return false;
#endif
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Baseline, Isa::Avx2, Isa::Avx512})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

std::vector<Isa> kernel_variants() {
  std::vector<Isa> v = supported_isas();
  if (isa_supported(Isa::Avx512Emulated)) v.push_back(Isa::Avx512Emulated);
  return v;
}

Isa active_isa() {
  int v = g_isa.load(std::memory_order_acquire);
  if (v < 0) {
    v = static_cast<int>(first_choice());
    g_isa.store(v, std::memory_order_release);
  }
  return static_cast<Isa>(v);
}

void set_isa(Isa isa) {
  if (!isa_supported(isa))
    throw std::runtime_error(fmt::format("set_isa({}): this processor cannot run it (it runs: {})", isa_name(isa),
                                         supported_list()));
  g_isa.store(static_cast<int>(isa), std::memory_order_release);
}

}  // namespace ad
