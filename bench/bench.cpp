// The benchmark driver behind `./run.sh bench`: ref-CNN in our engine against the
// identical model in LibTorch and in oneDNN, on this machine, in one run.
//
// Engines (a column each; one is left out when its child was not built):
//   ours             bench_ours
//   libtorch         bench_torch, glibc malloc as it comes
//   libtorch+malloc  bench_torch with MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ and
//                    MALLOC_TOP_PAD_ set (kMallocEnv): LibTorch allocates its activations
//                    afresh every step, and with glibc's defaults these large blocks go
//                    back to the kernel when freed, so every step page-faults them in
//                    again (measured: 1,500 minor faults a step at inference, batch 64);
//                    with the settings they stay in the heap. Its best case, as its own column.
//   onednn           bench_onednn (libdnnl-dev): ref-CNN written directly against oneDNN
//
// Every measurement runs in a child process of its own, so the peak RSS that wait4()
// reports belongs to one engine in one configuration. Repetitions rotate which engine
// runs first; every engine gets the same thread count and OPENBLAS_NUM_THREADS=1. The
// table gives medians over every timed block of every repetition and, per row, ours
// divided by the best other engine. Per-op times come from bench_ops (Google
// Benchmark, random interleaving; ours against the ATen kernels LibTorch calls).
//
//   bench [--reps N] [--threads 1,2,...] [--data DIR] [--ops-threads N] [--no-ops]
//         [--quick] [--omp-passive] [--engines ours,libtorch,libtorch+malloc,onednn]
//
// --threads: the thread counts measured (default 1,2); train and inference at batch 64
// and 1000 at each, then a scaling table. The last three lines compare at 2 threads.
// --omp-passive runs every engine with OMP_WAIT_POLICY=passive. On a machine whose
// cores are busy with other work, OpenMP's default spin-waiting at the end of every
// parallel loop burns the time slice the other thread needs, and 2-thread figures
// of every engine collapse (measured here: ours 4170 img/s passive, 595 spinning, with
// two compilers running); on a quiet machine keep the default.
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <latch>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.hpp"

extern char** environ;

namespace {

struct ChildResult {
  std::vector<double> blocks;       // images per second, one per timed block
  std::vector<double> bookkeeping;  // fractions of a step, one per paired step
  std::vector<double> zeroing;      // fractions of a step, one per paired step
  std::vector<std::string> checks;  // "check ..." lines (bench_onednn against ours)
  double loss = 0;
  double peak_rss_mb = 0;
};

// An engine: a column of the table.
struct Engine {
  std::string name;  // column label
  std::string exe;   // child executable, next to this one
  std::vector<std::string> env;  // added to the child's environment
};

// glibc keeps freed blocks up to 256 MiB in the heap instead of unmapping them, does not
// trim the heap below that, and grows it 64 MiB at a time: LibTorch's per-step
// activations then reuse the same pages.
const std::vector<std::string> kMallocEnv = {"MALLOC_MMAP_THRESHOLD_=268435456", "MALLOC_TRIM_THRESHOLD_=268435456",
                                             "MALLOC_TOP_PAD_=67108864"};

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

// The machine's own scaling ceiling. A VM's "cores" may be hyperthreads of one physical
// core, or share it with other guests; then no program scales by the thread count, and
// an engine's scaling means something only next to what the machine gives. Each thread
// runs the same register-only loop (12 independent multiply-add chains on 8-float
// vectors: no memory traffic, no synchronisation); throughput at each thread count over
// the throughput at the first (the base; one thread in the default table). `lockstep`: all threads' work over the slowest thread's time, what a
// program that splits its work evenly and waits at a barrier can reach; `balanced`: the
// sum of the threads' own rates, what perfect load balancing could reach.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
__attribute__((target_clones("avx2", "default")))
#endif
float fma_loop(long iters, float mul, float add) {
  using V = float __attribute__((vector_size(32)));
  constexpr int kChains = 12;  // with m and c, 14 of AVX2's 16 vector registers
  V a[kChains];
  const V m = V{} + mul, c = V{} + add;
  for (int k = 0; k < kChains; ++k) a[k] = V{} + (1.0f + static_cast<float>(k) * 1e-3f);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int k = 0; k < kChains; ++k) a[k] = a[k] * m + c;
  }
  float s = 0;
  for (int k = 0; k < kChains; ++k)
    for (int l = 0; l < 8; ++l) s += a[k][l];
  return s;
}
// fma_loop's factors, read at run time: with them as constants GCC removed the loop.
volatile float g_fma_mul = 0.9999999f, g_fma_add = 1e-7f;
float fma_loop(long iters) { return fma_loop(iters, g_fma_mul, g_fma_add); }

