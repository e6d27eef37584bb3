// IDX reader. Every byte that decides a size is checked before anything is
// allocated from it: the header's element count is capped at kMaxIdxElements,
// a raw file's payload is compared with its real size first, and a gzip payload
// buffer grows only as decompressed bytes actually arrive.
#include "nn/idx.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>
#include <system_error>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace nn {
namespace {

constexpr std::uint8_t kTypeUnsignedByte = 0x08;
constexpr std::size_t kChunkBytes = std::size_t{1} << 20;
// Trailing decompressed bytes counted before a gzip error says "at least".
constexpr std::uint64_t kTrailingCountCap = std::uint64_t{1} << 26;

std::string errno_text(int err) { return std::generic_category().message(err); }

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw DataError(fmt::format("read_idx: {}: {}", path, what));
}

const char* type_name(std::uint8_t code) {
  switch (code) {
    case 0x08: return "unsigned byte";
    case 0x09: return "signed byte";
    case 0x0B: return "int16";
    case 0x0C: return "int32";
    case 0x0D: return "float32";
    case 0x0E: return "float64";
    default: return nullptr;
  }
}

// A read-only byte stream over a regular file, decompressing it if it starts
// with the gzip magic 1f 8b. Owns the descriptor and the zlib stream.
//
// gzip is inflated here rather than with gzread: gzread silently ignores whatever
// follows the last gzip member when it does not start with the gzip magic, so a valid
// .gz with junk appended would pass. Here concatenated members (gzip(1) accepts them)
// are read one after another and anything else after a member is an error.
class ByteSource {
 public:
  explicit ByteSource(const std::string& path) : path_(path) {
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever; the file
    // is refused below unless it is a regular file, where the flag changes nothing.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) fail(path_, fmt::format("cannot open: {}", errno_text(errno)));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int err = errno;
      close_all();
      fail(path_, fmt::format("cannot stat: {}", errno_text(err)));
    }
    if (S_ISDIR(st.st_mode)) {
      close_all();
      fail(path_, "is a directory, not an IDX file");
    }
    if (!S_ISREG(st.st_mode)) {
      close_all();
      fail(path_, "is not a regular file");
    }
    file_size_ = static_cast<std::uint64_t>(st.st_size);

