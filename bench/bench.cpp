// The benchmark driver behind `./run.sh bench`: ref-CNN in our engine against the
// identical model in LibTorch, on this machine, in one run.
//
// Every measurement runs in a child process of its own (bench_ours, bench_torch),
// so the peak RSS that wait4() reports belongs to one engine in one configuration.
// Repetitions alternate A/B (ours first on even repetitions, LibTorch first on odd
// ones), both with the same thread count and OPENBLAS_NUM_THREADS=1. The table
// gives medians over every timed block of every repetition, and ours/LibTorch per
// row. Per-op times come from bench_ops (Google Benchmark, random interleaving).
//
//   bench [--reps N] [--data DIR] [--ops-threads N] [--no-ops] [--quick] [--omp-passive]
//
// --omp-passive runs both engines with OMP_WAIT_POLICY=passive. On a machine whose
// cores are busy with other work, OpenMP's default spin-waiting at the end of every
// parallel loop burns the time slice the other thread needs, and 2-thread figures
// of both engines collapse (measured here: ours 4170 img/s passive, 595 spinning, with
// two compilers running); on a quiet machine keep the default.
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.hpp"

extern char** environ;

namespace {

struct ChildResult {
  std::vector<double> blocks;       // images per second, one per timed block
  std::vector<double> bookkeeping;  // fractions of a step, one per paired step
  std::vector<double> zeroing;      // fractions of a step, one per paired step
  double loss = 0;
  double peak_rss_mb = 0;
};

std::string g_dir;  // where the sibling executables live
bool g_passive = false;

// The share of CPU time the whole machine spent idle over the next `seconds` (from
// /proc/stat; -1 if unreadable). Other work shows up here, without the lag of the load
// average, which still counts a benchmark that has just finished.
double idle_share(double seconds) {
  auto sample = [](unsigned long long& busy, unsigned long long& idle) {
    FILE* f = std::fopen("/proc/stat", "r");
    if (!f) return false;
    unsigned long long v[8] = {};
    const int n = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                              &v[5], &v[6], &v[7]);
    std::fclose(f);
    if (n < 5) return false;
    idle = v[3] + v[4];  // idle + iowait
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    return true;
  };
  unsigned long long b0, i0, b1, i1;
  if (!sample(b0, i0)) return -1;
  usleep(static_cast<useconds_t>(seconds * 1e6));
  if (!sample(b1, i1)) return -1;
  const double busy = static_cast<double>(b1 - b0), idle = static_cast<double>(i1 - i0);
  return busy + idle > 0 ? idle / (busy + idle) : -1;
}

std::string exe_dir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  std::string s(buf, static_cast<std::size_t>(n));
  return s.substr(0, s.rfind('/'));
}

bool exists(const std::string& path) { return access(path.c_str(), X_OK) == 0; }

// Runs `argv` with OPENBLAS_NUM_THREADS=1 added to the environment; returns its
// stdout and its peak RSS. Throws if it fails. quiet: its stderr goes to /dev/null.
std::string run_child(const std::vector<std::string>& args, double& peak_rss_mb, bool quiet = false) {
  std::vector<std::string> env_store;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "OPENBLAS_NUM_THREADS=", 21) != 0 && std::strncmp(*e, "OMP_WAIT_POLICY=", 16) != 0)
      env_store.emplace_back(*e);
  env_store.emplace_back("OPENBLAS_NUM_THREADS=1");
  if (g_passive) env_store.emplace_back("OMP_WAIT_POLICY=passive");
  std::vector<char*> envp, argv;
  for (std::string& s : env_store) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args_store = args;
  for (std::string& s : args_store) argv.push_back(s.data());
  argv.push_back(nullptr);

  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  if (quiet) posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    throw std::runtime_error("cannot start " + args[0] + ": " + std::strerror(rc));
  }
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  int status = 0;
  rusage ru{};
  wait4(pid, &status, 0, &ru);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error(args[0] + " failed (see its message above)");
  peak_rss_mb = static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB
  return out;
}

ChildResult run_engine(const std::string& exe, const std::vector<std::string>& flags) {
  std::vector<std::string> args{g_dir + "/" + exe};
  args.insert(args.end(), flags.begin(), flags.end());
  ChildResult r;
  std::istringstream in(run_child(args, r.peak_rss_mb));
  std::string key;
  double v;
  while (in >> key >> v) {
    if (key == "block") r.blocks.push_back(v);
    else if (key == "bookkeeping") r.bookkeeping.push_back(v);
    else if (key == "zeroing") r.zeroing.push_back(v);
    else if (key == "loss") r.loss = v;
  }
  return r;
}

