// Weights in and out (nn/tensor_files.hpp, nn/weights.hpp): safetensors and .npy files
// read and written exactly, every malformed file refused with a message naming the
// defect, models loaded all or nothing, PyTorch's state_dict names and layouts, and a
// PyTorch-trained ref-CNN (tests/golden/torch_interop, tools/torch_interop.py) whose
// logits we reproduce.
#include <sys/stat.h>
#include <gtest/gtest.h>

#include <bit>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <xtensor/xnpy.hpp>

#include "nn/optim.hpp"
#include "nn/weights.hpp"
#include "tests/nn/nn_test_util.hpp"

namespace test_weights {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

namespace {

using nn::DType;
using nn::WeightsError;
using nn::WeightTensor;
using nn::test::expect_error;
using nn::test::TempDir;

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << "cannot write fixture " << path;
}

std::string read_raw(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::string le64(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// A safetensors file from a header text and a data size (the data: bytes 0, 1, 2, ...).
std::string safetensors_bytes(const std::string& header, std::size_t data_bytes) {
  std::string data(data_bytes, '\0');
  for (std::size_t i = 0; i < data_bytes; ++i) data[i] = static_cast<char>(i);
  return le64(header.size()) + header + data;
}

// Values with awkward bit patterns: -0, a denormal, infinities, a NaN with a payload.
xt::xarray<double> awkward_floats(const std::vector<std::size_t>& shape, std::uint32_t seed) {
  xt::xarray<double> a = xt::xarray<double>::from_shape(shape);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  for (std::size_t i = 0; i < a.size(); ++i) a.data()[i] = dist(rng);
  const float specials[] = {-0.0f, std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), std::bit_cast<float>(std::uint32_t{0x7fc01234})};
  for (std::size_t i = 0; i < std::size(specials) && i < a.size(); ++i) a.data()[i] = specials[i];
  return a;
}

// Bit-exact equality of values that were float32 (as doubles) or float64.
bool same_bits(const xt::xarray<double>& a, const xt::xarray<double>& b) {
  if (a.shape() != b.shape()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::bit_cast<std::uint64_t>(a.data()[i]) != std::bit_cast<std::uint64_t>(b.data()[i])) return false;
  return true;
}

// ---------------------------------------------------------------- safetensors

TEST(Safetensors, RoundTripsF32AndF64BitExactWithMetadataInOrder) {
  TempDir dir;
  const std::vector<WeightTensor> ts = {
      {"z.weight", DType::F32, awkward_floats({3, 4}, 1)},
      {"a.bias", DType::F64, xt::xarray<double>({1.0 / 3.0, -2.5e-300, 7.0})},
      {"scalar", DType::F32, xt::xarray<double>(1.5)},
      {"empty", DType::F64, xt::xarray<double>::from_shape({2, 0})},
  };
  const std::string path = dir.file("w.safetensors");
  nn::write_safetensors(path, ts, {{"format", "pt"}, {"note", "héllo"}});
  std::map<std::string, std::string> meta;
  const std::vector<WeightTensor> back = nn::read_safetensors(path, &meta);
  ASSERT_EQ(back.size(), ts.size());
  for (std::size_t i = 0; i < ts.size(); ++i) {
    EXPECT_EQ(back[i].name, ts[i].name);  // the order written, not sorted
    EXPECT_EQ(back[i].dtype, ts[i].dtype);
    EXPECT_TRUE(same_bits(back[i].value, ts[i].value)) << ts[i].name;
  }
  EXPECT_EQ(meta, (std::map<std::string, std::string>{{"format", "pt"}, {"note", "héllo"}}));
  // The data starts 8-byte aligned (the header is padded with spaces).
  const std::string raw = read_raw(path);
  std::uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  EXPECT_EQ(raw.size(), 8 + n + 12 * 4 + 3 * 8 + 4 + 0);
}

TEST(Safetensors, ReadsAHandWrittenFileByTheSpecification) {
  // Little-endian values at the offsets the header gives, in an order other than the
  // header's, with spaces after the JSON.
  float f[2] = {1.5f, -2.0f};
  double d = 0.125;
  std::string data(sizeof d + sizeof f, '\0');
  std::memcpy(data.data(), &d, sizeof d);
  std::memcpy(data.data() + sizeof d, f, sizeof f);
  const std::string header = R"({"w":{"dtype":"F32","shape":[2,1],"data_offsets":[8,16]},)"
                             R"("__metadata__":{"format":"pt"},"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]}}   )";
  TempDir dir;
  write_raw(dir.file("h.safetensors"), le64(header.size()) + header + data);
  std::map<std::string, std::string> meta;
  const std::vector<WeightTensor> ts = nn::read_safetensors(dir.file("h.safetensors"), &meta);
  ASSERT_EQ(ts.size(), 2u);
  EXPECT_EQ(ts[0].name, "w");
  EXPECT_EQ(ts[0].dtype, DType::F32);
  xt::xarray<double> w = {1.5, -2.0};
  w.reshape({2, 1});
  EXPECT_EQ(ts[0].value, w);
  EXPECT_EQ(ts[1].name, "s");
  EXPECT_EQ(ts[1].value.dimension(), 0u);
  EXPECT_EQ(ts[1].value(), 0.125);
  EXPECT_EQ(meta.at("format"), "pt");
}

