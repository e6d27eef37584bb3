// Data-parallel training over MPI: broadcast, shards, bucketed gradient averaging.
// The design is in nn/distributed.hpp; README, "Distributed training".
#include "nn/distributed.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include <fmt/format.h>

namespace nn {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

template <class T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <>
MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }

// MPI counts are int: a tensor of 2^31 elements or more is refused rather than truncated.
int mpi_count(std::size_t n, const char* what) {
  if (n > static_cast<std::size_t>(INT32_MAX))
    throw std::length_error(fmt::format("{}: {} elements do not fit one MPI message (at most 2^31 - 1)", what, n));
  return static_cast<int>(n);
}

// FNV-1a, 64 bits.
struct Fnv {
  std::uint64_t h = 14695981039346656037ull;
  void add(const void* data, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  }
  void add(const std::string& s) { add(s.data(), s.size() + 1); }
};

// Every rank's string, in rank order (MPI_Allgather of the lengths, then MPI_Allgatherv).
std::vector<std::string> allgather(MPI_Comm comm, const std::string& s, int size) {
  const int len = mpi_count(s.size(), "allgather");
  std::vector<int> lens(static_cast<std::size_t>(size)), displs(static_cast<std::size_t>(size));
  MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, comm);
  std::size_t total = 0;
  for (std::size_t r = 0; r < lens.size(); ++r) {
    displs[r] = mpi_count(total, "allgather");
    total += static_cast<std::size_t>(lens[r]);
  }
  std::vector<char> all(std::max<std::size_t>(total, 1));
  MPI_Allgatherv(s.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR, comm);
  std::vector<std::string> out;
  for (std::size_t r = 0; r < lens.size(); ++r)
    out.emplace_back(all.data() + displs[r], static_cast<std::size_t>(lens[r]));
  return out;
}

// Settings <-> one string: name \x1f value \x1e, ...
std::string serialize(const Settings& s) {
  std::string out;
  for (const auto& [k, v] : s) out += k + '\x1f' + v + '\x1e';
  return out;
}
Settings deserialize(const std::string& s) {
  Settings out;
  std::size_t pos = 0;
  while (pos < s.size()) {
    const std::size_t sep = s.find('\x1f', pos), end = s.find('\x1e', pos);
    if (sep == std::string::npos || end == std::string::npos || sep > end) break;
    out.emplace_back(s.substr(pos, sep - pos), s.substr(sep + 1, end - sep - 1));
    pos = end + 1;
  }
  return out;
}

// "12 tensors, 29,034 values, names and shapes hash 0123456789abcdef"
template <class Named>
std::string describe_tensors(const Named& named) {
  Fnv h;
  std::size_t values = 0;
  for (const auto& [name, t] : named) {
    h.add(name);
    h.add(ad::shape_str(t.shape()));
    values += t.size();
  }
  return fmt::format("{} tensors, {} values, names and shapes hash {:016x}", named.size(), values, h.h);
}

}  // namespace

// ---- the environment -------------------------------------------------------------

