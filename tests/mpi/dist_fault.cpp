// A data-parallel training run in which rank 1 fails at step 3 on purpose, for
// mpi_cli_test.sh: the job must end promptly, non-zero, with a message naming the rank.
//   dist_fault throw|exit|kill|none
// throw: an exception, handled as train_cnn handles one (nn::abort_job); exit: _exit(3)
// without MPI_Finalize; kill: SIGKILL (a crash, the OOM killer); none: no failure.
#include <csignal>
#include <cstring>
#include <string>

#include <fmt/format.h>
#include <unistd.h>

#include "nn/distributed.hpp"
#include "nn/layers.hpp"

int main(int argc, char** argv) {
  nn::MpiEnvironment mpi(argc, argv);
  const std::string mode = argc > 1 ? argv[1] : "none";
  try {
    const nn::Dataset train = nn::load_fashion_mnist("tests/fixtures/fashion-mnist-tiny", "train");
    nn::CnnConfig cfg;
    cfg.channels = {2, 3};
    nn::Sequential<float> model = nn::make_cnn<float>(cfg, 1);
    nn::Sgd<float> opt(model.parameters(), {.lr = 0.1});
    nn::DataParallel<float> dp(model);
    dp.broadcast_state(&opt);
    nn::BatchIterator it(train, 16, true, 1);
    it.set_shard(static_cast<std::size_t>(dp.rank()), static_cast<std::size_t>(dp.size()));
    ad::Tape<float> tape;
    std::size_t step = 0;
    const auto fail_at_step_3 = [&](std::size_t, double) {
      if (++step != 3 || dp.rank() != 1) return;
      if (mode == "throw") throw std::runtime_error("injected failure at step 3");
      if (mode == "exit") ::_exit(3);
      if (mode == "kill") ::raise(SIGKILL);
    };
    for (int e = 0; e < 3; ++e) {
      it.start_epoch(static_cast<uint64_t>(e));
      dp.train_epoch(opt, it, tape, fail_at_step_3);
    }
    if (dp.rank() == 0) fmt::print("dist_fault: trained {} steps on {} ranks\n", step, dp.size());
  } catch (const std::exception& e) {
    nn::abort_job("dist_fault", e.what());
  }
  return 0;
}