    unsigned char magic[2] = {0, 0};
    const ssize_t got = pread_all(magic, 2, 0);
    if (got == 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
      in_.resize(kInBytes + 1);  // + 1: room to put back a magic byte (inflate_some)
      // 16 + MAX_WBITS: a gzip wrapper (header, CRC32 and length trailer checked).
      if (::inflateInit2(&zs_, 16 + MAX_WBITS) != Z_OK) {
        close_all();
        fail(path_, "cannot start gzip decompression (out of memory?)");
      }
      gzip_ = true;
    }
  }
  ~ByteSource() { close_all(); }
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;

  bool is_gzip() const { return gzip_; }
  // Size of the file on disk (compressed size for gzip).
  std::uint64_t file_size() const { return file_size_; }

  // Reads up to n bytes; fewer only at the end of the stream. Throws DataError
  // on an I/O error or a corrupt / truncated gzip stream, or junk after it.
  std::size_t read(std::uint8_t* buf, std::size_t n) {
    std::size_t total = 0;
    while (total < n) {
      const std::size_t want = std::min(n - total, kChunkBytes);
      const std::size_t got = gzip_ ? inflate_some(buf + total, want) : read_file(buf + total, want);
      if (got == 0) break;
      total += got;
    }
    return total;
  }

  // Reads and discards the rest of the stream, counting bytes up to `cap`.
  std::uint64_t skip_rest(std::uint64_t cap) {
    std::vector<std::uint8_t> sink(64 * 1024);
    std::uint64_t count = 0;
    while (count < cap) {
      const std::size_t got = read(sink.data(), sink.size());
      if (got == 0) break;
      count += got;
    }
    return count;
  }

 private:
  static constexpr std::size_t kInBytes = std::size_t{1} << 17;

  ssize_t pread_all(unsigned char* buf, std::size_t n, off_t offset) {
    for (;;) {
      const ssize_t got = ::pread(fd_, buf, n, offset);
      if (got < 0 && errno == EINTR) continue;
      return got;
    }
  }

  // Up to n bytes of the file as it is; 0 at its end.
  std::size_t read_file(std::uint8_t* buf, std::size_t n) {
    for (;;) {
      const ssize_t got = ::read(fd_, buf, n);
      if (got >= 0) {
        consumed_ += static_cast<std::uint64_t>(got);
        return static_cast<std::size_t>(got);
      }
      if (errno != EINTR) fail(path_, fmt::format("read error: {}", errno_text(errno)));
    }
  }

  // Makes compressed input available; false at the end of the file.
  bool fill_input() {
    if (zs_.avail_in > 0) return true;
    const std::size_t got = read_file(in_.data(), kInBytes);
    zs_.next_in = in_.data();
    zs_.avail_in = static_cast<uInt>(got);
    return got > 0;
  }

  // Offset in the file of the next compressed byte not yet consumed.
  std::uint64_t input_offset() const { return consumed_ - zs_.avail_in; }

  // Up to n decompressed bytes; 0 at the end of the last gzip member.
  std::size_t inflate_some(std::uint8_t* buf, std::size_t n) {
    for (;;) {
      if (member_done_) {
        // After a member: the end of the file, another member, or junk.
        if (!fill_input()) return 0;
        const std::uint64_t at = input_offset();
        const bool magic1 = zs_.next_in[0] == 0x1f;
        if (magic1 && zs_.avail_in < 2) {  // the second magic byte is in the next read
          const std::uint8_t first = zs_.next_in[0];
          zs_.avail_in = 0;
          if (!fill_input()) trailing_junk(at);
          const bool magic2 = zs_.next_in[0] == 0x8b;
          if (!magic2) trailing_junk(at);
          // Put the first byte back in front: in_ starts with the byte just read.
          std::memmove(in_.data() + 1, zs_.next_in, zs_.avail_in);
          in_[0] = first;
          zs_.next_in = in_.data();
          ++zs_.avail_in;
        } else if (!magic1 || zs_.next_in[1] != 0x8b) {
          trailing_junk(at);
        }
        if (::inflateReset(&zs_) != Z_OK) fail(path_, "corrupt gzip stream (cannot restart)");
        member_done_ = false;
      }
      if (!fill_input()) fail(path_, "gzip stream is truncated (unexpected end of file)");
      zs_.next_out = buf;
      zs_.avail_out = static_cast<uInt>(n);
      const int ret = ::inflate(&zs_, Z_NO_FLUSH);
      const std::size_t got = n - zs_.avail_out;
      if (ret == Z_STREAM_END) {
        member_done_ = true;
      } else if (ret == Z_MEM_ERROR) {
        fail(path_, "gzip decompression ran out of memory");
      } else if (ret != Z_OK && ret != Z_BUF_ERROR) {  // Z_DATA_ERROR, Z_NEED_DICT, Z_STREAM_ERROR
        fail(path_, fmt::format("corrupt gzip stream ({})", zs_.msg != nullptr ? zs_.msg : "invalid data"));
      }
      if (got > 0) return got;
    }
  }

  [[noreturn]] void trailing_junk(std::uint64_t at) {
    fail(path_, fmt::format("corrupt gzip stream: {} bytes of junk after the end of the gzip data at "
                            "offset {} (a .gz file must end with its last gzip member)",
                            file_size_ > at ? file_size_ - at : 0, at));
  }

  void close_all() {
    if (gzip_) {
      ::inflateEnd(&zs_);
      gzip_ = false;
    }
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }

  std::string path_;
  int fd_ = -1;
  bool gzip_ = false;
  z_stream zs_{};
  std::vector<std::uint8_t> in_;  // compressed input
  std::uint64_t consumed_ = 0;    // bytes read from the file so far
  bool member_done_ = false;      // the last inflate() ended a gzip member
  std::uint64_t file_size_ = 0;
};

}  // namespace

std::string format_dims(const std::vector<std::uint32_t>& dims) {
  return fmt::format("({})", fmt::join(dims, ","));
}

