// nn/distributed under `mpirun -np 2` (tests/mpi/CMakeLists.txt): every rank runs every
// test; the collectives inside a test must be reached by all ranks, so checks that could
// differ between ranks are EXPECTs (a failed ASSERT on one rank would leave the other
// waiting; ctest's timeout ends that).
//
// The one-process reference is computed on every rank with the plain nn::train_epoch,
// so each rank compares its data-parallel result with what one process gives on the
// same images.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "nn/distributed.hpp"
#include "nn/layers.hpp"
#include "nn/optim.hpp"
#include "nn/resnet.hpp"
#include "nn/train.hpp"

namespace {

constexpr const char* kFixture = "tests/fixtures/fashion-mnist-tiny";  // 256 training, 128 test images

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

const nn::Dataset& train_set() {
  static const nn::Dataset d = nn::load_fashion_mnist(kFixture, "train");
  return d;
}
const nn::Dataset& test_set() {
  static const nn::Dataset d = nn::load_fashion_mnist(kFixture, "t10k");
  return d;
}

// The reference CNN with 2 and 3 channels: 1,685 parameters in 6 tensors.
template <class T>
nn::Sequential<T> tiny_cnn(uint64_t seed) {
  nn::CnnConfig cfg;
  cfg.channels = {2, 3};
  return nn::make_cnn<T>(cfg, seed);
}

enum class Opt { Sgd, Momentum, Adam };

template <class T>
std::unique_ptr<nn::Optimizer<T>> make_opt(Opt o, nn::Module<T>& m) {
  switch (o) {
    case Opt::Sgd: return std::make_unique<nn::Sgd<T>>(m.parameters(), nn::SgdOptions{.lr = 0.1});
    case Opt::Momentum:
      return std::make_unique<nn::Sgd<T>>(m.parameters(), nn::SgdOptions{.lr = 0.05, .momentum = 0.9, .nesterov = true});
    case Opt::Adam: return std::make_unique<nn::Adam<T>>(m.parameters(), nn::AdamOptions{.lr = 3e-3});
  }
  return nullptr;
}

struct Schedule {
  std::size_t batch = 64;  // the global batch
  std::size_t limit = 256;
  int epochs = 5;          // 5 x ceil(256 / 64) = 20 steps
  Opt opt = Opt::Sgd;
};

template <class T>
std::vector<ad::Tensor<T>> values_of(nn::Module<T>& m) {
  std::vector<ad::Tensor<T>> out;
  for (auto* p : m.parameters()) out.push_back(p->value);
  return out;
}

// One process: nn::train_epoch with the global batch.
template <class T>
std::vector<ad::Tensor<T>> train_one_process(const Schedule& s) {
  nn::Sequential<T> model = tiny_cnn<T>(7);
  auto opt = make_opt<T>(s.opt, model);
  nn::BatchIterator it(train_set(), s.batch, /*shuffle=*/true, /*seed=*/3, s.limit);
  ad::Tape<T> tape;
  for (int e = 0; e < s.epochs; ++e) {
    it.start_epoch(static_cast<uint64_t>(e));
    nn::train_epoch(model, *opt, it, tape);
  }
  return values_of(model);
}

// Every rank of MPI_COMM_WORLD, each on its shard of every batch. Each rank starts from
// its own initialisation (seed 7 + rank): broadcast_state must replace it with rank 0's.
template <class T>
std::vector<ad::Tensor<T>> train_data_parallel(const Schedule& s, std::size_t bucket_bytes, nn::CommStats* stats = nullptr) {
  nn::Sequential<T> model = tiny_cnn<T>(7 + static_cast<uint64_t>(world_rank()));
  auto opt = make_opt<T>(s.opt, model);
  nn::DataParallel<T> dp(model, MPI_COMM_WORLD, {.bucket_bytes = bucket_bytes});
  dp.broadcast_state(opt.get());
  nn::BatchIterator it(train_set(), s.batch, /*shuffle=*/true, /*seed=*/3, s.limit);
  it.set_shard(static_cast<std::size_t>(dp.rank()), static_cast<std::size_t>(dp.size()));
  ad::Tape<T> tape;
  for (int e = 0; e < s.epochs; ++e) {
    it.start_epoch(static_cast<uint64_t>(e));
    dp.train_epoch(*opt, it, tape);
  }
  dp.check_in_sync();
  if (stats) *stats = dp.stats();
  return values_of(model);
}

// max |a - b| over each tensor, relative to max |b| (relative = true) or absolute;
// the message names the tensor, the element and both values.
template <class T>
void expect_close(const std::vector<ad::Tensor<T>>& got, const std::vector<ad::Tensor<T>>& want, double tol,
                  bool relative, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t t = 0; t < got.size(); ++t) {
    ASSERT_EQ(got[t].size(), want[t].size());
    double worst = 0, scale = 0;
    std::size_t at = 0;
    for (std::size_t i = 0; i < got[t].size(); ++i) {
      const double d = std::abs(static_cast<double>(got[t].data()[i]) - static_cast<double>(want[t].data()[i]));
      scale = std::max(scale, std::abs(static_cast<double>(want[t].data()[i])));
      if (d > worst || std::isnan(d)) worst = d, at = i;
    }
    const double err = relative ? worst / std::max(scale, 1e-30) : worst;
    EXPECT_LE(err, tol) << what << ": rank " << world_rank() << ", parameter " << t << " element " << at
                        << ": data-parallel " << got[t].data()[at] << " vs one process " << want[t].data()[at]
                        << " (" << (relative ? "relative" : "absolute") << " error " << err << ")";
  }
}

