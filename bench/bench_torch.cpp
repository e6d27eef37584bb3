// Benchmark child for LibTorch: the same ref-CNN as bench_ours.cpp, written the way
// a LibTorch user would (torch::nn modules, torch::optim::SGD, InferenceMode for
// inference), on the same Fashion-MNIST batches. Prints the line protocol of
// bench_util.hpp. The driver starts it with OPENBLAS_NUM_THREADS=1 in the
// environment; here torch::set_num_threads(n) sets its intra-op threads.
#include <torch/torch.h>

#include "bench_util.hpp"

namespace {

struct RefCnnImpl : torch::nn::Module {
  torch::nn::Conv2d conv1{torch::nn::Conv2dOptions(1, 16, 5).padding(2)};
  torch::nn::Conv2d conv2{torch::nn::Conv2dOptions(16, 32, 5).padding(2)};
  torch::nn::Linear fc{1568, 10};

  RefCnnImpl() {
    register_module("conv1", conv1);
    register_module("conv2", conv2);
    register_module("fc", fc);
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::max_pool2d(torch::relu(conv1->forward(x)), 2);
    x = torch::max_pool2d(torch::relu(conv2->forward(x)), 2);
    return fc->forward(x.flatten(1));
  }
};
TORCH_MODULE(RefCnn);

int run(const bench::ChildOptions& o) {
  torch::set_num_threads(o.threads);
  torch::manual_seed(1);
  bench::Batches data(o.data, o.mode == "train", o.batch);
  RefCnn model;
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.05));
  xt::xarray<float> images;
  std::vector<int> labels;
  std::vector<int64_t> targets(o.batch);
  double loss = 0;

  auto step = [&] {
    data.next(images, labels);
    const torch::Tensor x =
        torch::from_blob(images.data(), {static_cast<int64_t>(o.batch), 1, 28, 28}, torch::kFloat32);
    if (o.mode == "train") {
      std::copy(labels.begin(), labels.end(), targets.begin());
      const torch::Tensor y = torch::from_blob(targets.data(), {static_cast<int64_t>(o.batch)}, torch::kInt64);
      opt.zero_grad();
      torch::Tensor l = torch::nn::functional::cross_entropy(model->forward(x), y);
      l.backward();
      opt.step();
      loss = l.item<double>();
    } else {
      c10::InferenceMode guard;
      loss = model->forward(x)[0][0].item<double>();
    }
  };
  bench::time_blocks(o, step);
  std::printf("loss %.6f\n", loss);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(bench::parse_child_options(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_torch: %s\n", e.what());
    return 1;
  }
}