MpiEnvironment::MpiEnvironment(int& argc, char**& argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

MpiEnvironment::~MpiEnvironment() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void abort_job(const std::string& program, const std::string& what, int code) {
  int initialized = 0, finalized = 0, rank = 0, size = 1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  const bool mpi = initialized && !finalized;
  if (mpi) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  std::fflush(stdout);
  fmt::print(stderr, "\n{}: rank {} of {} on {}: error: {}\n", program, rank, size, host, what);
  std::fflush(stderr);
  if (mpi) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

int ranks_on_this_machine(MPI_Comm comm) {
  MPI_Comm local = MPI_COMM_NULL;
  MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  int n = 1;
  MPI_Comm_size(local, &n);
  MPI_Comm_free(&local);
  return n;
}

Dataset shard_of(const Dataset& data, int rank, int ranks) {
  if (ranks < 1 || rank < 0 || rank >= ranks)
    throw std::invalid_argument(fmt::format("shard_of: rank {} of {}: need 0 <= rank < ranks", rank, ranks));
  const std::size_t lo = data.count * static_cast<std::size_t>(rank) / static_cast<std::size_t>(ranks);
  const std::size_t hi = data.count * static_cast<std::size_t>(rank + 1) / static_cast<std::size_t>(ranks);
  const std::size_t pixels = data.rows * data.cols;
  Dataset s;
  s.rows = data.rows, s.cols = data.cols, s.num_classes = data.num_classes, s.count = hi - lo;
  s.images.assign(data.images.begin() + static_cast<std::ptrdiff_t>(lo * pixels),
                  data.images.begin() + static_cast<std::ptrdiff_t>(hi * pixels));
  s.labels.assign(data.labels.begin() + static_cast<std::ptrdiff_t>(lo), data.labels.begin() + static_cast<std::ptrdiff_t>(hi));
  return s;
}

// ---- DataParallel ----------------------------------------------------------------

template <class T>
DataParallel<T>::DataParallel(Module<T>& model, MPI_Comm comm, DataParallelOptions opt)
    : model_(&model), params_(model.parameters()), buffers_(model.named_buffers()), opt_(opt) {
  MPI_Comm_dup(comm, &comm_);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  // Buckets in reverse registration order: the last layer's gradients are complete
  // first in backward. A bucket closes once it holds bucket_bytes (0: one bucket).
  const std::size_t n = params_.size();
  offset_.assign(n, 0);
  bucket_of_.assign(n, 0);
  uses_left_.assign(n, 0);
  packed_.assign(n, false);
  std::size_t total = 0, bucket_bytes = 0;
  for (std::size_t k = n; k-- > 0;) {
    if (buckets_.empty() || (opt_.bucket_bytes > 0 && bucket_bytes >= opt_.bucket_bytes)) {
      buckets_.push_back({.begin = total, .end = total});
      bucket_bytes = 0;
    }
    offset_[k] = total;
    bucket_of_[k] = buckets_.size() - 1;
    total += params_[k]->value.size();
    bucket_bytes += params_[k]->value.size() * sizeof(T);
    buckets_.back().end = total;
  }
  for (const Bucket& b : buckets_) mpi_count(b.end - b.begin, "DataParallel: a gradient bucket");
  flat_.assign(total, T(0));
  requests_.assign(buckets_.size(), MPI_REQUEST_NULL);
  for (std::size_t k = 0; k < n; ++k) index_.emplace(params_[k], k);
  stats_.buckets = buckets_.size();
  stats_.bytes_per_step = total * sizeof(T);
  std::size_t buffer_values = 0;
  for (const auto& [name, b] : buffers_) buffer_values += b->size();
  buffer_flat_.assign(buffer_values, T(0));
  mpi_count(buffer_values, "DataParallel: the model's buffers");
  stats_.buffer_bytes_per_step = buffer_values * sizeof(T);
}

template <class T>
DataParallel<T>::~DataParallel() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

template <class T>
void DataParallel<T>::reset_stats() {
  const CommStats kept = stats_;
  stats_ = {};
  stats_.buckets = kept.buckets, stats_.bytes_per_step = kept.bytes_per_step;
  stats_.buffer_bytes_per_step = kept.buffer_bytes_per_step;
}

template <class T>
void DataParallel<T>::check_same_config(const Settings& settings) {
  Settings all = settings;
  all.emplace_back("element type", sizeof(T) == 4 ? "float32" : "float64");
  all.emplace_back("bucket bytes", std::to_string(opt_.bucket_bytes));
  std::vector<std::pair<std::string, const ad::Tensor<T>&>> named;
  for (auto& [name, p] : model_->named_parameters()) named.emplace_back(name, p->value);
  all.emplace_back("model parameters", describe_tensors(named));
  named.clear();
  for (auto& [name, b] : model_->named_buffers()) named.emplace_back(name, *b);
  all.emplace_back("model buffers", describe_tensors(named));

  const std::vector<std::string> every = allgather(comm_, serialize(all), size_);
  std::vector<int> differ;
  std::string first;
  for (int r = 1; r < size_; ++r) {
    if (every[static_cast<std::size_t>(r)] == every[0]) continue;
    differ.push_back(r);
    if (!first.empty()) continue;
    const Settings mine = deserialize(every[static_cast<std::size_t>(r)]), ref = deserialize(every[0]);
    for (std::size_t i = 0; i < std::max(mine.size(), ref.size()) && first.empty(); ++i) {
      if (i >= mine.size() || i >= ref.size() || mine[i].first != ref[i].first) {
        first = fmt::format("rank {} has the setting \"{}\" where rank 0 has \"{}\"", r,
                            i < mine.size() ? mine[i].first : "(none)", i < ref.size() ? ref[i].first : "(none)");
        break;
      }
      if (mine[i].second != ref[i].second)
        first = fmt::format("rank {} has {} {}, rank 0 has {} {}", r, mine[i].first, mine[i].second, ref[i].first,
                            ref[i].second);
    }
  }
  if (differ.empty()) return;
  throw CollectiveError(fmt::format("the {} ranks were not started alike: {} (ranks differing from rank 0: {}). Start "
                                    "every rank with the same flags, data and model.",
                                    size_, first, fmt::join(differ, ", ")),
                        2);
}

template <class T>
void DataParallel<T>::broadcast_state(Optimizer<T>* opt) {
  // The sizes first: a rank whose model or optimizer state has other sizes is refused on
  // every rank (check_same_config catches it earlier when it is called).
  std::vector<std::pair<T*, std::size_t>> tensors;
  for (Parameter<T>* p : params_) tensors.emplace_back(p->value.data(), p->value.size());
  for (auto& [name, b] : model_->named_buffers()) tensors.emplace_back(b->data(), b->size());
  std::vector<std::pair<float*, std::size_t>> state;
  if (opt)
    for (auto& [name, t] : opt->state_refs("optim.")) state.emplace_back(t->data(), t->size());
  std::vector<unsigned long long> sizes;
  for (auto& [p, n] : tensors) sizes.push_back(n);
  for (auto& [p, n] : state) sizes.push_back(n);
  std::vector<unsigned long long> ref = sizes;
  unsigned long long count = ref.size();
  MPI_Bcast(&count, 1, MPI_UNSIGNED_LONG_LONG, 0, comm_);
  ref.resize(count);
  MPI_Bcast(ref.data(), mpi_count(ref.size(), "broadcast_state"), MPI_UNSIGNED_LONG_LONG, 0, comm_);
  int bad = ref != sizes, any_bad = 0;
  MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, comm_);
  if (any_bad)
    throw CollectiveError("broadcast_state: the ranks' models or optimizer states have different sizes: start every "
                          "rank with the same model and optimizer", 2);
  for (auto& [p, n] : tensors) MPI_Bcast(p, mpi_count(n, "broadcast_state"), mpi_type<T>(), 0, comm_);
  for (auto& [p, n] : state) MPI_Bcast(p, mpi_count(n, "broadcast_state"), MPI_FLOAT, 0, comm_);
}

template <class T>
int DataParallel<T>::broadcast(int value) {
  MPI_Bcast(&value, 1, MPI_INT, 0, comm_);
  return value;
}

template <class T>
void DataParallel<T>::begin_step(ad::Tape<T>* tape, std::size_t local_images, std::size_t global_images,
                                 double loss_sum, double correct) {
  if (in_step_) throw std::logic_error("DataParallel::begin_step: the previous step was not ended (end_step)");
  in_step_ = true;
  // Rank r's gradient is the mean over its n_r images: weighted by n_r / B, the sum over
  // ranks is the mean over the global batch's B images.
  scale_ = global_images ? static_cast<T>(static_cast<double>(local_images) / static_cast<double>(global_images)) : T(0);
  step_stats_ = {loss_sum, correct, static_cast<double>(local_images)};
  MPI_Iallreduce(MPI_IN_PLACE, step_stats_.data(), 3, MPI_DOUBLE, MPI_SUM, comm_, &stats_request_);
  // Rank 0's buffers as its forward left them, on their way to every rank while backward
  // runs (backward never touches buffers); end_step waits and copies them in.
  if (!buffer_flat_.empty()) {
    if (rank_ == 0) pack_buffers();
    MPI_Ibcast(buffer_flat_.data(), static_cast<int>(buffer_flat_.size()), mpi_type<T>(), 0, comm_, &buffers_request_);
  }
  std::fill(packed_.begin(), packed_.end(), false);
  std::fill(uses_left_.begin(), uses_left_.end(), std::size_t{0});
  for (std::size_t k = 0; k < params_.size(); ++k) ++buckets_[bucket_of_[k]].pending;
  std::fill(requests_.begin(), requests_.end(), MPI_REQUEST_NULL);
  next_launch_ = 0;
  if (opt_.bucket_bytes == 0) return;  // one blocking allreduce in end_step

  if (tape) {
    // A parameter's gradient is complete once backward has passed every one of its uses
    // (each tape.param() is a leaf of its own): count them, hook each.
    std::vector<int32_t> others;
    for (std::size_t i = 0; i < tape->num_values(); ++i) {
      const ad::Value v{static_cast<int32_t>(i), tape->recording()};
      const ad::Slot<T>& s = tape->slot(v);
      if (!s.requires_grad) continue;
      if (!s.param) {
        others.push_back(v.id);
        continue;
      }
      const auto it = index_.find(s.param);
      if (it == index_.end()) continue;  // not the model's: not averaged
      ++uses_left_[it->second];
      tape->add_hook(v, [this, k = it->second](ad::Tensor<T>&) { on_param_ready(k); });
    }
    // Non-blocking collectives progress only inside MPI calls: poll (MPI_Testall) during
    // backward at up to 32 more points spread over the other values, so that a launched
    // bucket moves on while the VJPs between two parameters run.
    const std::size_t polls = std::min<std::size_t>(others.size(), 32);
    for (std::size_t j = 0; j < polls; ++j)
      tape->add_hook(ad::Value{others[j * others.size() / polls], tape->recording()}, [this](ad::Tensor<T>&) { poll(); });
  }
  // Parameters backward will not reach (unused, or no tape): their gradient is ready now.
  for (std::size_t k = 0; k < params_.size(); ++k)
    if (uses_left_[k] == 0) pack(k);
  launch_ready_buckets();
}

template <class T>
void DataParallel<T>::on_param_ready(std::size_t k) {
  if (uses_left_[k] > 0 && --uses_left_[k] == 0) {
    pack(k);
    launch_ready_buckets();
  }
  poll();
}

template <class T>
void DataParallel<T>::pack(std::size_t k) {
  if (packed_[k]) return;
  const Parameter<T>& p = *params_[k];
  const std::size_t n = p.value.size();
  if (p.grad.size() != n)
    throw std::logic_error(fmt::format("DataParallel: parameter {} has a gradient of {} values for {} values", p.name,
                                       p.grad.size(), n));
  // flat[offset + i] = (n_r / B) dJ_r/dp[i]
  const T* g = p.grad.data();
  T* dst = flat_.data() + offset_[k];
  for (std::size_t i = 0; i < n; ++i) dst[i] = g[i] * scale_;
  packed_[k] = true;
  --buckets_[bucket_of_[k]].pending;
}

// Every buffer in registration order, one after the other in buffer_flat_. A buffer
// whose size changed since construction (the model changed under the wrapper) is refused.
template <class T>
void DataParallel<T>::pack_buffers() {
  std::size_t at = 0;
  for (const auto& [name, b] : buffers_) {
    if (at + b->size() <= buffer_flat_.size()) std::copy_n(b->data(), b->size(), buffer_flat_.data() + at);
    at += b->size();
  }
  if (at != buffer_flat_.size())
    throw std::logic_error(fmt::format("DataParallel: the model's buffers hold {} values, {} when the wrapper was made",
                                       at, buffer_flat_.size()));
}

template <class T>
void DataParallel<T>::unpack_buffers() {
  std::size_t at = 0;
  for (const auto& [name, b] : buffers_) at += b->size();
  if (at != buffer_flat_.size())
    throw std::logic_error(fmt::format("DataParallel: the model's buffers hold {} values, {} when the wrapper was made",
                                       at, buffer_flat_.size()));
  at = 0;
  for (const auto& [name, b] : buffers_) {
    std::copy_n(buffer_flat_.data() + at, b->size(), b->data());
    at += b->size();
  }
}

template <class T>
void DataParallel<T>::launch_ready_buckets() {
  // In bucket order only, so that every rank issues the same collectives in the same order.
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
    const Bucket& b = buckets_[next_launch_];
    MPI_Iallreduce(MPI_IN_PLACE, flat_.data() + b.begin, static_cast<int>(b.end - b.begin), mpi_type<T>(), MPI_SUM,
                   comm_, &requests_[next_launch_]);
    ++next_launch_;
  }
}