struct MachineScaling {
  double lockstep = 0, balanced = 0;  // throughput at t threads over the base's
};

// One measurement at each of `threads` (the first is the base); `iters` per thread.
std::vector<MachineScaling> machine_scaling(const std::vector<int>& threads, long iters) {
  std::vector<std::pair<double, double>> rate;  // (lockstep, balanced) iterations per second
  for (const int t : threads) {
    std::vector<double> secs(static_cast<std::size_t>(t));
    std::vector<float> sink(static_cast<std::size_t>(t));
    std::latch start(t);
    std::vector<std::thread> team;
    for (int i = 0; i < t; ++i)
      team.emplace_back([&, i] {
        start.arrive_and_wait();
        const auto t0 = std::chrono::steady_clock::now();
        sink[static_cast<std::size_t>(i)] = fma_loop(iters);
        secs[static_cast<std::size_t>(i)] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      });
    for (std::thread& th : team) th.join();
    double slowest = 0, sum = 0;
    for (const double s : secs) slowest = std::max(slowest, s), sum += static_cast<double>(iters) / s;
    rate.emplace_back(static_cast<double>(t) * static_cast<double>(iters) / slowest, sum);
  }
  std::vector<MachineScaling> out;
  for (const auto& [l, b] : rate) out.push_back({l / rate[0].first, b / rate[0].first});
  return out;
}

