// Per-op forward and VJP times at ref-CNN shapes (batch 64), ours and, when built
// with LibTorch, the ATen kernels that LibTorch's autograd calls for the same op.
// Google Benchmark; the driver (bench.cpp) runs it with repetitions and random
// interleaving and reads the medians. Alone:
//   bench_ops --threads=1 --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true
//
// Ours: the public kernels (conv2d_forward, conv2d_vjp, ...) on preallocated
// buffers, so a row is the op's arithmetic and memory traffic, no tape. The VJP rows
// add into gradient buffers as on the tape. softmax_ce forward exists only as a tape
// op, so its row records one node on a reset tape.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <string>

#include "autodiff/ad.hpp"

#ifdef AD_BENCH_HAVE_TORCH
#include <torch/torch.h>
#endif

namespace {

using ad::Tensor;
constexpr std::size_t N = 64;

Tensor<float> uniform(std::vector<std::size_t> shape, unsigned seed, float lo = -1.0f, float hi = 1.0f) {
  Tensor<float> t(shape);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  for (float& v : t) v = d(rng);
  return t;
}

// An uninitialised tensor of this shape (a braced list would be read as values).
Tensor<float> shaped(std::vector<std::size_t> shape) { return Tensor<float>(shape); }

// ---- ours --------------------------------------------------------------------

struct ConvCase {
  std::size_t c_in, c_out, hw;
};
constexpr ConvCase kConv1{1, 16, 28}, kConv2{16, 32, 14};

ad::Conv2dOptions conv_attrs() {
  ad::Conv2dOptions a;
  a.padding = {2, 2};
  return a;
}
ad::Pool2dOptions pool_attrs() {
  ad::Pool2dOptions a;
  a.window = {2, 2}, a.stride = {2, 2};
  return a;
}

void ours_conv_forward(benchmark::State& st, ConvCase c) {
  const Tensor<float> x = uniform({N, c.c_in, c.hw, c.hw}, 1), k = uniform({c.c_out, c.c_in, 5, 5}, 2),
                      b = uniform({c.c_out}, 3);
  Tensor<float> y = shaped({N, c.c_out, c.hw, c.hw});
  for (auto _ : st) {
    ad::conv2d_forward(x, k, &b, conv_attrs(), y);
    benchmark::DoNotOptimize(y.data());
  }
}

// conv1's input is the image batch: no dJ/dx wanted, as on the tape.
void ours_conv_vjp(benchmark::State& st, ConvCase c, bool want_x) {
  const Tensor<float> x = uniform({N, c.c_in, c.hw, c.hw}, 1), k = uniform({c.c_out, c.c_in, 5, 5}, 2),
                      g = uniform({N, c.c_out, c.hw, c.hw}, 4);
  Tensor<float> gx = xt::zeros<float>(x.shape()), gk = xt::zeros<float>(k.shape()),
                gb = xt::zeros<float>({c.c_out});
  for (auto _ : st) {
    ad::conv2d_vjp(g, x, k, conv_attrs(), want_x ? &gx : nullptr, &gk, &gb);
    benchmark::DoNotOptimize(gk.data());
  }
}

void ours_relu_forward(benchmark::State& st, std::size_t c, std::size_t hw) {
  const Tensor<float> x = uniform({N, c, hw, hw}, 5);
  Tensor<float> y(x.shape());
  for (auto _ : st) {
    ad::relu_forward(x, y);
    benchmark::DoNotOptimize(y.data());
  }
}

void ours_relu_vjp(benchmark::State& st, std::size_t c, std::size_t hw) {
  const Tensor<float> x = uniform({N, c, hw, hw}, 5), g = uniform({N, c, hw, hw}, 6);
  Tensor<float> gx = xt::zeros<float>(x.shape());
  for (auto _ : st) {
    ad::relu_vjp(g, x, &gx);
    benchmark::DoNotOptimize(gx.data());
  }
}

void ours_pool_forward(benchmark::State& st, std::size_t c, std::size_t hw) {
  const Tensor<float> x = uniform({N, c, hw, hw}, 7, 0.0f, 1.0f);  // after ReLU
  Tensor<float> y = shaped({N, c, hw / 2, hw / 2});
  std::vector<int32_t> sw(y.size());
  for (auto _ : st) {
    ad::max_pool2d_forward(x, pool_attrs(), y, sw.data());
    benchmark::DoNotOptimize(y.data());
  }
}

void ours_pool_vjp(benchmark::State& st, std::size_t c, std::size_t hw) {
  const Tensor<float> x = uniform({N, c, hw, hw}, 7, 0.0f, 1.0f), g = uniform({N, c, hw / 2, hw / 2}, 8);
  Tensor<float> y = shaped({N, c, hw / 2, hw / 2});
  std::vector<int32_t> sw(y.size());
  ad::max_pool2d_forward(x, pool_attrs(), y, sw.data());
  Tensor<float> gx = xt::zeros<float>(x.shape());
  for (auto _ : st) {
    ad::max_pool2d_vjp(g, sw, &gx);
    benchmark::DoNotOptimize(gx.data());
  }
}

void ours_linear_forward(benchmark::State& st) {
  const Tensor<float> x = uniform({N, 1568}, 9), w = uniform({1568, 10}, 10), b = uniform({10}, 11);
  Tensor<float> y = shaped({N, 10});
  for (auto _ : st) {
    ad::linear_forward(x, w, &b, y);
    benchmark::DoNotOptimize(y.data());
  }
}

void ours_linear_vjp(benchmark::State& st) {
  const Tensor<float> x = uniform({N, 1568}, 9), w = uniform({1568, 10}, 10), g = uniform({N, 10}, 12);
  Tensor<float> gx = xt::zeros<float>(x.shape()), gw = xt::zeros<float>(w.shape()), gb = xt::zeros<float>({10});
  for (auto _ : st) {
    ad::linear_vjp(g, x, w, &gx, &gw, &gb);
    benchmark::DoNotOptimize(gw.data());
  }
}

std::vector<int> labels_for_batch() {
  std::vector<int> l(N);
  for (std::size_t i = 0; i < N; ++i) l[i] = static_cast<int>(i % 10);
  return l;
}

void ours_softmax_ce_forward(benchmark::State& st) {
  const Tensor<float> z = uniform({N, 10}, 13);
  const std::vector<int> labels = labels_for_batch();
  ad::Tape<float> tape;
  ad::Parameter<float> zp("z", z);  // a parameter, so the probabilities are saved as in training
  for (auto _ : st) {
    tape.reset();
    const ad::Value loss = ad::softmax_cross_entropy(tape, tape.param(zp), labels);
    benchmark::DoNotOptimize(tape.value(loss).data());
  }
}

void ours_softmax_ce_vjp(benchmark::State& st) {
  const Tensor<float> p = uniform({N, 10}, 14, 0.0f, 0.2f), g = xt::ones<float>({1});
  const std::vector<int> l = labels_for_batch();
  const std::vector<int32_t> labels(l.begin(), l.end());
  Tensor<float> gz = xt::zeros<float>({N, std::size_t{10}});
  for (auto _ : st) {
    ad::softmax_cross_entropy_vjp(g, p, labels, &gz);
    benchmark::DoNotOptimize(gz.data());
  }
}

// ---- LibTorch ------------------------------------------------------------------

#ifdef AD_BENCH_HAVE_TORCH
torch::Tensor to_torch(const Tensor<float>& t) {
  std::vector<int64_t> s(t.shape().begin(), t.shape().end());
  return torch::from_blob(const_cast<float*>(t.data()), s, torch::kFloat32).clone();
}

void torch_conv_forward(benchmark::State& st, ConvCase c) {
  c10::InferenceMode guard;
  const torch::Tensor x = to_torch(uniform({N, c.c_in, c.hw, c.hw}, 1));
  const torch::Tensor k = to_torch(uniform({c.c_out, c.c_in, 5, 5}, 2)), b = to_torch(uniform({c.c_out}, 3));
  for (auto _ : st) benchmark::DoNotOptimize(at::conv2d(x, k, b, {1, 1}, {2, 2}).data_ptr());
}

void torch_conv_vjp(benchmark::State& st, ConvCase c, bool want_x) {
  c10::InferenceMode guard;
  const torch::Tensor x = to_torch(uniform({N, c.c_in, c.hw, c.hw}, 1));
  const torch::Tensor k = to_torch(uniform({c.c_out, c.c_in, 5, 5}, 2));
  const torch::Tensor g = to_torch(uniform({N, c.c_out, c.hw, c.hw}, 4));
  const std::vector<int64_t> bias_sizes{static_cast<int64_t>(c.c_out)};
  for (auto _ : st) {
    auto r = at::convolution_backward(g, x, k, bias_sizes, {1, 1}, {2, 2}, {1, 1}, false, {0, 0}, 1,
                                      {want_x, true, true});
    benchmark::DoNotOptimize(std::get<1>(r).data_ptr());
  }
}

void torch_relu_forward(benchmark::State& st, std::size_t c, std::size_t hw) {
  c10::InferenceMode guard;
  const torch::Tensor x = to_torch(uniform({N, c, hw, hw}, 5));
  for (auto _ : st) benchmark::DoNotOptimize(at::relu(x).data_ptr());
}

void torch_relu_vjp(benchmark::State& st, std::size_t c, std::size_t hw) {
  c10::InferenceMode guard;
  const torch::Tensor y = at::relu(to_torch(uniform({N, c, hw, hw}, 5))), g = to_torch(uniform({N, c, hw, hw}, 6));
  for (auto _ : st) benchmark::DoNotOptimize(at::threshold_backward(g, y, 0).data_ptr());
}

void torch_pool_forward(benchmark::State& st, std::size_t c, std::size_t hw) {
  c10::InferenceMode guard;
  const torch::Tensor x = to_torch(uniform({N, c, hw, hw}, 7, 0.0f, 1.0f));
  for (auto _ : st) benchmark::DoNotOptimize(std::get<0>(at::max_pool2d_with_indices(x, {2, 2}, {2, 2})).data_ptr());
}

void torch_pool_vjp(benchmark::State& st, std::size_t c, std::size_t hw) {
  c10::InferenceMode guard;
  const torch::Tensor x = to_torch(uniform({N, c, hw, hw}, 7, 0.0f, 1.0f));
  const torch::Tensor g = to_torch(uniform({N, c, hw / 2, hw / 2}, 8));
  const torch::Tensor idx = std::get<1>(at::max_pool2d_with_indices(x, {2, 2}, {2, 2}));
  for (auto _ : st)
    benchmark::DoNotOptimize(
        at::max_pool2d_with_indices_backward(g, x, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false, idx).data_ptr());
}

void torch_linear_forward(benchmark::State& st) {
  c10::InferenceMode guard;
  const torch::Tensor x = to_torch(uniform({N, 1568}, 9)), w = to_torch(uniform({10, 1568}, 10)),
                      b = to_torch(uniform({10}, 11));
  for (auto _ : st) benchmark::DoNotOptimize(at::linear(x, w, b).data_ptr());
}

void torch_linear_vjp(benchmark::State& st) {
  c10::InferenceMode guard;
  const torch::Tensor x = to_torch(uniform({N, 1568}, 9)), w = to_torch(uniform({10, 1568}, 10)),
                      g = to_torch(uniform({N, 10}, 12));
  for (auto _ : st) {
    // what autograd's addmm backward computes: dx = g W, dW = g^T x, db = sum_n g
    benchmark::DoNotOptimize(g.mm(w).data_ptr());
    benchmark::DoNotOptimize(g.t().mm(x).data_ptr());
    benchmark::DoNotOptimize(g.sum(0).data_ptr());
  }
}

torch::Tensor torch_labels() {
  const std::vector<int> l = labels_for_batch();
  std::vector<int64_t> l64(l.begin(), l.end());
  return torch::from_blob(l64.data(), {static_cast<int64_t>(N)}, torch::kInt64).clone();
}

void torch_softmax_ce_forward(benchmark::State& st) {
  c10::InferenceMode guard;
  const torch::Tensor z = to_torch(uniform({N, 10}, 13)), t = torch_labels();
  for (auto _ : st) benchmark::DoNotOptimize(at::cross_entropy_loss(z, t).data_ptr());
}

void torch_softmax_ce_vjp(benchmark::State& st) {
  c10::InferenceMode guard;
  const torch::Tensor z = to_torch(uniform({N, 10}, 13)), t = torch_labels();
  const torch::Tensor logp = at::log_softmax(z, 1);
  auto [loss, total_weight] = at::nll_loss_forward(logp, t, {}, at::Reduction::Mean, -100);
  const torch::Tensor g = torch::ones({});
  for (auto _ : st) {
    // autograd's chain for cross_entropy: nll_loss backward, then log_softmax backward
    const torch::Tensor glogp = at::nll_loss_backward(g, logp, t, {}, at::Reduction::Mean, -100, total_weight);
    benchmark::DoNotOptimize(at::_log_softmax_backward_data(glogp, logp, 1, torch::kFloat32).data_ptr());
  }
}
#endif

template <class F, class... Args>
void add(const std::string& name, F f, Args... args) {
  benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { f(st, args...); })
      ->Unit(benchmark::kMicrosecond)
      ->UseRealTime();
}

