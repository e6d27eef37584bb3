// safetensors reader and writer; the format is in nn/tensor_files.hpp. The header is
// JSON, parsed by nlohmann::json, and checked completely (every field, every byte range
// against the file's length) before any tensor is built: the rules of the reference
// implementation (huggingface/safetensors, `Metadata::validate`), plus the refusal of
// duplicate keys and of fields the format does not have.
#include <algorithm>
#include <bit>
#include <cstring>
#include <numeric>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "nn/file_io.hpp"
#include "nn/shape_checks.hpp"
#include "nn/tensor_files.hpp"

namespace nn {

const char* dtype_name(DType d) { return d == DType::F32 ? "F32" : "F64"; }

namespace {

// Keeps the header's key order, so tensors come back in the order they were written.
using Json = nlohmann::ordered_json;

std::size_t dtype_size(DType d) { return d == DType::F32 ? 4 : 8; }

// The JSON nests at most three deep: {"name": {"shape": [1]}}.
constexpr int kMaxJsonDepth = 3;

// Thrown by the parse callback; carries the reason out of nlohmann's parser.
struct HeaderReject {
  std::string what;
};

std::uint64_t load_u64_le(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= std::uint64_t{p[i]} << (8 * i);
  return v;
}

// Little-endian bytes of `n` values of type F (float / double) -> doubles.
template <class F>
void decode_le(const std::uint8_t* p, std::size_t n, double* out) {
  using U = std::conditional_t<sizeof(F) == 4, std::uint32_t, std::uint64_t>;
  for (std::size_t i = 0; i < n; ++i, p += sizeof(F)) {
    U bits = 0;
    for (std::size_t k = 0; k < sizeof(F); ++k) bits |= U{p[k]} << (8 * k);
    out[i] = static_cast<double>(std::bit_cast<F>(bits));
  }
}

// doubles -> little-endian bytes of type F.
template <class F>
void encode_le(const double* in, std::size_t n, std::uint8_t* p) {
  using U = std::conditional_t<sizeof(F) == 4, std::uint32_t, std::uint64_t>;
  for (std::size_t i = 0; i < n; ++i, p += sizeof(F)) {
    const U bits = std::bit_cast<U>(static_cast<F>(in[i]));
    for (std::size_t k = 0; k < sizeof(F); ++k) p[k] = static_cast<std::uint8_t>(bits >> (8 * k));
  }
}

std::string shape_str(const std::vector<std::size_t>& s) { return fmt::format("({})", fmt::join(s, ",")); }

}  // namespace

SafetensorsHeader parse_safetensors_header(std::span<const std::uint8_t> file, const std::string& path) {
  const auto fail = [&](const std::string& what) {
    return WeightsError(fmt::format("safetensors: {}: {}", path, what));
  };
  if (file.size() < 8)
    throw fail(fmt::format("truncated: {} bytes, fewer than the 8 of the header length", file.size()));
  const std::uint64_t n = load_u64_le(file.data());
  if (n > kMaxSafetensorsHeader)
    throw fail(fmt::format("the header length {} exceeds the limit of {} bytes (not a safetensors file?)", n,
                           kMaxSafetensorsHeader));
  if (n > file.size() - 8)
    throw fail(fmt::format("truncated: the header length {} runs past the end of the file ({} bytes)", n, file.size()));
  const char* text = reinterpret_cast<const char*>(file.data() + 8);
  if (n == 0 || text[0] != '{') throw fail("the header does not start with '{' (not a safetensors file?)");
  // nlohmann's lexer takes a NUL byte for the end of its input: "{}\0junk" would pass.
  // JSON text never holds one (a string escapes it as \u0000).
  if (const void* nul = std::memchr(text, '\0', n))
    throw fail(fmt::format("the header holds a NUL byte at offset {}", static_cast<const char*>(nul) - text));

  // Duplicate keys: nlohmann keeps one of them silently, so the callback tracks each
  // open object's keys. Depth: nothing deeper than the format's own three levels.
  std::vector<std::set<std::string>> open_objects;
  const Json::parser_callback_t check = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (depth > kMaxJsonDepth) throw HeaderReject{fmt::format("the JSON nests deeper than {} levels", kMaxJsonDepth)};
    if (event == Json::parse_event_t::object_start) open_objects.emplace_back();
    if (event == Json::parse_event_t::object_end && !open_objects.empty()) open_objects.pop_back();
    if (event == Json::parse_event_t::key && !open_objects.empty() &&
        !open_objects.back().insert(parsed.get<std::string>()).second)
      throw HeaderReject{fmt::format("the key \"{}\" appears twice in one object", parsed.get<std::string>())};
    return true;
  };
  Json header;
  try {
    header = Json::parse(text, text + n, check);
  } catch (const HeaderReject& r) {
    throw fail("bad header: " + r.what);
  } catch (const Json::exception& e) {
    throw fail(fmt::format("the header is not valid JSON: {}", e.what()));
  }
  if (!header.is_object()) throw fail("the header is not a JSON object");

