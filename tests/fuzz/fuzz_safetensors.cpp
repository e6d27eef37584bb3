// libFuzzer target: the safetensors header parser and reader (nn/tensor_files.hpp) on
// arbitrary bytes. Either the input is refused with nn::WeightsError, or the header it
// describes is consistent: unique non-empty names, ranks within the limit, every byte
// range inside the data and exactly its shape's size, the ranges tiling the data with
// no gap or overlap; and read_safetensors returns those tensors with those shapes.
// Each input is tried twice: as a whole file, and as "<header JSON> NUL <data>" with
// the 8-byte length put in front, so that mutations of the JSON reach the checks
// behind a length that matches.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <set>
#include <span>
#include <vector>

#include "mem_file.hpp"
#include "nn/tensor_files.hpp"

namespace {

void check(std::span<const std::uint8_t> bytes) {
  static fuzz::MemFile file("fuzz_safetensors");
  nn::SafetensorsHeader h;
  try {
    h = nn::parse_safetensors_header(bytes, "input");
  } catch (const nn::WeightsError&) {
    return;
  }
  if (h.data_start < 8 || h.data_start > bytes.size()) std::abort();
  const std::uint64_t data_size = bytes.size() - h.data_start;
  std::set<std::string> names;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (const nn::SafetensorsEntry& e : h.tensors) {
    if (e.name.empty() || !names.insert(e.name).second) std::abort();
    if (e.shape.size() > nn::kMaxWeightsRank) std::abort();
    std::uint64_t n = 1;
    for (const std::size_t d : e.shape) n *= d;  // cannot overflow: the parser bounded it
    if (e.begin > e.end || e.end > data_size) std::abort();
    if (e.end - e.begin != n * (e.dtype == nn::DType::F32 ? 4 : 8)) std::abort();
    ranges.emplace_back(e.begin, e.end);
  }
  std::sort(ranges.begin(), ranges.end());
  std::uint64_t next = 0;
  for (const auto& [b, e] : ranges) {
    if (b != next) std::abort();
    next = e;
  }
  if (next != data_size) std::abort();

  // The reader on the same bytes as a file: the same tensors, or (never) an error.
  const std::vector<nn::WeightTensor> ts = nn::read_safetensors(file.write(bytes.data(), bytes.size()));
  if (ts.size() != h.tensors.size()) std::abort();
  for (std::size_t i = 0; i < ts.size(); ++i) {
    if (ts[i].name != h.tensors[i].name || ts[i].dtype != h.tensors[i].dtype) std::abort();
    if (!std::equal(ts[i].value.shape().begin(), ts[i].value.shape().end(), h.tensors[i].shape.begin(),
                    h.tensors[i].shape.end()))
      std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  check({data, size});
  const std::uint8_t* nul = static_cast<const std::uint8_t*>(std::memchr(data, 0, size));
  const std::size_t n = nul != nullptr ? static_cast<std::size_t>(nul - data) : size;
  std::vector<std::uint8_t> file(8);
  for (int i = 0; i < 8; ++i) file[i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(n) >> (8 * i));
  file.insert(file.end(), data, data + n);
  if (nul != nullptr) file.insert(file.end(), nul + 1, data + size);
  check(file);
  return 0;
}
