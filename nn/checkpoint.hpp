// Parameter checkpoints: named float tensors in one self-checking binary file.
//
// File format, every integer little-endian:
//   8 bytes     magic "ADCKPT01"
//   u32         version (kCheckpointVersion = 1)
//   u32 + bytes model tag (length, then UTF-8 bytes, no terminator)
//   u32         tensor count
//   per tensor:
//     u32 + bytes  name
//     u32          rank (0 = scalar, at most kMaxCheckpointRank)
//     u64 x rank   dims
//     f32 x prod(dims)  values, row-major, IEEE-754 binary32 bit patterns
//   u32         CRC32 (zlib crc32) of every preceding byte
// Nothing may follow the CRC. Names are unique within a file.
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <xtensor/xarray.hpp>

namespace nn {

// Thrown when a checkpoint cannot be written, read, or does not match the model;
// the message names the file and the problem.
class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Format version written by save_checkpoint and the only one load accepts.
inline constexpr std::uint32_t kCheckpointVersion = 1;
// Highest tensor rank the format accepts.
inline constexpr std::uint32_t kMaxCheckpointRank = 16;

// One parameter: a unique name (e.g. "conv1.weight") and its values.
struct NamedTensor {
  std::string name;
  xt::xarray<float> value;
};

// Thrown by write_file_atomically; the message names the file, the step that failed
// and the system's reason ("No space left on device").
class WriteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Writes `bytes` to `path` atomically: to <path>.tmp.<pid>, fsync, rename over `path`,
// fsync the directory. On failure the temp file is removed and the old file at `path`
// is untouched. An existing `path` that is not a regular file (a device such as
// /dev/null, a FIFO, a directory) is refused before anything is written, never
// replaced. Messages start with "<who>: <path>: ". Throws WriteError.
void write_file_atomically(const std::string& path, std::span<const std::uint8_t> bytes,
                           std::string_view who);

// For a SIGINT/SIGTERM handler: removes the temp file of a write_file_atomically in
// progress in this process, if there is one, and says whether it removed one.
// Async-signal-safe (an atomic flag, a static buffer and unlink(2)); the caller then
// ends the process with _exit, so the interrupted save never renames anything.
bool remove_partial_file() noexcept;

// Writes `tensors` with write_file_atomically (errors are CheckpointError).
void save_checkpoint(const std::string& path, const std::vector<NamedTensor>& tensors,
                     const std::string& model_tag);

// Reads and fully verifies a checkpoint (magic, version, sizes, CRC32, no
// trailing bytes); stores its model tag in *model_tag when given.
std::vector<NamedTensor> load_checkpoint(const std::string& path,
                                         std::string* model_tag = nullptr);

// Loads `path` into the model's tensors: tag, name set and every shape must
// match `expected` exactly; nothing is modified unless every check passes.
void load_checkpoint_into(const std::string& path,
                          const std::vector<std::pair<std::string, xt::xarray<float>*>>& expected,
                          const std::string& model_tag);

}  // namespace nn
