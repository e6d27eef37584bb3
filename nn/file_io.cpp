// File helpers of the weights readers and writers and the checkpoint reader and writer
// (nn/file_io.hpp).
#include "nn/file_io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <system_error>

#include <fmt/format.h>

#include "nn/checkpoint.hpp"
#include "nn/tensor_files.hpp"

namespace nn::detail {
namespace {

std::string errno_text(int err) { return std::generic_category().message(err); }

}  // namespace

template <class Error>
std::vector<std::uint8_t> read_regular_file(const std::string& path, const std::string& what, const char* noun) {
  // O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever; the file is
  // refused below unless it is a regular file, where the flag changes nothing.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(fmt::format("{}: {}: cannot open: {}", what, path, errno_text(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    const int err = errno;
    const bool is_dir = S_ISDIR(st.st_mode);
    ::close(fd);
    throw Error(fmt::format("{}: {}: {}", what, path,
                                   is_dir              ? fmt::format("is a directory, not a {}", noun)
                                   : st.st_mode != 0   ? std::string("is not a regular file")
                                                       : "cannot stat: " + errno_text(err)));
  }
  // The file's real size bounds every later allocation.
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(st.st_size));
  std::size_t have = 0;
  while (have < buf.size()) {
    const ssize_t got = ::read(fd, buf.data() + have, buf.size() - have);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      const int err = errno;
      ::close(fd);
      throw Error(fmt::format("{}: {}: read error: {}", what, path, errno_text(err)));
    }
    if (got == 0) break;
    have += static_cast<std::size_t>(got);
  }
  ::close(fd);
  buf.resize(have);  // the file shrank while reading: the parser reports it truncated
  return buf;
}

template std::vector<std::uint8_t> read_regular_file<WeightsError>(const std::string&, const std::string&, const char*);
template std::vector<std::uint8_t> read_regular_file<CheckpointError>(const std::string&, const std::string&,
                                                                      const char*);

namespace {
// "a character device", "a FIFO", ... for an st_mode that is not a regular file.
const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}
}  // namespace

template <class Error>
void write_file_atomically(const std::string& path, std::span<const std::uint8_t> bytes, std::string_view what,
                           TempFileHook on_temp_file) {
  // Renaming over a device or a FIFO would replace it with a regular file (as root, a
  // save to /dev/null would delete the device): refuse anything but a regular file.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    throw Error(fmt::format("{}: {}: is {}, not a regular file; refusing to rename a file over it", what, path,
                            file_kind(st.st_mode)));
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  if (on_temp_file != nullptr) on_temp_file(tmp.c_str());
  // Tells the hook that the write is over, however this function ends.
  struct WriteOver {
    TempFileHook hook;
    ~WriteOver() {
      if (hook != nullptr) hook(nullptr);
    }
  } const write_over{on_temp_file};

  // O_NOFOLLOW: never write through a symlink planted at the temp name.
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0)
    throw Error(fmt::format("{}: {}: cannot create temporary file {}: {}", what, path, tmp, errno_text(errno)));
  // On any failure from here on, the temp file is ours to remove; `path` is untouched
  // until the rename.
  const auto abandon = [&](const char* step, int err, bool close_fd) {
    if (close_fd) ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(fmt::format("{}: {}: {} {} failed: {}", what, path, step, tmp, errno_text(err)));
  };
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) abandon("writing", errno, true);
    if (n == 0) abandon("writing", EIO, true);
    done += static_cast<std::size_t>(n);
  }
  // No stdio buffer to fflush: write(2) went straight to the kernel.
  if (::fsync(fd) != 0) abandon("fsync of", errno, true);
  if (::close(fd) != 0) abandon("closing", errno, false);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Error(fmt::format("{}: {}: cannot rename {} over it: {}", what, path, tmp, errno_text(err)));
  }
  // Make the rename itself durable.
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  const std::string dir = parent.empty() ? std::string(".") : parent.string();
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0 || (::fsync(dir_fd) != 0 && errno != EINVAL)) {
    const int err = errno;
    if (dir_fd >= 0) ::close(dir_fd);
    throw Error(fmt::format("{}: {}: written, but fsync of directory {} failed, so it may not survive a crash: {}",
                            what, path, dir, errno_text(err)));
  }
  ::close(dir_fd);
}

template void write_file_atomically<WeightsError>(const std::string&, std::span<const std::uint8_t>, std::string_view,
                                                  TempFileHook);
template void write_file_atomically<WriteError>(const std::string&, std::span<const std::uint8_t>, std::string_view,
                                                TempFileHook);

}  // namespace nn::detail
