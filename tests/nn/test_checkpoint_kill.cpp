// Faults: a process killed with SIGKILL in the middle of writing a checkpoint leaves
// the previous checkpoint intact and loadable (save_checkpoint writes a temp file,
// fsyncs it, renames it over the old one and fsyncs the directory; load_checkpoint
// verifies the CRC32).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "nn/checkpoint.hpp"
#include "tests/nn/nn_test_util.hpp"

namespace test_checkpoint_kill {

namespace fs = std::filesystem;

namespace {

constexpr const char* kTag = "kill-test";

using nn::test::TempDir;

// Generation g of the model: every value is g, so a checkpoint mixing two saves, or
// a half-written one, cannot pass for a whole generation. 32 MB: a save takes long
// enough to be caught in the middle.
std::vector<nn::NamedTensor> generation(std::uint32_t g) {
  std::vector<nn::NamedTensor> ts;
  ts.push_back({"big", xt::xarray<float>::from_shape({1024, 8192})});
  ts.push_back({"small", xt::xarray<float>::from_shape({10})});
  for (nn::NamedTensor& t : ts) t.value.fill(static_cast<float>(g));
  return ts;
}

// The child: saves generation 1, 2, 3, ... over `path` and reports each finished save
// on `notify`, until it is killed.
[[noreturn]] void save_forever(const std::string& path, int notify) {
  ::alarm(300);  // never outlive a parent that failed to kill us
  for (std::uint32_t g = 1;; ++g) {
    nn::save_checkpoint(path, generation(g), kTag);
    if (::write(notify, &g, sizeof g) != static_cast<ssize_t>(sizeof g)) ::_exit(3);
  }
}

struct KillResult {
  std::uint32_t last_reported = 0;  // the last save the child reported complete
  bool mid_save = false;            // the child died with its temp file open
  int status = 0;
};

// Forks a saver, waits until it has finished at least one save and has created the
// temp file of the next one, and SIGKILLs it.
KillResult kill_a_saver(const std::string& path) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    save_forever(path, fds[1]);
  }
  ::close(fds[1]);
  ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
  const std::string tmp = fmt::format("{}.tmp.{}", path, pid);
  KillResult r;
  const auto drain = [&] {
    std::uint32_t g = 0;
    while (::read(fds[0], &g, sizeof g) == static_cast<ssize_t>(sizeof g)) r.last_reported = g;
  };
  for (;;) {
    drain();
    if (r.last_reported >= 1 && fs::exists(tmp)) {
      ::kill(pid, SIGKILL);
      break;
    }
    if (::waitpid(pid, &r.status, WNOHANG) == pid) {  // the child died on its own
      ::close(fds[0]);
      return r;
    }
  }
  ::waitpid(pid, &r.status, 0);
  drain();
  ::close(fds[0]);
  r.mid_save = fs::exists(tmp);  // still there: the rename never happened
  if (r.mid_save) fs::remove(tmp);
  return r;
}

TEST(CheckpointFaults, SigkillInTheMiddleOfASaveLeavesThePreviousCheckpointIntact) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  int mid_save_kills = 0;
  // The kill lands while the temp file exists; it may still lose the race with the
  // rename, so try until a few kills have hit a save in the middle.
  for (int attempt = 0; attempt < 40 && mid_save_kills < 3; ++attempt) {
    SCOPED_TRACE(fmt::format("attempt {}", attempt));
    const KillResult r = kill_a_saver(path);
    ASSERT_TRUE(WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGKILL)
        << "the saver was not killed by us: status " << r.status;
    mid_save_kills += r.mid_save;

    // Whatever the moment of the kill, the file is one whole generation, at least the
    // last one reported (it may be the next one if the kill fell between the rename
    // and the report).
    std::string tag;
    std::vector<nn::NamedTensor> loaded;
    ASSERT_NO_THROW(loaded = nn::load_checkpoint(path, &tag));
    EXPECT_EQ(tag, kTag);
    ASSERT_EQ(loaded.size(), 2u);
    const float g = loaded[1].value(0);
    EXPECT_GE(g, static_cast<float>(r.last_reported));
    EXPECT_LE(g, static_cast<float>(r.last_reported + 1));
    for (const nn::NamedTensor& t : loaded)
      for (float v : t.value) ASSERT_EQ(v, g) << "tensor " << t.name << " mixes generations";
  }
  EXPECT_GE(mid_save_kills, 3) << "no SIGKILL landed in the middle of a save; the test proved nothing";
}

// SIGTERM (or SIGINT) in the middle of a save, with the handler train_cnn installs:
// nn::remove_partial_file() removes the temp file of the save in progress, then the
// process exits with 128 + the signal. No temp file is left, and the checkpoint is the
// previous whole generation.
int g_notify_fd = -1;

extern "C" void on_term(int sig) {
  const std::uint32_t removed = nn::remove_partial_file() ? 0xFFFFFFFFu : 0xFFFFFFFEu;
  const ssize_t ignored = ::write(g_notify_fd, &removed, sizeof removed);
  (void)ignored;
  ::_exit(128 + sig);
}

TEST(CheckpointFaults, SigtermInTheMiddleOfASaveRemovesTheTempFile) {
  TempDir dir;
  const std::string path = dir.file("model.ckpt");
  int abandoned = 0;
  for (int attempt = 0; attempt < 40 && abandoned < 3; ++attempt) {
    SCOPED_TRACE(fmt::format("attempt {}", attempt));
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(fds[0]);
      g_notify_fd = fds[1];
      struct sigaction sa {};
      sa.sa_handler = on_term;
      ::sigaction(SIGTERM, &sa, nullptr);
      save_forever(path, fds[1]);
    }
    ::close(fds[1]);
    const std::string tmp = fmt::format("{}.tmp.{}", path, pid);
    std::uint32_t last = 0, g = 0;
    bool sent = false;
    ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
    while (!sent) {
      while (::read(fds[0], &g, sizeof g) == static_cast<ssize_t>(sizeof g)) last = g;
      if (last >= 1 && fs::exists(tmp)) ::kill(pid, SIGTERM), sent = true;
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ::fcntl(fds[0], F_SETFL, 0);
    std::uint32_t removed = 0;
    while (::read(fds[0], &g, sizeof g) == static_cast<ssize_t>(sizeof g)) {
      if (g >= 0xFFFFFFFEu) removed = g;
      else last = g;
    }
    ::close(fds[0]);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGTERM) << "status " << status;
    ASSERT_NE(removed, 0u) << "the handler did not run";
    abandoned += removed == 0xFFFFFFFFu;
    EXPECT_FALSE(fs::exists(tmp)) << "the temp file of the interrupted save was left behind";
    std::vector<nn::NamedTensor> loaded;
    ASSERT_NO_THROW(loaded = nn::load_checkpoint(path));
    const float gen = loaded[1].value(0);
    EXPECT_GE(gen, static_cast<float>(last));
    EXPECT_LE(gen, static_cast<float>(last + 1));
  }
  EXPECT_GE(abandoned, 3) << "no SIGTERM landed in the middle of a save; the test proved nothing";
}

}  // namespace

}  // namespace test_checkpoint_kill
