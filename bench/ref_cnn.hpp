// ref-CNN (issue 3) on our tape, shared by the benchmark children: bench_ours times
// it, bench_onednn checks its own first-batch loss and gradients against it.
//
//   1x28x28 -> conv 5x5 1->16 pad 2 -> ReLU -> max pool 2x2 -> conv 5x5 16->32 pad 2
//   -> ReLU -> max pool 2x2 -> flatten (1568) -> linear 10 -> softmax cross-entropy
#pragma once

#include <array>
#include <cmath>
#include <random>
#include <vector>

#include "autodiff/ad.hpp"

namespace bench {

using ad::Parameter, ad::Tensor, ad::Value;

inline Tensor<float> he_normal(std::vector<std::size_t> shape, std::size_t fan_in, std::mt19937& rng) {
  Tensor<float> t(shape);
  std::normal_distribution<float> d(0.0f, std::sqrt(2.0f / static_cast<float>(fan_in)));
  for (float& v : t) v = d(rng);
  return t;
}

struct RefCnn {
  Parameter<float> k1, b1, k2, b2, w3, b3;
  explicit RefCnn(unsigned seed) {
    std::mt19937 rng(seed);
    k1 = Parameter<float>("k1", he_normal({16, 1, 5, 5}, 25, rng));
    b1 = Parameter<float>("b1", xt::zeros<float>({16}));
    k2 = Parameter<float>("k2", he_normal({32, 16, 5, 5}, 400, rng));
    b2 = Parameter<float>("b2", xt::zeros<float>({32}));
    w3 = Parameter<float>("w3", he_normal({1568, 10}, 1568, rng));  // (D_in, D_out)
    b3 = Parameter<float>("b3", xt::zeros<float>({10}));
  }
  std::array<Parameter<float>*, 6> params() { return {&k1, &b1, &k2, &b2, &w3, &b3}; }

  // How each convolution layer is recorded (bench_ours --variant): one fused op
  // conv2d_relu_max_pool2d (the default, "fused"), or the three ops conv2d, relu,
  // max_pool2d ("relu-pool"), or conv2d, max_pool2d, relu ("pool-relu").
  enum class Layers { Fused, ReluPool, PoolRelu };
  Layers layers = Layers::Fused;

  // The logits (N, 10), recorded on the tape.
  Value forward(ad::Tape<float>& tape, const Tensor<float>& images) {
    const ad::Conv2dOptions conv{.padding = {2, 2}};
    auto layer = [&](Value in, Parameter<float>& k, Parameter<float>& b) {
      if (layers == Layers::Fused) return ad::conv2d_relu_max_pool2d(tape, in, tape.param(k), tape.param(b), conv);
      const Value z = ad::conv2d(tape, in, tape.param(k), tape.param(b), conv);
      return layers == Layers::PoolRelu ? ad::relu(tape, ad::max_pool2d(tape, z)) : ad::max_pool2d(tape, ad::relu(tape, z));
    };
    const Value x = tape.input(images);
    const Value a2 = layer(layer(x, k1, b1), k2, b2);
    return ad::linear(tape, ad::flatten(tape, a2), tape.param(w3), tape.param(b3));
  }

  void sgd(float lr) {
    for (Parameter<float>* p : params()) {  // value -= lr * grad; zero_grad
      float* v = p->value.data();
      float* g = p->grad.data();
      for (std::size_t i = 0; i < p->value.size(); ++i) v[i] -= lr * g[i];
      p->zero_grad();
    }
  }
};

constexpr float kLr = 0.05f;  // SGD learning rate of every engine

}  // namespace bench
