// Serial time of a program's OpenMP code: an LD_PRELOAD library that wraps libgomp's
// entry to a parallel region and measures the wall time between one region's end and
// the next one's start (bench/README.md, "Serial time"). That time runs on one thread
// whatever the team, so it bounds the speed-up of more threads (Amdahl: a step whose
// share s is serial at one thread speeds up at most 1 / (s + (1 - s) / t) on t).
//
//   LD_PRELOAD=build/bench/bench/libserial_time.so AD_SERIAL_TIME_OUT=gaps.txt
//       build/bench/bench/bench_ours --mode train --threads 2 --blocks 1 --steps 300
//   (one command line)
//   bench/serial_time.sh gaps.txt build/bench/bench/bench_ours 305   # per site, per step
//
// Measured from the first region's start to the last one's end (the program's start-up,
// data loading included, is before it). Every gap is charged to the call site of the
// region that ends it: the module and the offset of the return address of
// GOMP_parallel, which addr2line names. Only the thread that opens regions is
// measured (the program's main thread; nested regions are not expected).
#include <dlfcn.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace {

using Clock = std::chrono::steady_clock;

struct Site {
  void* where = nullptr;
  long calls = 0;
  double gap = 0, inside = 0;  // seconds
};

constexpr int kSites = 512;
Site sites[kSites];
int num_sites = 0;
long regions = 0;
bool started = false;
Clock::time_point first, last_end;

Site& site(void* where) {
  for (int i = 0; i < num_sites; ++i)
    if (sites[i].where == where) return sites[i];
  if (num_sites == kSites) return sites[kSites - 1];  // the rest pooled into the last
  sites[num_sites].where = where;
  return sites[num_sites++];
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Times one region: fn runs it.
template <class F>
void timed(void* where, F fn) {
  const Clock::time_point t0 = Clock::now();
  fn();
  const Clock::time_point t1 = Clock::now();
  Site& s = site(where);
  if (started) s.gap += seconds(t0 - last_end);
  else first = t0, started = true;
  s.inside += seconds(t1 - t0);
  ++s.calls, ++regions;
  last_end = t1;
}

struct Report {
  ~Report() {
    if (!started) return;
    const char* path = std::getenv("AD_SERIAL_TIME_OUT");
    FILE* f = path ? std::fopen(path, "w") : stderr;
    if (!f) return;
    double gaps = 0;
    for (int i = 0; i < num_sites; ++i) gaps += sites[i].gap;
    const double span = seconds(last_end - first);
    std::fprintf(f, "serial_time regions %ld span %.6f serial %.6f share %.4f\n", regions, span, gaps,
                 span > 0 ? gaps / span : 0.0);
    for (int i = 0; i < num_sites; ++i) {
      Dl_info d{};
      const bool named = dladdr(sites[i].where, &d) && d.dli_fname;
      const auto off = named ? static_cast<const char*>(sites[i].where) - static_cast<const char*>(d.dli_fbase) : 0;
      std::fprintf(f, "site %s 0x%lx calls %ld gap %.6f inside %.6f\n", named ? d.dli_fname : "?",
                   static_cast<unsigned long>(off), sites[i].calls, sites[i].gap, sites[i].inside);
    }
    if (f != stderr) std::fclose(f);
  }
} report;

template <class Fn>
Fn next(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
}

}  // namespace

// libgomp's entry points for `#pragma omp parallel` (GCC) and the combined
// parallel-loop forms of the other schedules.
extern "C" {

void GOMP_parallel(void (*fn)(void*), void* data, unsigned threads, unsigned flags) {
  using Real = void (*)(void (*)(void*), void*, unsigned, unsigned);
  static const Real real = next<Real>("GOMP_parallel");
  timed(__builtin_return_address(0), [&] { real(fn, data, threads, flags); });
}

#define AD_WRAP_LOOP(name)                                                                                   \
  void name(void (*fn)(void*), void* data, unsigned threads, long start, long end, long incr, long chunk,    \
            unsigned flags) {                                                                                \
    using Real = void (*)(void (*)(void*), void*, unsigned, long, long, long, long, unsigned);               \
    static const Real real = next<Real>(#name);                                                              \
    timed(__builtin_return_address(0), [&] { real(fn, data, threads, start, end, incr, chunk, flags); }); \
  }
AD_WRAP_LOOP(GOMP_parallel_loop_static)
AD_WRAP_LOOP(GOMP_parallel_loop_dynamic)
AD_WRAP_LOOP(GOMP_parallel_loop_guided)
#undef AD_WRAP_LOOP

}  // extern "C"