struct BadFile {
  const char* what;
  std::string bytes;
  std::vector<std::string> says;
};

// A valid one-tensor header with `entry` as the tensor's object.
std::string one(const std::string& entry) { return std::string(R"({"t":)") + entry + "}"; }

TEST(Safetensors, RefusesEveryMalformedFileNamingTheDefect) {
  const std::string ok = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::vector<BadFile> cases = {
      {"empty", "", {"truncated", "fewer than the 8"}},
      {"short length", std::string("\x05\0\0", 3), {"truncated"}},
      {"length past the end", le64(100) + "{}", {"header length 100 runs past the end"}},
      {"huge length", le64(std::uint64_t{1} << 60) + "{}", {"exceeds the limit"}},
      {"not an object", safetensors_bytes("[1,2]   ", 0), {"does not start with '{'"}},
      {"not json", safetensors_bytes("{\"t\": nope}", 0), {"not valid JSON"}},
      {"trailing garbage", safetensors_bytes("{}x", 0), {"not valid JSON"}},
      {"nul padding", safetensors_bytes(std::string("{}\0\0", 4), 0), {"NUL byte at offset 2"}},
      {"invalid utf-8", safetensors_bytes("{\"\xff\":1}", 0), {"not valid JSON"}},
      {"duplicate tensor", safetensors_bytes(R"({"t":)" + ok + R"(,"t":)" + ok + "}", 8), {"\"t\" appears twice"}},
      {"duplicate field", safetensors_bytes(one(R"({"dtype":"F32","dtype":"F64","shape":[2],"data_offsets":[0,8]})"), 8),
       {"\"dtype\" appears twice"}},
      {"too deep", safetensors_bytes(one(R"({"dtype":"F32","shape":[[2]],"data_offsets":[0,8]})"), 8), {"nests deeper"}},
      {"unknown field", safetensors_bytes(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1})"), 8),
       {"tensor \"t\"", "unknown field \"x\""}},
      {"missing field", safetensors_bytes(one(R"({"dtype":"F32","shape":[2]})"), 8), {"needs dtype, shape and data_offsets"}},
      {"entry not an object", safetensors_bytes(one("[]"), 0), {"is not an object"}},
      {"empty name", safetensors_bytes(R"({"":)" + ok + "}", 8), {"empty name"}},
      {"unsupported dtype", safetensors_bytes(one(R"({"dtype":"BF16","shape":[2],"data_offsets":[0,4]})"), 4),
       {"dtype BF16 is not supported"}},
      {"unknown dtype", safetensors_bytes(one(R"({"dtype":"F33","shape":[2],"data_offsets":[0,8]})"), 8), {"unknown dtype \"F33\""}},
      {"negative dim", safetensors_bytes(one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), 8), {"not a whole number"}},
      {"fractional dim", safetensors_bytes(one(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"), 8), {"not a whole number"}},
      {"huge dims", safetensors_bytes(one(R"({"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]})"), 8),
       {"too many elements"}},
      {"huge dims with a zero", safetensors_bytes(one(R"({"dtype":"F32","shape":[0,4294967296,4294967296,4],"data_offsets":[0,0]})"), 0),
       {"too many elements"}},
      {"rank 17", safetensors_bytes(one(R"({"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,2],"data_offsets":[0,8]})"), 8),
       {"rank 17"}},
      {"size mismatch", safetensors_bytes(one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), 12),
       {"needs 12 bytes", "hold 8"}},
      {"offsets reversed", safetensors_bytes(one(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), 8), {"end before"}},
      {"offsets past data", safetensors_bytes(one(R"({"dtype":"F32","shape":[2],"data_offsets":[4,12]})"), 8), {"run past"}},
      {"offsets not a pair", safetensors_bytes(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"), 8),
       {"not [begin, end]"}},
      {"gap", safetensors_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), 8), {"a gap"}},
      {"overlap",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
       {"an overlap"}},
      {"bytes after the last tensor", safetensors_bytes(one(ok), 12), {"4 bytes of data after the last tensor"}},
      {"metadata not strings", safetensors_bytes(R"({"__metadata__":{"a":1}})", 0), {"__metadata__ \"a\" is not a string"}},
  };
  TempDir dir;
  for (const BadFile& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string path = dir.file("bad.safetensors");
    write_raw(path, c.bytes);
    try {
      nn::read_safetensors(path);
      ADD_FAILURE() << "accepted";
    } catch (const WeightsError& e) {  // naming the file and the defect
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      for (const std::string& s : c.says) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what();
    }
  }
}