// The parameters moved: a comparison of two untrained models would prove nothing.
template <class T>
void expect_trained(const std::vector<ad::Tensor<T>>& after) {
  nn::Sequential<T> fresh = tiny_cnn<T>(7);
  double moved = 0;
  auto before = values_of(fresh);
  for (std::size_t t = 0; t < after.size(); ++t)
    for (std::size_t i = 0; i < after[t].size(); ++i)
      moved = std::max(moved, std::abs(static_cast<double>(after[t].data()[i] - before[t].data()[i])));
  EXPECT_GT(moved, 1e-3);
}

TEST(Distributed, RunsOnTwoRanks) { EXPECT_EQ(world_size(), 2) << "run this file with mpirun -np 2"; }

// The case: 2 ranks x 32 against 1 process x 64, 20 SGD steps, float64 to 1e-10.
TEST(DataParallel, TwoRanksMatchOneProcessFloat64WithAndWithoutBuckets) {
  const Schedule s;
  const auto want = train_one_process<double>(s);
  expect_trained(want);
  nn::CommStats bucketed, single;
  // 1 KB buckets: the 6 gradients (13.5 KB in float64) go in 3 buckets (fc3, conv2, conv1).
  expect_close(train_data_parallel<double>(s, 1024, &bucketed), want, 1e-10, false, "buckets of 1 KB");
  expect_close(train_data_parallel<double>(s, 0, &single), want, 1e-10, false, "one blocking allreduce");
  expect_close(train_data_parallel<double>(s, std::size_t{1} << 20), want, 1e-10, false, "buckets of 1 MB");
  EXPECT_EQ(bucketed.buckets, 3u);
  EXPECT_EQ(single.buckets, 1u);
  EXPECT_EQ(bucketed.steps, 20u);
  EXPECT_EQ(bucketed.bytes_per_step, 1685u * sizeof(double));
  EXPECT_LE(bucketed.hidden_bytes, 20 * bucketed.bytes_per_step);  // how much is timing: not asserted
  EXPECT_EQ(single.hidden_bytes, 0u);
}

TEST(DataParallel, TwoRanksMatchOneProcessFloat32WithAndWithoutBuckets) {
  const Schedule s;
  const auto want = train_one_process<float>(s);
  expect_trained(want);
  expect_close(train_data_parallel<float>(s, 1024), want, 1e-5, true, "buckets of 1 KB");
  expect_close(train_data_parallel<float>(s, 0), want, 1e-5, true, "one blocking allreduce");
}

