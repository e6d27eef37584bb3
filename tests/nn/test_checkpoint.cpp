// Tests for parameter checkpoints (nn/checkpoint.hpp): format, round trip,
// corruption detection, model matching, and atomicity of failed saves.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "nn/checkpoint.hpp"
#include "tests/nn/nn_test_util.hpp"

namespace test_checkpoint {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

namespace {

using nn::test::TempDir;

Bytes read_raw(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void write_raw(const std::string& path, const Bytes& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << "cannot write fixture " << path;
}

// Deterministic values with awkward bit patterns mixed in: -0, denormal,
// infinities and a NaN with a payload, to prove the round trip is bit-exact.
xt::xarray<float> filled(const std::vector<std::size_t>& shape, std::uint32_t seed) {
  xt::xarray<float> a = xt::xarray<float>::from_shape(shape);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  for (std::size_t i = 0; i < a.size(); ++i) a.data()[i] = dist(rng);
  const float specials[] = {-0.0f, std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::bit_cast<float>(std::uint32_t{0x7fc01234})};
  for (std::size_t i = 0; i < std::size(specials) && i < a.size(); ++i) a.data()[i] = specials[i];
  return a;
}

std::vector<nn::NamedTensor> small_model() {
  std::vector<nn::NamedTensor> out;
  out.push_back({"conv1.weight", filled({4, 1, 3, 3}, 1)});
  out.push_back({"conv1.bias", filled({4}, 2)});
  out.push_back({"fc.weight", filled({10, 36}, 3)});
  out.push_back({"fc.bias", filled({10}, 4)});
  return out;
}

// True when both tensors have the same shape and the same bits everywhere.
bool bit_equal(const xt::xarray<float>& a, const xt::xarray<float>& b) {
  return a.shape() == b.shape() &&
         (a.size() == 0 || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Runs fn, requires nn::CheckpointError, and requires every keyword in its message.
void expect_checkpoint_error(const std::function<void()>& fn, std::initializer_list<std::string> keywords) {
  nn::test::expect_error<nn::CheckpointError>(fn, keywords);
}

void expect_load_error(const std::string& path, std::initializer_list<std::string> keywords) {
  expect_checkpoint_error([&] { nn::load_checkpoint(path); }, keywords);
}

// The model-side view of `tensors`: (name, pointer) pairs for load_checkpoint_into.
std::vector<std::pair<std::string, xt::xarray<float>*>> targets(std::vector<nn::NamedTensor>& tensors) {
  std::vector<std::pair<std::string, xt::xarray<float>*>> out;
  for (nn::NamedTensor& t : tensors) out.emplace_back(t.name, &t.value);
  return out;
}

}  // namespace

// ---------------------------------------------------------------- format and round trip

TEST(Checkpoint, WritesTheDocumentedLayout) {
  TempDir dir;
  const std::string path = dir.file("tiny.ckpt");
  std::vector<nn::NamedTensor> tensors;
  tensors.push_back({"w", xt::xarray<float>{1.0f, -2.0f}});
  nn::save_checkpoint(path, tensors, "t");

  Bytes expected = {'A', 'D', 'C', 'K', 'P', 'T', '0', '1',
                    1, 0, 0, 0,                    // version
                    1, 0, 0, 0, 't',               // model tag
                    1, 0, 0, 0,                    // tensor count
                    1, 0, 0, 0, 'w',               // name
                    1, 0, 0, 0,                    // rank
                    2, 0, 0, 0, 0, 0, 0, 0,        // dims
                    0x00, 0x00, 0x80, 0x3f,        // 1.0f
                    0x00, 0x00, 0x00, 0xc0};       // -2.0f
  const auto crc = static_cast<std::uint32_t>(crc32(0, expected.data(), static_cast<uInt>(expected.size())));
  for (int i = 0; i < 4; ++i) expected.push_back(static_cast<std::uint8_t>(crc >> (8 * i)));
  EXPECT_EQ(read_raw(path), expected);
}

TEST(Checkpoint, RoundTripsNamesShapesBitExactValuesAndTag) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  const std::vector<nn::NamedTensor> saved = small_model();
  nn::save_checkpoint(path, saved, "lenet-v1");

  std::string tag;
  const std::vector<nn::NamedTensor> loaded = nn::load_checkpoint(path, &tag);
  EXPECT_EQ(tag, "lenet-v1");
  ASSERT_EQ(loaded.size(), saved.size());
  for (std::size_t i = 0; i < saved.size(); ++i) {
    EXPECT_EQ(loaded[i].name, saved[i].name);
    EXPECT_TRUE(bit_equal(loaded[i].value, saved[i].value)) << "tensor " << saved[i].name;
  }
  // Without the tag pointer it loads just the same.
  EXPECT_EQ(nn::load_checkpoint(path).size(), saved.size());
}

TEST(Checkpoint, RoundTripsScalarEmptyAndZeroSizedTensors) {
  TempDir dir;
  const std::string path = dir.file("odd.ckpt");
  std::vector<nn::NamedTensor> saved;
  saved.push_back({"scalar", xt::xarray<float>(2.5f)});
  saved.push_back({"empty", xt::xarray<float>::from_shape({0, 3})});
  saved.push_back({"", filled({2, 2}, 9)});
  nn::save_checkpoint(path, saved, "");

  std::string tag = "not cleared";
  const std::vector<nn::NamedTensor> loaded = nn::load_checkpoint(path, &tag);
  EXPECT_EQ(tag, "");
  ASSERT_EQ(loaded.size(), 3u);
  EXPECT_EQ(loaded[0].value.dimension(), 0u);
  EXPECT_EQ(loaded[0].value(), 2.5f);
  EXPECT_EQ(loaded[1].value.shape(), saved[1].value.shape());
  EXPECT_EQ(loaded[1].value.size(), 0u);
  EXPECT_EQ(loaded[2].name, "");
  EXPECT_TRUE(bit_equal(loaded[2].value, saved[2].value));

  nn::save_checkpoint(path, {}, "nothing");
  EXPECT_TRUE(nn::load_checkpoint(path, &tag).empty());
  EXPECT_EQ(tag, "nothing");
}

TEST(Checkpoint, OverwritesExistingFileAndLeavesNoTempFile) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "v1");
  std::vector<nn::NamedTensor> second = small_model();
  second[0].value.fill(7.0f);
  nn::save_checkpoint(path, second, "v2");
  std::string tag;
  const std::vector<nn::NamedTensor> loaded = nn::load_checkpoint(path, &tag);
  EXPECT_EQ(tag, "v2");
  EXPECT_TRUE(bit_equal(loaded[0].value, second[0].value));
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"model.ckpt"}));
}

