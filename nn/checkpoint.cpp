// Checkpoint writer and reader; the format is documented in checkpoint.hpp.
// The reader never allocates from a length it has not compared with the bytes
// that remain in the file, and verifies the CRC32 before returning anything.
#include "nn/checkpoint.hpp"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <limits>
#include <map>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "nn/file_io.hpp"

namespace nn {
namespace {

constexpr char kMagic[8] = {'A', 'D', 'C', 'K', 'P', 'T', '0', '1'};

std::uint32_t crc32_of(const std::uint8_t* data, std::size_t n) {
  return static_cast<std::uint32_t>(::crc32_z(::crc32_z(0, nullptr, 0), data, n));
}

template <class Shape>
std::string format_shape(const Shape& shape) {
  return fmt::format("({})", fmt::join(shape, ","));
}

// ---------------------------------------------------------------- writing

// Appends little-endian fields to a byte buffer.
class Writer {
 public:
  void u32(std::uint32_t v) {
    for (int i = 0; i < 4; ++i) buf_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  void u64(std::uint64_t v) {
    for (int i = 0; i < 8; ++i) buf_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  void bytes(const void* p, std::size_t n) {
    const auto* b = static_cast<const std::uint8_t*>(p);
    buf_.insert(buf_.end(), b, b + n);
  }
  void f32s(const float* p, std::size_t n) {
    if constexpr (std::endian::native == std::endian::little) {
      bytes(p, n * sizeof(float));
    } else {
      for (std::size_t i = 0; i < n; ++i) u32(std::bit_cast<std::uint32_t>(p[i]));
    }
  }
  std::vector<std::uint8_t>& buffer() { return buf_; }

 private:
  std::vector<std::uint8_t> buf_;
};

std::vector<std::uint8_t> serialize(const std::string& path, const std::vector<NamedTensor>& tensors,
                                    const std::string& model_tag) {
  constexpr std::size_t kMaxU32 = std::numeric_limits<std::uint32_t>::max();
  if (model_tag.size() > kMaxU32) {
    throw CheckpointError(fmt::format("save_checkpoint: {}: model tag is longer than 2^32-1 bytes",
                                      path));
  }
  if (tensors.size() > kMaxU32) {
    throw CheckpointError(fmt::format("save_checkpoint: {}: {} tensors exceed the format's limit",
                                      path, tensors.size()));
  }
  std::set<std::string> seen;
  std::size_t total = 8 + 4 + 4 + model_tag.size() + 4 + 4;
  for (const NamedTensor& t : tensors) {
    if (!seen.insert(t.name).second) {
      throw CheckpointError(fmt::format("save_checkpoint: {}: tensor name \"{}\" appears twice",
                                        path, t.name));
    }
    if (t.name.size() > kMaxU32) {
      throw CheckpointError(fmt::format("save_checkpoint: {}: a tensor name is longer than "
                                        "2^32-1 bytes", path));
    }
    if (t.value.dimension() > kMaxCheckpointRank) {
      throw CheckpointError(fmt::format("save_checkpoint: {}: tensor \"{}\" has rank {}; the "
                                        "format allows at most {}", path, t.name,
                                        t.value.dimension(), kMaxCheckpointRank));
    }
    total += 4 + t.name.size() + 4 + 8 * t.value.dimension() + 4 * t.value.size();
  }

  Writer w;
  w.buffer().reserve(total);
  w.bytes(kMagic, sizeof kMagic);
  w.u32(kCheckpointVersion);
  w.u32(static_cast<std::uint32_t>(model_tag.size()));
  w.bytes(model_tag.data(), model_tag.size());
  w.u32(static_cast<std::uint32_t>(tensors.size()));
  for (const NamedTensor& t : tensors) {
    w.u32(static_cast<std::uint32_t>(t.name.size()));
    w.bytes(t.name.data(), t.name.size());
    w.u32(static_cast<std::uint32_t>(t.value.dimension()));
    for (const std::size_t d : t.value.shape()) w.u64(d);
    // xt::xarray<float> is row-major and contiguous: data() is the row-major order.
    w.f32s(t.value.data(), t.value.size());
  }
  w.u32(crc32_of(w.buffer().data(), w.buffer().size()));
  return std::move(w.buffer());
}

// ---------------------------------------------------------------- reading

// Bounds-checked little-endian cursor over the whole file.
class Reader {
 public:
  Reader(const std::string& path, const std::vector<std::uint8_t>& buf) : path_(path), buf_(buf) {}

  std::size_t offset() const { return off_; }
  std::size_t remaining() const { return buf_.size() - off_; }

  // Throws "truncated" unless n more bytes exist for `what`.
  void need(std::size_t n, const std::string& what) const {
    if (remaining() < n) {
      throw CheckpointError(fmt::format("load_checkpoint: {}: truncated or corrupt: {} needs {} "
                                        "bytes at offset {} but only {} remain (file is {} bytes)",
                                        path_, what, n, off_, remaining(), buf_.size()));
    }
  }
  std::uint32_t u32(const std::string& what) {
    need(4, what);
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= std::uint32_t{buf_[off_ + i]} << (8 * i);
    off_ += 4;
    return v;
  }
  std::uint64_t u64(const std::string& what) {
    need(8, what);
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t{buf_[off_ + i]} << (8 * i);
    off_ += 8;
    return v;
  }
  std::string str(std::size_t n, const std::string& what) {
    need(n, what);
    std::string s(reinterpret_cast<const char*>(buf_.data() + off_), n);
    off_ += n;
    return s;
  }
  void f32s(float* out, std::size_t n, const std::string& what) {
    need(n * 4, what);
    const std::uint8_t* p = buf_.data() + off_;
    if constexpr (std::endian::native == std::endian::little) {
      if (n > 0) std::memcpy(out, p, n * 4);
    } else {
      for (std::size_t i = 0; i < n; ++i) {
        std::uint32_t v = 0;
        for (int k = 0; k < 4; ++k) v |= std::uint32_t{p[4 * i + k]} << (8 * k);
        out[i] = std::bit_cast<float>(v);
      }
    }
    off_ += n * 4;
  }

 private:
  const std::string& path_;
  const std::vector<std::uint8_t>& buf_;
  std::size_t off_ = 0;
};

std::vector<std::uint8_t> read_whole_file(const std::string& path) {
  return detail::read_regular_file<CheckpointError>(path, "load_checkpoint", "checkpoint");
}

}  // namespace

// ---------------------------------------------------------------- public API

namespace {

// The temp file of the write in progress, for remove_partial_file (a signal handler):
// a static buffer and a flag, never heap memory, so the handler reads nothing that
// another thread could free under it.
char g_partial_path[4096 + 64];
std::atomic<bool> g_partial_set{false};
static_assert(std::atomic<bool>::is_always_lock_free, "a signal handler reads g_partial_set");

// The write_file_atomically hook (nn/file_io.hpp): publishes `tmp` as the write in
// progress, or, given nullptr, withdraws it.
void publish_partial_file(const char* tmp) noexcept {
  if (tmp == nullptr) {
    g_partial_set.store(false, std::memory_order_release);
    return;
  }
  const std::size_t size = std::strlen(tmp);
  if (size >= sizeof g_partial_path) return;  // too long to publish: not removed on a signal
  std::memcpy(g_partial_path, tmp, size + 1);
  g_partial_set.store(true, std::memory_order_release);
}

}  // namespace

bool remove_partial_file() noexcept {
  if (!g_partial_set.load(std::memory_order_acquire)) return false;
  return ::unlink(g_partial_path) == 0;
}

void write_file_atomically(const std::string& path, std::span<const std::uint8_t> bytes,
                           std::string_view who) {
  detail::write_file_atomically<WriteError>(path, bytes, who, publish_partial_file);
}

void save_checkpoint(const std::string& path, const std::vector<NamedTensor>& tensors,
                     const std::string& model_tag) {
  const std::vector<std::uint8_t> bytes = serialize(path, tensors, model_tag);
  try {
    write_file_atomically(path, bytes, "save_checkpoint");
  } catch (const WriteError& e) {
    throw CheckpointError(e.what());
  }
}

std::vector<NamedTensor> load_checkpoint(const std::string& path, std::string* model_tag) {
  const std::vector<std::uint8_t> buf = read_whole_file(path);
  const auto fail = [&](const std::string& what) -> CheckpointError {
    return CheckpointError(fmt::format("load_checkpoint: {}: {}", path, what));
  };

  // A short file that starts like the magic is truncated; anything else is not ours.
  const std::size_t magic_have = std::min(buf.size(), sizeof kMagic);
  if (magic_have > 0 && std::memcmp(buf.data(), kMagic, magic_have) != 0) {
    throw fail(fmt::format("bad magic: not a checkpoint (expected it to start with \"{}\")",
                           std::string_view(kMagic, sizeof kMagic)));
  }
  Reader r(path, buf);
  r.need(sizeof kMagic, "the magic");
  r.str(sizeof kMagic, "the magic");
  const std::uint32_t version = r.u32("the version");
  if (version != kCheckpointVersion) {
    throw fail(fmt::format("unsupported version {} (this build reads version {})", version,
                           kCheckpointVersion));
  }
  const std::uint32_t tag_len = r.u32("the model tag length");
  std::string tag = r.str(tag_len, "the model tag");
  const std::uint32_t count = r.u32("the tensor count");
  // Each tensor takes at least 8 bytes (name length + rank): bound before reserving.
  r.need(std::size_t{count} * 8, fmt::format("a tensor count of {}", count));

  std::vector<NamedTensor> out;
  out.reserve(count);
  std::set<std::string> seen;
  for (std::uint32_t i = 0; i < count; ++i) {
    const std::uint32_t name_len = r.u32(fmt::format("tensor {}'s name length", i));
    NamedTensor t;
    t.name = r.str(name_len, fmt::format("tensor {}'s name", i));
    if (!seen.insert(t.name).second) {
      throw fail(fmt::format("tensor name \"{}\" appears twice", t.name));
    }
    const std::uint32_t rank = r.u32(fmt::format("the rank of tensor \"{}\"", t.name));
    if (rank > kMaxCheckpointRank) {
      throw fail(fmt::format("corrupt: tensor \"{}\" has rank {}; the format allows at most {}",
                             t.name, rank, kMaxCheckpointRank));
    }
    r.need(std::size_t{rank} * 8, fmt::format("the dims of tensor \"{}\"", t.name));
    xt::xarray<float>::shape_type shape(rank);
    bool any_zero = false;
    for (std::uint32_t k = 0; k < rank; ++k) {
      const std::uint64_t d = r.u64("a dim");
      any_zero = any_zero || d == 0;
      shape[k] = static_cast<std::size_t>(d);
    }
    // Element count, bounded by the floats that still fit in the file; checked
    // factor by factor so the product cannot overflow.
    const std::uint64_t max_elems = r.remaining() / 4;
    std::uint64_t elems = any_zero ? 0 : 1;
    for (std::uint32_t k = 0; k < rank && elems != 0; ++k) {
      if (shape[k] > max_elems / elems) {
        throw fail(fmt::format("truncated or corrupt: tensor \"{}\" has shape {}, more values "
                               "than the {} bytes left in the file", t.name, format_shape(shape),
                               r.remaining()));
      }
      elems *= shape[k];
    }
    // A tensor without values (a zero dim) is not bounded by the file size above, but
    // its other dims must still multiply to what an xarray can index: xtensor computes
    // strides as signed products, which would overflow.
    if (any_zero) {
      constexpr auto kMaxIndex = static_cast<std::uint64_t>(std::numeric_limits<std::ptrdiff_t>::max());
      std::uint64_t product = 1;
      for (const std::size_t d : shape) {
        if (d == 0) continue;
        if (d > kMaxIndex / product) {
          throw fail(fmt::format("corrupt: tensor \"{}\" has shape {}, whose non-zero dims multiply past "
                                 "2^63-1", t.name, format_shape(shape)));
        }
        product *= d;
      }
    }
    t.value.resize(shape);
    r.f32s(t.value.data(), static_cast<std::size_t>(elems),
           fmt::format("the data of tensor \"{}\"", t.name));
    out.push_back(std::move(t));
  }

  const std::size_t crc_offset = r.offset();
  const std::uint32_t stored = r.u32("the CRC32");
  if (r.remaining() != 0) {
    throw fail(fmt::format("corrupt: {} trailing bytes after the CRC32 at offset {}",
                           r.remaining(), crc_offset));
  }
  const std::uint32_t actual = crc32_of(buf.data(), crc_offset);
  if (stored != actual) {
    throw fail(fmt::format("checksum mismatch: the file stores CRC32 0x{:08x} but its contents "
                           "hash to 0x{:08x} (corrupt file)", stored, actual));
  }
  if (model_tag != nullptr) *model_tag = std::move(tag);
  return out;
}

void load_checkpoint_into(const std::string& path,
                          const std::vector<std::pair<std::string, xt::xarray<float>*>>& expected,
                          const std::string& model_tag) {
  std::map<std::string, xt::xarray<float>*> want;
  for (const auto& [name, target] : expected) {
    if (target == nullptr) {
      throw std::invalid_argument(fmt::format("load_checkpoint_into: {}: tensor \"{}\" has a "
                                              "null target", path, name));
    }
    if (!want.emplace(name, target).second) {
      throw std::invalid_argument(fmt::format("load_checkpoint_into: {}: the model lists tensor "
                                              "\"{}\" twice", path, name));
    }
  }

  std::string tag;
  std::vector<NamedTensor> loaded = load_checkpoint(path, &tag);
  if (tag != model_tag) {
    throw CheckpointError(fmt::format("checkpoint {}: model tag is \"{}\" but the model is \"{}\"",
                                      path, tag, model_tag));
  }

  std::map<std::string, const NamedTensor*> have;
  for (const NamedTensor& t : loaded) have.emplace(t.name, &t);
  std::vector<std::string> missing, unexpected;
  for (const auto& [name, target] : want) {
    if (!have.contains(name)) missing.push_back(fmt::format("\"{}\"", name));
  }
  for (const auto& [name, t] : have) {
    if (!want.contains(name)) unexpected.push_back(fmt::format("\"{}\"", name));
  }
  if (!missing.empty() || !unexpected.empty()) {
    std::string what;
    if (!missing.empty()) {
      what += fmt::format("missing tensors the model needs: {}", fmt::join(missing, ", "));
    }
    if (!unexpected.empty()) {
      if (!what.empty()) what += "; ";
      what += fmt::format("unexpected tensors the model does not have: {}",
                          fmt::join(unexpected, ", "));
    }
    throw CheckpointError(fmt::format("checkpoint {}: {}", path, what));
  }

  std::vector<std::string> mismatches;
  for (const auto& [name, target] : want) {
    const NamedTensor& t = *have.at(name);
    if (!std::equal(t.value.shape().begin(), t.value.shape().end(), target->shape().begin(),
                    target->shape().end())) {
      mismatches.push_back(fmt::format("tensor \"{}\" has shape {} but the model expects {}", name,
                                       format_shape(t.value.shape()),
                                       format_shape(target->shape())));
    }
  }
  if (!mismatches.empty()) {
    throw CheckpointError(fmt::format("checkpoint {}: {}", path, fmt::join(mismatches, "; ")));
  }

  // Every check passed: copy into the existing buffers (their addresses stay valid).
  for (const auto& [name, target] : want) {
    const xt::xarray<float>& src = have.at(name)->value;
    std::copy(src.data(), src.data() + src.size(), target->data());
  }
}

}  // namespace nn