// A global batch that does not divide by the ranks (63 = 31 + 32; the last batch of an
// epoch, 4 images, 2 + 2): each rank's gradient weighted by its share.
TEST(DataParallel, UnevenShardsMatchOneProcess) {
  const Schedule s{.batch = 63, .limit = 256, .epochs = 4, .opt = Opt::Momentum};
  const auto want = train_one_process<double>(s);
  expect_close(train_data_parallel<double>(s, 1024), want, 1e-10, false, "batch 63, momentum");
}

// Batch 1 on 2 ranks: one shard of every step is empty; that rank still takes part.
TEST(DataParallel, EmptyShardsTakePart) {
  const Schedule s{.batch = 1, .limit = 9, .epochs = 2, .opt = Opt::Sgd};
  const auto want = train_one_process<double>(s);
  expect_close(train_data_parallel<double>(s, 1024), want, 1e-10, false, "batch 1");
}

// Adam's moments and step count stay the same on every rank (the same averaged gradients).
TEST(DataParallel, AdamMatchesOneProcess) {
  const Schedule s{.batch = 64, .limit = 256, .epochs = 5, .opt = Opt::Adam};
  const auto want = train_one_process<float>(s);
  expect_close(train_data_parallel<float>(s, 1024), want, 1e-5, true, "adam");
}

// A NaN on one rank (its weights, so its loss) stops every rank at the same step, from
// the reduced loss, before that step's update: no rank is left waiting in a collective.
TEST(DataParallel, ANonFiniteLossOnOneRankStopsEveryRankBeforeTheUpdate) {
  nn::Sequential<float> model = tiny_cnn<float>(7);
  nn::Sgd<float> opt(model.parameters(), {.lr = 0.1});
  nn::DataParallel<float> dp(model);
  dp.broadcast_state(&opt);
  if (dp.rank() == dp.size() - 1) model.parameters().back()->value(0) = std::numeric_limits<float>::quiet_NaN();
  const auto before = values_of(model);
  nn::BatchIterator it(train_set(), 32, true, 3, 128);
  it.set_shard(static_cast<std::size_t>(dp.rank()), static_cast<std::size_t>(dp.size()));
  ad::Tape<float> tape;
  it.start_epoch(0);
  try {
    dp.train_epoch(opt, it, tape);
    ADD_FAILURE() << "rank " << dp.rank() << " trained on";
  } catch (const nn::NonFiniteLossError& e) {
    EXPECT_EQ(e.step, 1u);
    EXPECT_TRUE(std::isnan(e.loss));
  }
  const auto after = values_of(model);
  for (std::size_t t = 0; t < after.size(); ++t)
    for (std::size_t i = 0; i < after[t].size(); ++i)
      if (!std::isnan(before[t].data()[i])) {
        ASSERT_EQ(after[t].data()[i], before[t].data()[i]) << "tensor " << t << " moved";
      }
}

TEST(DataParallel, EvaluationSplitAndCombinedIsTheWholeTestSet) {
  nn::Sequential<double> model = tiny_cnn<double>(11);
  nn::DataParallel<double> dp(model);
  ad::Tape<double> tape;
  const nn::EpochStats whole = nn::evaluate(model, test_set(), 50, tape);
  const nn::EpochStats split = dp.evaluate(nn::shard_of(test_set(), dp.rank(), dp.size()), 50, tape);
  EXPECT_EQ(split.images, test_set().count);
  EXPECT_EQ(split.accuracy, whole.accuracy);
  EXPECT_NEAR(split.loss, whole.loss, 1e-12);
}