TEST(Checkpoint, SavesToRelativePathInCurrentDirectory) {
  TempDir dir;
  const fs::path old_cwd = fs::current_path();
  fs::current_path(dir.path());
  EXPECT_NO_THROW(nn::save_checkpoint("relative.ckpt", small_model(), "rel"));
  fs::current_path(old_cwd);
  EXPECT_EQ(nn::load_checkpoint(dir.file("relative.ckpt")).size(), 4u);
}

TEST(Checkpoint, RejectsDuplicateNamesOnSave) {
  TempDir dir;
  const std::string path = dir.file("dup.ckpt");
  std::vector<nn::NamedTensor> tensors = small_model();
  tensors.push_back({"conv1.bias", filled({4}, 5)});
  expect_checkpoint_error([&] { nn::save_checkpoint(path, tensors, "x"); },
                          {path, "\"conv1.bias\" appears twice"});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(dir.entries().empty());
}

// ---------------------------------------------------------------- corrupt files

TEST(Checkpoint, RejectsMissingFile) {
  TempDir dir;
  const std::string path = dir.file("absent.ckpt");
  expect_load_error(path, {"load_checkpoint: " + path + ": cannot open", "No such file"});
}

TEST(Checkpoint, RejectsFileTruncatedAtEveryLength) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "lenet-v1");
  const Bytes full = read_raw(path);
  const std::string cut = dir.file("cut.ckpt");
  for (std::size_t len = 0; len < full.size(); ++len) {
    write_raw(cut, Bytes(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(len)));
    SCOPED_TRACE(fmt::format("truncated to {} of {} bytes", len, full.size()));
    expect_load_error(cut, {cut, "truncated"});
  }
}

