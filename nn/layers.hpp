// Layers built from the tape's ops, a Sequential container, and the design
// document's 3-layer CNN (conv-act-pool, conv-act-pool, flatten, fully connected).
// Layers are modules (nn/module.hpp): each owns its ad::Parameter's, which outlive
// every step's tape.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "autodiff/ad.hpp"
#include "nn/module.hpp"

namespace nn {

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

// The library's layers are modules (nn/module.hpp). Each constructor comes in two
// forms: without a name, for register_module (which names the layer), and with the
// layer's name first (Sequential::add registers the layer under it).
// `Layer` is the modules' former name.
template <class T>
using Layer = Module<T>;

// (N, C_in, H, W) -> (N, C_out, OH, OW). Parameters "weight" (C_out, C_in/groups, KH, KW)
// and, unless `bias` is false, "bias" (C_out). Throws std::invalid_argument naming the
// layer when a channel count or kernel size is not positive, or groups does not divide
// both channel counts.
template <class T>
class Conv2d : public Module<T> {
 public:
  Conv2d(int c_in, int c_out, std::array<int, 2> kernel, ad::Conv2dOptions opt, Init init, std::mt19937_64& rng,
         bool bias = true);
  Conv2d(std::string name, int c_in, int c_out, std::array<int, 2> kernel, ad::Conv2dOptions opt, Init init,
         std::mt19937_64& rng, bool bias = true);
  Value forward(Tape<T>& tape, Value x) override;
  Parameter<T>& weight;
  Parameter<T>* bias;  // nullptr without a bias
  ad::Conv2dOptions options;
};

// (N, D_in) -> (N, D_out). Parameters "weight" (D_in, D_out): the document's W^[3]
// layout, and "bias" (D_out) unless `bias` is false.
template <class T>
class Linear : public Module<T> {
 public:
  Linear(int d_in, int d_out, Init init, std::mt19937_64& rng, bool bias = true);
  Linear(std::string name, int d_in, int d_out, Init init, std::mt19937_64& rng, bool bias = true);
  Value forward(Tape<T>& tape, Value x) override;
  Parameter<T>& weight;
  Parameter<T>* bias;  // nullptr without a bias
};

template <class T>
class Pool2d : public Module<T> {
 public:
  Pool2d(PoolKind kind, ad::Pool2dOptions opt) : kind(kind), options(opt) {}
  Pool2d(std::string name, PoolKind kind, ad::Pool2dOptions opt) : Module<T>(std::move(name)), kind(kind), options(opt) {}
  Value forward(Tape<T>& tape, Value x) override;
  PoolKind kind;
  ad::Pool2dOptions options;
};

// The two pooling layers by name.
template <class T>
struct MaxPool2d : Pool2d<T> {
  explicit MaxPool2d(ad::Pool2dOptions opt = {}) : Pool2d<T>(PoolKind::Max, opt) {}
  explicit MaxPool2d(std::string name, ad::Pool2dOptions opt = {}) : Pool2d<T>(std::move(name), PoolKind::Max, opt) {}
};
template <class T>
struct AvgPool2d : Pool2d<T> {
  explicit AvgPool2d(ad::Pool2dOptions opt = {}) : Pool2d<T>(PoolKind::Avg, opt) {}
  explicit AvgPool2d(std::string name, ad::Pool2dOptions opt = {}) : Pool2d<T>(std::move(name), PoolKind::Avg, opt) {}
};

template <class T>
class ActivationLayer : public Module<T> {
 public:
  explicit ActivationLayer(Activation kind, double slope = 0.01) : kind(kind), slope(slope) {}
  ActivationLayer(std::string name, Activation kind, double slope = 0.01)
      : Module<T>(std::move(name)), kind(kind), slope(slope) {}
  Value forward(Tape<T>& tape, Value x) override;
  Activation kind;
  double slope;
};

// Batch normalisation per channel of (N, C, H, W) (ad::batch_norm2d). Parameters
// "weight" (C, ones) and "bias" (C, zeros) unless `affine` is false; buffers
// "running_mean" (C, zeros) and "running_var" (C, ones). In training mode it normalises
// by the batch statistics and updates the running ones with `momentum`; in evaluation
// mode it uses the running statistics (Module::train / eval).
struct BatchNorm2dOptions {
  double momentum = 0.1;
  double eps = 1e-5;
  bool affine = true;
};
template <class T>
class BatchNorm2d : public Module<T> {
 public:
  explicit BatchNorm2d(int channels, BatchNorm2dOptions opt = {});
  BatchNorm2d(std::string name, int channels, BatchNorm2dOptions opt = {});
  Value forward(Tape<T>& tape, Value x) override;
  Parameter<T>* weight;  // nullptr without the affine transform
  Parameter<T>* bias;
  ad::Tensor<T>& running_mean;
  ad::Tensor<T>& running_var;
  BatchNorm2dOptions options;
};

// Inverted dropout (ad::dropout) with drop probability p in [0, 1]: in training mode
// each element is zeroed with probability p and the rest scaled by 1/(1 - p); the
// identity in evaluation mode. Every call draws a fresh mask from (seed, the layer's
// path, the number of training calls so far); that count is the buffer "calls", so a
// run resumed from a checkpoint draws the masks the uninterrupted run would have
// (exactly up to 2^24 calls, the largest whole number a float32 checkpoint holds).
template <class T>
class Dropout : public Module<T> {
 public:
  explicit Dropout(double p = 0.5, uint64_t seed = 0);
  Dropout(std::string name, double p = 0.5, uint64_t seed = 0);
  Value forward(Tape<T>& tape, Value x) override;
  double p;
  uint64_t seed;
  ad::Tensor<T>& calls;  // (1): training-mode calls so far
};

// (N, C_in, H, W) -> (N, C_out, OH, OW), the transpose of Conv2d (ad::conv_transpose2d).
// Parameters "weight" (C_in, C_out/groups, KH, KW) and, unless `bias` is false, "bias"
// (C_out); fan-in for the initialisation is (C_out/groups)*KH*KW, as PyTorch's.
template <class T>
class ConvTranspose2d : public Module<T> {
 public:
  ConvTranspose2d(int c_in, int c_out, std::array<int, 2> kernel, ad::ConvTranspose2dOptions opt, Init init,
                  std::mt19937_64& rng, bool bias = true);
  ConvTranspose2d(std::string name, int c_in, int c_out, std::array<int, 2> kernel, ad::ConvTranspose2dOptions opt,
                  Init init, std::mt19937_64& rng, bool bias = true);
  Value forward(Tape<T>& tape, Value x) override;
  Parameter<T>& weight;
  Parameter<T>* bias;
  ad::ConvTranspose2dOptions options;
};

// (N, C, H, W) -> (N, C): the mean of each channel's plane.
template <class T>
class GlobalAvgPool2d : public Module<T> {
 public:
  explicit GlobalAvgPool2d(std::string name = {}) : Module<T>(std::move(name)) {}
  Value forward(Tape<T>& tape, Value x) override;
};

// (N, C, H, W) -> (N, C*H*W).
template <class T>
class Flatten : public Module<T> {
 public:
  explicit Flatten(std::string name = "flatten") : Module<T>(std::move(name)) {}
  Value forward(Tape<T>& tape, Value x) override;
};

// Modules applied in order; owns them. A module added with a name is registered under
// it ("conv1", so its parameters are "conv1.weight", ...), one without a name under its
// position ("0", "1", ...), as in LibTorch.
template <class T>
class Sequential : public Module<T> {
 public:
  Sequential() = default;
  explicit Sequential(std::string name) : Module<T>(std::move(name)) {}
  // Constructs L(args...) and appends it; returns it.
  template <class L, class... Args>
  L& add(Args&&... args) {
    auto layer = std::make_unique<L>(std::forward<Args>(args)...);
    const std::string name = layer->name().empty() ? std::to_string(size_) : layer->name();
    ++size_;
    return this->register_module(name, std::move(layer));
  }
  // Runs the modules in order. Where a Conv2d is followed by a ReLU ActivationLayer and
  // a max Pool2d (the classic CNN layer), the three are recorded as the one op
  // ad::conv2d_relu_max_pool2d (same values and gradients, faster, no stored
  // convolution output), labelled "conv1+act1+pool1"; set_fusion(false) records them
  // one by one (to read or step through the intermediate values).
  Value forward(Tape<T>& tape, Value x) override;
  // The modules, in order.
  std::vector<Module<T>*> layers();
  void set_fusion(bool on) { fusion_ = on; }
  bool fusion() const { return fusion_; }

 private:
  std::size_t size_ = 0;
  bool fusion_ = true;
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