// Iterations of fma_loop that take about `seconds` on one thread.
long fma_iters_for(double seconds) {
  long n = 1 << 16;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile float s = fma_loop(n);
    (void)s;
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt > 0.05) return static_cast<long>(static_cast<double>(n) * seconds / dt);
    if (n > (1L << 40)) throw std::runtime_error("machine_scaling: the FMA loop takes no time (compiled away?)");
    n *= 4;
  }
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
std::string run_child(const std::vector<std::string>& args, double& peak_rss_mb, bool quiet = false,
                      const std::vector<std::string>& extra_env = {}) {
  std::vector<std::string> env_store;
  auto overridden = [&](const char* e) {
    if (std::strncmp(e, "OPENBLAS_NUM_THREADS=", 21) == 0 || std::strncmp(e, "OMP_WAIT_POLICY=", 16) == 0) return true;
    for (const std::string& x : extra_env)
      if (std::strncmp(e, x.c_str(), x.find('=') + 1) == 0) return true;
    return false;
  };
  for (char** e = environ; *e; ++e)
    if (!overridden(*e)) env_store.emplace_back(*e);
  env_store.insert(env_store.end(), extra_env.begin(), extra_env.end());
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

ChildResult run_engine(const Engine& e, const std::vector<std::string>& flags) {
  std::vector<std::string> args{g_dir + "/" + e.exe};
  args.insert(args.end(), flags.begin(), flags.end());
  ChildResult r;
  std::istringstream in(run_child(args, r.peak_rss_mb, false, e.env));
  for (std::string line; std::getline(in, line);) {
    std::istringstream ls(line);
    std::string key;
    double v = 0;
    ls >> key;
    if (key == "check") {
      r.checks.push_back(line.substr(6));
      continue;
    }
    if (!(ls >> v)) continue;
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
  std::string mode;                     // train | infer
  int threads = 1;
  int batch = 64;
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

std::vector<int> parse_int_list(const std::string& v) {
  std::vector<int> out;
  std::stringstream ss(v);
  for (std::string cell; std::getline(ss, cell, ',');) {
    const int n = std::stoi(cell);
    if (n < 1) throw std::invalid_argument("thread counts must be >= 1");
    out.push_back(n);
  }
  if (out.empty()) throw std::invalid_argument("empty thread list");
  return out;
}

int main(int argc, char** argv) {
  int reps = 5, ops_threads = 1;
  bool ops = true, quick = false;
  std::vector<int> threads{1, 2};
  std::string data = nn::kDefaultFashionMnistDir, engine_list = "ours,libtorch,libtorch+malloc,onednn";
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument("missing value after " + a);
        return argv[++i];
      };
      if (a == "--reps") reps = std::stoi(value());
      else if (a == "--threads") threads = parse_int_list(value());
      else if (a == "--data") data = value();
      else if (a == "--ops-threads") ops_threads = std::stoi(value());
      else if (a == "--no-ops") ops = false;
      else if (a == "--quick") quick = true, reps = 1;
      else if (a == "--omp-passive") g_passive = true;
      else if (a == "--engines") engine_list = value();
      else throw std::invalid_argument("unknown flag " + a);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr,
                 "bench: %s\nusage: bench [--reps N] [--threads 1,2,...] [--data DIR] [--ops-threads N] [--no-ops] "
                 "[--quick] [--omp-passive] [--engines ours,libtorch,libtorch+malloc,onednn]\n",
                 e.what());
    return 2;
  }
  g_dir = exe_dir();
  const double idle_before = idle_share(2.0);

  std::vector<Engine> engines;
  for (const Engine& e : {Engine{"ours", "bench_ours", {}}, Engine{"libtorch", "bench_torch", {}},
                          Engine{"libtorch+malloc", "bench_torch", kMallocEnv}, Engine{"onednn", "bench_onednn", {}}}) {
    if (("," + engine_list + ",").find("," + e.name + ",") == std::string::npos) continue;
    if (!exists(g_dir + "/" + e.exe)) {
      std::fprintf(stderr, "bench: %s not built (its library is not installed); no %s column\n", e.exe.c_str(),
                   e.name.c_str());
      continue;
    }
    engines.push_back(e);
  }
  if (engines.empty() || engines[0].name != "ours") {
    std::fprintf(stderr, "bench: --engines must include ours\n");
    return 2;
  }

  std::vector<Config> configs;
  for (const int t : threads) {
    const std::string ts = std::to_string(t), thr = t == 1 ? " thread" : " threads";
    configs.push_back({"train img/s, " + ts + thr,
                       {"--mode", "train", "--threads", ts, "--batch", "64", "--steps", quick ? "8" : "20"},
                       {"--bookkeeping-pairs", t > 2 ? "0" : quick ? "4" : "60"},
                       "train", t, 64});
    configs.push_back({"inference img/s, batch 64, " + ts + thr,
                       {"--mode", "infer", "--threads", ts, "--batch", "64", "--steps", quick ? "16" : "40"},
                       {}, "infer", t, 64});
    configs.push_back({"inference img/s, batch 1000, " + ts + thr,
                       {"--mode", "infer", "--threads", ts, "--batch", "1000", "--steps", quick ? "2" : "4",
                        "--blocks", "3"},
                       {}, "infer", t, 1000});
  }
  const std::vector<std::string> common{"--data", data};

  // results[engine][config]
  std::map<std::string, std::map<std::string, Collected>> results;
  std::vector<std::string> checks;
  // The machine's scaling ceiling (machine_scaling), measured just before every
  // configuration above the first thread count, at that count against the first: a
  // shared host's speed drifts within minutes (measured here: the FMA loop's 2-thread
  // scaling 1.9x in one minute, 0.6x in another), so it is sampled where and when the
  // engines' figures are.
  long fma_iters = 0;
  std::map<int, std::vector<MachineScaling>> machine;  // by thread count: the samples
  try {
    if (threads.size() > 1) fma_iters = fma_iters_for(quick ? 0.05 : 0.1);
    for (int r = 0; r < reps; ++r) {
      for (const Config& c : configs) {
        if (fma_iters > 0 && c.threads != threads[0]) {
          const MachineScaling m = machine_scaling({threads[0], c.threads}, fma_iters)[1];
          machine[c.threads].push_back(m);
          std::fprintf(stderr, "rep %d/%d  machine scaling (FMA loop), %d threads over %d: lockstep %.2fx, balanced %.2fx\n",
                       r + 1, reps, c.threads, threads[0], m.lockstep, m.balanced);
        }
        std::vector<std::string> f = c.flags;
        f.insert(f.end(), common.begin(), common.end());
        for (std::size_t k = 0; k < engines.size(); ++k) {
          const Engine& e = engines[(k + static_cast<std::size_t>(r)) % engines.size()];  // rotate who goes first
          std::vector<std::string> fe = f;
          if (e.name == "ours") fe.insert(fe.end(), c.ours_extra.begin(), c.ours_extra.end());
          const ChildResult res = run_engine(e, fe);
          Collected& col = results[e.name][c.name];
          col.blocks.insert(col.blocks.end(), res.blocks.begin(), res.blocks.end());
          col.bookkeeping.insert(col.bookkeeping.end(), res.bookkeeping.begin(), res.bookkeeping.end());
          col.zeroing.insert(col.zeroing.end(), res.zeroing.begin(), res.zeroing.end());
          col.rss.push_back(res.peak_rss_mb);
          if (checks.empty() && !res.checks.empty()) checks = res.checks;
          std::fprintf(stderr, "rep %d/%d  %-40s %-16s %9.0f img/s  rss %6.1f MB  loss %.4f\n", r + 1, reps,
                       c.name.c_str(), e.name.c_str(), bench::median(res.blocks), res.peak_rss_mb, res.loss);
        }
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: %s\n", e.what());
    return 1;
  }
  std::map<std::string, double> op_times;
  const bool have_ops = ops && exists(g_dir + "/bench_ops");
  if (have_ops) {
    std::fprintf(stderr, "per-op benchmark (%d thread%s)...\n", ops_threads, ops_threads == 1 ? "" : "s");
    try {
      op_times = run_ops(ops_threads, quick ? 3 : 5, quick);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench: %s\n", e.what());
      return 1;
    }
  }

  // ---- the table ----
  auto med = [](const std::vector<double>& v) { return bench::median(v); };
  auto cell = [&](const std::string& engine, const std::string& config, bool rss) -> std::optional<double> {
    const auto e = results.find(engine);
    if (e == results.end()) return std::nullopt;
    const auto c = e->second.find(config);
    if (c == e->second.end()) return std::nullopt;
    return med(rss ? c->second.rss : c->second.blocks);
  };
  // ours / the best other engine (highest img/s, or lowest when lower_better), and its name
  auto vs_best = [&](const std::vector<std::optional<double>>& v, bool lower_better) -> std::string {
    std::optional<double> best;
    std::size_t who = 0;
    for (std::size_t k = 1; k < v.size(); ++k)
      if (v[k] && *v[k] > 0 && (!best || (lower_better ? *v[k] < *best : *v[k] > *best))) best = v[k], who = k;
    if (!v[0] || !best) return "-";
    return fmt_num(*v[0] / *best, 2) + " " + engines[who].name;
  };
  auto print_row = [&](const std::string& name, const std::vector<std::optional<double>>& v, int prec,
                       bool lower_better) {
    std::printf("| %-40s |", name.c_str());
    for (const auto& x : v) std::printf(" %15s |", x ? fmt_num(*x, prec).c_str() : "-");
    std::printf(" %-22s |%s\n", vs_best(v, lower_better).c_str(), lower_better ? " lower is better" : "");
  };
  std::printf("\nref-CNN, float32, SGD, Fashion-MNIST; %d repetition%s, engine order rotated; medians\n", reps,
              reps == 1 ? "" : "s");
  std::printf("CPUs %.0f%% idle in the 2 s before the run%s%s\n", 100.0 * idle_before,
              g_passive ? "; OMP_WAIT_POLICY=passive" : "",
              idle_before >= 0 && idle_before < 0.9 ? "; WARNING: other work is running, figures above 1 thread are unreliable"
                                                    : "");
  std::printf("libtorch+malloc: LibTorch with");
  for (const std::string& m : kMallocEnv) std::printf(" %s", m.c_str());
  std::printf("\n| %-40s |", "");
  for (const Engine& e : engines) std::printf(" %15s |", e.name.c_str());
  std::printf(" %-22s |\n|%s|", "ours / best other", std::string(42, '-').c_str());
  for (std::size_t k = 0; k < engines.size(); ++k) std::printf("%s|", std::string(17, '-').c_str());
  std::printf("%s|\n", std::string(24, '-').c_str());
  auto row_of = [&](const std::string& config, bool rss) {
    std::vector<std::optional<double>> v;
    for (const Engine& e : engines) v.push_back(cell(e.name, config, rss));
    return v;
  };
  for (const Config& c : configs) print_row(c.name, row_of(c.name, false), 0, false);
  for (const Config& c : configs)
    if (c.threads == threads.back() && (c.mode == "train" || c.batch == 1000))
      print_row("peak RSS MB, " + std::string(c.mode == "train" ? "train" : "inference b1000") + ", " +
                    std::to_string(c.threads) + " thr",
                row_of(c.name, true), 1, true);
  if (have_ops) {
    static const char* kOps[] = {"conv1_forward", "conv1_vjp",  "relu1_forward", "relu1_vjp",
                                 "pool1_forward", "pool1_vjp",  "conv2_forward", "conv2_vjp",
                                 "relu2_forward", "relu2_vjp",  "pool2_forward", "pool2_vjp",
                                 "linear_forward", "linear_vjp", "softmax_ce_forward", "softmax_ce_vjp"};
    for (const char* op : kOps) {
      const auto a = op_times.find(std::string(op) + "/ours");
      const auto b = op_times.find(std::string(op) + "/libtorch");
      if (a == op_times.end()) continue;
      std::vector<std::optional<double>> v(engines.size());
      v[0] = a->second;
      for (std::size_t k = 1; k < engines.size(); ++k)
        if (engines[k].name == "libtorch" && b != op_times.end()) v[k] = b->second;
      print_row(std::string(op) + " us (" + std::to_string(ops_threads) + " thr)", v, 1, true);
    }
  }

  // Scaling: img/s at each thread count over the same engine at the first count.
  if (threads.size() > 1) {
    for (const char* what : {"train", "inference img/s, batch 64"}) {
      std::printf("\nscaling, %s (img/s, and x over %d thread%s):\n| %-16s |", what, threads[0],
                  threads[0] == 1 ? "" : "s", "engine");
      for (const int t : threads) std::printf(" %8d thr |", t);
      std::printf("\n");
      for (const Engine& e : engines) {
        std::printf("| %-16s |", e.name.c_str());
        std::optional<double> base;
        for (const Config& c : configs) {
          if (c.name.rfind(what, 0) != 0 || c.batch != 64) continue;
          const auto v = cell(e.name, c.name, false);
          if (!base) base = v;
          if (v && base && *base > 0) std::printf(" %6.0f %4.2fx |", *v, *v / *base);
          else std::printf(" %13s |", "-");
        }
        std::printf("\n");
      }
      for (const bool lockstep : {true, false}) {
        std::printf("| %-16s |", lockstep ? "machine lockstep" : "machine balanced");
        for (const int t : threads) {
          std::vector<double> v;
          for (const MachineScaling& m : machine[t]) v.push_back(lockstep ? m.lockstep : m.balanced);
          std::printf(" %6s %4.2fx |", "", t == threads[0] ? 1.0 : med(v));
        }
        std::printf("\n");
      }
    }
    std::printf("machine: the same register-only FMA loop on every thread (bench.cpp, machine_scaling), its\n"
                "throughput over %d thread%s, sampled before each configuration at that thread count; lockstep:\n"
                "all work over the slowest thread's time (an even split with barriers can reach no more),\n"
                "balanced: the threads' rates summed (perfect balancing)\n",
                threads[0], threads[0] == 1 ? "" : "s");
  }

  if (!checks.empty()) {
    std::printf("\nonednn against ours, first training batch, same initial parameters (max |diff| / max |ours|):\n ");
    bool ok = true;
    for (const std::string& c : checks) {
      std::istringstream in(c);
      std::string name;
      double a = 0, b = 0;
      in >> name >> a >> b;
      const double rel = name == "loss" ? std::fabs(a - b) / std::max(std::fabs(a), 1e-30) : a / std::max(b, 1e-30);
      ok = ok && rel <= 1e-4;
      if (name == "loss") std::printf(" loss %.6f vs %.6f (%.1e)", a, b, rel);
      else std::printf(", %s %.1e", name.c_str(), rel);
    }
    std::printf("\n  %s\n", ok ? "all within 1e-4: the engines compute the same step"
                              : "WARNING: above 1e-4, the oneDNN engine does not compute our step");
  }

  const std::string train2 = "train img/s, 2 threads", infer2 = "inference img/s, batch 64, 2 threads";
  std::printf("\nbookkeeping (tape recording + backward dispatch) share of a train step: %.1f%% at 1 thread, "
              "%.1f%% at 2 threads\n",
              100.0 * med(results["ours"]["train img/s, 1 thread"].bookkeeping),
              100.0 * med(results["ours"][train2].bookkeeping));
  std::printf("gradient zeroing (the tape zeroes each gradient buffer, VJPs add into it) share of a train step: "
              "%.1f%% at 1 thread, %.1f%% at 2 threads\n",
              100.0 * med(results["ours"]["train img/s, 1 thread"].zeroing), 100.0 * med(results["ours"][train2].zeroing));
  auto ratio_line = [&](const char* label, const std::string& config, std::vector<std::string> others) {
    const auto ours = cell("ours", config, false);
    std::optional<double> best;
    for (const std::string& o : others)
      if (const auto v = cell(o, config, false); v && (!best || *v > *best)) best = v;
    if (ours && best && *best > 0) std::printf("%s: %.2f\n", label, *ours / *best);
    else std::printf("%s: n/a (not measured)\n", label);
  };
  ratio_line("train ratio vs libtorch (2 threads)", train2, {"libtorch", "libtorch+malloc"});
  ratio_line("train ratio vs onednn (2 threads)", train2, {"onednn"});
  ratio_line("inference ratio vs onednn (batch 64, 2 threads)", infer2, {"onednn"});
  return 0;
}