TEST(Checkpoint, FlippedDataByteFailsChecksumWithBothValuesInHex) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "lenet-v1");
  Bytes bytes = read_raw(path);
  bytes[bytes.size() / 2] ^= 0x10;  // inside fc.weight's values
  write_raw(path, bytes);

  std::uint32_t stored = 0;
  for (int i = 0; i < 4; ++i) stored |= std::uint32_t{bytes[bytes.size() - 4 + i]} << (8 * i);
  const auto actual = static_cast<std::uint32_t>(crc32(0, bytes.data(), static_cast<uInt>(bytes.size() - 4)));
  expect_load_error(path, {path, "checksum mismatch", fmt::format("0x{:08x}", stored),
                           fmt::format("0x{:08x}", actual)});
}

TEST(Checkpoint, RejectsEverySingleBitFlip) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  std::vector<nn::NamedTensor> small;
  small.push_back({"a", filled({2, 3}, 1)});
  small.push_back({"b", filled({3}, 2)});
  nn::save_checkpoint(path, small, "tag");
  const Bytes good = read_raw(path);
  const std::string bad = dir.file("bad.ckpt");
  for (std::size_t i = 0; i < good.size(); ++i) {
    for (int bit : {0, 7}) {
      Bytes bytes = good;
      bytes[i] ^= static_cast<std::uint8_t>(1u << bit);
      write_raw(bad, bytes);
      SCOPED_TRACE(fmt::format("byte {} bit {}", i, bit));
      expect_load_error(bad, {bad});
    }
  }
}

TEST(Checkpoint, RejectsBadMagic) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "x");
  Bytes bytes = read_raw(path);
  bytes[3] = 'X';
  write_raw(path, bytes);
  expect_load_error(path, {path, "bad magic", "ADCKPT01"});

  write_raw(path, Bytes{'P', 'K'});  // short and not a prefix of the magic
  expect_load_error(path, {path, "bad magic"});
}

TEST(Checkpoint, RejectsUnsupportedVersion) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "x");
  Bytes bytes = read_raw(path);
  bytes[8] = 2;
  write_raw(path, bytes);
  expect_load_error(path, {path, "unsupported version 2", "version 1"});
}

TEST(Checkpoint, RejectsTrailingBytes) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "x");
  Bytes bytes = read_raw(path);
  bytes.push_back(0);
  bytes.push_back(0);
  write_raw(path, bytes);
  expect_load_error(path, {path, "2 trailing bytes"});
}

TEST(Checkpoint, RejectsHugeLengthsWithoutAllocating) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  std::vector<nn::NamedTensor> one;
  one.push_back({"w", filled({2}, 1)});
  nn::save_checkpoint(path, one, "t");
  const Bytes good = read_raw(path);
  // Offsets from WritesTheDocumentedLayout: tag length at 12, count at 17,
  // name length at 21, rank at 26, first dim at 30.
  const auto patch = [&](std::size_t offset, std::initializer_list<std::uint8_t> v) {
    Bytes b = good;
    for (const std::uint8_t x : v) b.at(offset++) = x;
    write_raw(path, b);
  };
  patch(12, {0xff, 0xff, 0xff, 0xff});
  expect_load_error(path, {"truncated", "model tag"});
  patch(17, {0xff, 0xff, 0xff, 0xff});
  expect_load_error(path, {"truncated", "tensor count"});
  patch(21, {0xff, 0xff, 0xff, 0x7f});
  expect_load_error(path, {"truncated", "name"});
  patch(26, {0xff, 0xff, 0xff, 0xff});
  expect_load_error(path, {"rank 4294967295", "at most 16"});
  patch(30, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff});
  expect_load_error(path, {"truncated", "\"w\""});
}