template <class T>
void DataParallel<T>::poll() {
  int done = 0;
  if (next_launch_ > 0) MPI_Testall(static_cast<int>(next_launch_), requests_.data(), &done, MPI_STATUSES_IGNORE);
}

template <class T>
std::array<double, 3> DataParallel<T>::end_step() {
  if (!in_step_) throw std::logic_error("DataParallel::end_step: no step was begun (begin_step)");
  // The overlap achieved: buckets whose reduction is already complete now, as backward
  // ends (MPI_Test of a request completed by an earlier poll finds it null: complete).
  if (opt_.bucket_bytes > 0)
    for (std::size_t b = 0; b < next_launch_; ++b) {
      int done = 0;
      MPI_Test(&requests_[b], &done, MPI_STATUS_IGNORE);
      if (done) stats_.hidden_bytes += (buckets_[b].end - buckets_[b].begin) * sizeof(T);
    }
  for (std::size_t k = 0; k < params_.size(); ++k) pack(k);  // what backward did not reach
  const auto t0 = Clock::now();
  if (opt_.bucket_bytes == 0) {
    MPI_Allreduce(MPI_IN_PLACE, flat_.data(), mpi_count(flat_.size(), "DataParallel"), mpi_type<T>(), MPI_SUM, comm_);
  } else {
    launch_ready_buckets();
    MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
  }
  MPI_Wait(&stats_request_, MPI_STATUS_IGNORE);
  MPI_Wait(&buffers_request_, MPI_STATUS_IGNORE);  // null (returns at once) without buffers
  stats_.wait_seconds += seconds_since(t0);
  if (rank_ != 0 && !buffer_flat_.empty()) unpack_buffers();
  for (std::size_t k = 0; k < params_.size(); ++k)
    std::copy_n(flat_.data() + offset_[k], params_[k]->grad.size(), params_[k]->grad.data());
  for (Bucket& b : buckets_) b.pending = 0;
  in_step_ = false;
  return step_stats_;
}