TEST(DataParallel, BroadcastGivesEveryRankRankZerosWeightsAndOptimizerState) {
  nn::Sequential<float> model = tiny_cnn<float>(100 + static_cast<uint64_t>(world_rank()));
  nn::Sgd<float> opt(model.parameters(), {.lr = 0.1, .momentum = 0.9});
  for (auto& [name, v] : opt.state_refs("optim.")) v->fill(static_cast<float>(world_rank() + 1));
  nn::DataParallel<float> dp(model);
  if (dp.size() > 1) {
    EXPECT_THROW(dp.check_in_sync(), nn::CollectiveError);
  }
  dp.broadcast_state(&opt);
  EXPECT_NO_THROW(dp.check_in_sync());
  nn::Sequential<float> rank0 = tiny_cnn<float>(100);
  expect_close(values_of(model), values_of(rank0), 0, false, "broadcast");
  for (auto& [name, v] : opt.state_refs("optim.")) EXPECT_EQ((*v)(0), 1.0f) << name;
  EXPECT_EQ(dp.broadcast(world_rank() + 40), 40);
}

TEST(DataParallel, RanksStartedWithDifferentFlagsAreRefused) {
  if (world_size() < 2) GTEST_SKIP() << "needs 2 ranks";
  nn::Sequential<float> model = tiny_cnn<float>(1);
  nn::DataParallel<float> dp(model);
  EXPECT_NO_THROW(dp.check_same_config({{"batch", "64"}, {"lr", "0.1"}}));
  try {
    dp.check_same_config({{"batch", world_rank() == 1 ? "32" : "64"}, {"lr", "0.1"}});
    ADD_FAILURE() << "a rank with another batch was accepted";
  } catch (const nn::CollectiveError& e) {
    EXPECT_EQ(e.exit_code, 2);
    EXPECT_NE(std::string(e.what()).find("rank 1 has batch 32, rank 0 has batch 64"), std::string::npos) << e.what();
  }
  try {
    dp.check_same_config({{"batch", "64"}, {world_rank() == 1 ? "momentum" : "lr", "0.1"}});
    ADD_FAILURE() << "a rank with other settings was accepted";
  } catch (const nn::CollectiveError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 has the setting \"momentum\" where rank 0 has \"lr\""),
              std::string::npos) << e.what();
  }
}

TEST(DataParallel, RanksWithDifferentModelsAreRefused) {
  if (world_size() < 2) GTEST_SKIP() << "needs 2 ranks";
  nn::CnnConfig cfg;
  cfg.channels = {2, world_rank() == 1 ? 4 : 3};
  nn::Sequential<float> model = nn::make_cnn<float>(cfg, 1);
  nn::DataParallel<float> dp(model);
  try {
    dp.check_same_config({{"batch", "64"}});
    ADD_FAILURE() << "a rank with another model was accepted";
  } catch (const nn::CollectiveError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 has model parameters 6 tensors, 2"), std::string::npos) << e.what();
  }
}

// Batch norm's running statistics (README, "Distributed training", Buffers). Each rank
// normalises with its own shard's statistics and updates its own buffers in the
// forward; the wrapper then gives every rank rank 0's. After every step, on every rank,
// each buffer must equal bit for bit what rank 0's forward made of it: a second model,
// given the wrapped model's state before the step, replays rank 0's forward on rank 0's
// shard (drawn again from the same seeded order) on every rank. A tiny ResNet (7 batch
// norms, 14 buffers), float64, 2 epochs of batch 48 over 145 images: the last batch
// holds one image, so rank 0's shard is empty there and its buffers (unchanged) still
// replace rank 1's.
template <class T>
void copy_state(nn::Module<T>& from, nn::Module<T>& to) {
  const auto from_p = from.parameters(), to_p = to.parameters();
  for (std::size_t i = 0; i < from_p.size(); ++i) to_p[i]->value = from_p[i]->value;
  const auto from_b = from.named_buffers(), to_b = to.named_buffers();
  for (std::size_t i = 0; i < from_b.size(); ++i) *to_b[i].second = *from_b[i].second;
}

