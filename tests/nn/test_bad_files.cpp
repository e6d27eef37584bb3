// Bad files, the cases tests/nn/test_idx.cpp and tests/nn/test_checkpoint.cpp do not
// already cover: a data path that is not a directory, special files (a FIFO must not
// block the reader, a device must not be read forever), a checkpoint of another
// optimizer, the crashes fuzzing found (tests/fuzz), and the committed fuzz corpora
// replayed through the real readers.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
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
#include <string>
#include <vector>

#include <fmt/format.h>

#include "nn/checkpoint.hpp"
#include "nn/data.hpp"
#include "nn/idx.hpp"
#include "nn/train.hpp"
#include "tests/nn/nn_test_util.hpp"

namespace test_bad_files {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

namespace {

// A fresh directory under the system temp dir, removed with everything in it.
using nn::test::TempDir;

void write_raw(const std::string& path, const Bytes& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << "cannot write fixture " << path;
}

using nn::test::expect_error;

// Checkpoint bytes in the documented format (nn/checkpoint.hpp) with a valid CRC32,
// for shapes save_checkpoint would never write.
struct RawTensor {
  std::string name;
  std::vector<std::uint64_t> dims;
  std::vector<float> values;
};
Bytes checkpoint_bytes(const std::string& tag, const std::vector<RawTensor>& tensors) {
  Bytes b = {'A', 'D', 'C', 'K', 'P', 'T', '0', '1'};
  const auto u32 = [&](std::uint32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  };
  const auto u64 = [&](std::uint64_t v) {
    for (int i = 0; i < 8; ++i) b.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  };
  u32(nn::kCheckpointVersion);
  u32(static_cast<std::uint32_t>(tag.size()));
  b.insert(b.end(), tag.begin(), tag.end());
  u32(static_cast<std::uint32_t>(tensors.size()));
  for (const RawTensor& t : tensors) {
    u32(static_cast<std::uint32_t>(t.name.size()));
    b.insert(b.end(), t.name.begin(), t.name.end());
    u32(static_cast<std::uint32_t>(t.dims.size()));
    for (std::uint64_t d : t.dims) u64(d);
    for (float v : t.values) u32(std::bit_cast<std::uint32_t>(v));
  }
  u32(static_cast<std::uint32_t>(crc32(0, b.data(), static_cast<uInt>(b.size()))));
  return b;
}

// Runs fn in a child process that SIGALRM kills after `seconds`; returns the child's
// wait status. A reader that blocks forever shows up as "killed by signal 14", not
// as a test run that never ends.
int in_child_with_watchdog(const std::function<int()>& fn, unsigned seconds) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::alarm(seconds);
    int code = 3;
    try {
      code = fn();
    } catch (...) {
      code = 4;
    }
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exit code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return fmt::format("status {}", status);
}

}  // namespace

// ---------------------------------------------------------------- the data directory

TEST(FashionMnist, DataPathThatIsAFileSaysItIsNotADirectory) {
  TempDir dir;
  const std::string file = dir.file("train-images-idx3-ubyte.gz");
  write_raw(file, Bytes{1, 2, 3});
  // Used to say "directory ... does not exist", which sends the user looking for a typo.
  expect_error<nn::DataError>([&] { nn::load_fashion_mnist(file, "train"); },
                              {"load_fashion_mnist", file, "is not a directory", "train-images-idx3-ubyte"});
}

// ---------------------------------------------------------------- special files

// open(2) on a FIFO without O_NONBLOCK waits for a writer that never comes: `--data`
// naming a directory whose images "file" is a FIFO hung train_cnn. Now refused at once.
TEST(Idx, FifoIsRefusedInsteadOfBlocking) {
  TempDir dir;
  const std::string fifo = dir.file("train-images-idx3-ubyte");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  const int status = in_child_with_watchdog(
      [&] {
        try {
          nn::read_idx(fifo);
        } catch (const nn::DataError& e) {
          return std::string(e.what()).find("is not a regular file") != std::string::npos ? 0 : 1;
        }
        return 2;
      },
      60);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << describe_status(status);
}

TEST(Checkpoint, FifoIsRefusedInsteadOfBlocking) {
  TempDir dir;
  const std::string fifo = dir.file("model.ckpt");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  const int status = in_child_with_watchdog(
      [&] {
        try {
          nn::load_checkpoint(fifo);
        } catch (const nn::CheckpointError& e) {
          return std::string(e.what()).find("is not a regular file") != std::string::npos ? 0 : 1;
        }
        return 2;
      },
      60);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << describe_status(status);
}

TEST(Idx, EndlessDeviceIsRefusedNotReadForever) {
  expect_error<nn::DataError>([] { nn::read_idx("/dev/zero"); }, {"/dev/zero", "is not a regular file"});
}

TEST(Checkpoint, DeviceIsRefused) {
  expect_error<nn::CheckpointError>([] { nn::load_checkpoint("/dev/null"); }, {"/dev/null", "is not a regular file"});
}