template <class T>
EpochStats DataParallel<T>::train_epoch(Optimizer<T>& opt, BatchIterator& batches, ad::Tape<T>& tape,
                                        const ProgressFn& progress, const std::function<double(double)>& lr_at,
                                        std::source_location loc) {
  const auto t0 = Clock::now();
  EpochStats s;
  ad::Tensor<T> images;
  std::vector<int> labels;
  double loss_sum = 0, correct = 0;
  std::size_t steps = 0;
  for (;;) {
    const auto t_step = Clock::now();
    if (!batches.next(images, labels)) break;
    const std::size_t global = batches.last_batch_size();
    if (lr_at) opt.set_lr(lr_at(static_cast<double>(s.images) / static_cast<double>(batches.size())));
    opt.zero_grad();
    tape.reset();
    if (labels.empty()) {
      begin_step(nullptr, 0, global, 0, 0);  // an empty shard: zero gradients, still reduced
    } else {
      const Value logits = (*model_)(tape, tape.input(images, "images", loc), loc);
      const Value loss = tape.set_label(ad::softmax_cross_entropy(tape, logits, labels, {}, loc), "loss");
      const double n = static_cast<double>(labels.size());
      begin_step(&tape, labels.size(), global, static_cast<double>(tape.value(loss)()) * n,
                 static_cast<double>(count_correct(tape.value(logits), labels)));
      const auto t_backward = Clock::now();
      tape.backward(loss);
      stats_.backward_seconds += seconds_since(t_backward);
    }
    const std::array<double, 3> step = end_step();
    ++steps;
    // A NaN or infinite global loss stops every rank here, before the update.
    if (!std::isfinite(step[0])) throw NonFiniteLossError(steps, s.images, global, step[0] / static_cast<double>(global));
    opt.step();
    loss_sum += step[0];
    correct += step[1];
    s.images += global;
    ++stats_.steps;
    stats_.step_seconds += seconds_since(t_step);
    if (progress) progress(s.images, loss_sum / static_cast<double>(s.images));
  }
  s.loss = s.images ? loss_sum / static_cast<double>(s.images) : 0.0;
  s.accuracy = s.images ? correct / static_cast<double>(s.images) : 0.0;
  s.seconds = seconds_since(t0);
  return s;
}