void expect_buffers_are_rank_zeros(std::size_t bucket_bytes) {
  nn::ResNetConfig cfg;
  cfg.widths = {2, 4};
  cfg.first_stride = 2;
  nn::ResNet<double> model(cfg, 5 + static_cast<uint64_t>(world_rank()));  // broadcast_state gives rank 0's
  nn::ResNet<double> replay(cfg, 99);                                         // rank 0's forward, replayed
  nn::Sgd<double> opt(model.parameters(), {.lr = 0.1, .momentum = 0.9});
  nn::DataParallel<double> dp(model, MPI_COMM_WORLD, {.bucket_bytes = bucket_bytes});
  dp.broadcast_state(&opt);
  const auto buffers = model.named_buffers();
  ASSERT_EQ(buffers.size(), 14u);  // running_mean and running_var of 7 batch norms
  EXPECT_EQ(dp.stats().buffer_bytes_per_step, [&] {
    std::size_t n = 0;
    for (const auto& [name, b] : buffers) n += b->size() * sizeof(double);
    return n;
  }());

  const std::size_t batch = 48, limit = 145;
  nn::BatchIterator it(train_set(), batch, true, 3, limit);
  it.set_shard(static_cast<std::size_t>(dp.rank()), static_cast<std::size_t>(dp.size()));
  nn::BatchIterator rank0_shard(train_set(), batch, true, 3, limit), own_shard(train_set(), batch, true, 3, limit);
  rank0_shard.set_shard(0, static_cast<std::size_t>(dp.size()));
  own_shard.set_shard(static_cast<std::size_t>(dp.rank()), static_cast<std::size_t>(dp.size()));
  ad::Tape<double> tape, replay_tape;
  std::size_t steps = 0, own_differs = 0;
  copy_state<double>(model, replay);
  // The buffers `m`'s forward in training mode makes on the next batch of `shard`
  // (unchanged for an empty shard).
  const auto forward_on = [&](nn::Module<double>& m, nn::BatchIterator& shard) {
    ad::Tensor<double> images;
    std::vector<int> labels;
    EXPECT_TRUE(shard.next(images, labels));
    if (labels.empty()) return;
    replay_tape.reset();
    m(replay_tape, replay_tape.input(images, "images"));
  };
  const auto after_step = [&](std::size_t, double) {
    ++steps;
    // Rank 0's own statistics for this step; this rank's own ones, for contrast.
    nn::ResNet<double> own(cfg, 99);
    copy_state<double>(replay, own);
    forward_on(replay, rank0_shard);
    forward_on(own, own_shard);
    const auto want = replay.named_buffers(), own_b = own.named_buffers();
    for (std::size_t i = 0; i < buffers.size(); ++i) {
      const ad::Tensor<double>& got = *buffers[i].second;
      for (std::size_t j = 0; j < got.size(); ++j) {
        EXPECT_EQ(got.data()[j], want[i].second->data()[j])
            << "rank " << dp.rank() << ", step " << steps << ", buffer " << buffers[i].first << " element " << j
            << ": rank 0's forward made " << want[i].second->data()[j];
        own_differs += own_b[i].second->data()[j] != want[i].second->data()[j];
      }
    }
    dp.check_in_sync();  // every rank's parameters and buffers, bit for bit
    copy_state<double>(model, replay);  // the state the next step starts from
  };
  for (int e = 0; e < 2; ++e) {
    it.start_epoch(static_cast<uint64_t>(e));
    rank0_shard.start_epoch(static_cast<uint64_t>(e));
    own_shard.start_epoch(static_cast<uint64_t>(e));
    dp.train_epoch(opt, it, tape, after_step);
  }
  EXPECT_EQ(steps, 8u);
  // Rank 1's own shards give other statistics: without the broadcast its buffers would differ.
  if (dp.rank() != 0) {
    EXPECT_GT(own_differs, 0u);
  }
}

TEST(DataParallel, BatchNormBuffersAreRankZerosOnEveryRankAfterEveryStepWithBuckets) {
  expect_buffers_are_rank_zeros(1024);
}
TEST(DataParallel, BatchNormBuffersAreRankZerosOnEveryRankAfterEveryStepWithoutBuckets) {
  expect_buffers_are_rank_zeros(0);
}

