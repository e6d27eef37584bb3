// IDX reader (the MNIST / Fashion-MNIST file format), raw or gzip-compressed.
//
// Layout (all integers big-endian):
//   byte 0, 1   zero
//   byte 2      type code (0x08 unsigned byte is the only one supported here)
//   byte 3      rank, 1..4
//   rank x u32  dimensions, each > 0
//   payload     product(dims) elements, row-major, nothing after it
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace nn {

// Thrown for every unreadable, malformed or inconsistent data file; the message
// names the file and what is wrong with it.
class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Largest payload read_idx accepts, in elements (= bytes for type 0x08): 2^31.
inline constexpr std::uint64_t kMaxIdxElements = std::uint64_t{1} << 31;

// One IDX file: its dimensions and its row-major unsigned-byte payload
// (data.size() == product(dims)).
struct IdxArray {
  std::vector<std::uint32_t> dims;
  std::vector<std::uint8_t> data;
};

// Reads an IDX file of unsigned bytes; gzip is detected by the magic bytes 1f 8b,
// not the extension. Throws DataError naming `path` on any defect.
IdxArray read_idx(const std::string& path);

// The dims of an IDX file, from its header alone, checked as read_idx checks them (for a
// raw file, the payload size too); the payload is not read. Throws DataError.
std::vector<std::uint32_t> read_idx_header(const std::string& path);

// "(60000,28,28)": dims the way error messages print them.
std::string format_dims(const std::vector<std::uint32_t>& dims);

}  // namespace nn
