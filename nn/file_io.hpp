// File helpers shared by the weights readers and writers (nn/safetensors.cpp,
// nn/npy.cpp) and the checkpoint reader and writer (nn/checkpoint.cpp). Internal: not
// installed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace nn::detail {

// The whole content of a regular file. Refuses (without blocking) a FIFO, a device or
// a directory ("is a directory, not a <noun>"), throwing `Error` (WeightsError for the
// weights files, CheckpointError for checkpoints); `what` starts every message
// ("read_safetensors: <path>: ...").
template <class Error>
std::vector<std::uint8_t> read_regular_file(const std::string& path, const std::string& what, const char* noun = "file");

// Told the name of the temporary file a write_file_atomically is about to create
// (hook(tmp)), then that the write is over, whether it succeeded or failed
// (hook(nullptr)). nn/checkpoint.cpp publishes the name for remove_partial_file, which a
// SIGINT/SIGTERM handler calls to remove a save the signal cut short.
using TempFileHook = void (*)(const char* tmp) noexcept;

// Writes `bytes` to `path` atomically: <path>.tmp.<pid>, fsync, rename over `path`, fsync
// of the directory. On failure `path` is untouched and the temp file removed. Throws
// `Error` (WeightsError for the weights files, WriteError for nn::write_file_atomically);
// `what` starts every message ("write_safetensors: <path>: ...").
template <class Error>
void write_file_atomically(const std::string& path, std::span<const std::uint8_t> bytes, std::string_view what,
                           TempFileHook on_temp_file = nullptr);

}  // namespace nn::detail