TEST(Safetensors, RefusesWhatIsNotARegularFile) {
  TempDir dir;
  expect_error<WeightsError>([&] { nn::read_safetensors(dir.path().string()); }, {"is a directory"});
  expect_error<WeightsError>([&] { nn::read_safetensors(dir.file("none.safetensors")); }, {"cannot open"});
}

TEST(Safetensors, WriterRefusesDuplicateAndReservedNames) {
  TempDir dir;
  const WeightTensor t{"a", DType::F32, xt::xarray<double>({1.0})};
  expect_error<WeightsError>([&] { nn::write_safetensors(dir.file("x.safetensors"), {t, t}); }, {"\"a\" appears twice"});
  expect_error<WeightsError>([&] { nn::write_safetensors(dir.file("x.safetensors"), {{"__metadata__", DType::F32, t.value}}); },
                             {"cannot name a tensor"});
  EXPECT_FALSE(fs::exists(dir.file("x.safetensors")));
}

// The writers go through the atomic writer of nn/file_io.hpp: a failed step is a
// WeightsError naming the writer, the file and the step, and leaves no temp file.
TEST(Safetensors, AFailedWriteIsAWeightsErrorAndLeavesNoTempFile) {
  TempDir dir;
  const std::vector<WeightTensor> ts = {{"a", DType::F32, xt::xarray<double>({1.0, 2.0})}};
  const std::string missing = dir.file("no/such/dir/w.safetensors");
  expect_error<WeightsError>([&] { nn::write_safetensors(missing, ts); },
                             {"write_safetensors: " + missing + ": ", "cannot create temporary file"});
  // A directory at the path is refused before anything is written (a rename would fail).
  const std::string occupied = dir.file("w.safetensors");
  fs::create_directory(occupied);
  expect_error<WeightsError>([&] { nn::write_safetensors(occupied, ts); },
                             {"write_safetensors: " + occupied + ": ", "is a directory, not a regular file"});
  EXPECT_TRUE(fs::is_directory(occupied));
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"w.safetensors"}));
}