void register_all() {
  add("conv1_forward/ours", ours_conv_forward, kConv1);
  add("conv1_vjp/ours", ours_conv_vjp, kConv1, false);
  add("relu1_forward/ours", ours_relu_forward, std::size_t{16}, std::size_t{28});
  add("relu1_vjp/ours", ours_relu_vjp, std::size_t{16}, std::size_t{28});
  add("pool1_forward/ours", ours_pool_forward, std::size_t{16}, std::size_t{28});
  add("pool1_vjp/ours", ours_pool_vjp, std::size_t{16}, std::size_t{28});
  add("conv2_forward/ours", ours_conv_forward, kConv2);
  add("conv2_vjp/ours", ours_conv_vjp, kConv2, true);
  add("relu2_forward/ours", ours_relu_forward, std::size_t{32}, std::size_t{14});
  add("relu2_vjp/ours", ours_relu_vjp, std::size_t{32}, std::size_t{14});
  add("pool2_forward/ours", ours_pool_forward, std::size_t{32}, std::size_t{14});
  add("pool2_vjp/ours", ours_pool_vjp, std::size_t{32}, std::size_t{14});
  add("linear_forward/ours", ours_linear_forward);
  add("linear_vjp/ours", ours_linear_vjp);
  add("softmax_ce_forward/ours", ours_softmax_ce_forward);
  add("softmax_ce_vjp/ours", ours_softmax_ce_vjp);
#ifdef AD_BENCH_HAVE_TORCH
  add("conv1_forward/libtorch", torch_conv_forward, kConv1);
  add("conv1_vjp/libtorch", torch_conv_vjp, kConv1, false);
  add("relu1_forward/libtorch", torch_relu_forward, std::size_t{16}, std::size_t{28});
  add("relu1_vjp/libtorch", torch_relu_vjp, std::size_t{16}, std::size_t{28});
  add("pool1_forward/libtorch", torch_pool_forward, std::size_t{16}, std::size_t{28});
  add("pool1_vjp/libtorch", torch_pool_vjp, std::size_t{16}, std::size_t{28});
  add("conv2_forward/libtorch", torch_conv_forward, kConv2);
  add("conv2_vjp/libtorch", torch_conv_vjp, kConv2, true);
  add("relu2_forward/libtorch", torch_relu_forward, std::size_t{32}, std::size_t{14});
  add("relu2_vjp/libtorch", torch_relu_vjp, std::size_t{32}, std::size_t{14});
  add("pool2_forward/libtorch", torch_pool_forward, std::size_t{32}, std::size_t{14});
  add("pool2_vjp/libtorch", torch_pool_vjp, std::size_t{32}, std::size_t{14});
  add("linear_forward/libtorch", torch_linear_forward);
  add("linear_vjp/libtorch", torch_linear_vjp);
  add("softmax_ce_forward/libtorch", torch_softmax_ce_forward);
  add("softmax_ce_vjp/libtorch", torch_softmax_ce_vjp);
#endif
}

}  // namespace

int main(int argc, char** argv) {
  // --threads=N (default 1): both engines' thread count; the rest goes to Google Benchmark.
  int threads = 1;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) threads = std::atoi(argv[i] + 10);
    else rest.push_back(argv[i]);
  }
  ad::set_num_threads(threads);
#ifdef AD_BENCH_HAVE_TORCH
  torch::set_num_threads(threads);
#endif
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  if (benchmark::ReportUnrecognizedArguments(n, rest.data())) return 1;
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
