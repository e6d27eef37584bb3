// Named tensors in files other programs read: safetensors (the format of PyTorch and
// Hugging Face) and NumPy .npy files. nn/weights.hpp puts a model's weights in them.
//
// safetensors (https://github.com/huggingface/safetensors), every integer little-endian:
//   u64          N, the length of the header
//   N bytes      a UTF-8 JSON object: for every tensor
//                  "name": {"dtype": "F32", "shape": [d0, ...], "data_offsets": [begin, end]}
//                plus an optional "__metadata__": {"key": "value", ...} (strings only);
//                padded with spaces
//   the data     each tensor's values, row-major, little-endian, at [begin, end) counted
//                from the end of the header; the tensors cover the data exactly, with no
//                gap, overlap or byte left over
// Read and written: F32 and F64 (other dtypes are refused by name).
//
// .npy directory: one file <dir>/<name>.npy per tensor (NumPy's format, version 1.0-3.0,
// '<f4' / '<f8', big-endian and Fortran order read as well); other files are ignored.
//
// Every reader checks the whole file before it returns anything: a bad file is a
// WeightsError naming the file and the defect.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>

namespace nn {

// Thrown for every unreadable, malformed or mismatching weights file; the message names
// the file and what is wrong with it.
class WeightsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Element types of weights files. F32 values are held exactly in a WeightTensor's double.
enum class DType { F32, F64 };
// "F32" / "F64", safetensors' names.
const char* dtype_name(DType d);

// One named tensor as a file holds it (or will): its dtype in the file and its values,
// row-major, in double precision whatever the dtype.
struct WeightTensor {
  std::string name;
  DType dtype = DType::F32;
  xt::xarray<double> value;
};

// Highest rank the readers accept.
inline constexpr std::size_t kMaxWeightsRank = 16;
// Longest safetensors header accepted (the reference implementation's limit).
inline constexpr std::uint64_t kMaxSafetensorsHeader = 100'000'000;

// ---------------------------------------------------------------- safetensors

// One tensor of a safetensors header; [begin, end) counts from the end of the header.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::size_t> shape;
  std::uint64_t begin = 0, end = 0;
};
struct SafetensorsHeader {
  std::vector<SafetensorsEntry> tensors;  // in the header's order
  std::map<std::string, std::string> metadata;
  std::uint64_t data_start = 0;           // 8 + N: where the data begins in the file
};

// Parses and checks the header of the safetensors file whose bytes are `file` (all of
// them: offsets are checked against the file's length); `path` names it in messages.
// Throws WeightsError on any defect: a length past the file or above
// kMaxSafetensorsHeader, invalid JSON or UTF-8, a duplicate key, an unknown field or
// dtype, a negative or non-integer dim or offset, a shape whose size disagrees with its
// byte range, ranges that overlap, leave a gap or do not end at the end of the file,
// a metadata value that is not a string.
SafetensorsHeader parse_safetensors_header(std::span<const std::uint8_t> file, const std::string& path);

// Reads a whole safetensors file, checked as above; the tensors come in the header's
// order; the metadata goes to *metadata when given.
std::vector<WeightTensor> read_safetensors(const std::string& path,
                                           std::map<std::string, std::string>* metadata = nullptr);

// Writes the tensors (unique, non-empty names; F32 or F64 as each one's dtype says) and
// the metadata atomically: a temp file beside `path`, fsync, rename, fsync of the directory.
void write_safetensors(const std::string& path, const std::vector<WeightTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// ---------------------------------------------------------------- .npy files

// Reads one .npy file (float32 or float64; little- or big-endian; C or Fortran order),
// checked strictly: magic, version, header dictionary, and a data size that is exactly
// what the shape needs. The tensor is named `name`.
WeightTensor read_npy(const std::string& path, const std::string& name);

// Every <name>.npy in `dir` (sorted by name); other entries are ignored.
std::vector<WeightTensor> read_npy_dir(const std::string& dir);

// Writes <dir>/<name>.npy for every tensor (xt::dump_npy, each file written atomically),
// creating `dir` if needed. Names must be usable as file names (no '/', not "." or
// ".."). Refuses a directory that holds another .npy file, which a later read_npy_dir
// would take for a tensor.
void write_npy_dir(const std::string& dir, const std::vector<WeightTensor>& tensors);

}  // namespace nn
