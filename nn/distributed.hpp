// Data-parallel training over MPI (README, "Distributed training"), as PyTorch's
// DistributedDataParallel and Horovod do it: the same model on every process (rank),
// each rank on its own shard of every batch, gradients averaged across ranks before
// every optimizer step. P ranks with the global batch B compute what one process
// computes with batch B, up to the order of floating-point sums.
//
//   nn::MpiEnvironment mpi(argc, argv);                 // MPI_Init_thread ... MPI_Finalize
//   nn::DataParallel<float> dp(model);                  // MPI_COMM_WORLD, 1 MB buckets
//   dp.check_same_config({{"batch", "64"}, ...});       // refuses ranks started differently
//   dp.broadcast_state(&opt);                           // rank 0's weights on every rank
//   batches.set_shard(dp.rank(), dp.size());            // rows [r*B/P, (r+1)*B/P) of each batch
//   const nn::Dataset test_shard = nn::shard_of(test, dp.rank(), dp.size());
//   for (int e = 0; e < epochs; ++e) {
//     batches.start_epoch(e);
//     dp.train_epoch(opt, batches, tape);               // the same update on every rank
//     nn::EpochStats te = dp.evaluate(test_shard, 250, tape);  // the whole test set's figures
//   }
//
// Averaging. Rank r's loss is the mean over its n_r images, so its gradient is scaled
// by n_r / B before the sum over ranks (MPI_SUM): the result is the gradient of the
// mean over the B images of the global batch, also when B does not divide by P (shards
// differ by one image) or a shard is empty.
//
// Overlap. Gradients are packed, in reverse registration order (the order backward
// finishes them), into buckets of about DataParallelOptions::bucket_bytes. A gradient
// hook on the tape (Tape::add_hook) tells when a parameter's gradient is complete; a
// full bucket is reduced at once with MPI_Iallreduce while backward goes on, and
// end_step waits for all of them. Buckets are launched in a fixed order (bucket k after
// buckets 0..k-1) so that every rank issues the same collectives in the same order.
//
// Buffers (batch-norm running statistics, a dropout layer's call count). In training
// mode each rank normalises with its own shard's batch statistics (as DDP without
// SyncBatchNorm; no SyncBatchNorm here), and its forward updates its own buffers. As DDP
// with broadcast_buffers=True, rank 0's buffers are then given to every rank: all of them
// packed in one message, one MPI_Ibcast per step launched in begin_step (after the
// forward) and overlapped with backward, waited for in end_step. After every step every
// rank holds rank 0's buffers bit for bit (DDP broadcasts before the next forward
// instead: rank 0's values are the same, the other ranks' differ until then).
//
// Failures. A rank that throws should call abort_job, which prints the rank and the
// cause and calls MPI_Abort: mpirun then stops every rank and exits non-zero instead of
// leaving them blocked in a collective. CollectiveError is thrown on every rank alike
// (the same decision from the same reduced data), so the job can end cleanly instead.
#pragma once

#include <mpi.h>

#include <array>
#include <cstdint>
#include <functional>
#include <source_location>
#include <span>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "nn/data.hpp"
#include "nn/module.hpp"
#include "nn/optim.hpp"
#include "nn/train.hpp"

namespace nn {

// MPI for the life of the program: MPI_Init_thread (MPI_THREAD_FUNNELED: only the main
// thread calls MPI; OpenMP's threads never do) and MPI_Finalize in the destructor.
class MpiEnvironment {
 public:
  MpiEnvironment(int& argc, char**& argv);
  ~MpiEnvironment();
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;
  int rank() const { return rank_; }
  int size() const { return size_; }