// A checkpoint written (by rank 0) during a 2-rank run resumes in one process, and one
// written by one process resumes on 2 ranks: the same parameters as an uninterrupted
// run either way (float32, as checkpoints store).
TEST(DataParallel, CheckpointsResumeAcrossRankCounts) {
  std::string dir;
  {
    int pid = static_cast<int>(::getpid());
    MPI_Bcast(&pid, 1, MPI_INT, 0, MPI_COMM_WORLD);
    dir = (std::filesystem::temp_directory_path() / fmt::format("ad_dist_resume_{}", pid)).string();
    std::filesystem::create_directories(dir);
  }
  const std::string tag = "tiny_cnn";
  const Schedule s{.batch = 32, .limit = 128, .epochs = 2, .opt = Opt::Momentum};
  const auto one_process = [&](nn::Sequential<float>& model, nn::Optimizer<float>& opt, int from, int to) {
    nn::BatchIterator it(train_set(), s.batch, true, 3, s.limit);
    ad::Tape<float> tape;
    for (int e = from; e < to; ++e) {
      it.start_epoch(static_cast<uint64_t>(e));
      nn::train_epoch(model, opt, it, tape);
    }
  };
  const auto data_parallel = [&](nn::DataParallel<float>& dp, nn::Optimizer<float>& opt, int from, int to) {
    nn::BatchIterator it(train_set(), s.batch, true, 3, s.limit);
    it.set_shard(static_cast<std::size_t>(dp.rank()), static_cast<std::size_t>(dp.size()));
    ad::Tape<float> tape;
    for (int e = from; e < to; ++e) {
      it.start_epoch(static_cast<uint64_t>(e));
      dp.train_epoch(opt, it, tape);
    }
  };

  // 2 ranks -> 1 process.
  {
    nn::Sequential<float> model = tiny_cnn<float>(7);
    auto opt = make_opt<float>(s.opt, model);
    nn::DataParallel<float> dp(model);
    dp.broadcast_state(opt.get());
    data_parallel(dp, *opt, 0, 2);
    if (dp.rank() == 0) nn::save_model(dir + "/two_ranks.ckpt", model, *opt, 2, tag);
    MPI_Barrier(MPI_COMM_WORLD);
    data_parallel(dp, *opt, 2, 4);  // uninterrupted, on 2 ranks
    nn::Sequential<float> resumed = tiny_cnn<float>(99);
    auto resumed_opt = make_opt<float>(s.opt, resumed);
    EXPECT_EQ(nn::load_model(dir + "/two_ranks.ckpt", resumed, *resumed_opt, tag), 2);
    one_process(resumed, *resumed_opt, 2, 4);
    expect_close(values_of(resumed), values_of(model), 1e-5, true, "2 ranks -> 1 process");
  }
  // 1 process -> 2 ranks: only rank 0 reads the checkpoint, broadcast_state does the rest.
  {
    nn::Sequential<float> model = tiny_cnn<float>(7);
    auto opt = make_opt<float>(s.opt, model);
    one_process(model, *opt, 0, 2);
    if (world_rank() == 0) nn::save_model(dir + "/one_process.ckpt", model, *opt, 2, tag);
    MPI_Barrier(MPI_COMM_WORLD);
    one_process(model, *opt, 2, 4);  // uninterrupted, one process
    nn::Sequential<float> resumed = tiny_cnn<float>(50 + static_cast<uint64_t>(world_rank()));
    auto resumed_opt = make_opt<float>(s.opt, resumed);
    nn::DataParallel<float> dp(resumed);
    int start = 0;
    if (dp.rank() == 0) start = nn::load_model(dir + "/one_process.ckpt", resumed, *resumed_opt, tag);
    start = dp.broadcast(start);
    EXPECT_EQ(start, 2);
    dp.broadcast_state(resumed_opt.get());
    data_parallel(dp, *resumed_opt, start, 4);
    expect_close(values_of(resumed), values_of(model), 1e-5, true, "1 process -> 2 ranks");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) std::filesystem::remove_all(dir);
}

}  // namespace

int main(int argc, char** argv) {
  nn::MpiEnvironment mpi(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
