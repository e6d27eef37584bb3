// bench_mpi: data-parallel training of the ref-CNN (float32, SGD) on Fashion-MNIST,
// one line per way of averaging the gradients, run by bench/bench_mpi.sh under mpirun
// (`./run.sh bench --mpi`). Method and figures: bench/README.md, "Data-parallel".
//
//   mpirun -np P bench_mpi [--data DIR] [--batch B] [--steps S] [--warmup W] [--threads T]
//
// For each mode (1 MB buckets, 16 KB buckets, one blocking allreduce after backward):
// W warm-up steps, then S timed steps of the global batch B (B/P per rank). Printed by
// rank 0: images/s (S*B over the slowest rank's time), per step the whole step,
// backward, and the wait for the averaged gradients after backward (rank 0's clock), the
// share of the gradient bytes whose reduction had completed by the end of backward
// (hidden), and the allreduce of the step's gradients timed alone. Machine-readable
// "RESULT" lines follow for bench_mpi.sh.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "nn/distributed.hpp"
#include "nn/layers.hpp"

namespace {

struct Args {
  std::string data = nn::kDefaultFashionMnistDir;
  std::size_t batch = 64, steps = 100, warmup = 10;
  int threads = 1;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--data") a.data = v;
    else if (k == "--batch") a.batch = std::stoul(v);
    else if (k == "--steps") a.steps = std::stoul(v);
    else if (k == "--warmup") a.warmup = std::stoul(v);
    else if (k == "--threads") a.threads = std::stoi(v);
    else throw std::invalid_argument("bench_mpi: unknown flag " + k + " (--data --batch --steps --warmup --threads)");
  }
  if (argc % 2 == 0) throw std::invalid_argument("bench_mpi: every flag takes a value");
  return a;
}

double max_over_ranks(double x) {
  MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return x;
}

struct Mode {
  const char* name;
  std::size_t bucket_bytes;
};

}  // namespace

int main(int argc, char** argv) {
  nn::MpiEnvironment mpi(argc, argv);
  try {
    const Args a = parse(argc, argv);
    ad::set_num_threads(a.threads);
    const nn::Dataset train = nn::load_fashion_mnist(a.data, "train");
    const int P = mpi.size();
    const Mode modes[] = {{"buckets-1MB", std::size_t{1} << 20}, {"buckets-16KB", std::size_t{16} << 10}, {"blocking", 0}};
    struct Row {
      std::string mode;
      std::size_t buckets;
      double img_s, step_ms, backward_ms, wait_ms, hidden;  // hidden: share of the gradient bytes
    };
    std::vector<Row> rows;
    std::size_t grad_bytes = 0, n_params = 0;
    for (const Mode& m : modes) {
      nn::Sequential<float> model = nn::make_cnn<float>(nn::CnnConfig{}, 1);
      nn::Sgd<float> opt(model.parameters(), {.lr = 0.05});
      nn::DataParallel<float> dp(model, MPI_COMM_WORLD, {.bucket_bytes = m.bucket_bytes});
      dp.broadcast_state(&opt);
      ad::Tape<float> tape;
      nn::BatchIterator warm(train, a.batch, true, 1, a.warmup * a.batch);
      warm.set_shard(static_cast<std::size_t>(mpi.rank()), static_cast<std::size_t>(P));
      dp.train_epoch(opt, warm, tape);
      dp.reset_stats();
      nn::BatchIterator timed(train, a.batch, true, 2, a.steps * a.batch);
      timed.set_shard(static_cast<std::size_t>(mpi.rank()), static_cast<std::size_t>(P));
      MPI_Barrier(MPI_COMM_WORLD);
      const nn::EpochStats s = dp.train_epoch(opt, timed, tape);
      const double seconds = max_over_ranks(s.seconds);
      const nn::CommStats& c = dp.stats();
      const double steps = static_cast<double>(c.steps);
      rows.push_back({m.name, c.buckets, static_cast<double>(s.images) / seconds, 1e3 * c.step_seconds / steps,
                      1e3 * c.backward_seconds / steps, 1e3 * c.wait_seconds / steps,
                      static_cast<double>(c.hidden_bytes) / (steps * static_cast<double>(c.bytes_per_step))});
      grad_bytes = c.bytes_per_step;
      n_params = grad_bytes / sizeof(float);
    }
    // The step's gradients reduced alone (no compute to hide behind, ranks in step).
    std::vector<float> payload(n_params, 1.0f);
    std::vector<double> times;
    for (int i = 0; i < 40; ++i) {
      MPI_Barrier(MPI_COMM_WORLD);
      const auto t0 = std::chrono::steady_clock::now();
      MPI_Allreduce(MPI_IN_PLACE, payload.data(), static_cast<int>(payload.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      times.push_back(max_over_ranks(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()));
    }
    std::sort(times.begin(), times.end());
    const double allreduce_ms = 1e3 * times[times.size() / 2];

    if (mpi.rank() == 0) {
      const double ring = P > 1 ? 2.0 * (P - 1) / P * static_cast<double>(grad_bytes) : 0.0;
      fmt::print("bench_mpi: {} rank{} x {} thread{}, global batch {} ({} per rank), {} steps after {} warm-up; ref-CNN "
                 "float32, {} parameters, {} B of gradients a step (a ring allreduce sends {:.0f} B per rank)\n",
                 P, P == 1 ? "" : "s", a.threads, a.threads == 1 ? "" : "s", a.batch,
                 P == 1 ? fmt::format("{}", a.batch) : fmt::format("{}-{}", a.batch / P, (a.batch + P - 1) / P), a.steps,
                 a.warmup, n_params, grad_bytes, ring);
      fmt::print("{:<14} {:>7} {:>9} {:>9} {:>12} {:>9} {:>7} {:>8}\n", "mode", "buckets", "img/s", "step ms",
                 "backward ms", "wait ms", "wait %", "hidden");
      for (const Row& r : rows)
        fmt::print("{:<14} {:>7} {:>9.0f} {:>9.2f} {:>12.2f} {:>9.3f} {:>6.1f}% {:>8}\n", r.mode, r.buckets, r.img_s,
                   r.step_ms, r.backward_ms, r.wait_ms, 100.0 * r.wait_ms / r.step_ms,
                   P > 1 ? fmt::format("{:.1f}%", 100.0 * r.hidden) : "-");  // one rank: nothing to hide
      fmt::print("allreduce of the {} B alone (median of 40, slowest rank): {:.3f} ms\n", grad_bytes, allreduce_ms);
      for (const Row& r : rows) {
        fmt::print("RESULT ranks={} threads={} batch={} mode={} buckets={} img_s={:.1f} step_ms={:.3f} backward_ms={:.3f} "
                   "wait_ms={:.4f} allreduce_ms={:.4f} hidden={:.3f} bytes={}\n",
                   P, a.threads, a.batch, r.mode, r.buckets, r.img_s, r.step_ms, r.backward_ms, r.wait_ms, allreduce_ms,
                   r.hidden, grad_bytes);
      }
    }
  } catch (const std::exception& e) {
    nn::abort_job("bench_mpi", e.what());
  }
  return 0;
}
