// Benchmark child for our engine: ref-CNN (issue 3) built directly from ops on a
// Tape<float>, trained with plain SGD or run for inference, on real Fashion-MNIST.
// Prints the line protocol of bench_util.hpp; the driver (bench.cpp) runs it.
//
//   1x28x28 -> conv 5x5 1->16 pad 2 -> ReLU -> max pool 2x2 -> conv 5x5 16->32 pad 2
//   -> ReLU -> max pool 2x2 -> flatten (1568) -> linear 10 -> softmax cross-entropy
//
// With --bookkeeping-pairs P it also times P pairs of steps on the same batch: one
// through the tape, one calling the same forward and VJP kernels directly on
// preallocated buffers (no tape). Their difference is the tape's bookkeeping:
// recording nodes, handing out slots and gradient buffers, the backward dispatch.
// The raw step also times its zeroing of the gradient buffers (the tape zeroes the
// same buffers: VJPs add into gradients that start at 0) as a share of the tape step.
//
// Each conv -> ReLU -> max pool is recorded as the one op conv2d_relu_max_pool2d
// (--variant fused, the default). --variant relu-pool records the three ops apart;
// --variant pool-relu records max pool before ReLU: the same function and gradients
// (ReLU is monotone, so relu(max(window)) = max(relu(window)), with the same winner
// whenever it is positive and a zero gradient otherwise), with ReLU on 4x fewer values.
#include <cmath>

#include "autodiff/ad.hpp"
#include "bench_util.hpp"
#include "ops/blas.hpp"
#include "ref_cnn.hpp"

namespace {

using ad::Parameter, ad::Tensor, ad::Value;
using bench::RefCnn, bench::kLr;

// One SGD step through the tape. Returns the loss.
[[gnu::noinline]] float train_step(ad::Tape<float>& tape, RefCnn& m, const Tensor<float>& images, const std::vector<int>& labels) {
  tape.reset();
  const Value loss = ad::softmax_cross_entropy(tape, m.forward(tape, images), labels);
  tape.backward(loss);
  m.sgd(kLr);
  return tape.value(loss)();
}

// The same step with the kernels called directly on preallocated buffers: the
// work of a step without the tape (its VJPs still add into zeroed gradients).
struct RawStep {
  ad::Conv2dOptions conv;
  ad::Pool2dOptions pool;
  Tensor<float> x, z1, r1, p1, z2, r2, p2, f, z3, probs;
  Tensor<float> gz3, gf, gp2, gr2, gz2, gp1, gr1, gz1, seed;
  std::vector<int32_t> sw1, sw2, lab;

  explicit RawStep(std::size_t n) {
    conv.padding = {2, 2};
    pool.window = {2, 2}, pool.stride = {2, 2};
    auto t = [](std::vector<std::size_t> s) { return Tensor<float>(s); };
    x = t({n, 1, 28, 28});
    z1 = r1 = gz1 = gr1 = t({n, 16, 28, 28});
    p1 = gp1 = t({n, 16, 14, 14});
    z2 = r2 = gz2 = gr2 = t({n, 32, 14, 14});
    p2 = gp2 = t({n, 32, 7, 7});
    f = gf = t({n, 1568});
    z3 = probs = gz3 = t({n, 10});
    seed = xt::ones<float>({1});
    sw1.resize(p1.size()), sw2.resize(p2.size()), lab.resize(n);
  }

  double zeroing_seconds = 0;  // of the last run()