// A rename over a FIFO or a device would replace it with a regular file (as root,
// writing weights to /dev/null would delete the device): refused, as for checkpoints.
TEST(Safetensors, RefusesToReplaceAFifo) {
  TempDir dir;
  const std::vector<WeightTensor> ts = {{"a", DType::F32, xt::xarray<double>({1.0, 2.0})}};
  const std::string fifo = dir.file("w.safetensors");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  expect_error<WeightsError>([&] { nn::write_safetensors(fifo, ts); },
                             {"write_safetensors: " + fifo + ": ", "is a FIFO, not a regular file"});
  EXPECT_EQ(fs::status(fifo).type(), fs::file_type::fifo) << "the FIFO was replaced";
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"w.safetensors"}));
}

// ---------------------------------------------------------------- .npy

TEST(Npy, ReadsWhatDumpNpyWritesInBothPrecisions) {
  TempDir dir;
  const xt::xarray<float> f = {{1.5f, -2.0f, 3.25f}, {0.0f, -0.0f, 7.0f}};
  const xt::xarray<double> d = {1.0 / 3.0, 2.0};
  xt::dump_npy(dir.file("f.npy"), f);
  xt::dump_npy(dir.file("d.npy"), d);
  const WeightTensor tf = nn::read_npy(dir.file("f.npy"), "f");
  EXPECT_EQ(tf.dtype, DType::F32);
  EXPECT_EQ(tf.value, xt::xarray<double>(xt::cast<double>(f)));
  const WeightTensor td = nn::read_npy(dir.file("d.npy"), "d");
  EXPECT_EQ(td.dtype, DType::F64);
  EXPECT_TRUE(same_bits(td.value, d));
}

// A .npy file from a header dictionary and raw data (version 1.0).
std::string npy_bytes(const std::string& dict, const std::string& data) {
  std::string h = dict;
  h += std::string((64 - (10 + h.size() + 1) % 64) % 64, ' ') + "\n";
  std::string out = std::string("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(h.size() & 0xff);
  out += static_cast<char>(h.size() >> 8);
  return out + h + data;
}

TEST(Npy, ReadsFortranOrderAndBigEndian) {
  TempDir dir;
  // (2,3) in column-major order: [[1,2,3],[4,5,6]] stored 1,4,2,5,3,6.
  const float cm[6] = {1, 4, 2, 5, 3, 6};
  write_raw(dir.file("f.npy"), npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
                                         std::string(reinterpret_cast<const char*>(cm), sizeof cm)));
  EXPECT_EQ(nn::read_npy(dir.file("f.npy"), "f").value, (xt::xarray<double>{{1, 2, 3}, {4, 5, 6}}));
  // 1.0 as a big-endian float64: 3f f0 00 ... 00; keys in another order.
  write_raw(dir.file("b.npy"), npy_bytes("{'shape': (1,), 'fortran_order': False, 'descr': '>f8'}",
                                         std::string("\x3f\xf0\0\0\0\0\0\0", 8)));
  EXPECT_EQ(nn::read_npy(dir.file("b.npy"), "b").value, xt::xarray<double>({1.0}));
}