// ---------------------------------------------------------------- checkpoints

// Found by tests/fuzz/fuzz_checkpoint (corpus_checkpoint/crash-zero-dim-huge-dims.ckpt):
// a tensor with a zero dim holds no values, so the file-size bound on its shape did
// not apply, and xtensor overflowed a signed stride computing the shape (0, 2^40, 2^40)
// (undefined behaviour, reported by UBSan). Now refused as corrupt.
TEST(Checkpoint, ZeroSizedTensorWhoseOtherDimsOverflowIsCorrupt) {
  TempDir dir;
  const std::string path = dir.file("zero.ckpt");
  const std::uint64_t big = std::uint64_t{1} << 40;
  write_raw(path, checkpoint_bytes("t", {{"w", {0, big, big}, {}}}));
  expect_error<nn::CheckpointError>([&] { nn::load_checkpoint(path); },
                                    {path, "corrupt", "\"w\"", "(0,1099511627776,1099511627776)", "2^63-1"});
  // A zero-sized tensor of a sane shape still loads.
  write_raw(path, checkpoint_bytes("t", {{"w", {0, 3, 4}, {}}}));
  const std::vector<nn::NamedTensor> ts = nn::load_checkpoint(path);
  ASSERT_EQ(ts.size(), 1u);
  EXPECT_EQ(ts[0].value.size(), 0u);
  EXPECT_EQ(ts[0].value.dimension(), 3u);
}

TEST(Checkpoint, CheckpointOfAnotherOptimizerIsRefusedAndChangesNothing) {
  TempDir dir;
  const std::string path = dir.file("m.ckpt");
  nn::CnnConfig cfg;
  cfg.height = cfg.width = 8;
  cfg.channels = {2, 3};
  cfg.kernel = 3, cfg.padding = 1;
  cfg.classes = 4;
  nn::Sequential<float> saved = nn::make_cnn<float>(cfg, 1);
  nn::Sgd<float> sgd(saved.parameters(), {.lr = 0.1, .momentum = 0.9});
  nn::save_model(path, saved, sgd, 2, cfg.tag());

  nn::Sequential<float> model = nn::make_cnn<float>(cfg, 2);
  nn::Adam<float> adam(model.parameters(), {});
  const xt::xarray<float> before = model.parameters()[0]->value;
  // Same architecture (tag, parameter names and shapes), other optimizer state.
  expect_error<nn::CheckpointError>([&] { nn::load_model(path, model, adam, cfg.tag()); },
                                    {path, "missing tensors the model needs", "optim.", "unexpected tensors"});
  EXPECT_EQ(model.parameters()[0]->value, before);
}

// ---------------------------------------------------------------- the fuzz corpora

namespace {

std::vector<fs::path> corpus(const std::string& dir) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

// Every committed seed and every crash input the fuzzers found is read by the real
// reader in this build (and so under the sanitizer build too): the outcome is data or
// a DataError, nothing else.
TEST(FuzzCorpus, IdxInputsReadOrFailCleanly) {
  const std::vector<fs::path> files = corpus("tests/fuzz/corpus_idx");
  ASSERT_GE(files.size(), 5u) << "tests/fuzz/corpus_idx lost its seeds";
  int valid = 0;
  for (const fs::path& f : files) {
    SCOPED_TRACE(f.string());
    try {
      const nn::IdxArray a = nn::read_idx(f.string());
      std::uint64_t count = 1;
      for (std::uint32_t d : a.dims) count *= d;
      EXPECT_EQ(a.data.size(), count);
      ++valid;
    } catch (const nn::DataError&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a DataError: " << e.what();
    }
  }
  EXPECT_GE(valid, 5) << "the seeds must be valid IDX files, or the fuzzer starts from nothing";
}

TEST(FuzzCorpus, CheckpointInputsLoadOrFailCleanly) {
  const std::vector<fs::path> files = corpus("tests/fuzz/corpus_checkpoint");
  ASSERT_GE(files.size(), 3u) << "tests/fuzz/corpus_checkpoint lost its seeds";
  int valid = 0;
  for (const fs::path& f : files) {
    SCOPED_TRACE(f.string());
    try {
      nn::load_checkpoint(f.string());
      ++valid;
    } catch (const nn::CheckpointError&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a CheckpointError: " << e.what();
    }
  }
  EXPECT_GE(valid, 3) << "the seeds must be valid checkpoints";
  // The fuzz target loads into this model; the seed must fit it.
  xt::xarray<float> w = xt::zeros<float>({2, 3}), b = xt::zeros<float>({3});
  nn::load_checkpoint_into("tests/fuzz/corpus_checkpoint/model.ckpt", {{"w", &w}, {"b", &b}}, "fuzz-model");
  EXPECT_EQ(w(0, 0), 0.5f);
}

}  // namespace test_bad_files