template <class T>
EpochStats DataParallel<T>::evaluate(const Dataset& shard, std::size_t batch, ad::Tape<T>& tape) {
  const auto t0 = Clock::now();
  const EpochStats local = nn::evaluate(*model_, shard, batch, tape);
  const double n = static_cast<double>(local.images);
  std::array<double, 3> sums{local.loss * n, std::round(local.accuracy * n), n};
  MPI_Allreduce(MPI_IN_PLACE, sums.data(), 3, MPI_DOUBLE, MPI_SUM, comm_);
  EpochStats s;
  s.images = static_cast<std::size_t>(sums[2]);
  s.loss = sums[2] > 0 ? sums[0] / sums[2] : 0.0;
  s.accuracy = sums[2] > 0 ? sums[1] / sums[2] : 0.0;
  s.seconds = seconds_since(t0);
  return s;
}

template <class T>
void DataParallel<T>::check_in_sync() {
  Fnv h;
  for (Parameter<T>* p : params_) h.add(p->value.data(), p->value.size() * sizeof(T));
  for (auto& [name, b] : model_->named_buffers()) h.add(b->data(), b->size() * sizeof(T));
  // MIN of (h, ~h) gives the smallest and (as ~) the largest hash.
  unsigned long long v[2] = {h.h, ~h.h};
  MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_UNSIGNED_LONG_LONG, MPI_MIN, comm_);
  if (v[0] != ~v[1])
    throw CollectiveError(fmt::format("the {} ranks' parameters or buffers are no longer identical (hashes from {:016x} "
                                      "to {:016x}): the gradient averaging or the buffers' broadcast went wrong",
                                      size_, v[0], ~v[1]));
}

template class DataParallel<float>;
template class DataParallel<double>;

}  // namespace nn