namespace {

// Reads and checks the header (magic, type, rank, dims, their product, and for a raw
// file the payload size against the file size); returns the dims.
std::vector<std::uint32_t> read_header(ByteSource& src, const std::string& path) {
  const char* what_bytes = src.is_gzip() ? "decompressed bytes" : "bytes";

  std::uint8_t head[4] = {0, 0, 0, 0};
  const std::size_t head_got = src.read(head, 4);
  if (head_got < 4) {
    fail(path, fmt::format("header is truncated: {} {} but an IDX header needs at least 4",
                           head_got, what_bytes));
  }
  if (head[0] != 0 || head[1] != 0) {
    fail(path, fmt::format("bad magic {:02x} {:02x} {:02x} {:02x}: an IDX file starts with two "
                           "zero bytes, then the type code and the rank",
                           head[0], head[1], head[2], head[3]));
  }
  const std::uint8_t type = head[2];
  if (type != kTypeUnsignedByte) {
    const char* name = type_name(type);
    if (name != nullptr) {
      fail(path, fmt::format("type code 0x{:02X} ({}) is not supported; only 0x08 (unsigned byte)",
                             type, name));
    }
    fail(path, fmt::format("unknown type code 0x{:02X} in the magic; only 0x08 (unsigned byte) "
                           "is supported", type));
  }
  const unsigned rank = head[3];
  if (rank < 1 || rank > 4) {
    fail(path, fmt::format("bad rank {} in the magic: must be 1..4", rank));
  }

  std::uint8_t dim_bytes[16] = {};
  const std::size_t dims_got = src.read(dim_bytes, 4 * rank);
  if (dims_got < 4 * rank) {
    fail(path, fmt::format("header is truncated: rank {} needs {} bytes of dimensions but only "
                           "{} follow the magic", rank, 4 * rank, dims_got));
  }
  IdxArray out;  // dims only
  out.dims.resize(rank);
  for (unsigned i = 0; i < rank; ++i) {
    const std::uint8_t* b = dim_bytes + 4 * i;
    out.dims[i] = (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) |
                  (std::uint32_t{b[2]} << 8) | std::uint32_t{b[3]};
  }
  // The product is checked against the cap after every factor: the running
  // product stays <= 2^31 and a factor is < 2^32, so uint64 cannot overflow.
  std::uint64_t count = 1;
  for (unsigned i = 0; i < rank; ++i) {
    if (out.dims[i] == 0) {
      fail(path, fmt::format("dimension {} is zero in dims {}", i, format_dims(out.dims)));
    }
    count *= out.dims[i];
    if (count > kMaxIdxElements) {
      fail(path, fmt::format("dims {} are too large: more than the limit of {} elements",
                             format_dims(out.dims), kMaxIdxElements));
    }
  }
  const std::uint64_t header_bytes = 4 + 4 * std::uint64_t{rank};

  // Raw file: its size is known, so a mismatch is reported before allocating.
  if (!src.is_gzip()) {
    const std::uint64_t payload =
        src.file_size() > header_bytes ? src.file_size() - header_bytes : 0;
    if (payload < count) {
      fail(path, fmt::format("payload is {} bytes but dims {} need {}", payload,
                             format_dims(out.dims), count));
    }
    if (payload > count) {
      fail(path, fmt::format("{} trailing bytes after the payload: dims {} need exactly {} "
                             "but the payload is {}", payload - count, format_dims(out.dims),
                             count, payload));
    }
  }
  return out.dims;
}

}  // namespace

IdxArray read_idx(const std::string& path) {
  ByteSource src(path);
  const char* what_bytes = src.is_gzip() ? "decompressed bytes" : "bytes";
  IdxArray out;
  out.dims = read_header(src, path);
  std::uint64_t count = 1;
  for (const std::uint32_t d : out.dims) count *= d;

  // Grow the buffer as bytes arrive (never beyond `count`), so a lying gzip
  // header cannot make us allocate more than the stream really holds.
  const std::size_t need = static_cast<std::size_t>(count);
  out.data.reserve(std::min(need, kChunkBytes * 16));
  std::size_t have = 0;
  while (have < need) {
    const std::size_t want = std::min(need - have, kChunkBytes);
    if (have + want > out.data.capacity()) {
      out.data.reserve(std::min(need, std::max(out.data.capacity() * 2, have + want)));
    }
    out.data.resize(have + want);
    const std::size_t got = src.read(out.data.data() + have, want);
    have += got;
    if (got < want) break;
  }
  out.data.resize(have);
  if (have < need) {
    fail(path, fmt::format("payload is {} {} but dims {} need {}", have, what_bytes,
                           format_dims(out.dims), need));
  }
  const std::uint64_t trailing = src.skip_rest(kTrailingCountCap);
  if (trailing > 0) {
    fail(path, fmt::format("{}{} trailing {} after the payload: dims {} need exactly {}",
                           trailing >= kTrailingCountCap ? "at least " : "", trailing,
                           what_bytes, format_dims(out.dims), need));
  }
  return out;
}

std::vector<std::uint32_t> read_idx_header(const std::string& path) {
  ByteSource src(path);
  return read_header(src, path);
}

}  // namespace nn