struct Config {
  std::string name;  // row label
  std::vector<std::string> flags;
  std::vector<std::string> ours_extra;  // flags for bench_ours only
};

struct Collected {
  std::vector<double> blocks, rss, bookkeeping, zeroing;
};

// Per-op medians (microseconds) from bench_ops' CSV output, by benchmark name.
std::map<std::string, double> run_ops(int threads, int reps, bool quick) {
  double rss = 0;
  const std::string out = run_child({g_dir + "/bench_ops", "--threads=" + std::to_string(threads),
                                     "--benchmark_repetitions=" + std::to_string(reps),
                                     "--benchmark_enable_random_interleaving=true",
                                     std::string("--benchmark_min_time=") + (quick ? "0.02" : "0.05"),
                                     "--benchmark_report_aggregates_only=true", "--benchmark_format=csv"},
                                    rss, /*quiet=*/true);
  std::map<std::string, double> med;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    // "conv1_forward/ours/real_time_median",iterations,real_time,cpu_time,time_unit,...
    if (line.empty() || line[0] != '"') continue;
    const std::size_t q = line.find('"', 1);
    const std::string name = line.substr(1, q - 1);
    const std::string suffix = "_median";
    if (name.size() < suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    std::vector<std::string> f;
    std::stringstream ss(line.substr(q + 2));
    for (std::string cell; std::getline(ss, cell, ',');) f.push_back(cell);
    std::string key = name.substr(0, name.size() - suffix.size());
    if (const std::size_t rt = key.find("/real_time"); rt != std::string::npos) key.erase(rt);
    if (f.size() >= 2) med[key] = std::stod(f[1]);
  }
  return med;
}