  [[gnu::noinline]] float run(RefCnn& m, const Tensor<float>& images, const std::vector<int>& labels) {
    const bool fused = m.layers == RefCnn::Layers::Fused;
    std::copy(images.begin(), images.end(), x.begin());
    if (fused) {
      ad::conv2d_relu_max_pool2d_forward(x, m.k1.value, &m.b1.value, conv, pool, p1, sw1.data());
      ad::conv2d_relu_max_pool2d_forward(p1, m.k2.value, &m.b2.value, conv, pool, p2, sw2.data());
    } else {
      ad::conv2d_forward(x, m.k1.value, &m.b1.value, conv, z1);
      ad::relu_forward(z1, r1);
      ad::max_pool2d_forward(r1, pool, p1, sw1.data());
      ad::conv2d_forward(p1, m.k2.value, &m.b2.value, conv, z2);
      ad::relu_forward(z2, r2);
      ad::max_pool2d_forward(r2, pool, p2, sw2.data());
    }
    ad::flatten_forward(p2, f);
    ad::linear_forward(f, m.w3.value, &m.b3.value, z3);
    // softmax cross-entropy, as in ops/loss.cpp
    const std::size_t N = labels.size(), K = 10;
    float total = 0;
    for (std::size_t n = 0; n < N; ++n) {
      const float* zn = z3.data() + n * K;
      float mx = zn[0];
      for (std::size_t k = 1; k < K; ++k) mx = std::max(mx, zn[k]);
      float s = 0;
      for (std::size_t k = 0; k < K; ++k) s += std::exp(zn[k] - mx);
      const float lse = mx + std::log(s);
      total += lse - zn[labels[n]];
      for (std::size_t k = 0; k < K; ++k) probs.data()[n * K + k] = std::exp(zn[k] - lse);
      lab[n] = labels[n];
    }
    const auto t0 = bench::Clock::now();
    if (fused) {
      for (Tensor<float>* g : {&gz3, &gf, &gp2, &gp1}) ad::zero_fill(*g);  // as the tape does
    } else {
      for (Tensor<float>* g : {&gz3, &gf, &gp2, &gr2, &gz2, &gp1, &gr1, &gz1}) ad::zero_fill(*g);
    }
    zeroing_seconds = bench::seconds_since(t0);
    ad::softmax_cross_entropy_vjp(seed, probs, lab, &gz3);
    ad::linear_vjp(gz3, f, m.w3.value, &gf, &m.w3.grad, &m.b3.grad);
    ad::flatten_vjp(gf, &gp2);
    if (fused) {
      ad::conv2d_relu_max_pool2d_vjp(gp2, p2, sw2, p1, m.k2.value, conv, &gp1, &m.k2.grad, &m.b2.grad);
      ad::conv2d_relu_max_pool2d_vjp<float>(gp1, p1, sw1, x, m.k1.value, conv, nullptr, &m.k1.grad, &m.b1.grad);
      m.sgd(kLr);
      return total / static_cast<float>(N);
    }
    ad::max_pool2d_vjp(gp2, sw2, &gr2);
    ad::relu_vjp(gr2, z2, &gz2);
    ad::conv2d_vjp(gz2, p1, m.k2.value, conv, &gp1, &m.k2.grad, &m.b2.grad);
    ad::max_pool2d_vjp(gp1, sw1, &gr1);
    ad::relu_vjp(gr1, z1, &gz1);
    ad::conv2d_vjp<float>(gz1, x, m.k1.value, conv, nullptr, &m.k1.grad, &m.b1.grad);
    m.sgd(kLr);
    return total / static_cast<float>(N);
  }
};

int run(const bench::ChildOptions& o) {
  ad::set_num_threads(o.threads);
  bench::Batches data(o.data, o.mode == "train", o.batch);
  RefCnn model(1);
  model.layers = o.variant == "fused"       ? RefCnn::Layers::Fused
                 : o.variant == "pool-relu" ? RefCnn::Layers::PoolRelu
                                            : RefCnn::Layers::ReluPool;
  ad::Tape<float> tape;
  Tensor<float> images;
  std::vector<int> labels;
  float loss = 0;

  auto step = [&] {
    data.next(images, labels);
    if (o.mode == "train") {
      loss = train_step(tape, model, images, labels);
    } else {
      ad::NoGradGuard guard(tape);
      tape.reset();
      const Value z = model.forward(tape, images);
      loss = tape.value(z).data()[0];  // keep the result alive
    }
  };
  bench::time_blocks(o, step);
  if (o.mode == "train" && o.bookkeeping_pairs > 0 && model.layers != RefCnn::Layers::PoolRelu) {  // RawStep's orders
    RawStep raw(o.batch);
    RefCnn raw_model(1);
    raw_model.layers = model.layers;
    raw.run(raw_model, images, labels);  // warm its buffers
    for (int i = 0; i < o.bookkeeping_pairs; ++i) {
      data.next(images, labels);
      double t_tape = 0, t_raw = 0;
      for (int k = 0; k < 2; ++k) {  // alternate which one runs first
        const auto t0 = bench::Clock::now();
        if ((i + k) % 2 == 0) {
          train_step(tape, model, images, labels);
          t_tape = bench::seconds_since(t0);
        } else {
          raw.run(raw_model, images, labels);
          t_raw = bench::seconds_since(t0);
        }
      }
      std::printf("bookkeeping %.6f\n", (t_tape - t_raw) / t_tape);
      std::printf("zeroing %.6f\n", raw.zeroing_seconds / t_tape);
    }
  }
  std::printf("loss %.6f\n", static_cast<double>(loss));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(bench::parse_child_options(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ours: %s\n", e.what());
    return 1;
  }
}