TEST(Npy, RefusesEveryMalformedFileNamingTheDefect) {
  const std::string ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  const std::string data8(8, '\0');
  std::string v9 = npy_bytes(ok_dict, data8);
  v9[6] = 9;
  std::string long_len = npy_bytes(ok_dict, data8);
  long_len[8] = '\xff', long_len[9] = '\xff';
  const std::vector<BadFile> cases = {
      {"empty", "", {"not a .npy file"}},
      {"bad magic", "\x93NUMPX\x01\x00\x10\x00", {"not a .npy file"}},
      {"preamble cut", std::string("\x93NUMPY\x01", 7), {"truncated before the end of its preamble"}},
      {"version 9", v9, {"unsupported .npy version 9.0"}},
      {"header past the end", long_len, {"runs past the end"}},
      {"int dtype", npy_bytes("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", data8), {"dtype '<i8' is not supported"}},
      {"unknown key", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", data8), {"unknown key 'x'"}},
      {"missing shape", npy_bytes("{'descr': '<f4', 'fortran_order': False}", data8), {"needs 'descr', 'fortran_order' and 'shape'"}},
      {"twice", npy_bytes("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", data8), {"appears twice"}},
      {"bad bool", npy_bytes("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}", data8), {"neither True nor False"}},
      {"negative dim", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}", data8), {"whole number"}},
      {"unterminated", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", data8), {"bad header"}},
      {"text after", npy_bytes(ok_dict + " x", data8), {"unexpected text"}},
      {"truncated data", npy_bytes(ok_dict, std::string(7, '\0')), {"needs 8 bytes", "has 7", "truncated"}},
      {"trailing data", npy_bytes(ok_dict, std::string(9, '\0')), {"has 9", "trailing bytes"}},
      {"huge shape", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4)}", data8),
       {"too many elements"}},
  };
  TempDir dir;
  for (const BadFile& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string path = dir.file("bad.npy");
    write_raw(path, c.bytes);
    try {
      nn::read_npy(path, "bad");
      ADD_FAILURE() << "accepted";
    } catch (const WeightsError& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      for (const std::string& s : c.says) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what();
    }
  }
}

TEST(Npy, DirectoryRoundTripAndWhatItRefuses) {
  TempDir dir;
  const std::string d = dir.file("w");
  const std::vector<WeightTensor> ts = {{"conv1.weight", DType::F32, awkward_floats({2, 1, 3, 3}, 3)},
                                        {"fc.bias", DType::F64, xt::xarray<double>({0.1, 0.2})}};
  nn::write_npy_dir(d, ts);
  write_raw(d + "/README.txt", "not a tensor: ignored");
  const std::vector<WeightTensor> back = nn::read_npy_dir(d);
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].name, "conv1.weight");
  EXPECT_TRUE(same_bits(back[0].value, ts[0].value));
  EXPECT_EQ(back[1].name, "fc.bias");
  EXPECT_EQ(back[1].dtype, DType::F64);
  EXPECT_TRUE(same_bits(back[1].value, ts[1].value));
  nn::write_npy_dir(d, ts);  // overwriting the same tensors is fine

  expect_error<WeightsError>([&] { nn::write_npy_dir(d, {{"../x", DType::F32, ts[1].value}}); }, {"cannot name a file"});
  write_raw(d + "/stray.npy", read_raw(d + "/fc.bias.npy"));
  expect_error<WeightsError>([&] { nn::write_npy_dir(d, ts); }, {"stray.npy", "not one of these tensors"});
  expect_error<WeightsError>([&] { nn::read_npy_dir(dir.file("none")); }, {"does not exist"});
}

TEST(Npy, AFailedWriteIsAWeightsErrorAndLeavesNoTempFile) {
  TempDir dir;
  const std::string d = dir.file("w");
  fs::create_directories(d + "/a.npy");  // a directory where the tensor's file goes
  expect_error<WeightsError>([&] { nn::write_npy_dir(d, {{"a", DType::F64, xt::xarray<double>({1.0})}}); },
                             {"write_npy_dir: " + d + "/a.npy: ", "is a directory, not a regular file"});
  EXPECT_TRUE(fs::is_directory(d + "/a.npy"));
  for (const fs::directory_entry& e : fs::directory_iterator(d)) EXPECT_EQ(e.path().filename(), "a.npy");
}

// ---------------------------------------------------------------- models

