// .npy reader and writer, and directories of them; the format is NumPy's
// (numpy/lib/format.py): "\x93NUMPY", major, minor, a u16 (1.0) or u32 (2.0, 3.0)
// header length, the header (a Python dict literal with 'descr', 'fortran_order' and
// 'shape', ending in a newline), then the data.
//
// Written with xt::dump_npy. Read here rather than with xt::load_npy, which trusts
// the file: it does not check that the data is all there (a short read leaves the
// rest of the buffer uninitialised), sizes its buffer from the header's shape before
// comparing it with the file, and indexes an empty header. This reader checks the
// header strictly and the data size exactly before it builds anything.
#include <algorithm>
#include <bit>
#include <cctype>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <xtensor/xnpy.hpp>

#include "nn/file_io.hpp"
#include "nn/shape_checks.hpp"
#include "nn/tensor_files.hpp"

namespace nn {
namespace {

namespace fs = std::filesystem;

constexpr char kNpyMagic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

// What the header dictionary says.
struct NpyHeader {
  std::size_t itemsize = 0;  // 4 or 8
  bool big_endian = false;
  bool fortran_order = false;
  std::vector<std::size_t> shape;
};

// A cursor over the header text: a Python dict literal of the three keys.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& path) : s_(text), path_(path) {}

  NpyHeader parse() {
    NpyHeader h;
    bool have_descr = false, have_order = false, have_shape = false;
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = quoted();
      expect(':');
      if (key == "descr") {
        if (have_descr) throw fail("'descr' appears twice");
        have_descr = true;
        const std::string d = quoted();
        if (d.size() != 3 || (d[0] != '<' && d[0] != '>') || d[1] != 'f' || (d[2] != '4' && d[2] != '8'))
          throw fail(fmt::format("dtype '{}' is not supported (float32 '<f4' and float64 '<f8' are)", d));
        h.big_endian = d[0] == '>';
        h.itemsize = d[2] == '4' ? 4 : 8;
      } else if (key == "fortran_order") {
        if (have_order) throw fail("'fortran_order' appears twice");
        have_order = true;
        h.fortran_order = boolean();
      } else if (key == "shape") {
        if (have_shape) throw fail("'shape' appears twice");
        have_shape = true;
        h.shape = tuple();
      } else {
        throw fail(fmt::format("unknown key '{}' in the header (NumPy writes descr, fortran_order, shape)", key));
      }
      skip_space();
      if (peek() == ',') {
        ++i_;
      } else if (peek() != '}') {
        throw fail(fmt::format("expected ',' or '}}' at byte {} of the header", i_));
      }
    }
    ++i_;  // '}'
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n')) ++i_;
    if (i_ != s_.size()) throw fail(fmt::format("unexpected text after the header dictionary at byte {}", i_));
    if (!have_descr || !have_order || !have_shape) throw fail("the header needs 'descr', 'fortran_order' and 'shape'");
    return h;
  }

 private:
  WeightsError fail(const std::string& what) const {
    return WeightsError(fmt::format("read_npy: {}: bad header: {}", path_, what));
  }
  char peek() const {
    if (i_ >= s_.size()) throw fail("it ends in the middle of the dictionary");
    return s_[i_];
  }
  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t')) ++i_;
  }
  void expect(char c) {
    skip_space();
    if (peek() != c) throw fail(fmt::format("expected '{}' at byte {}", c, i_));
    ++i_;
  }
  std::string quoted() {
    skip_space();
    const char q = peek();
    if (q != '\'' && q != '"') throw fail(fmt::format("expected a quoted string at byte {}", i_));
    const std::size_t end = s_.find(q, i_ + 1);
    if (end == std::string_view::npos) throw fail("an unterminated string");
    std::string out(s_.substr(i_ + 1, end - i_ - 1));
    i_ = end + 1;
    return out;
  }
  bool boolean() {
    skip_space();
    if (s_.substr(i_, 4) == "True") return i_ += 4, true;
    if (s_.substr(i_, 5) == "False") return i_ += 5, false;
    throw fail(fmt::format("fortran_order is neither True nor False at byte {}", i_));
  }
  std::vector<std::size_t> tuple() {
    expect('(');
    std::vector<std::size_t> dims;
    while (true) {
      skip_space();
      if (peek() == ')') break;
      std::uint64_t d = 0;
      const char* b = s_.data() + i_;
      const auto [ptr, ec] = std::from_chars(b, s_.data() + s_.size(), d);
      if (ec != std::errc() || ptr == b) throw fail(fmt::format("shape: expected a whole number >= 0 at byte {}", i_));
      i_ += static_cast<std::size_t>(ptr - b);
      if (i_ < s_.size() && s_[i_] == 'L') ++i_;  // Python 2's long
      dims.push_back(d);
      if (dims.size() > kMaxWeightsRank) throw fail(fmt::format("shape: rank above the limit of {}", kMaxWeightsRank));
      skip_space();
      if (peek() == ',') {
        ++i_;
      } else if (peek() != ')') {
        throw fail(fmt::format("shape: expected ',' or ')' at byte {}", i_));
      }
    }
    ++i_;  // ')'
    return dims;
  }

  std::string_view s_;
  const std::string& path_;
  std::size_t i_ = 0;
};

