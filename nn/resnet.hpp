// A small ResNet (He et al. 2016, "basic" blocks) for 1-channel images such as
// Fashion-MNIST: a conv-BN-ReLU stem, stages of residual blocks (the first block of every
// stage after the first halves the resolution with stride 2 and a 1x1 conv + BN on its
// shortcut), global average pooling and a linear classifier. Written as modules with
// their own forward, as a user would write them (nn/module.hpp).
#pragma once

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "nn/layers.hpp"

namespace nn {

// relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), convs 3x3 without bias (batch
// norm follows). shortcut: the identity, or, when the block changes the channels or the
// resolution, "downsample": a 1x1 conv with the block's stride and a batch norm.
template <class T>
class BasicBlock : public Module<T> {
 public:
  BasicBlock(int c_in, int c_out, int stride, std::mt19937_64& rng);
  Value forward(Tape<T>& tape, Value x) override;

  Conv2d<T>& conv1;
  BatchNorm2d<T>& bn1;
  Conv2d<T>& conv2;
  BatchNorm2d<T>& bn2;
  Sequential<T>* downsample;  // nullptr: the identity shortcut
};

struct ResNetConfig {
  int in_channels = 1, height = 28, width = 28;
  std::vector<int> widths{16, 32, 64};  // channels of each stage (the stem has widths[0])
  int blocks = 1;                        // residual blocks per stage
  // Stride of the first stage's first block: 1 keeps the stem's resolution, 2 halves it
  // (every later stage halves it in any case).
  int first_stride = 1;
  int classes = 10;
  // "resnet(1x28x28,w16-32-64,b1,10)" ("...,b1,s2,10" with first_stride 2): stored in checkpoints.
  std::string tag() const;
};

// x (N, C, H, W) -> stem (conv 3x3, BN, ReLU) -> stage1 .. stageK -> global average
// pool (N, widths.back()) -> fc (N, classes). Convs: He initialisation; fc: PyTorch's.
// Throws std::invalid_argument for an empty or non-positive width or block count.
template <class T>
class ResNet : public Module<T> {
 public:
  ResNet(const ResNetConfig& cfg, uint64_t seed);
  Value forward(Tape<T>& tape, Value x) override;
  const ResNetConfig& config() const { return cfg_; }

 private:
  ResNet(const ResNetConfig& cfg, std::mt19937_64&& rng);
  ResNetConfig cfg_;

 public:
  Sequential<T>& stem;
  std::vector<Sequential<T>*> stages;
  GlobalAvgPool2d<T>& pool;
  Linear<T>& fc;
};

extern template class BasicBlock<float>;
extern template class BasicBlock<double>;
extern template class ResNet<float>;
extern template class ResNet<double>;

}  // namespace nn