nn::CnnConfig small_cnn() {
  nn::CnnConfig cfg;
  cfg.height = cfg.width = 12;
  cfg.channels = {3, 4};
  cfg.kernel = 3, cfg.padding = 1;
  cfg.classes = 5;
  return cfg;
}

template <class T>
std::vector<ad::Tensor<T>> values_of(nn::Sequential<T>& m) {
  std::vector<ad::Tensor<T>> out;
  for (auto* p : m.parameters()) out.push_back(p->value);
  return out;
}

TEST(Weights, TorchLayoutNamesTheRefCnnLikePyTorchAndTransposesLinearWeights) {
  auto model = nn::make_cnn<float>(small_cnn(), 1);
  const std::vector<WeightTensor> ws = nn::model_weights(model);
  std::vector<std::string> names;
  for (const auto& w : ws) names.push_back(w.name);
  EXPECT_EQ(names, (std::vector<std::string>{"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"}));
  const auto params = model.parameters();
  EXPECT_EQ(params[4]->name, "fc3.weight");
  ASSERT_EQ(params[4]->value.shape(), (ad::Shape{4 * 3 * 3, 5}));       // ours: (D_in, D_out)
  ASSERT_EQ(ws[4].value.shape(), (xt::xarray<double>::shape_type{5, 36}));  // PyTorch's: (D_out, D_in)
  for (std::size_t i = 0; i < 36; ++i)
    for (std::size_t j = 0; j < 5; ++j) ASSERT_EQ(ws[4].value(j, i), params[4]->value(i, j));
  EXPECT_TRUE(same_bits(ws[0].value, xt::xarray<double>(xt::cast<double>(params[0]->value))));  // kernels as they are
  for (const auto& w : ws) EXPECT_EQ(w.dtype, DType::F32);

  const std::vector<WeightTensor> ours = nn::model_weights(model, {.torch_layout = false});
  EXPECT_EQ(ours[4].name, "fc3.weight");
  EXPECT_EQ(ours[4].value.shape(), (xt::xarray<double>::shape_type{36, 5}));
  auto d = nn::make_cnn<double>(small_cnn(), 1);
  EXPECT_EQ(nn::model_weights(d)[0].dtype, DType::F64);
}

TEST(Weights, SaveAndLoadRoundTripInEveryFormatAndLayout) {
  TempDir dir;
  for (const bool torch : {true, false}) {
    for (const std::string file : {"w.safetensors", "w_npy"}) {
      SCOPED_TRACE(fmt::format("{} torch={}", file, torch));
      auto a = nn::make_cnn<float>(small_cnn(), 1);
      auto b = nn::make_cnn<float>(small_cnn(), 2);
      const std::string path = dir.file(fmt::format("{}_{}", torch, file));
      nn::save_weights(path, a, {.torch_layout = torch});
      nn::load_weights(path, b, {.torch_layout = torch});
      const auto va = values_of(a), vb = values_of(b);
      for (std::size_t i = 0; i < va.size(); ++i) EXPECT_EQ(va[i], vb[i]) << i;
    }
  }
  // float into double and back: exact.
  auto f = nn::make_cnn<float>(small_cnn(), 3);
  auto d = nn::make_cnn<double>(small_cnn(), 4);
  nn::save_weights(dir.file("f.safetensors"), f);
  nn::load_weights(dir.file("f.safetensors"), d);
  for (std::size_t i = 0; i < f.parameters().size(); ++i)
    EXPECT_EQ(ad::Tensor<float>(xt::cast<float>(d.parameters()[i]->value)), f.parameters()[i]->value);
}

