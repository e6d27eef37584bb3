// Tests for the IDX reader (nn/idx.hpp), load_idx_pair / load_fashion_mnist and
// BatchIterator (nn/data.hpp). Fixtures are written to a fresh temp directory.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "nn/data.hpp"
#include "nn/idx.hpp"
#include "ops/blas.hpp"  // ad::set_num_threads
#include "tests/nn/nn_test_util.hpp"

namespace test_idx {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

namespace {

using nn::test::TempDir;

// IDX bytes: 00 00 <type> <rank>, big-endian dims, then the payload as given.
Bytes make_idx(std::uint8_t type, const std::vector<std::uint32_t>& dims, const Bytes& payload) {
  Bytes out = {0, 0, type, static_cast<std::uint8_t>(dims.size())};
  for (std::uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(d >> shift));
  }
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

// 0, 1, 2, ... (mod 256), n bytes.
Bytes ramp(std::size_t n) {
  Bytes out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>(i % 256);
  return out;
}

void write_raw(const std::string& path, const Bytes& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << "cannot write fixture " << path;
}

void write_gz(const std::string& path, const Bytes& bytes) {
  gzFile gz = gzopen(path.c_str(), "wb");
  ASSERT_NE(gz, nullptr) << "cannot create fixture " << path;
  if (!bytes.empty()) {
    ASSERT_EQ(gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
  }
  ASSERT_EQ(gzclose(gz), Z_OK);
}

Bytes read_raw(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Runs fn, requires nn::DataError, and requires every keyword in its message.
void expect_data_error(const std::function<void()>& fn, std::initializer_list<std::string> keywords) {
  nn::test::expect_error<nn::DataError>(fn, keywords);
}

void expect_idx_error(const std::string& path, std::initializer_list<std::string> keywords) {
  expect_data_error([&] { nn::read_idx(path); }, keywords);
}

}  // namespace

// ---------------------------------------------------------------- read_idx

TEST(Idx, ReadsRawFile) {
  TempDir dir;
  const std::string path = dir.file("images-idx3-ubyte");
  write_raw(path, make_idx(0x08, {3, 2, 4}, ramp(24)));
  const nn::IdxArray a = nn::read_idx(path);
  EXPECT_EQ(a.dims, (std::vector<std::uint32_t>{3, 2, 4}));
  EXPECT_EQ(a.data, ramp(24));
}

TEST(Idx, ReadsGzipFile) {
  TempDir dir;
  const std::string path = dir.file("images-idx3-ubyte.gz");
  write_gz(path, make_idx(0x08, {5, 300}, ramp(1500)));
  const nn::IdxArray a = nn::read_idx(path);
  EXPECT_EQ(a.dims, (std::vector<std::uint32_t>{5, 300}));
  EXPECT_EQ(a.data, ramp(1500));
}

TEST(Idx, DetectsGzipByMagicNotExtension) {
  TempDir dir;
  const std::string gz_without_ext = dir.file("labels-idx1-ubyte");
  const std::string raw_with_gz_ext = dir.file("labels-idx1-ubyte.gz");
  write_gz(gz_without_ext, make_idx(0x08, {7}, ramp(7)));
  write_raw(raw_with_gz_ext, make_idx(0x08, {7}, ramp(7)));
  EXPECT_EQ(nn::read_idx(gz_without_ext).data, ramp(7));
  EXPECT_EQ(nn::read_idx(raw_with_gz_ext).data, ramp(7));
}

TEST(Idx, ReadsLargeGzipFileSpanningManyChunks) {
  TempDir dir;
  const std::string path = dir.file("big.gz");
  write_gz(path, make_idx(0x08, {3, 1000, 1000}, ramp(3'000'000)));
  const nn::IdxArray a = nn::read_idx(path);
  EXPECT_EQ(a.data.size(), 3'000'000u);
  EXPECT_EQ(a.data, ramp(3'000'000));
}

TEST(Idx, RejectsWrongMagic) {
  TempDir dir;
  const std::string path = dir.file("bad");
  Bytes bytes = make_idx(0x08, {4}, ramp(4));
  bytes[0] = 0x01;
  write_raw(path, bytes);
  expect_idx_error(path, {"read_idx: " + path + ":", "bad magic", "01 00 08 01"});
}

TEST(Idx, RejectsUnsupportedTypeCode) {
  TempDir dir;
  const std::string float_path = dir.file("float");
  write_raw(float_path, make_idx(0x0D, {2}, Bytes(8, 0)));
  expect_idx_error(float_path, {float_path, "type code 0x0D", "float32", "not supported"});

  const std::string unknown_path = dir.file("unknown");
  write_raw(unknown_path, make_idx(0x42, {2}, Bytes(2, 0)));
  expect_idx_error(unknown_path, {unknown_path, "unknown type code 0x42"});
}

TEST(Idx, RejectsRankZeroAndRankFive) {
  TempDir dir;
  const std::string rank0 = dir.file("rank0");
  write_raw(rank0, make_idx(0x08, {}, Bytes(1, 0)));
  expect_idx_error(rank0, {rank0, "bad rank 0", "1..4"});

  const std::string rank5 = dir.file("rank5");
  write_raw(rank5, make_idx(0x08, {1, 1, 1, 1, 1}, Bytes(1, 0)));
  expect_idx_error(rank5, {rank5, "bad rank 5", "1..4"});
}

TEST(Idx, RejectsZeroDimension) {
  TempDir dir;
  const std::string path = dir.file("zero");
  write_raw(path, make_idx(0x08, {3, 0, 4}, Bytes{}));
  expect_idx_error(path, {path, "dimension 1 is zero", "(3,0,4)"});
}

TEST(Idx, RejectsDimsWhoseProductOverflows) {
  TempDir dir;
  // 2^64: wraps a 64-bit product to zero.
  const std::string wraps = dir.file("wraps");
  write_raw(wraps, make_idx(0x08, {65536, 65536, 65536, 65536}, ramp(16)));
  expect_idx_error(wraps, {wraps, "too large", "(65536,65536,65536,65536)"});

  const std::string huge = dir.file("huge.gz");
  write_gz(huge, make_idx(0x08, {0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}, ramp(16)));
  expect_idx_error(huge, {huge, "too large"});

  // One past the 2^31 cap.
  const std::string over_cap = dir.file("over_cap");
  write_raw(over_cap, make_idx(0x08, {2049, 1024, 1024}, ramp(16)));
  expect_idx_error(over_cap, {over_cap, "too large", "2147483648"});
}

TEST(Idx, HeaderAtTheCapWithTinyPayloadIsTruncatedNotAllocated) {
  TempDir dir;
  // Exactly 2^31 elements announced, 10 present: must fail fast, raw and gzip.
  const std::string raw = dir.file("cap");
  write_raw(raw, make_idx(0x08, {2048, 1024, 1024}, ramp(10)));
  expect_idx_error(raw, {"read_idx: " + raw +
                         ": payload is 10 bytes but dims (2048,1024,1024) need 2147483648"});

  const std::string gz = dir.file("cap.gz");
  write_gz(gz, make_idx(0x08, {2048, 1024, 1024}, ramp(10)));
  expect_idx_error(gz, {gz, "payload is 10 decompressed bytes", "need 2147483648"});
}

TEST(Idx, RejectsTruncatedPayload) {
  TempDir dir;
  const std::string raw = dir.file("short");
  write_raw(raw, make_idx(0x08, {3, 2, 4}, ramp(20)));
  expect_idx_error(raw, {"read_idx: " + raw + ": payload is 20 bytes but dims (3,2,4) need 24"});

  const std::string gz = dir.file("short.gz");
  write_gz(gz, make_idx(0x08, {3, 2, 4}, ramp(20)));
  expect_idx_error(gz, {gz, "payload is 20 decompressed bytes but dims (3,2,4) need 24"});
}

TEST(Idx, RejectsTruncatedHeader) {
  TempDir dir;
  const std::string empty = dir.file("empty");
  write_raw(empty, Bytes{});
  expect_idx_error(empty, {empty, "header is truncated"});

  const std::string three = dir.file("three");
  write_raw(three, Bytes{0, 0, 8});
  expect_idx_error(three, {three, "header is truncated"});

  const std::string dims_cut = dir.file("dims_cut");
  Bytes bytes = make_idx(0x08, {3, 2, 4}, Bytes{});
  bytes.resize(4 + 5);
  write_raw(dims_cut, bytes);
  expect_idx_error(dims_cut, {dims_cut, "header is truncated", "rank 3 needs 12 bytes"});
}

TEST(Idx, RejectsTrailingBytes) {
  TempDir dir;
  const std::string raw = dir.file("long");
  write_raw(raw, make_idx(0x08, {3, 2, 4}, ramp(27)));
  expect_idx_error(raw, {raw, "3 trailing bytes", "(3,2,4)"});

  const std::string gz = dir.file("long.gz");
  write_gz(gz, make_idx(0x08, {3, 2, 4}, ramp(25)));
  expect_idx_error(gz, {gz, "1 trailing decompressed bytes", "(3,2,4)"});
}

// zlib's gzread ignores whatever follows the gzip data unless it starts like another
// member: a valid .gz with junk appended must be refused like any corrupt gzip file,
// while a second, valid member (as `cat a.gz b.gz` makes, which gzip(1) accepts) is read.
TEST(Idx, RejectsJunkAfterTheGzipDataButReadsConcatenatedMembers) {
  TempDir dir;
  const std::string good = dir.file("good.gz");
  write_gz(good, make_idx(0x08, {3, 2, 4}, ramp(24)));
  const Bytes gz = read_raw(good);
  struct Junk {
    const char* name;
    Bytes bytes;
  };
  for (const Junk& j : {Junk{"text", {'j', 'u', 'n', 'k'}}, Junk{"zeros", Bytes(100, 0)},
                        Junk{"half a magic", {0x1f}}, Junk{"a magic byte then junk", {0x1f, 0x00, 0x01}}}) {
    SCOPED_TRACE(j.name);
    Bytes bytes = gz;
    bytes.insert(bytes.end(), j.bytes.begin(), j.bytes.end());
    const std::string path = dir.file("junk.gz");
    write_raw(path, bytes);
    expect_idx_error(path, {path, "corrupt gzip stream",
                            fmt::format("{} bytes of junk after the end of the gzip data at offset {}", j.bytes.size(),
                                        gz.size())});
  }
  // A second member that starts like gzip but is not: corrupt, as before.
  Bytes fake = gz;
  for (std::uint8_t b : {0x1f, 0x8b, 0x08, 0x00, 0x00, 0xff, 0xff}) fake.push_back(b);
  write_raw(dir.file("fake.gz"), fake);
  expect_idx_error(dir.file("fake.gz"), {dir.file("fake.gz"), "gzip stream"});

  // The payload split over two members, one after the other in the file.
  const Bytes whole = make_idx(0x08, {3, 2, 4}, ramp(24));
  write_gz(dir.file("a.gz"), Bytes(whole.begin(), whole.begin() + 10));
  write_gz(dir.file("b.gz"), Bytes(whole.begin() + 10, whole.end()));
  Bytes two = read_raw(dir.file("a.gz"));
  const Bytes b = read_raw(dir.file("b.gz"));
  two.insert(two.end(), b.begin(), b.end());
  write_raw(dir.file("two.gz"), two);
  const nn::IdxArray a = nn::read_idx(dir.file("two.gz"));
  EXPECT_EQ(a.dims, (std::vector<std::uint32_t>{3, 2, 4}));
  EXPECT_EQ(a.data, ramp(24));
}

// The reader takes the compressed file in 128 KB reads: a second member whose magic
// 1f 8b is split by that boundary (1f the last byte of one read, 8b the first of the
// next) must still be read as a member. Stored (level 0) members of random bytes
// make the sizes exact.
TEST(Idx, ReadsAMemberWhoseMagicStraddlesAReadBoundary) {
  TempDir dir;
  constexpr std::size_t kRead = std::size_t{1} << 17, n = 3 * kRead;
  Bytes payload(n);
  std::mt19937_64 rng(5);
  for (std::uint8_t& b : payload) b = static_cast<std::uint8_t>(rng());
  const Bytes whole = make_idx(0x08, {static_cast<std::uint32_t>(n)}, payload);
  const auto stored_gz = [&](std::size_t from, std::size_t to, const std::string& path) {
    gzFile gz = gzopen(path.c_str(), "wb0");
    EXPECT_NE(gz, nullptr);
    EXPECT_EQ(gzwrite(gz, whole.data() + from, static_cast<unsigned>(to - from)), static_cast<int>(to - from));
    EXPECT_EQ(gzclose(gz), Z_OK);
    return read_raw(path);
  };
  // The first member: as many bytes of `whole` as make it exactly kRead - 1 bytes long.
  std::size_t split = kRead - 100;
  Bytes first = stored_gz(0, split, dir.file("a.gz"));
  for (int i = 0; i < 20 && first.size() != kRead - 1; ++i) {
    split = split + (kRead - 1) - first.size();
    first = stored_gz(0, split, dir.file("a.gz"));
  }
  ASSERT_EQ(first.size(), kRead - 1) << "could not size the first member";
  const Bytes second = stored_gz(split, whole.size(), dir.file("b.gz"));
  ASSERT_GT(second.size(), kRead);  // the next read fills the whole buffer
  Bytes both = first;
  both.insert(both.end(), second.begin(), second.end());
  write_raw(dir.file("two.gz"), both);
  const nn::IdxArray a = nn::read_idx(dir.file("two.gz"));
  EXPECT_EQ(a.data, payload);
}

TEST(Idx, RejectsCorruptGzipStream) {
  TempDir dir;
  const std::string path = dir.file("corrupt.gz");
  // A valid 10-byte gzip header (deflate, no flags), then bytes that are not
  // deflate data: 0xFF starts a block of the reserved type 3.
  Bytes bytes(74, 0xFF);
  const std::uint8_t header[10] = {0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0x03};
  for (std::size_t i = 0; i < 10; ++i) bytes[i] = header[i];
  write_raw(path, bytes);
  expect_idx_error(path, {path, "corrupt gzip stream"});
}

TEST(Idx, RejectsGzipWithBadCrc) {
  TempDir dir;
  const std::string path = dir.file("badcrc.gz");
  write_gz(path, make_idx(0x08, {10}, ramp(10)));
  Bytes bytes = read_raw(path);
  bytes[bytes.size() - 8] ^= 0x55;  // first byte of the CRC32 trailer
  write_raw(path, bytes);
  expect_idx_error(path, {path, "corrupt gzip stream"});
}

TEST(Idx, RejectsTruncatedGzipStream) {
  TempDir dir;
  const std::string path = dir.file("cut.gz");
  write_gz(path, make_idx(0x08, {100, 100}, ramp(10000)));
  Bytes bytes = read_raw(path);
  bytes.resize(bytes.size() / 2);
  write_raw(path, bytes);
  expect_idx_error(path, {path, "gzip stream is truncated"});
}

TEST(Idx, RejectsMissingFile) {
  TempDir dir;
  const std::string path = dir.file("does-not-exist-idx1-ubyte.gz");
  expect_idx_error(path, {"read_idx: " + path + ": cannot open", "No such file"});
}

TEST(Idx, RejectsDirectory) {
  TempDir dir;
  expect_idx_error(dir.path().string(), {dir.path().string(), "is a directory"});
}

TEST(Idx, NeverCrashesOnMutatedInput) {
  TempDir dir;
  const Bytes good = make_idx(0x08, {4, 3, 5}, ramp(60));
  const std::string gz_fixture = dir.file("good.gz");
  write_gz(gz_fixture, good);
  const Bytes good_gz = read_raw(gz_fixture);

  std::mt19937_64 rng(12345);
  const std::string path = dir.file("mutant");
  int successes = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    Bytes bytes = (iter % 2 == 0) ? good : good_gz;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      switch (rng() % 4) {
        case 0:  // overwrite a byte
          if (!bytes.empty()) bytes[rng() % bytes.size()] = static_cast<std::uint8_t>(rng());
          break;
        case 1:  // truncate
          bytes.resize(rng() % (bytes.size() + 1));
          break;
        case 2:  // append garbage
          for (std::uint64_t k = rng() % 8; k > 0; --k) bytes.push_back(static_cast<std::uint8_t>(rng()));
          break;
        default:  // flip a bit in the header region
          if (!bytes.empty()) bytes[rng() % std::min<std::size_t>(bytes.size(), 24)] ^= 1u << (rng() % 8);
          break;
      }
    }
    write_raw(path, bytes);
    try {
      const nn::IdxArray a = nn::read_idx(path);
      // Whatever is accepted must be self-consistent.
      std::uint64_t count = 1;
      for (std::uint32_t d : a.dims) count *= d;
      ASSERT_EQ(a.data.size(), count) << "iteration " << iter;
      ++successes;
    } catch (const nn::DataError&) {
      // expected for most mutants
    }
  }
  EXPECT_LT(successes, 1500);
}

// ---------------------------------------------------------------- load_idx_pair

TEST(IdxPair, LoadsMatchingFilesAndCountsClasses) {
  TempDir dir;
  const std::string images = dir.file("images.gz");
  const std::string labels = dir.file("labels");
  write_gz(images, make_idx(0x08, {3, 2, 2}, ramp(12)));
  write_raw(labels, make_idx(0x08, {3}, Bytes{0, 7, 2}));
  const nn::Dataset d = nn::load_idx_pair(images, labels);
  EXPECT_EQ(d.count, 3u);
  EXPECT_EQ(d.rows, 2u);
  EXPECT_EQ(d.cols, 2u);
  EXPECT_EQ(d.images, ramp(12));
  EXPECT_EQ(d.labels, (Bytes{0, 7, 2}));
  EXPECT_EQ(d.num_classes, 8u);
}

TEST(IdxPair, AGivenClassCountBoundsTheLabels) {
  TempDir dir;
  const std::string images = dir.file("images");
  const std::string labels = dir.file("labels");
  write_raw(images, make_idx(0x08, {3, 2, 2}, ramp(12)));
  write_raw(labels, make_idx(0x08, {3}, Bytes{0, 7, 2}));
  EXPECT_EQ(nn::load_idx_pair(images, labels, 10).num_classes, 10u);
  EXPECT_EQ(nn::load_idx_pair(images, labels, 8).num_classes, 8u);
  expect_data_error([&] { nn::load_idx_pair(images, labels, 7); },
                    {labels, "label 7 at position 1", "7 classes", "[0, 6]"});
}

TEST(IdxPair, RejectsImageLabelCountMismatch) {
  TempDir dir;
  const std::string images = dir.file("images");
  const std::string labels = dir.file("labels");
  write_raw(images, make_idx(0x08, {3, 2, 2}, ramp(12)));
  write_raw(labels, make_idx(0x08, {4}, Bytes{0, 1, 2, 3}));
  expect_data_error([&] { nn::load_idx_pair(images, labels); },
                    {"count mismatch", images, labels, "3 images", "4 labels"});
}

TEST(IdxPair, RejectsWrongRanks) {
  TempDir dir;
  const std::string flat_images = dir.file("flat_images");
  const std::string labels = dir.file("labels");
  write_raw(flat_images, make_idx(0x08, {3, 4}, ramp(12)));
  write_raw(labels, make_idx(0x08, {3}, Bytes{0, 1, 2}));
  expect_data_error([&] { nn::load_idx_pair(flat_images, labels); },
                    {flat_images, "rank 3", "(3,4)"});

  const std::string images = dir.file("images");
  const std::string matrix_labels = dir.file("matrix_labels");
  write_raw(images, make_idx(0x08, {3, 2, 2}, ramp(12)));
  write_raw(matrix_labels, make_idx(0x08, {3, 1}, Bytes{0, 1, 2}));
  expect_data_error([&] { nn::load_idx_pair(images, matrix_labels); },
                    {matrix_labels, "rank 1", "(3,1)"});
}

// ---------------------------------------------------------------- load_fashion_mnist

TEST(FashionMnist, MissingDirectoryNamesDirectoryFilesAndHint) {
  TempDir dir;
  const std::string missing = dir.file("no-such-dir");
  expect_data_error([&] { nn::load_fashion_mnist(missing, "train"); },
                    {missing, "does not exist", "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                     "apt-get install dataset-fashion-mnist", "--data DIR"});
}

TEST(FashionMnist, MissingLabelsFileIsNamed) {
  TempDir dir;
  write_gz(dir.file("t10k-images-idx3-ubyte.gz"), make_idx(0x08, {2, 2, 2}, ramp(8)));
  expect_data_error([&] { nn::load_fashion_mnist(dir.path().string(), "t10k"); },
                    {dir.path().string(), "has no t10k-labels-idx1-ubyte (looked for",
                     "t10k-labels-idx1-ubyte.gz",
                     "apt-get install dataset-fashion-mnist", "--data DIR"});
}

TEST(FashionMnist, PrefersGzipAndFallsBackToRaw) {
  TempDir dir;
  // Images: both forms present, the .gz one (2 examples) must win.
  write_gz(dir.file("train-images-idx3-ubyte.gz"), make_idx(0x08, {2, 2, 2}, ramp(8)));
  write_raw(dir.file("train-images-idx3-ubyte"), make_idx(0x08, {1, 2, 2}, ramp(4)));
  // Labels: only raw.
  write_raw(dir.file("train-labels-idx1-ubyte"), make_idx(0x08, {2}, Bytes{1, 4}));
  const nn::Dataset d = nn::load_fashion_mnist(dir.path().string(), "train");
  EXPECT_EQ(d.count, 2u);
  EXPECT_EQ(d.images, ramp(8));
  EXPECT_EQ(d.num_classes, 10u);  // the data set's classes, not max label + 1
}

// A label past Fashion-MNIST's 10 classes (255, or 10) would silently build a model of
// 256 (or 11) classes: a DataError naming the file, the label and where it is.
TEST(FashionMnist, RejectsALabelPastTheTenClasses) {
  for (const std::uint8_t bad : {std::uint8_t{10}, std::uint8_t{255}}) {
    SCOPED_TRACE(int{bad});
    TempDir dir;
    write_gz(dir.file("t10k-images-idx3-ubyte.gz"), make_idx(0x08, {3, 2, 2}, ramp(12)));
    write_raw(dir.file("t10k-labels-idx1-ubyte"), make_idx(0x08, {3}, Bytes{9, bad, 0}));
    expect_data_error([&] { nn::load_fashion_mnist(dir.path().string(), "t10k"); },
                      {dir.file("t10k-labels-idx1-ubyte"), fmt::format("label {} at position 1", int{bad}),
                       "10 classes", "[0, 9]"});
  }
}

// The shapes a training run is planned from: the headers only, checked as the loader
// checks them; and a test set whose images differ from the training set's is refused,
// naming both files.
TEST(FashionMnist, ShapesFromTheHeadersAndATestSetThatDoesNotMatch) {
  TempDir dir;
  write_gz(dir.file("train-images-idx3-ubyte.gz"), make_idx(0x08, {3, 4, 5}, ramp(60)));
  write_raw(dir.file("train-labels-idx1-ubyte"), make_idx(0x08, {3}, Bytes{0, 1, 2}));
  write_raw(dir.file("t10k-images-idx3-ubyte"), make_idx(0x08, {2, 4, 6}, ramp(48)));
  write_raw(dir.file("t10k-labels-idx1-ubyte"), make_idx(0x08, {2}, Bytes{3, 4}));
  const nn::IdxPairPaths train = nn::fashion_mnist_paths(dir.path().string(), "train");
  const nn::IdxPairPaths test = nn::fashion_mnist_paths(dir.path().string(), "t10k");
  EXPECT_EQ(train.images, dir.file("train-images-idx3-ubyte.gz"));
  EXPECT_EQ(test.labels, dir.file("t10k-labels-idx1-ubyte"));
  const nn::DatasetShape ts = nn::read_idx_pair_shape(train.images, train.labels);
  EXPECT_EQ(ts.count, 3u);
  EXPECT_EQ(ts.rows, 4u);
  EXPECT_EQ(ts.cols, 5u);
  const nn::DatasetShape es = nn::read_idx_pair_shape(test.images, test.labels);
  nn::check_test_matches_train(ts, train, ts, train);
  expect_data_error([&] { nn::check_test_matches_train(ts, train, es, test); },
                    {"does not match", test.images, "4x6", train.images, "4x5"});
  // A header the loader would refuse is refused here too.
  write_raw(dir.file("t10k-labels-idx1-ubyte"), make_idx(0x08, {3}, Bytes{3, 4, 5}));
  expect_data_error([&] { nn::read_idx_pair_shape(test.images, test.labels); }, {"count mismatch", test.labels});
}

TEST(FashionMnist, RejectsUnknownSplit) {
  expect_data_error([] { nn::load_fashion_mnist(nn::kDefaultFashionMnistDir, "test"); },
                    {"unknown split \"test\"", "train", "t10k"});
}

TEST(FashionMnist, LoadsInstalledTestSplitWhenPresent) {
  if (!fs::exists(fs::path(nn::kDefaultFashionMnistDir) / "t10k-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "dataset-fashion-mnist not installed";
  }
  const nn::Dataset d = nn::load_fashion_mnist(nn::kDefaultFashionMnistDir, "t10k");
  EXPECT_EQ(d.count, 10000u);
  EXPECT_EQ(d.rows, 28u);
  EXPECT_EQ(d.cols, 28u);
  EXPECT_EQ(d.num_classes, 10u);
  EXPECT_EQ(d.images.size(), 10000u * 28u * 28u);
}

// ---------------------------------------------------------------- BatchIterator

namespace {

// n examples of rows x cols; every pixel of example i is i + k (k = pixel index),
// so pixel 0 identifies the example; label = i % 10.
nn::Dataset make_dataset(std::size_t n, std::size_t rows = 2, std::size_t cols = 3) {
  nn::Dataset d;
  d.count = n;
  d.rows = rows;
  d.cols = cols;
  d.images.resize(n * rows * cols);
  d.labels.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t k = 0; k < rows * cols; ++k) {
      d.images[i * rows * cols + k] = static_cast<std::uint8_t>((i + k) % 256);
    }
    d.labels[i] = static_cast<std::uint8_t>(i % 10);
  }
  d.num_classes = std::min<std::size_t>(n, 10);
  return d;
}

// Example indices of one whole epoch, in batch order; checks labels agree.
std::vector<std::size_t> epoch_order(nn::BatchIterator& it, std::uint64_t epoch) {
  it.start_epoch(epoch);
  std::vector<std::size_t> order;
  xt::xarray<float> images;
  std::vector<int> labels;
  while (it.next(images, labels)) {
    for (std::size_t b = 0; b < labels.size(); ++b) {
      const auto index = static_cast<std::size_t>(std::lround(images(b, 0, 0, 0) * 255.0f));
      EXPECT_EQ(labels[b], static_cast<int>(index % 10)) << "batch row " << b;
      order.push_back(index);
    }
  }
  return order;
}

}  // namespace

TEST(BatchIterator, VisitsEveryIndexExactlyOncePerEpoch) {
  const nn::Dataset d = make_dataset(103);
  nn::BatchIterator it(d, 10, /*shuffle=*/true, /*seed=*/7);
  EXPECT_EQ(it.num_batches(), 11u);
  for (std::uint64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<std::size_t> order = epoch_order(it, epoch);
    std::sort(order.begin(), order.end());
    std::vector<std::size_t> all(103);
    std::iota(all.begin(), all.end(), std::size_t{0});
    EXPECT_EQ(order, all) << "epoch " << epoch;
  }
}

TEST(BatchIterator, ShuffleIsDeterministicPerSeedAndEpoch) {
  const nn::Dataset d = make_dataset(200);
  nn::BatchIterator a(d, 16, true, 99);
  nn::BatchIterator b(d, 16, true, 99);
  const std::vector<std::size_t> a3 = epoch_order(a, 3);
  epoch_order(b, 0);  // a different history must not matter
  EXPECT_EQ(epoch_order(b, 3), a3);
  EXPECT_EQ(epoch_order(a, 3), a3);
}

TEST(BatchIterator, ShuffleDiffersAcrossEpochsAndSeeds) {
  const nn::Dataset d = make_dataset(200);
  nn::BatchIterator a(d, 16, true, 1);
  nn::BatchIterator b(d, 16, true, 2);
  const std::vector<std::size_t> a0 = epoch_order(a, 0);
  std::vector<std::size_t> identity(200);
  std::iota(identity.begin(), identity.end(), std::size_t{0});
  EXPECT_NE(a0, identity);
  EXPECT_NE(epoch_order(a, 1), a0);
  EXPECT_NE(epoch_order(b, 0), a0);
}

TEST(BatchIterator, ShuffleOrderIsPinnedAcrossPlatforms) {
  // The permutation depends only on (seed, epoch) through mt19937_64 and our own
  // Fisher-Yates, so it is the same everywhere; this pins it.
  const nn::Dataset d = make_dataset(10);
  nn::BatchIterator it(d, 4, true, 42);
  EXPECT_EQ(epoch_order(it, 0), (std::vector<std::size_t>{9, 6, 2, 0, 1, 4, 3, 8, 5, 7}));
  EXPECT_EQ(epoch_order(it, 1), (std::vector<std::size_t>{5, 4, 1, 3, 0, 2, 7, 8, 6, 9}));
}

// The images of a batch are converted by the OpenMP threads together (64 of 28 x 28
// here: above the loop's threshold); each image's shift and flip depend only on its
// position, so every batch is the same bit for bit on any number of threads.
TEST(BatchIterator, TheBatchesDoNotDependOnTheNumberOfThreads) {
  const nn::Dataset d = make_dataset(150, 28, 28);
  for (const bool augment : {false, true}) {
    SCOPED_TRACE(augment ? "augmented" : "plain");
    auto epoch = [&](int threads) {
      const int before = ad::num_threads();
      ad::set_num_threads(threads);
      nn::BatchIterator it(d, 64, true, 5);
      if (augment) it.set_augmentation({.max_shift = 2, .horizontal_flip = true});
      it.start_epoch(1);
      std::vector<xt::xarray<float>> batches;
      xt::xarray<float> images;
      std::vector<int> labels;
      while (it.next(images, labels)) batches.push_back(images);
      ad::set_num_threads(before);
      return batches;
    };
    const std::vector<xt::xarray<float>> one = epoch(1), three = epoch(3);
    ASSERT_EQ(one.size(), 3u);
    ASSERT_EQ(three.size(), one.size());
    for (std::size_t b = 0; b < one.size(); ++b) EXPECT_TRUE(one[b] == three[b]) << "batch " << b;
  }
}

// Data-parallel shards (nn/distributed): rank r of P gets rows [r*B/P, (r+1)*B/P) of
// each batch, augmentation included, so the shards of all ranks, step by step, are the
// unsharded batches; every rank sees every step (an empty shard when B < P).
TEST(BatchIterator, ShardsOfEveryRankTogetherAreTheUnshardedBatches) {
  const nn::Dataset d = make_dataset(23, 4, 4);
  for (const std::size_t ranks : {2u, 3u, 5u}) {
    nn::BatchIterator whole(d, 7, true, 11);  // batches of 7, 7, 7, 2
    whole.set_augmentation({.max_shift = 1, .horizontal_flip = true});
    std::vector<nn::BatchIterator> shards;
    for (std::size_t r = 0; r < ranks; ++r) {
      shards.emplace_back(d, 7, true, 11);
      shards.back().set_augmentation({.max_shift = 1, .horizontal_flip = true});
      shards.back().set_shard(r, ranks);
      shards.back().start_epoch(2);
    }
    whole.start_epoch(2);
    xt::xarray<float> want, got;
    std::vector<int> want_labels, got_labels;
    std::size_t steps = 0;
    while (whole.next(want, want_labels)) {
      ++steps;
      std::size_t row = 0;
      for (std::size_t r = 0; r < ranks; ++r) {
        ASSERT_TRUE(shards[r].next(got, got_labels)) << "rank " << r << " of " << ranks << " ended early";
        EXPECT_EQ(shards[r].last_batch_size(), want_labels.size());
        const std::size_t b = want_labels.size(), lo = r * b / ranks, hi = (r + 1) * b / ranks;
        ASSERT_EQ(got_labels.size(), hi - lo) << "rank " << r << " of " << ranks << ", batch of " << b;
        ASSERT_EQ(got.shape()[0], hi - lo);
        for (std::size_t i = 0; i < hi - lo; ++i, ++row) {
          EXPECT_EQ(got_labels[i], want_labels[row]) << "rank " << r << " row " << i;
          for (std::size_t k = 0; k < 16; ++k)
            ASSERT_EQ(got.data()[i * 16 + k], want.data()[row * 16 + k]) << "rank " << r << " row " << i << " pixel " << k;
        }
      }
      EXPECT_EQ(row, want_labels.size());
    }
    EXPECT_EQ(steps, 4u);
    for (std::size_t r = 0; r < ranks; ++r) EXPECT_FALSE(shards[r].next(got, got_labels)) << "rank " << r;
  }
  nn::BatchIterator it(d, 7, true, 11);
  EXPECT_THROW(it.set_shard(2, 2), std::invalid_argument);
}

TEST(BatchIterator, WithoutShuffleKeepsFileOrder) {
  const nn::Dataset d = make_dataset(25);
  nn::BatchIterator it(d, 4, false, 5);
  std::vector<std::size_t> identity(25);
  std::iota(identity.begin(), identity.end(), std::size_t{0});
  EXPECT_EQ(epoch_order(it, 0), identity);
  EXPECT_EQ(epoch_order(it, 9), identity);
}

TEST(BatchIterator, LastPartialBatchIsSmallerThenEpochEnds) {
  const nn::Dataset d = make_dataset(23, 2, 3);
  nn::BatchIterator it(d, 10, true, 3);
  EXPECT_EQ(it.num_batches(), 3u);
  xt::xarray<float> images;
  std::vector<int> labels;
  std::vector<std::size_t> sizes;
  while (it.next(images, labels)) {
    ASSERT_EQ(images.dimension(), 4u);
    EXPECT_EQ(images.shape()[1], 1u);
    EXPECT_EQ(images.shape()[2], 2u);
    EXPECT_EQ(images.shape()[3], 3u);
    EXPECT_EQ(images.shape()[0], labels.size());
    sizes.push_back(labels.size());
  }
  EXPECT_EQ(sizes, (std::vector<std::size_t>{10, 10, 3}));
  EXPECT_FALSE(it.next(images, labels));
  it.start_epoch(1);
  EXPECT_TRUE(it.next(images, labels));
  EXPECT_EQ(labels.size(), 10u);
}

TEST(BatchIterator, LimitUsesOnlyTheFirstExamples) {
  const nn::Dataset d = make_dataset(100);
  nn::BatchIterator it(d, 10, true, 11, /*limit=*/25);
  EXPECT_EQ(it.size(), 25u);
  EXPECT_EQ(it.num_batches(), 3u);
  std::vector<std::size_t> order = epoch_order(it, 2);
  std::sort(order.begin(), order.end());
  std::vector<std::size_t> first(25);
  std::iota(first.begin(), first.end(), std::size_t{0});
  EXPECT_EQ(order, first);

  nn::BatchIterator clamped(d, 10, false, 11, /*limit=*/1000);
  EXPECT_EQ(clamped.size(), 100u);
  EXPECT_EQ(clamped.num_batches(), 10u);
}

TEST(BatchIterator, ScalesPixelsToUnitIntervalInFloatAndDouble) {
  nn::Dataset d;
  d.count = 1;
  d.rows = 1;
  d.cols = 4;
  d.images = {0, 1, 128, 255};
  d.labels = {3};
  d.num_classes = 4;
  nn::BatchIterator it(d, 1, false, 0);

  xt::xarray<float> f;
  std::vector<int> labels;
  ASSERT_TRUE(it.next(f, labels));
  ASSERT_EQ(f.size(), 4u);
  for (std::size_t k = 0; k < 4; ++k) {
    EXPECT_EQ(f(0, 0, 0, k), static_cast<float>(d.images[k]) / 255.0f) << "pixel " << k;
  }
  EXPECT_EQ(f(0, 0, 0, 0), 0.0f);
  EXPECT_EQ(f(0, 0, 0, 3), 1.0f);
  EXPECT_EQ(labels, (std::vector<int>{3}));

  it.start_epoch(0);
  xt::xarray<double> g;
  ASSERT_TRUE(it.next(g, labels));
  for (std::size_t k = 0; k < 4; ++k) {
    EXPECT_EQ(g(0, 0, 0, k), static_cast<double>(d.images[k]) / 255.0) << "pixel " << k;
  }
}

TEST(BatchIterator, ReusesImageBufferWhileShapeIsUnchanged) {
  const nn::Dataset d = make_dataset(30);
  nn::BatchIterator it(d, 10, true, 4);
  xt::xarray<float> images;
  std::vector<int> labels;
  ASSERT_TRUE(it.next(images, labels));
  const float* buffer = images.data();
  ASSERT_TRUE(it.next(images, labels));
  EXPECT_EQ(images.data(), buffer);
  ASSERT_TRUE(it.next(images, labels));
  EXPECT_EQ(images.data(), buffer);
}

TEST(BatchIterator, RejectsZeroBatchSizeAndInconsistentDataset) {
  const nn::Dataset d = make_dataset(5);
  EXPECT_THROW(nn::BatchIterator(d, 0, false, 0), std::invalid_argument);
  nn::Dataset broken = make_dataset(5);
  broken.images.pop_back();
  EXPECT_THROW(nn::BatchIterator(broken, 2, false, 0), std::invalid_argument);
}

namespace {
// One 5x5 image with a distinct value per pixel (1..25), augmented.
std::vector<xt::xarray<float>> augmented_epochs(const nn::Augmentation& a, std::uint64_t seed, int epochs) {
  nn::Dataset d;
  d.count = 1, d.rows = 5, d.cols = 5, d.num_classes = 1;
  for (int k = 1; k <= 25; ++k) d.images.push_back(static_cast<std::uint8_t>(k));
  d.labels = {0};
  nn::BatchIterator it(d, 1, false, seed);
  it.set_augmentation(a);
  std::vector<xt::xarray<float>> out;
  xt::xarray<float> images;
  std::vector<int> labels;
  for (int e = 0; e < epochs; ++e) {
    it.start_epoch(static_cast<std::uint64_t>(e));
    EXPECT_TRUE(it.next(images, labels));
    out.push_back(images * 255.0f);
  }
  return out;
}
}  // namespace

TEST(BatchIterator, AugmentationShiftsWithZerosAndFlipsFreshEachEpoch) {
  const auto shifted = augmented_epochs({.max_shift = 2}, 1, 40);
  std::set<std::pair<long, long>> shifts;
  for (const auto& img : shifted) {
    // The image is the original moved by (dy, dx), |dy|, |dx| <= 2: find the move from
    // any pixel that survived, then check every pixel against it.
    long dy = 99, dx = 99;
    for (long r = 0; r < 5 && dy == 99; ++r)
      for (long c = 0; c < 5; ++c)
        if (const long v = std::lround(img(0, 0, r, c)); v != 0) {
          dy = (v - 1) / 5 - r, dx = (v - 1) % 5 - c;
          break;
        }
    ASSERT_LE(std::abs(dy), 2);
    ASSERT_LE(std::abs(dx), 2);
    shifts.emplace(dy, dx);
    for (long r = 0; r < 5; ++r)
      for (long c = 0; c < 5; ++c) {
        const long sr = r + dy, sc = c + dx;
        const float want = sr >= 0 && sr < 5 && sc >= 0 && sc < 5 ? static_cast<float>(sr * 5 + sc + 1) : 0.0f;
        EXPECT_NEAR(img(0, 0, r, c), want, 1e-4) << r << "," << c;
      }
  }
  EXPECT_GT(shifts.size(), 10u) << "the shift hardly changes between epochs";

  int flipped = 0;
  for (const auto& img : augmented_epochs({.horizontal_flip = true}, 1, 40)) {
    const bool flip = std::lround(img(0, 0, 0, 0)) == 5;
    flipped += flip;
    for (long r = 0; r < 5; ++r)
      for (long c = 0; c < 5; ++c) EXPECT_NEAR(img(0, 0, r, c), static_cast<float>(r * 5 + (flip ? 4 - c : c) + 1), 1e-4);
  }
  EXPECT_GT(flipped, 10);
  EXPECT_LT(flipped, 30);
  // A pure function of (seed, epoch, position): the same again, another with another seed.
  const auto again = augmented_epochs({.max_shift = 2, .horizontal_flip = true}, 7, 5);
  const auto same = augmented_epochs({.max_shift = 2, .horizontal_flip = true}, 7, 5);
  const auto other = augmented_epochs({.max_shift = 2, .horizontal_flip = true}, 8, 5);
  int differ = 0;
  for (int e = 0; e < 5; ++e) {
    EXPECT_EQ(again[e], same[e]);
    differ += again[e] != other[e];
  }
  EXPECT_GT(differ, 0);
  const nn::Dataset d = make_dataset(2);
  nn::BatchIterator it(d, 1, false, 0);
  EXPECT_THROW(it.set_augmentation({.max_shift = -1}), std::invalid_argument);
}

}  // namespace test_idx
