// Layers built from the tape's ops, a Sequential container, and the design
// document's 3-layer CNN (conv-act-pool, conv-act-pool, flatten, fully connected).
// Each layer owns its ad::Parameter's, which outlive every step's tape.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "autodiff/ad.hpp"

namespace nn {

using ad::Parameter;
using ad::Tape;
using ad::Value;

enum class Activation { Relu, LeakyRelu, Sigmoid, Tanh };
// Weight initialisation: He normal (ReLU family), Xavier uniform (sigmoid/tanh, the
// output layer), or PyTorch's default for Conv2d/Linear (weights and biases
// U(-1/sqrt(fan_in), 1/sqrt(fan_in))), for side-by-side comparisons with LibTorch.
// He and Xavier start biases at 0.
enum class Init { He, Xavier, Torch };
enum class PoolKind { Max, Avg };

// "relu" / "leaky_relu" / "sigmoid" / "tanh" and back; throws std::invalid_argument.
// Likewise "max" / "avg" for PoolKind and "he" / "xavier" / "torch" for Init.
Activation parse_activation(const std::string& s);
std::string to_string(Activation a);
PoolKind parse_pool(const std::string& s);
std::string to_string(PoolKind p);
Init parse_init(const std::string& s);

// He (Kaiming) normal: N(0, 2 / fan_in), for ReLU-family layers.
template <class T> ad::Tensor<T> he_normal(const ad::Shape& shape, std::size_t fan_in, std::mt19937_64& rng);
// Xavier (Glorot) uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), for sigmoid/tanh.
template <class T> ad::Tensor<T> xavier_uniform(const ad::Shape& shape, std::size_t fan_in, std::size_t fan_out, std::mt19937_64& rng);

// A layer maps one value on the tape to another; `name` prefixes its parameters
// ("conv1.weight") and labels its nodes.
template <class T>
class Layer {
 public:
  explicit Layer(std::string name) : name_(std::move(name)) {}
  virtual ~Layer() = default;
  virtual Value forward(Tape<T>& tape, Value x) = 0;
  virtual std::vector<Parameter<T>*> parameters() { return {}; }
  const std::string& name() const { return name_; }

 protected:
  std::string name_;
};

// (N, C_in, H, W) -> (N, C_out, OH, OW). Kernel (C_out, C_in, k, k), bias (C_out).
template <class T>
class Conv2d : public Layer<T> {
 public:
  Conv2d(std::string name, int c_in, int c_out, std::array<int, 2> kernel, ad::Conv2dOptions opt, Init init,
         std::mt19937_64& rng);
  Value forward(Tape<T>& tape, Value x) override;
  std::vector<Parameter<T>*> parameters() override { return {&weight, &bias}; }
  Parameter<T> weight, bias;
  ad::Conv2dOptions options;
};

// (N, D_in) -> (N, D_out). Weight (D_in, D_out): the document's W^[3] layout.
template <class T>
class Linear : public Layer<T> {
 public:
  Linear(std::string name, int d_in, int d_out, Init init, std::mt19937_64& rng);
  Value forward(Tape<T>& tape, Value x) override;
  std::vector<Parameter<T>*> parameters() override { return {&weight, &bias}; }
  Parameter<T> weight, bias;
};

template <class T>
class Pool2d : public Layer<T> {
 public:
  Pool2d(std::string name, PoolKind kind, ad::Pool2dOptions opt) : Layer<T>(std::move(name)), kind(kind), options(opt) {}
  Value forward(Tape<T>& tape, Value x) override;
  PoolKind kind;
  ad::Pool2dOptions options;
};

// The two pooling layers by name.
template <class T>
struct MaxPool2d : Pool2d<T> {
  explicit MaxPool2d(std::string name, ad::Pool2dOptions opt = {}) : Pool2d<T>(std::move(name), PoolKind::Max, opt) {}
};
template <class T>
struct AvgPool2d : Pool2d<T> {
  explicit AvgPool2d(std::string name, ad::Pool2dOptions opt = {}) : Pool2d<T>(std::move(name), PoolKind::Avg, opt) {}
};

template <class T>
class ActivationLayer : public Layer<T> {
 public:
  ActivationLayer(std::string name, Activation kind, double slope = 0.01)
      : Layer<T>(std::move(name)), kind(kind), slope(slope) {}
  Value forward(Tape<T>& tape, Value x) override;
  Activation kind;
  double slope;
};

template <class T>
class Flatten : public Layer<T> {
 public:
  explicit Flatten(std::string name = "flatten") : Layer<T>(std::move(name)) {}
  Value forward(Tape<T>& tape, Value x) override;
};

// Layers applied in order. Owns them.
template <class T>
class Sequential {
 public:
  template <class L, class... Args>
  L& add(Args&&... args) {
    layers_.push_back(std::make_unique<L>(std::forward<Args>(args)...));
    return static_cast<L&>(*layers_.back());
  }
  Value forward(Tape<T>& tape, Value x);
  // Every parameter, in layer order (the order checkpoints use).
  std::vector<Parameter<T>*> parameters();
  const std::vector<std::unique_ptr<Layer<T>>>& layers() const { return layers_; }

 private:
  std::vector<std::unique_ptr<Layer<T>>> layers_;
};

// The document's 3-layer CNN; defaults are the reference CNN ("ref-CNN"):
// 1x28x28 -> conv 5x5 1->16 pad 2 -> ReLU -> max pool 2x2/2 -> conv 5x5 16->32 pad 2
// -> ReLU -> max pool 2x2/2 -> flatten (1568) -> linear 10.
struct CnnConfig {
  int in_channels = 1, height = 28, width = 28;
  std::array<int, 2> channels{16, 32};
  int kernel = 5, padding = 2, stride = 1;
  PoolKind pool = PoolKind::Max;
  int pool_window = 2, pool_stride = 2;
  Activation activation = Activation::Relu;
  int classes = 10;
  // Conv layers: He for the ReLU family, Xavier otherwise; fc3: Xavier. Torch: PyTorch's defaults.
  bool torch_init = false;
  // "cnn(1x28x28,c16-32,k5p2s1,max2/2,relu,10)": stored in checkpoints to refuse a
  // checkpoint of another architecture.
  std::string tag() const;
};

// Builds the CNN with seeded initialisation (see CnnConfig::torch_init).
// Throws ad::ShapeError if the configuration does not fit the input size.
template <class T>
Sequential<T> make_cnn(const CnnConfig& cfg, uint64_t seed);

}  // namespace nn
