// Helpers shared by the tests in tests/nn.
//
// TempDir: a fresh directory under the system temp dir for one test, removed with
// everything in it (even after a test took away its write permission). The name carries the pid, the
// running test's name and a counter, so parallel ctest runs and several TempDirs in one
// test never share a directory.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <random>
#include <initializer_list>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "nn/data.hpp"

namespace nn::test {

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    const std::string test =
        info != nullptr ? fmt::format("{}.{}", info->test_suite_name(), info->name()) : "none";
    path_ = std::filesystem::temp_directory_path() / fmt::format("nn_test_{}_{}_{}", ::getpid(), test, counter++);
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // The path of `name` inside the directory.
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }
  // Names of every entry in the directory, sorted.
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::filesystem::path path_;
};

// Runs fn and requires an exception of type E whose message holds every keyword.
template <class E>
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> keywords) {
  try {
    fn();
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const std::string& k : keywords)
      EXPECT_NE(msg.find(k), std::string::npos) << "message lacks \"" << k << "\": " << msg;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "nothing was thrown";
}

// A small generated dataset: 12x12 images, class k has a bright 4x4 square in one
// of 4 quadrants plus noise. Learnable in a few epochs by a tiny CNN.
inline Dataset quadrant_fixture(std::size_t count, uint64_t seed) {
  Dataset d;
  d.count = count, d.rows = 12, d.cols = 12, d.num_classes = 4;
  d.images.resize(count * 144);
  d.labels.resize(count);
  std::mt19937_64 rng(seed);
  for (std::size_t n = 0; n < count; ++n) {
    const int k = static_cast<int>(rng() % 4);
    d.labels[n] = static_cast<uint8_t>(k);
    for (std::size_t i = 0; i < 144; ++i) d.images[n * 144 + i] = static_cast<uint8_t>(rng() % 60);
    const std::size_t r0 = (k / 2) * 6 + 1 + rng() % 2, c0 = (k % 2) * 6 + 1 + rng() % 2;
    for (std::size_t r = r0; r < r0 + 4; ++r)
      for (std::size_t c = c0; c < c0 + 4; ++c) d.images[n * 144 + r * 12 + c] = 220;
  }
  return d;
}

}  // namespace nn::test
