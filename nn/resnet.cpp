// The small ResNet: basic blocks and the network around them.
#include "nn/resnet.hpp"

#include <stdexcept>

#include <fmt/ranges.h>

namespace nn {

namespace {
ad::Conv2dOptions conv3x3(int stride) { return {.padding = {1, 1}, .stride = {stride, stride}}; }
}  // namespace

template <class T>
BasicBlock<T>::BasicBlock(int c_in, int c_out, int stride, std::mt19937_64& rng)
    : conv1(this->template register_module<Conv2d<T>>("conv1", c_in, c_out, std::array{3, 3}, conv3x3(stride), Init::He,
                                                       rng, /*bias=*/false)),
      bn1(this->template register_module<BatchNorm2d<T>>("bn1", c_out)),
      conv2(this->template register_module<Conv2d<T>>("conv2", c_out, c_out, std::array{3, 3}, conv3x3(1), Init::He, rng,
                                                       /*bias=*/false)),
      bn2(this->template register_module<BatchNorm2d<T>>("bn2", c_out)),
      downsample(nullptr) {
  if (stride != 1 || c_in != c_out) {
    downsample = &this->template register_module<Sequential<T>>("downsample");
    downsample->template add<Conv2d<T>>("0", c_in, c_out, std::array{1, 1}, ad::Conv2dOptions{.stride = {stride, stride}},
                                        Init::He, rng, /*bias=*/false);
    downsample->template add<BatchNorm2d<T>>("1", c_out);
  }
}

template <class T>
Value BasicBlock<T>::forward(Tape<T>& tape, Value x) {
  const std::source_location at = this->call_site();
  const Value h = ad::relu(tape, bn1(tape, conv1(tape, x, at), at), at);
  const Value y = bn2(tape, conv2(tape, h, at), at);
  const Value shortcut = downsample ? (*downsample)(tape, x, at) : x;
  return tape.set_label(ad::relu(tape, ad::add(tape, y, shortcut, at), at), this->name());
}

std::string ResNetConfig::tag() const {
  return fmt::format("resnet({}x{}x{},w{},b{},{}{})", in_channels, height, width, fmt::join(widths, "-"), blocks,
                     first_stride == 1 ? "" : fmt::format("s{},", first_stride), classes);
}

template <class T>
ResNet<T>::ResNet(const ResNetConfig& cfg, uint64_t seed) : ResNet(cfg, std::mt19937_64(seed)) {}

template <class T>
ResNet<T>::ResNet(const ResNetConfig& cfg, std::mt19937_64&& rng)
    : cfg_(cfg),
      stem([&]() -> Sequential<T>& {
        if (cfg.widths.empty()) throw std::invalid_argument("nn::ResNet: widths is empty; give one per stage");
        for (const int w : cfg.widths)
          if (w <= 0) throw std::invalid_argument(fmt::format("nn::ResNet: width {} must be positive", w));
        if (cfg.blocks <= 0) throw std::invalid_argument(fmt::format("nn::ResNet: blocks is {}; it must be positive", cfg.blocks));
        if (cfg.first_stride != 1 && cfg.first_stride != 2)
          throw std::invalid_argument(fmt::format("nn::ResNet: first_stride is {}; it must be 1 or 2", cfg.first_stride));
        return this->template register_module<Sequential<T>>("stem");
      }()),
      pool([&]() -> GlobalAvgPool2d<T>& {
        stem.template add<Conv2d<T>>("conv", cfg.in_channels, cfg.widths[0], std::array{3, 3}, conv3x3(1), Init::He, rng,
                                     /*bias=*/false);
        stem.template add<BatchNorm2d<T>>("bn", cfg.widths[0]);
        stem.template add<ActivationLayer<T>>("relu", Activation::Relu);
        int c = cfg.widths[0];
        for (std::size_t s = 0; s < cfg.widths.size(); ++s) {
          auto& stage = this->template register_module<Sequential<T>>(fmt::format("stage{}", s + 1));
          for (int b = 0; b < cfg.blocks; ++b) {
            const int stride = b > 0 ? 1 : s > 0 ? 2 : cfg.first_stride;
            stage.template add<BasicBlock<T>>(c, cfg.widths[s], stride, rng);
            c = cfg.widths[s];
          }
          stages.push_back(&stage);
        }
        return this->template register_module<GlobalAvgPool2d<T>>("pool");
      }()),
      fc(this->template register_module<Linear<T>>("fc", cfg.widths.back(), cfg.classes, Init::Torch, rng)) {}

template <class T>
Value ResNet<T>::forward(Tape<T>& tape, Value x) {
  const std::source_location at = this->call_site();
  x = stem(tape, x, at);
  for (Sequential<T>* stage : stages) x = (*stage)(tape, x, at);
  return fc(tape, pool(tape, x, at), at);
}

template class BasicBlock<float>;
template class BasicBlock<double>;
template class ResNet<float>;
template class ResNet<double>;

}  // namespace nn