TEST(Weights, AMismatchingFileChangesNothingAndNamesEveryProblem) {
  TempDir dir;
  auto model = nn::make_cnn<float>(small_cnn(), 1);
  const auto before = values_of(model);
  auto other = nn::make_cnn<float>(small_cnn(), 2);
  std::vector<WeightTensor> ws = nn::model_weights(other);
  ws[3].value = xt::zeros<double>({7});                           // conv2.bias: wrong shape
  ws[4].value = xt::xarray<double>(xt::transpose(ws[4].value));   // fc.weight in our layout, not PyTorch's
  ws.erase(ws.begin() + 1);                                       // conv1.bias: missing
  ws.push_back({"bn.running_mean", DType::F32, xt::zeros<double>({3})});  // not in the model
  const std::string path = dir.file("bad.safetensors");
  nn::write_safetensors(path, ws);
  expect_error<WeightsError>([&] { nn::load_weights(path, model); },
                             {path, "missing tensors the model needs: \"conv1.bias\"",
                              "unexpected tensors the model does not have: \"bn.running_mean\"",
                              "\"conv2.bias\" has shape (7) but the model's is (4)",
                              "\"fc.weight\" has shape (36,5) but the model's is (5,36) (PyTorch's (D_out, D_in) layout)"});
  const auto after = values_of(model);
  for (std::size_t i = 0; i < before.size(); ++i) EXPECT_EQ(before[i], after[i]) << "changed by a refused load: " << i;
  // The same through a directory of .npy files.
  nn::write_npy_dir(dir.file("bad_npy"), ws);
  expect_error<WeightsError>([&] { nn::load_weights(dir.file("bad_npy"), model); }, {"missing tensors", "conv1.bias"});
  for (std::size_t i = 0; i < before.size(); ++i) EXPECT_EQ(before[i], values_of(model)[i]) << i;
}

TEST(Weights, RefusesAFileOfAnotherLayoutOrModel) {
  TempDir dir;
  auto model = nn::make_cnn<float>(small_cnn(), 1);
  const auto before = values_of(model);
  nn::save_weights(dir.file("ours.safetensors"), model, {.torch_layout = false});
  expect_error<WeightsError>([&] { nn::load_weights(dir.file("ours.safetensors"), model); },
                             {"written in the tape_autodiff layout", "expects the torch layout"});
  nn::save_weights(dir.file("tagged.safetensors"), model, {.model_tag = "cnn-a"});
  expect_error<WeightsError>([&] { nn::load_weights(dir.file("tagged.safetensors"), model, {.model_tag = "cnn-b"}); },
                             {"holds the model \"cnn-a\" but this model is \"cnn-b\""});
  nn::load_weights(dir.file("tagged.safetensors"), model, {.model_tag = "cnn-a"});
  nn::load_weights(dir.file("tagged.safetensors"), model);  // no tag asked for: accepted
  for (std::size_t i = 0; i < before.size(); ++i) EXPECT_EQ(before[i], values_of(model)[i]);
}

// ---------------------------------------------------------------- PyTorch

// tools/torch_interop.py's ref-CNN: conv 5x5 1->4 pad 2, ReLU, max pool 2, conv 5x5 4->8
// pad 2, ReLU, max pool 2, flatten (392), linear 10, on 1x28x28.
constexpr const char* kTorchWeights = "tests/golden/torch_interop/ref_cnn_c4_8.safetensors";
constexpr const char* kTorchBatch = "tests/golden/torch_interop/batch.safetensors";

nn::CnnConfig torch_ref_cnn() {
  nn::CnnConfig cfg;
  cfg.channels = {4, 8};
  return cfg;
}

std::map<std::string, xt::xarray<double>> read_batch() {
  std::map<std::string, xt::xarray<double>> out;
  for (WeightTensor& t : nn::read_safetensors(kTorchBatch)) out[t.name] = std::move(t.value);
  return out;
}

ad::Tensor<float> logits_of(nn::Sequential<float>& model, const xt::xarray<double>& images) {
  ad::Tape<float> tape;
  ad::NoGradGuard guard(tape);
  const ad::Value y = model.forward(tape, tape.input(ad::Tensor<float>(xt::cast<float>(images))));
  return tape.value(y);
}