  const std::uint64_t data_size = file.size() - 8 - n;
  SafetensorsHeader out;
  out.data_start = 8 + n;
  for (const auto& item : header.items()) {
    const std::string& name = item.key();  // (not a structured binding: clang 14 cannot capture one)
    const Json& info = item.value();
    if (name == "__metadata__") {
      if (!info.is_object()) throw fail("__metadata__ is not an object of strings");
      for (const auto& [key, value] : info.items()) {
        if (!value.is_string()) throw fail(fmt::format("__metadata__ \"{}\" is not a string", key));
        out.metadata.emplace(key, value.get<std::string>());
      }
      continue;
    }
    const auto bad = [&](const std::string& what) { return fail(fmt::format("tensor \"{}\": {}", name, what)); };
    if (name.empty()) throw fail("a tensor has an empty name");
    if (!info.is_object()) throw bad("is not an object with dtype, shape and data_offsets");
    for (const auto& [field, _] : info.items())
      if (field != "dtype" && field != "shape" && field != "data_offsets")
        throw bad(fmt::format("unknown field \"{}\" (the format has dtype, shape, data_offsets)", field));
    if (!info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets"))
      throw bad("needs dtype, shape and data_offsets");

    SafetensorsEntry e;
    e.name = name;
    const Json& dtype = info["dtype"];
    if (!dtype.is_string()) throw bad("dtype is not a string");
    const std::string d = dtype.get<std::string>();
    if (d == "F32") {
      e.dtype = DType::F32;
    } else if (d == "F64") {
      e.dtype = DType::F64;
    } else {
      static const std::set<std::string> known = {"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16",
                                                  "BF16", "I32", "U32", "I64", "U64"};
      throw bad(known.contains(d) ? fmt::format("dtype {} is not supported (F32 and F64 are)", d)
                                  : fmt::format("unknown dtype \"{}\"", d));
    }

    const Json& shape = info["shape"];
    if (!shape.is_array()) throw bad("shape is not an array");
    if (shape.size() > kMaxWeightsRank)
      throw bad(fmt::format("rank {} exceeds the limit of {}", shape.size(), kMaxWeightsRank));
    for (const Json& dim : shape) {
      if (!dim.is_number_unsigned()) throw bad(fmt::format("shape {} holds {}, not a whole number >= 0", shape.dump(), dim.dump()));
      e.shape.push_back(dim.get<std::size_t>());
    }
    // The element count (checked against overflow); the byte range is compared below.
    const std::uint64_t elems = detail::checked_element_count(e.shape, dtype_size(e.dtype), bad);

    const Json& offsets = info["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
      throw bad(fmt::format("data_offsets {} is not [begin, end] of whole numbers", offsets.dump()));
    e.begin = offsets[0].get<std::uint64_t>();
    e.end = offsets[1].get<std::uint64_t>();
    if (e.begin > e.end) throw bad(fmt::format("data_offsets [{}, {}] end before they begin", e.begin, e.end));
    if (e.end > data_size)
      throw bad(fmt::format("data_offsets [{}, {}] run past the {} bytes of data (truncated file?)", e.begin, e.end, data_size));
    if (e.end - e.begin != elems * dtype_size(e.dtype))
      throw bad(fmt::format("{} shape {} needs {} bytes but data_offsets [{}, {}] hold {}", d, shape_str(e.shape),
                            elems * dtype_size(e.dtype), e.begin, e.end, e.end - e.begin));
    out.tensors.push_back(std::move(e));
  }

  // The byte ranges, in order, must tile the data exactly: no gap, no overlap, no tail.
  std::vector<std::size_t> order(out.tensors.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const SafetensorsEntry &x = out.tensors[a], &y = out.tensors[b];
    return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
  });
  std::uint64_t next = 0;
  for (const std::size_t i : order) {
    const SafetensorsEntry& e = out.tensors[i];
    if (e.begin != next)
      throw fail(fmt::format("tensor \"{}\" starts at byte {} of the data, but the tensors before it end at {} ({})",
                             e.name, e.begin, next, e.begin > next ? "a gap" : "an overlap"));
    next = e.end;
  }
  if (next != data_size)
    throw fail(fmt::format("{} bytes of data after the last tensor (at {} of {}): not indexed by the header",
                           data_size - next, next, data_size));
  return out;
}

std::vector<WeightTensor> read_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  const std::vector<std::uint8_t> file = detail::read_regular_file<WeightsError>(path, "read_safetensors");
  SafetensorsHeader header = parse_safetensors_header(file, path);
  std::vector<WeightTensor> out;
  out.reserve(header.tensors.size());
  for (const SafetensorsEntry& e : header.tensors) {
    WeightTensor t{e.name, e.dtype, xt::xarray<double>::from_shape(e.shape)};
    const std::uint8_t* p = file.data() + header.data_start + e.begin;
    if (e.dtype == DType::F32)
      decode_le<float>(p, t.value.size(), t.value.data());
    else
      decode_le<double>(p, t.value.size(), t.value.data());
    out.push_back(std::move(t));
  }
  if (metadata != nullptr) *metadata = std::move(header.metadata);
  return out;
}