TEST(Checkpoint, NeverCrashesOnRandomMutations) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "fuzz");
  const Bytes good = read_raw(path);
  const std::string bad = dir.file("bad.ckpt");
  std::mt19937_64 rng(2024);
  for (int iter = 0; iter < 500; ++iter) {
    Bytes bytes = good;
    for (std::uint64_t e = 1 + rng() % 4; e > 0; --e) {
      switch (rng() % 3) {
        case 0: bytes[rng() % bytes.size()] = static_cast<std::uint8_t>(rng()); break;
        case 1: bytes.resize(1 + rng() % bytes.size()); break;
        default: bytes[rng() % std::min<std::size_t>(bytes.size(), 64)] ^= 0xff; break;
      }
    }
    if (bytes == good) continue;
    write_raw(bad, bytes);
    SCOPED_TRACE(fmt::format("iteration {}", iter));
    expect_load_error(bad, {bad});
  }
}

// ---------------------------------------------------------------- loading into a model

TEST(CheckpointInto, CopiesValuesIntoExistingBuffers) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  const std::vector<nn::NamedTensor> saved = small_model();
  nn::save_checkpoint(path, saved, "lenet-v1");

  std::vector<nn::NamedTensor> model = small_model();
  for (nn::NamedTensor& t : model) t.value.fill(0.0f);
  const float* conv_buffer = model[0].value.data();
  // Order of the model's list need not match the file's.
  auto expected = targets(model);
  std::swap(expected[0], expected[3]);
  nn::load_checkpoint_into(path, expected, "lenet-v1");
  for (std::size_t i = 0; i < saved.size(); ++i) {
    EXPECT_TRUE(bit_equal(model[i].value, saved[i].value)) << "tensor " << saved[i].name;
  }
  EXPECT_EQ(model[0].value.data(), conv_buffer);
}

TEST(CheckpointInto, RejectsWrongShapeAndLeavesTargetsUntouched) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "lenet-v1");

  std::vector<nn::NamedTensor> model = small_model();
  model[0].value = xt::xarray<float>::from_shape({4, 1, 5, 5});
  for (nn::NamedTensor& t : model) t.value.fill(-1.0f);
  const std::vector<nn::NamedTensor> before = model;
  expect_checkpoint_error(
      [&] { nn::load_checkpoint_into(path, targets(model), "lenet-v1"); },
      {"checkpoint " + path +
       ": tensor \"conv1.weight\" has shape (4,1,3,3) but the model expects (4,1,5,5)"});
  for (std::size_t i = 0; i < model.size(); ++i) {
    EXPECT_TRUE(bit_equal(model[i].value, before[i].value)) << "tensor " << model[i].name;
  }
}

TEST(CheckpointInto, RejectsMissingNameAndLeavesTargetsUntouched) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  std::vector<nn::NamedTensor> saved = small_model();
  saved.pop_back();  // no fc.bias in the file
  nn::save_checkpoint(path, saved, "lenet-v1");

  std::vector<nn::NamedTensor> model = small_model();
  for (nn::NamedTensor& t : model) t.value.fill(-1.0f);
  const std::vector<nn::NamedTensor> before = model;
  expect_checkpoint_error([&] { nn::load_checkpoint_into(path, targets(model), "lenet-v1"); },
                          {"checkpoint " + path, "missing", "\"fc.bias\""});
  for (std::size_t i = 0; i < model.size(); ++i) {
    EXPECT_TRUE(bit_equal(model[i].value, before[i].value)) << "tensor " << model[i].name;
  }
}

