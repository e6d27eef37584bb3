// The command-line pieces the training examples share (train_cnn, resnet_fmnist):
// range checks for flags and an early check that output files can be written.
#pragma once

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace examples {

// Flag limits: far above any sensible run, low enough that sizes cannot overflow and a
// typo (--batch 64000000) is a usage error rather than an allocation failure mid-run.
constexpr int kMaxEpochs = 100000;
constexpr std::size_t kMaxBatch = 65536;
constexpr int kMaxThreads = 1024;
constexpr int kMaxChannels = 1024;

// A whole number in [lo, hi], written in decimal digits only. It rewrites the value
// without leading zeros: CLI11 parses integers with base 0, so "010" would be 8 and
// "0x10" 16, and it wraps "-1" into an unsigned flag.
inline CLI::Validator whole_in(std::uint64_t lo, std::uint64_t hi) {
  return CLI::Validator(
      [=](std::string& v) {
        std::uint64_t x = 0;
        const char* end = v.data() + v.size();
        const bool digits = !v.empty() && v.find_first_not_of("0123456789") == std::string::npos;
        const auto [ptr, ec] = std::from_chars(v.data(), end, x);
        if (!digits || ec != std::errc() || ptr != end || x < lo || x > hi)
          return fmt::format("Value {} is not a whole number in [{}, {}]", v, lo, hi);
        v = std::to_string(x);
        return std::string();
      },
      fmt::format("in [{}, {}]", lo, hi));
}

// A number in (lo, hi] (or [lo, hi] when lo is included); the message shows the bounds
// as written rather than CLI11's six decimals.
inline CLI::Validator number_in(double lo, double hi, bool lo_included) {
  return CLI::Validator(
      [=](std::string& v) {
        double x = 0;
        const bool ok = CLI::detail::lexical_cast(v, x) && (lo_included ? x >= lo : x > lo) && x <= hi;
        return ok ? std::string()
                  : fmt::format("Value {} is not a number in {}{:g}, {:g}]", v, lo_included ? "[" : "(", lo, hi);
      },
      fmt::format("in {}{:g}, {:g}]", lo_included ? "[" : "(", lo, hi));
}

// --save and --curve are written after the first epoch: check up front that they can
// be, so a typo in the directory does not cost a training run.
inline void check_writable(const char* flag, const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) return;
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  const fs::file_status st = fs::status(p, ec);  // follows a symlink to what it names
  if (fs::is_directory(st))
    throw std::runtime_error(fmt::format("{} {}: is a directory, expected a file name", flag, path));
  // The file is replaced by a rename: a device or a FIFO (--save /dev/null) would be
  // replaced by a regular file, so only a regular file or a new name is accepted.
  if (fs::exists(st) && !fs::is_regular_file(st))
    throw std::runtime_error(fmt::format("{} {}: exists and is not a regular file (a device, FIFO or socket); "
                                         "give the name of a regular file or a new one", flag, path));
  if (!fs::is_directory(dir, ec))
    throw std::runtime_error(fmt::format("{} {}: the directory {} does not exist", flag, path, dir.string()));
  if (access(dir.c_str(), W_OK) != 0)
    throw std::runtime_error(fmt::format("{} {}: the directory {} is not writable", flag, path, dir.string()));
}

}  // namespace examples