std::string fmt_num(double v, int prec) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5, ops_threads = 1;
  bool ops = true, quick = false;
  std::string data = nn::kDefaultFashionMnistDir;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench: missing value after %s\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--reps") reps = std::stoi(value());
    else if (a == "--data") data = value();
    else if (a == "--ops-threads") ops_threads = std::stoi(value());
    else if (a == "--no-ops") ops = false;
    else if (a == "--quick") quick = true, reps = 1;
    else if (a == "--omp-passive") g_passive = true;
    else {
      std::fprintf(stderr, "usage: bench [--reps N] [--data DIR] [--ops-threads N] [--no-ops] [--quick] [--omp-passive]\n");
      return 2;
    }
  }
  g_dir = exe_dir();
  const double idle_before = idle_share(2.0);
  const bool torch = exists(g_dir + "/bench_torch");
  const std::string steps = quick ? "8" : "20";

  const std::vector<Config> configs = {
      {"train img/s, 1 thread", {"--mode", "train", "--threads", "1", "--batch", "64", "--steps", steps},
       {"--bookkeeping-pairs", quick ? "4" : "60"}},
      {"train img/s, 2 threads", {"--mode", "train", "--threads", "2", "--batch", "64", "--steps", steps},
       {"--bookkeeping-pairs", quick ? "4" : "60"}},
      {"inference img/s, batch 64, 2 threads",
       {"--mode", "infer", "--threads", "2", "--batch", "64", "--steps", quick ? "16" : "40"}, {}},
      {"inference img/s, batch 1000, 2 threads",
       {"--mode", "infer", "--threads", "2", "--batch", "1000", "--steps", quick ? "2" : "5"}, {}},
  };
  std::vector<std::string> common{"--data", data};

  std::map<std::string, Collected> ours, theirs;
  try {
    for (int r = 0; r < reps; ++r)
      for (const Config& c : configs) {
        std::vector<std::string> f = c.flags;
        f.insert(f.end(), common.begin(), common.end());
        std::vector<std::string> fo = f;
        fo.insert(fo.end(), c.ours_extra.begin(), c.ours_extra.end());
        for (int k = 0; k < 2; ++k) {
          const bool ours_turn = (r + k) % 2 == 0;  // even reps: ours first
          if (!ours_turn && !torch) continue;
          const ChildResult res = ours_turn ? run_engine("bench_ours", fo) : run_engine("bench_torch", f);
          Collected& col = (ours_turn ? ours : theirs)[c.name];
          col.blocks.insert(col.blocks.end(), res.blocks.begin(), res.blocks.end());
          col.bookkeeping.insert(col.bookkeeping.end(), res.bookkeeping.begin(), res.bookkeeping.end());
          col.zeroing.insert(col.zeroing.end(), res.zeroing.begin(), res.zeroing.end());
          col.rss.push_back(res.peak_rss_mb);
          std::fprintf(stderr, "rep %d/%d  %-40s %-9s %9.0f img/s  rss %6.1f MB  loss %.4f\n", r + 1, reps,
                       c.name.c_str(), ours_turn ? "ours" : "libtorch", bench::median(res.blocks),
                       res.peak_rss_mb, res.loss);
        }
      }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: %s\n", e.what());
    return 1;
  }
  std::map<std::string, double> op_times;
  if (ops) {
    std::fprintf(stderr, "per-op benchmark (%d thread%s)...\n", ops_threads, ops_threads == 1 ? "" : "s");
    try {
      op_times = run_ops(ops_threads, quick ? 3 : 5, quick);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench: %s\n", e.what());
      return 1;
    }
  }

  // ---- the table ----
  auto row = [&](const std::string& name, double a, std::optional<double> b, int prec, const char* note) {
    const std::string bs = b ? fmt_num(*b, prec) : "-";
    const std::string ratio = b && *b > 0 ? fmt_num(a / *b, 2) : "-";
    std::printf("| %-44s | %10s | %10s | %6s |%s\n", name.c_str(), fmt_num(a, prec).c_str(), bs.c_str(),
                ratio.c_str(), note);
  };
  std::printf("\nref-CNN, float32, batch 64, SGD, Fashion-MNIST; %d repetition%s, A/B alternating; medians\n", reps,
              reps == 1 ? "" : "s");
  std::printf("CPUs %.0f%% idle in the 2 s before the run%s%s\n", 100.0 * idle_before,
              g_passive ? "; OMP_WAIT_POLICY=passive" : "",
              idle_before >= 0 && idle_before < 0.9 ? "; WARNING: other work is running, 2-thread figures are unreliable"
                                                    : "");
  std::printf("| %-44s | %10s | %10s | %6s |\n", "", "ours", "libtorch", "ratio");
  std::printf("|%s|%s|%s|%s|\n", std::string(46, '-').c_str(), std::string(12, '-').c_str(),
              std::string(12, '-').c_str(), std::string(8, '-').c_str());
  auto med = [](const std::vector<double>& v) { return bench::median(v); };
  auto theirs_med = [&](const std::string& n, bool rss) -> std::optional<double> {
    if (!torch) return std::nullopt;
    return med(rss ? theirs[n].rss : theirs[n].blocks);
  };
  for (const Config& c : configs) row(c.name, med(ours[c.name].blocks), theirs_med(c.name, false), 0, "");
  row("peak RSS MB, train 2 threads", med(ours[configs[1].name].rss), theirs_med(configs[1].name, true), 1,
      " lower is better");
  row("peak RSS MB, inference batch 1000", med(ours[configs[3].name].rss), theirs_med(configs[3].name, true), 1,
      " lower is better");
  if (ops) {
    static const char* kOps[] = {"conv1_forward", "conv1_vjp",  "relu1_forward", "relu1_vjp",
                                 "pool1_forward", "pool1_vjp",  "conv2_forward", "conv2_vjp",
                                 "relu2_forward", "relu2_vjp",  "pool2_forward", "pool2_vjp",
                                 "linear_forward", "linear_vjp", "softmax_ce_forward", "softmax_ce_vjp"};
    for (const char* op : kOps) {
      const auto a = op_times.find(std::string(op) + "/ours");
      const auto b = op_times.find(std::string(op) + "/libtorch");
      if (a == op_times.end()) continue;
      row(std::string(op) + " us (" + std::to_string(ops_threads) + " thr)", a->second,
          b == op_times.end() ? std::nullopt : std::optional<double>(b->second), 1, " lower is better");
    }
  }
  std::printf("\nbookkeeping (tape recording + backward dispatch) share of a train step: %.1f%% at 1 thread, "
              "%.1f%% at 2 threads\n",
              100.0 * med(ours[configs[0].name].bookkeeping), 100.0 * med(ours[configs[1].name].bookkeeping));
  std::printf("gradient zeroing (the tape zeroes each gradient buffer, VJPs add into it) share of a train step: "
              "%.1f%% at 1 thread, %.1f%% at 2 threads\n",
              100.0 * med(ours[configs[0].name].zeroing), 100.0 * med(ours[configs[1].name].zeroing));
  if (torch)
    std::printf("train ratio vs libtorch (2 threads): %.2f\n",
                med(ours[configs[1].name].blocks) / med(theirs[configs[1].name].blocks));
  else
    std::printf("train ratio vs libtorch (2 threads): n/a (LibTorch not installed)\n");
  return 0;
}