// Bytes of `n` values of type F (float / double), in the file's byte order -> doubles.
template <class F>
void decode(const std::uint8_t* p, std::size_t n, bool big_endian, double* out) {
  using U = std::conditional_t<sizeof(F) == 4, std::uint32_t, std::uint64_t>;
  for (std::size_t i = 0; i < n; ++i, p += sizeof(F)) {
    U bits = 0;
    for (std::size_t k = 0; k < sizeof(F); ++k) bits |= U{p[big_endian ? sizeof(F) - 1 - k : k]} << (8 * k);
    out[i] = static_cast<double>(std::bit_cast<F>(bits));
  }
}

// A name that is one file name inside the directory, nothing else.
bool usable_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

}  // namespace

WeightTensor read_npy(const std::string& path, const std::string& name) {
  const std::vector<std::uint8_t> file = detail::read_regular_file<WeightsError>(path, "read_npy");
  const auto fail = [&](const std::string& what) { return WeightsError(fmt::format("read_npy: {}: {}", path, what)); };
  if (file.empty() || std::memcmp(file.data(), kNpyMagic, std::min(file.size(), sizeof kNpyMagic)) != 0)
    throw fail("not a .npy file (it does not start with \"\\x93NUMPY\")");
  if (file.size() < 8) throw fail("truncated before the end of its preamble");
  const unsigned major = file[6], minor = file[7];
  if (major < 1 || major > 3 || minor != 0) throw fail(fmt::format("unsupported .npy version {}.{} (1.0 to 3.0 are read)", major, minor));
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  if (file.size() < 8 + len_bytes) throw fail("truncated before the end of its preamble");
  std::size_t header_len = 0;
  for (std::size_t k = 0; k < len_bytes; ++k) header_len |= std::size_t{file[8 + k]} << (8 * k);
  const std::size_t data_start = 8 + len_bytes + header_len;
  if (header_len > file.size() - 8 - len_bytes)
    throw fail(fmt::format("truncated: the header length {} runs past the end of the file ({} bytes)", header_len, file.size()));
  const std::string_view text(reinterpret_cast<const char*>(file.data() + 8 + len_bytes), header_len);
  const NpyHeader h = HeaderParser(text, path).parse();

  // The element count (checked against overflow), then exactly the bytes it needs.
  const std::size_t data_size = file.size() - data_start;
  const std::uint64_t elems = detail::checked_element_count(h.shape, h.itemsize, fail);
  if (elems * h.itemsize != data_size)
    throw fail(fmt::format("shape ({}) of {}-byte values needs {} bytes of data, the file has {} ({})", fmt::join(h.shape, ","),
                           h.itemsize, elems * h.itemsize, data_size, data_size < elems * h.itemsize ? "truncated" : "trailing bytes"));

  WeightTensor t{name, h.itemsize == 4 ? DType::F32 : DType::F64, xt::xarray<double>::from_shape(h.shape)};
  const std::uint8_t* p = file.data() + data_start;
  if (!h.fortran_order || h.shape.size() < 2) {
    if (h.itemsize == 4)
      decode<float>(p, t.value.size(), h.big_endian, t.value.data());
    else
      decode<double>(p, t.value.size(), h.big_endian, t.value.data());
  } else {  // column-major data: read as such, then store row-major
    auto cm = xt::xarray<double, xt::layout_type::column_major>::from_shape(h.shape);
    if (h.itemsize == 4)
      decode<float>(p, cm.size(), h.big_endian, cm.data());
    else
      decode<double>(p, cm.size(), h.big_endian, cm.data());
    t.value = cm;
  }
  return t;
}

std::vector<WeightTensor> read_npy_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw WeightsError(fmt::format("read_npy_dir: {}: {}", dir, fs::exists(dir, ec) ? "is not a directory" : "does not exist"));
  std::vector<fs::path> files;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".npy") files.push_back(e.path());
  if (ec) throw WeightsError(fmt::format("read_npy_dir: {}: cannot list: {}", dir, ec.message()));
  std::sort(files.begin(), files.end());
  std::vector<WeightTensor> out;
  for (const fs::path& f : files) out.push_back(read_npy(f.string(), f.stem().string()));
  return out;
}

void write_npy_dir(const std::string& dir, const std::vector<WeightTensor>& tensors) {
  const auto fail = [&](const std::string& what) { return WeightsError(fmt::format("write_npy_dir: {}: {}", dir, what)); };
  std::set<std::string> names;
  for (const WeightTensor& t : tensors) {
    if (!usable_file_name(t.name)) throw fail(fmt::format("\"{}\" cannot name a file in the directory", t.name));
    if (!names.insert(t.name).second) throw fail(fmt::format("tensor name \"{}\" appears twice", t.name));
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir, ec)) throw fail("cannot create the directory, or it is not one");
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".npy" && !names.contains(e.path().stem().string()))
      throw fail(fmt::format("it holds {}, which is not one of these tensors and would be read as one: remove it or "
                             "write elsewhere", e.path().filename().string()));
  for (const WeightTensor& t : tensors) {
    const std::string bytes =
        t.dtype == DType::F32 ? xt::dump_npy(xt::xarray<float>(xt::cast<float>(t.value))) : xt::dump_npy(t.value);
    detail::write_file_atomically<WeightsError>((fs::path(dir) / (t.name + ".npy")).string(),
                                                std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()),
                                                "write_npy_dir");
  }
}

}  // namespace nn
