// libFuzzer target: nn::read_idx on arbitrary bytes, raw or gzip-compressed.
// The only acceptable outcomes are a self-consistent IdxArray or nn::DataError;
// any other exception, a sanitizer report, a leak or a crash is a bug.
#include <cstdint>
#include <cstdlib>

#include "mem_file.hpp"
#include "nn/idx.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static fuzz::MemFile file("fuzz_idx");
  const std::string& path = file.write(data, size);
  try {
    const nn::IdxArray a = nn::read_idx(path);
    // What read_idx promises (nn/idx.hpp): rank 1..4, every dim > 0, the payload
    // is exactly product(dims) bytes.
    if (a.dims.empty() || a.dims.size() > 4) std::abort();
    std::uint64_t count = 1;
    for (std::uint32_t d : a.dims) {
      if (d == 0) std::abort();
      count *= d;
    }
    if (count > nn::kMaxIdxElements || a.data.size() != count) std::abort();
  } catch (const nn::DataError&) {
    // a clear refusal: fine
  }
  return 0;
}