TEST(CheckpointInto, RejectsUnexpectedNameAndLeavesTargetsUntouched) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "lenet-v1");

  std::vector<nn::NamedTensor> model = small_model();
  model.erase(model.begin() + 2);  // the model has no fc.weight
  for (nn::NamedTensor& t : model) t.value.fill(-1.0f);
  const std::vector<nn::NamedTensor> before = model;
  expect_checkpoint_error([&] { nn::load_checkpoint_into(path, targets(model), "lenet-v1"); },
                          {"checkpoint " + path, "unexpected", "\"fc.weight\""});
  for (std::size_t i = 0; i < model.size(); ++i) {
    EXPECT_TRUE(bit_equal(model[i].value, before[i].value)) << "tensor " << model[i].name;
  }
}

TEST(CheckpointInto, RejectsWrongTagNamingBoth) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "lenet-v1");
  std::vector<nn::NamedTensor> model = small_model();
  for (nn::NamedTensor& t : model) t.value.fill(-1.0f);
  const std::vector<nn::NamedTensor> before = model;
  expect_checkpoint_error([&] { nn::load_checkpoint_into(path, targets(model), "lenet-v2"); },
                          {"checkpoint " + path, "\"lenet-v1\"", "\"lenet-v2\""});
  for (std::size_t i = 0; i < model.size(); ++i) {
    EXPECT_TRUE(bit_equal(model[i].value, before[i].value)) << "tensor " << model[i].name;
  }
}

TEST(CheckpointInto, CorruptFileLeavesTargetsUntouched) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "lenet-v1");
  Bytes bytes = read_raw(path);
  bytes[bytes.size() - 10] ^= 1;
  write_raw(path, bytes);
  std::vector<nn::NamedTensor> model = small_model();
  for (nn::NamedTensor& t : model) t.value.fill(-1.0f);
  const std::vector<nn::NamedTensor> before = model;
  expect_checkpoint_error([&] { nn::load_checkpoint_into(path, targets(model), "lenet-v1"); },
                          {"checksum mismatch"});
  for (std::size_t i = 0; i < model.size(); ++i) {
    EXPECT_TRUE(bit_equal(model[i].value, before[i].value)) << "tensor " << model[i].name;
  }
}

// ---------------------------------------------------------------- failed saves

TEST(CheckpointSave, FailureWhenPathIsADirectoryLeavesItAndNoTempFile) {
  TempDir dir;
  const std::string path = dir.file("ckpt_dir");
  fs::create_directory(path);
  write_raw(dir.file("ckpt_dir/inside"), Bytes{1, 2, 3});
  expect_checkpoint_error([&] { nn::save_checkpoint(path, small_model(), "x"); },
                          {"save_checkpoint: " + path, "rename"});
  EXPECT_TRUE(fs::is_directory(path));
  EXPECT_EQ(read_raw(dir.file("ckpt_dir/inside")), (Bytes{1, 2, 3}));
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"ckpt_dir"}));
}