 private:
  int rank_ = 0, size_ = 1;
};

// Thrown on every rank at the same point, from data every rank holds alike (a reduced
// loss, every rank's settings): the job can end with MPI_Finalize and an exit code
// rather than MPI_Abort. `exit_code`: what the program should return (2: usage).
class CollectiveError : public std::runtime_error {
 public:
  explicit CollectiveError(const std::string& what, int exit_code = 1) : std::runtime_error(what), exit_code(exit_code) {}
  int exit_code;
};

// Prints "<program>: rank R of P on <host>: error: <what>" on stderr and ends the whole
// job with MPI_Abort(MPI_COMM_WORLD, code): mpirun stops every other rank and exits
// non-zero. For an error on one rank (an exception, a file only rank 0 reads).
[[noreturn]] void abort_job(const std::string& program, const std::string& what, int code = 1);

// The number of ranks of `comm` on this machine (MPI_COMM_TYPE_SHARED), e.g. to share
// its cores between them.
int ranks_on_this_machine(MPI_Comm comm = MPI_COMM_WORLD);

// The examples [count*rank/ranks, count*(rank+1)/ranks) of `data` (rank's contiguous
// part of it, for evaluation), as a Dataset of their own.
Dataset shard_of(const Dataset& data, int rank, int ranks);

// Settings that must be the same on every rank (the flags that decide the training):
// (name, value) pairs, compared in order.
using Settings = std::vector<std::pair<std::string, std::string>>;

struct DataParallelOptions {
  // About this many bytes of gradients per bucket (at least one parameter each); each
  // is reduced with MPI_Iallreduce as soon as backward has filled it. 0: no buckets, one
  // blocking MPI_Allreduce of every gradient after backward (no overlap).
  std::size_t bucket_bytes = std::size_t{1} << 20;
};

// What the gradient averaging cost, summed over steps (this rank's clock).
struct CommStats {
  std::size_t steps = 0;
  std::size_t buckets = 0;          // reductions of gradients per step (1 without buckets)
  std::size_t bytes_per_step = 0;   // gradient bytes this rank reduces per step (the payload)
  std::size_t buffer_bytes_per_step = 0;  // buffer bytes rank 0 broadcasts per step (0: no buffers)
  double step_seconds = 0;          // whole steps: data, forward, backward, waits, update
  double backward_seconds = 0;      // in Tape::backward, hooks included (packing, launches, polls)
  double wait_seconds = 0;          // after backward, until the averaged gradients are there:
                                    // communication not hidden, plus waiting for slower ranks
  std::size_t hidden_bytes = 0;     // gradient bytes whose reduction had completed when backward
                                    // ended (hidden behind it); 0 without buckets
};

template <class T>
class DataParallel {
 public:
  // `model` must outlive this object. Collective over `comm` (duplicated: our messages
  // never mix with the caller's).
  explicit DataParallel(Module<T>& model, MPI_Comm comm = MPI_COMM_WORLD, DataParallelOptions opt = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm comm() const { return comm_; }
  const DataParallelOptions& options() const { return opt_; }

  // Refuses a job whose ranks were started differently: compares `settings`, the
  // model's parameter and buffer names and shapes, the element type and the bucket
  // size across ranks. Throws CollectiveError (exit code 2) on every rank, naming the
  // first rank and setting that differ from rank 0 and both values.
  void check_same_config(const Settings& settings);

  // Rank 0's parameters and buffers, and with `opt` its state (momentum, Adam's
  // moments and step count), copied to every rank (MPI_Bcast).
  void broadcast_state(Optimizer<T>* opt = nullptr);
  // Rank 0's value of `value` on every rank.
  int broadcast(int value);

  // ---- one training step, for a loop of your own (train_epoch below is one) ----
  // After the forward and before backward: this rank's shard had `local_images` of the
  // global batch's `global_images`, and its loss summed over them is `loss_sum` (the
  // loss times local_images) with `correct` right predictions. Starts their reduction
  // and puts gradient hooks on `tape` (nullptr when this rank's shard was empty and
  // nothing was recorded). Call opt.zero_grad() before backward as usual. Also starts
  // the broadcast of rank 0's buffers, as its forward left them.
  void begin_step(ad::Tape<T>* tape, std::size_t local_images, std::size_t global_images, double loss_sum,
                  double correct);
  // After backward (or without one, for an empty shard): every parameter's grad is the
  // average over the global batch, the same on every rank, and every buffer is rank 0's.
  // Returns the global batch's (loss summed over its images, correct predictions, images).
  std::array<double, 3> end_step();

  // train_epoch (nn/train.hpp) over this rank's shard of each batch: `batches` must be
  // sharded (BatchIterator::set_shard(rank(), size())). The same update on every rank;
  // the returned figures and `progress` are the global batch's. Throws NonFiniteLossError
  // on every rank alike (before that step's update) when the global loss is not finite.
  EpochStats train_epoch(Optimizer<T>& opt, BatchIterator& batches, ad::Tape<T>& tape, const ProgressFn& progress = {},
                         const std::function<double(double)>& lr_at = {},
                         std::source_location loc = std::source_location::current());

  // evaluate (nn/train.hpp) on this rank's part of a data set (shard_of(data, rank(),
  // size())), the figures combined over all ranks: those of the whole data set.
  EpochStats evaluate(const Dataset& shard, std::size_t batch, ad::Tape<T>& tape);

  // Throws CollectiveError unless every rank holds bit for bit the same parameters and
  // buffers (a hash of their bytes, reduced with MIN and MAX).
  void check_in_sync();

  const CommStats& stats() const { return stats_; }
  void reset_stats();

 private:
  struct Bucket {
    std::size_t begin = 0, end = 0;  // elements of flat_
    std::size_t pending = 0;         // parameters not yet packed in this step
  };
  void on_param_ready(std::size_t index);   // a hook: one use of parameter `index` done
  void pack(std::size_t index);             // its scaled gradient into its bucket
  void launch_ready_buckets();
  void poll();

  void pack_buffers();
  void unpack_buffers();

  Module<T>* model_;
  std::vector<Parameter<T>*> params_;
  // The model's buffers, and all of them packed for one broadcast per step.
  std::vector<std::pair<std::string, ad::Tensor<T>*>> buffers_;
  std::vector<T> buffer_flat_;
  MPI_Request buffers_request_ = MPI_REQUEST_NULL;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  DataParallelOptions opt_;
  // Parameter i's gradient lives in flat_[offset_[i], offset_[i] + size); buckets hold
  // parameters in reverse registration order.
  std::vector<T> flat_;
  std::vector<std::size_t> offset_, bucket_of_, uses_left_;
  std::vector<bool> packed_;
  std::vector<Bucket> buckets_;
  std::vector<MPI_Request> requests_;  // one per bucket; [0, next_launch_) launched
  std::size_t next_launch_ = 0;
  std::unordered_map<const Parameter<T>*, std::size_t> index_;  // parameter -> its index
  T scale_ = T(1);
  std::array<double, 3> step_stats_{};
  MPI_Request stats_request_ = MPI_REQUEST_NULL;
  bool in_step_ = false;
  CommStats stats_;
};

extern template class DataParallel<float>;
extern template class DataParallel<double>;

}  // namespace nn