void write_safetensors(const std::string& path, const std::vector<WeightTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const auto fail = [&](const std::string& what) {
    return WeightsError(fmt::format("write_safetensors: {}: {}", path, what));
  };
  Json header = Json::object();
  if (!metadata.empty()) {
    Json m = Json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  std::set<std::string> seen;
  std::uint64_t offset = 0;
  for (const WeightTensor& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") throw fail(fmt::format("\"{}\" cannot name a tensor", t.name));
    if (!seen.insert(t.name).second) throw fail(fmt::format("tensor name \"{}\" appears twice", t.name));
    if (t.value.dimension() > kMaxWeightsRank)
      throw fail(fmt::format("tensor \"{}\" has rank {}; readers accept at most {}", t.name, t.value.dimension(), kMaxWeightsRank));
    const std::uint64_t bytes = t.value.size() * dtype_size(t.dtype);
    header[t.name] = Json{{"dtype", dtype_name(t.dtype)},
                          {"shape", std::vector<std::size_t>(t.value.shape().begin(), t.value.shape().end())},
                          {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const Json::exception& e) {  // a name or metadata string that is not UTF-8
    throw fail(fmt::format("cannot write the header: {}", e.what()));
  }
  // Spaces pad the header so that the data starts 8-byte aligned, as the reference
  // writer does.
  text.append((8 - text.size() % 8) % 8, ' ');

  std::vector<std::uint8_t> file(8 + text.size() + offset);
  for (int i = 0; i < 8; ++i) file[i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(text.size()) >> (8 * i));
  std::memcpy(file.data() + 8, text.data(), text.size());
  std::uint8_t* p = file.data() + 8 + text.size();
  for (const WeightTensor& t : tensors) {
    // xt::xarray is row-major and contiguous: data() is the row-major order.
    if (t.dtype == DType::F32)
      encode_le<float>(t.value.data(), t.value.size(), p);
    else
      encode_le<double>(t.value.data(), t.value.size(), p);
    p += t.value.size() * dtype_size(t.dtype);
  }
  detail::write_file_atomically<WeightsError>(path, file, "write_safetensors");
}

}  // namespace nn
