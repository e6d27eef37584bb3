// File helpers shared by the weights readers and writers (nn/safetensors.cpp,
// nn/npy.cpp) and the checkpoint reader (nn/checkpoint.cpp). Internal: not installed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nn::detail {

// The whole content of a regular file. Refuses (without blocking) a FIFO, a device or
// a directory ("is a directory, not a <noun>"), throwing `Error` (WeightsError for the
// weights files, CheckpointError for checkpoints); `what` starts every message
// ("read_safetensors: <path>: ...").
template <class Error>
std::vector<std::uint8_t> read_regular_file(const std::string& path, const std::string& what, const char* noun = "file");

// Writes `bytes` to `path` atomically: <path>.tmp.<pid>, fsync, rename over `path`, fsync
// of the directory. On failure `path` is untouched and the temp file removed.
void write_file_atomically(const std::string& path, const void* bytes, std::size_t size,
                           const std::string& what);

}  // namespace nn::detail
