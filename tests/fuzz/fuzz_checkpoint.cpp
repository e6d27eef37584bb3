// libFuzzer target: the checkpoint loader on arbitrary bytes. load_checkpoint must
// return tensors whose sizes match their shapes, or throw nn::CheckpointError;
// load_checkpoint_into must then fill a fixed model only from a file that matches
// it exactly, and otherwise leave it untouched. Each input is tried twice: as it is,
// and with its last 4 bytes replaced by the right CRC32, so that mutations also reach
// the checks behind the checksum.
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <vector>

#include <xtensor/xbuilder.hpp>

#include "mem_file.hpp"
#include "nn/checkpoint.hpp"

namespace {

bool same_bits(const xt::xarray<float>& a, const xt::xarray<float>& b) {
  return a.shape() == b.shape() &&
         std::equal(a.data(), a.data() + a.size(), b.data(), [](float x, float y) {
           return std::bit_cast<std::uint32_t>(x) == std::bit_cast<std::uint32_t>(y);
         });
}

void check_load(const std::string& path) {
  try {
    std::string tag;
    const std::vector<nn::NamedTensor> ts = nn::load_checkpoint(path, &tag);
    std::set<std::string> names;
    for (const nn::NamedTensor& t : ts) {
      if (!names.insert(t.name).second) std::abort();  // names are unique
      if (t.value.dimension() > nn::kMaxCheckpointRank) std::abort();
      std::size_t n = 1;
      for (std::size_t d : t.value.shape()) n *= d;
      if (n != t.value.size()) std::abort();
    }
  } catch (const nn::CheckpointError&) {
  }

  // The model of the seed corpus (tests/fuzz/corpus_checkpoint/model.ckpt).
  xt::xarray<float> w = xt::zeros<float>({2, 3}), b = xt::zeros<float>({3});
  const xt::xarray<float> w0 = w, b0 = b;
  try {
    nn::load_checkpoint_into(path, {{"w", &w}, {"b", &b}}, "fuzz-model");
  } catch (const nn::CheckpointError&) {
    if (!same_bits(w, w0) || !same_bits(b, b0)) std::abort();  // a refused load changes nothing
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static fuzz::MemFile file("fuzz_checkpoint");
  check_load(file.write(data, size));
  if (size >= 4) {
    std::vector<std::uint8_t> fixed(data, data + size);
    const auto crc = static_cast<std::uint32_t>(::crc32(0, fixed.data(), static_cast<uInt>(size - 4)));
    for (int i = 0; i < 4; ++i) fixed[size - 4 + i] = static_cast<std::uint8_t>(crc >> (8 * i));
    check_load(file.write(fixed.data(), size));
  }
  return 0;
}