double max_abs_diff(const ad::Tensor<float>& a, const xt::xarray<double>& b) {
  EXPECT_EQ(std::vector<std::size_t>(a.shape().begin(), a.shape().end()), std::vector<std::size_t>(b.shape().begin(), b.shape().end()));
  double m = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(double(a.data()[i]) - b.data()[i]));
  return m;
}

TEST(TorchInterop, APyTorchStateDictReproducesPyTorchsLogits) {
  auto model = nn::make_cnn<float>(torch_ref_cnn(), 7);
  nn::load_weights(kTorchWeights, model);
  const auto batch = read_batch();
  const ad::Tensor<float> logits = logits_of(model, batch.at("images"));
  const double diff = max_abs_diff(logits, batch.at("logits"));
  EXPECT_LE(diff, 1e-5) << "our logits differ from PyTorch's by up to " << diff;
  std::printf("max |ours - PyTorch| over the logits: %.3g\n", diff);
}

// Fine-tunes the PyTorch model here (one SGD step), exports it, and checks the export
// reloads to the same logits. With AD_TORCH_INTEROP_OUT=<dir> it leaves the export and
// our logits there for `tools/torch_interop.py check <dir>` (the reverse direction).
TEST(TorchInterop, AModelFineTunedHereExportsInPyTorchsLayout) {
  auto model = nn::make_cnn<float>(torch_ref_cnn(), 7);
  nn::load_weights(kTorchWeights, model);
  const auto batch = read_batch();
  const ad::Tensor<float> images = xt::cast<float>(batch.at("images"));
  std::vector<int> labels;
  for (const double l : batch.at("labels")) labels.push_back(static_cast<int>(l));
  nn::Sgd<float> sgd(model.parameters(), {.lr = 0.1});
  ad::Tape<float> tape;
  const ad::Value loss = ad::softmax_cross_entropy(tape, model.forward(tape, tape.input(images)), labels);
  tape.backward(loss);
  sgd.step();
  const ad::Tensor<float> tuned = logits_of(model, batch.at("images"));
  EXPECT_GT(max_abs_diff(tuned, batch.at("logits")), 1e-3) << "the step changed nothing";

  const char* out_env = std::getenv("AD_TORCH_INTEROP_OUT");
  TempDir tmp;
  const std::string out = out_env != nullptr ? out_env : tmp.path().string();
  fs::create_directories(out);
  nn::save_weights(out + "/weights.safetensors", model, {.model_tag = torch_ref_cnn().tag()});
  nn::write_safetensors(out + "/logits.safetensors", {{"logits", DType::F32, xt::cast<double>(tuned)}});
  auto back = nn::make_cnn<float>(torch_ref_cnn(), 8);
  nn::load_weights(out + "/weights.safetensors", back);
  EXPECT_EQ(logits_of(back, batch.at("images")), tuned);
  const std::vector<WeightTensor> file = nn::read_safetensors(out + "/weights.safetensors");
  ASSERT_EQ(file.size(), 6u);
  EXPECT_EQ(file[4].name, "fc.weight");
  EXPECT_EQ(file[4].value.shape(), (xt::xarray<double>::shape_type{10, 392}));
}

// ---------------------------------------------------------------- fuzz corpus

TEST(FuzzCorpus, SafetensorsInputsLoadOrFailCleanly) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator("tests/fuzz/corpus_safetensors")) files.push_back(e.path());
  ASSERT_GE(files.size(), 3u) << "tests/fuzz/corpus_safetensors lost its seeds";
  int valid = 0;
  for (const fs::path& f : files) {
    SCOPED_TRACE(f.string());
    try {
      nn::read_safetensors(f.string());
      ++valid;
    } catch (const WeightsError&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a WeightsError: " << e.what();
    }
  }
  EXPECT_GE(valid, 3) << "the seeds must be valid safetensors files";
}

}  // namespace

}  // namespace test_weights