// A rename over a device or a FIFO would replace it with a regular file (as root,
// saving to /dev/null would delete the device). Both are refused before any write.
TEST(CheckpointSave, RefusesAFifoOrADeviceAndLeavesItAsItWas) {
  TempDir dir;
  const std::string fifo = dir.file("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  expect_checkpoint_error([&] { nn::save_checkpoint(fifo, small_model(), "x"); },
                          {"save_checkpoint: " + fifo, "is a FIFO, not a regular file"});
  struct stat st {};
  ASSERT_EQ(::stat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "the FIFO was replaced";
  // A character device of our own (the null device's numbers), where mknod is allowed.
  const std::string dev = dir.file("null");
  if (::mknod(dev.c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0) {
    expect_checkpoint_error([&] { nn::save_checkpoint(dev, small_model(), "x"); },
                            {"save_checkpoint: " + dev, "is a character device, not a regular file"});
    ASSERT_EQ(::stat(dev.c_str(), &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode)) << "the device was replaced";
  }
  // A symlink is followed: one that names a FIFO is refused too.
  const std::string link = dir.file("link");
  fs::create_symlink(fifo, link);
  expect_checkpoint_error([&] { nn::save_checkpoint(link, small_model(), "x"); }, {"is a FIFO"});
  EXPECT_TRUE(fs::is_symlink(link));
  for (const std::string& e : dir.entries()) EXPECT_EQ(e.find(".tmp."), std::string::npos) << e;
}

// remove_partial_file (for a signal handler) removes the temp file of a save in
// progress only: once a save is over, succeeded or failed, nothing is published, and
// a file that now has the temp file's name is not touched.
TEST(CheckpointSave, NoTempFileIsLeftForRemovePartialFileOnceASaveIsOver) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  nn::save_checkpoint(path, small_model(), "x");
  write_raw(tmp, Bytes{1, 2, 3});
  EXPECT_FALSE(nn::remove_partial_file());
  EXPECT_TRUE(fs::exists(tmp));

  // A failed save: a symlink at the temp name (O_NOFOLLOW refuses to write through it).
  fs::remove(tmp);
  fs::create_symlink(dir.file("elsewhere"), tmp);
  expect_checkpoint_error([&] { nn::save_checkpoint(path, small_model(), "x"); }, {"cannot create temporary file"});
  EXPECT_FALSE(nn::remove_partial_file());
  EXPECT_TRUE(fs::is_symlink(tmp));
}

TEST(CheckpointSave, FailureToCreateTempFileLeavesOldCheckpointIntact) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "old");
  const Bytes old_bytes = read_raw(path);
  // Something that is not ours occupies the temp name.
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  fs::create_directory(tmp);
  std::vector<nn::NamedTensor> next = small_model();
  next[0].value.fill(3.0f);
  expect_checkpoint_error([&] { nn::save_checkpoint(path, next, "new"); },
                          {"save_checkpoint: " + path, "cannot create temporary file", tmp});
  EXPECT_EQ(read_raw(path), old_bytes);
  EXPECT_TRUE(fs::is_directory(tmp)) << "a temp name we did not create must not be removed";
}

TEST(CheckpointSave, FailedWriteLeavesOldCheckpointIntactAndRemovesTempFile) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "old");
  const Bytes old_bytes = read_raw(path);

  // Cap the file size this process may write, so write(2) fails with EFBIG
  // part-way through (works as root too, unlike a read-only directory).
  std::vector<nn::NamedTensor> big;
  big.push_back({"big", filled({64, 1024}, 8)});
  struct rlimit old_limit {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct rlimit small_limit = old_limit;
  small_limit.rlim_cur = 4096;
  auto* const old_handler = signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small_limit), 0);
  std::string message;
  try {
    nn::save_checkpoint(path, big, "new");
  } catch (const nn::CheckpointError& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old_limit);
  signal(SIGXFSZ, old_handler);

  EXPECT_NE(message.find("save_checkpoint: " + path), std::string::npos) << message;
  EXPECT_NE(message.find("File too large"), std::string::npos) << message;
  EXPECT_EQ(read_raw(path), old_bytes);
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"model.ckpt"}));
}

TEST(CheckpointSave, UnwritableDirectoryLeavesOldCheckpointIntact) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  nn::save_checkpoint(path, small_model(), "old");
  const Bytes old_bytes = read_raw(path);
  fs::permissions(dir.path(), fs::perms::owner_write | fs::perms::group_write |
                                  fs::perms::others_write, fs::perm_options::remove);
  expect_checkpoint_error([&] { nn::save_checkpoint(path, small_model(), "new"); },
                          {"save_checkpoint: " + path, "Permission denied"});
  fs::permissions(dir.path(), fs::perms::owner_write, fs::perm_options::add);
  EXPECT_EQ(read_raw(path), old_bytes);
}

TEST(CheckpointSave, FailsClearlyWhenDirectoryIsMissing) {
  TempDir dir;
  const std::string path = dir.file("no/such/dir/model.ckpt");
  expect_checkpoint_error([&] { nn::save_checkpoint(path, small_model(), "x"); },
                          {"save_checkpoint: " + path, "No such file or directory"});
}

}  // namespace test_checkpoint
