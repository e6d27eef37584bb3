// Layers, initialisers and the 3-layer CNN.
#include "nn/layers.hpp"

#include <cmath>
#include <stdexcept>
#include <typeinfo>

namespace nn {

Activation parse_activation(const std::string& s) {
  if (s == "relu") return Activation::Relu;
  if (s == "leaky_relu") return Activation::LeakyRelu;
  if (s == "sigmoid") return Activation::Sigmoid;
  if (s == "tanh") return Activation::Tanh;
  throw std::invalid_argument("unknown activation '" + s + "' (relu, leaky_relu, sigmoid, tanh)");
}
std::string to_string(Activation a) {
  switch (a) {
    case Activation::Relu: return "relu";
    case Activation::LeakyRelu: return "leaky_relu";
    case Activation::Sigmoid: return "sigmoid";
    case Activation::Tanh: return "tanh";
  }
  return "?";
}
PoolKind parse_pool(const std::string& s) {
  if (s == "max") return PoolKind::Max;
  if (s == "avg") return PoolKind::Avg;
  throw std::invalid_argument("unknown pool kind '" + s + "' (max, avg)");
}
std::string to_string(PoolKind p) { return p == PoolKind::Max ? "max" : "avg"; }
Init parse_init(const std::string& s) {
  if (s == "he") return Init::He;
  if (s == "xavier") return Init::Xavier;
  if (s == "torch") return Init::Torch;
  throw std::invalid_argument("unknown initialisation '" + s + "' (he, xavier, torch)");
}

namespace {

// "nn::Conv2d \"conv1\"" (or just "nn::Conv2d" before the layer has a name).
std::string layer_what(const char* type, const std::string& name) {
  return name.empty() ? std::string(type) : fmt::format("{} \"{}\"", type, name);
}

// Refuses a size that is not positive before anything is allocated from it (a negative
// int converted to a size would ask for 2^64 elements).
void check_positive(const char* type, const std::string& name, const char* what, int value) {
  if (value <= 0)
    throw std::invalid_argument(fmt::format("{}: {} is {}; it must be positive", layer_what(type, name), what, value));
}

// A weight of `shape` by the chosen scheme; fan_in and fan_out from the shape.
template <class T>
ad::Tensor<T> init_weight(Init init, const ad::Shape& shape, std::size_t fan_in, std::size_t fan_out, std::mt19937_64& rng) {
  if (init == Init::Torch) {  // kaiming_uniform(a = sqrt(5)): bound 1/sqrt(fan_in)
    const double b = 1.0 / std::sqrt(static_cast<double>(fan_in));
    std::uniform_real_distribution<double> u(-b, b);
    ad::Tensor<T> w(shape);
    for (T& e : w) e = static_cast<T>(u(rng));
    return w;
  }
  return init == Init::He ? he_normal<T>(shape, fan_in, rng) : xavier_uniform<T>(shape, fan_in, fan_out, rng);
}

// A bias of n, drawn after the weight: PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)), else 0.
template <class T>
ad::Tensor<T> init_bias(Init init, std::size_t n, std::size_t fan_in, std::mt19937_64& rng) {
  ad::Tensor<T> bias = xt::zeros<T>({n});
  if (init == Init::Torch) {
    const double b = 1.0 / std::sqrt(static_cast<double>(fan_in));
    std::uniform_real_distribution<double> u(-b, b);
    for (T& e : bias) e = static_cast<T>(u(rng));
  }
  return bias;
}

// Conv2d's kernel (C_out, C_in/groups, KH, KW); ConvTranspose2d's (C_in, C_out/groups, KH, KW).
ad::Shape conv_kernel_shape(const char* type, const std::string& name, int c_in, int c_out, std::array<int, 2> kernel,
                            int groups, bool transposed) {
  check_positive(type, name, "c_in", c_in);
  check_positive(type, name, "c_out", c_out);
  check_positive(type, name, "the kernel height", kernel[0]);
  check_positive(type, name, "the kernel width", kernel[1]);
  check_positive(type, name, "groups", groups);
  if (c_in % groups != 0 || c_out % groups != 0)
    throw std::invalid_argument(fmt::format("{}: groups {} must divide c_in {} and c_out {}", layer_what(type, name), groups,
                                            c_in, c_out));
  const auto [rows, cols] = transposed ? std::pair{c_in, c_out / groups} : std::pair{c_out, c_in / groups};
  return {std::size_t(rows), std::size_t(cols), std::size_t(kernel[0]), std::size_t(kernel[1])};
}

ad::Shape linear_weight_shape(const std::string& name, int d_in, int d_out) {
  check_positive("nn::Linear", name, "d_in", d_in);
  check_positive("nn::Linear", name, "d_out", d_out);
  return {std::size_t(d_in), std::size_t(d_out)};
}

}  // namespace

template <class T>
ad::Tensor<T> he_normal(const ad::Shape& shape, std::size_t fan_in, std::mt19937_64& rng) {
  std::normal_distribution<double> nd(0.0, std::sqrt(2.0 / static_cast<double>(fan_in)));
  ad::Tensor<T> t(shape);
  for (T& e : t) e = static_cast<T>(nd(rng));
  return t;
}

template <class T>
ad::Tensor<T> xavier_uniform(const ad::Shape& shape, std::size_t fan_in, std::size_t fan_out, std::mt19937_64& rng) {
  const double a = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  std::uniform_real_distribution<double> u(-a, a);
  ad::Tensor<T> t(shape);
  for (T& e : t) e = static_cast<T>(u(rng));
  return t;
}

// fan_in = C_in*KH*KW, fan_out = C_out*KH*KW; the weight is drawn before the bias.
template <class T>
Conv2d<T>::Conv2d(std::string name, int c_in, int c_out, std::array<int, 2> kernel, ad::Conv2dOptions opt,
                  Init init, std::mt19937_64& rng, bool with_bias)
    : Module<T>(std::move(name)),
      weight([&]() -> Parameter<T>& {
        const ad::Shape ks = conv_kernel_shape("nn::Conv2d", this->name(), c_in, c_out, kernel, opt.groups, false);
        return this->register_parameter("weight", init_weight<T>(init, ks, ks[1] * ks[2] * ks[3], ks[0] * ks[2] * ks[3], rng));
      }()),
      bias(with_bias ? &this->register_parameter("bias", init_bias<T>(init, std::size_t(c_out),
                                                                      weight.value.size() / std::size_t(c_out), rng))
                     : nullptr),
      options(opt) {}

template <class T>
Conv2d<T>::Conv2d(int c_in, int c_out, std::array<int, 2> kernel, ad::Conv2dOptions opt, Init init, std::mt19937_64& rng,
                  bool with_bias)
    : Conv2d(std::string(), c_in, c_out, kernel, opt, init, rng, with_bias) {}

template <class T>
Value Conv2d<T>::forward(Tape<T>& tape, Value x) {
  const std::source_location at = this->call_site();
  const Value b = bias ? tape.param(*bias, at) : Value{};
  return tape.set_label(ad::conv2d(tape, x, tape.param(weight, at), b, options, at), this->name());
}

template <class T>
Linear<T>::Linear(std::string name, int d_in, int d_out, Init init, std::mt19937_64& rng, bool with_bias)
    : Module<T>(std::move(name)),
      weight([&]() -> Parameter<T>& {
        const ad::Shape ws = linear_weight_shape(this->name(), d_in, d_out);
        return this->register_parameter("weight", init_weight<T>(init, ws, ws[0], ws[1], rng));
      }()),
      bias(with_bias ? &this->register_parameter("bias", init_bias<T>(init, std::size_t(d_out), std::size_t(d_in), rng))
                     : nullptr) {}

template <class T>
Linear<T>::Linear(int d_in, int d_out, Init init, std::mt19937_64& rng, bool with_bias)
    : Linear(std::string(), d_in, d_out, init, rng, with_bias) {}

template <class T>
Value Linear<T>::forward(Tape<T>& tape, Value x) {
  const std::source_location at = this->call_site();
  const Value b = bias ? tape.param(*bias, at) : Value{};
  return tape.set_label(ad::linear(tape, x, tape.param(weight, at), b, at), this->name());
}

// PyTorch's fan-in for a transposed convolution's (C_in, C_out/groups, KH, KW) weight:
// (C_out/groups)*KH*KW; fan-out C_in*KH*KW.
template <class T>
ConvTranspose2d<T>::ConvTranspose2d(std::string name, int c_in, int c_out, std::array<int, 2> kernel,
                                    ad::ConvTranspose2dOptions opt, Init init, std::mt19937_64& rng, bool with_bias)
    : Module<T>(std::move(name)),
      weight([&]() -> Parameter<T>& {
        const ad::Shape ks = conv_kernel_shape("nn::ConvTranspose2d", this->name(), c_in, c_out, kernel, opt.groups, true);
        return this->register_parameter("weight", init_weight<T>(init, ks, ks[1] * ks[2] * ks[3], ks[0] * ks[2] * ks[3], rng));
      }()),
      bias(with_bias ? &this->register_parameter(
                           "bias", init_bias<T>(init, std::size_t(c_out), weight.value.size() / weight.value.shape()[0], rng))
                     : nullptr),
      options(opt) {}

template <class T>
ConvTranspose2d<T>::ConvTranspose2d(int c_in, int c_out, std::array<int, 2> kernel, ad::ConvTranspose2dOptions opt,
                                    Init init, std::mt19937_64& rng, bool with_bias)
    : ConvTranspose2d(std::string(), c_in, c_out, kernel, opt, init, rng, with_bias) {}

template <class T>
Value ConvTranspose2d<T>::forward(Tape<T>& tape, Value x) {
  const std::source_location at = this->call_site();
  const Value b = bias ? tape.param(*bias, at) : Value{};
  return tape.set_label(ad::conv_transpose2d(tape, x, tape.param(weight, at), b, options, at), this->name());
}

template <class T>
BatchNorm2d<T>::BatchNorm2d(std::string name, int channels, BatchNorm2dOptions opt)
    : Module<T>(std::move(name)),
      weight([&] {
        check_positive("nn::BatchNorm2d", this->name(), "channels", channels);
        return opt.affine ? &this->register_parameter("weight", xt::ones<T>({std::size_t(channels)})) : nullptr;
      }()),
      bias(opt.affine ? &this->register_parameter("bias", xt::zeros<T>({std::size_t(channels)})) : nullptr),
      running_mean(this->register_buffer("running_mean", xt::zeros<T>({std::size_t(channels)}))),
      running_var(this->register_buffer("running_var", xt::ones<T>({std::size_t(channels)}))),
      options(opt) {}

template <class T>
BatchNorm2d<T>::BatchNorm2d(int channels, BatchNorm2dOptions opt) : BatchNorm2d(std::string(), channels, opt) {}

template <class T>
Value BatchNorm2d<T>::forward(Tape<T>& tape, Value x) {
  const std::source_location at = this->call_site();
  const Value w = weight ? tape.param(*weight, at) : Value{};
  const Value b = bias ? tape.param(*bias, at) : Value{};
  const ad::BatchNorm2dOptions opt{.training = this->is_training(), .momentum = options.momentum, .eps = options.eps};
  return tape.set_label(ad::batch_norm2d(tape, x, w, b, &running_mean, &running_var, opt, at), this->name());
}

template <class T>
Dropout<T>::Dropout(std::string name, double p, uint64_t seed)
    : Module<T>(std::move(name)), p(p), seed(seed), calls(this->register_buffer("calls", xt::zeros<T>({1}))) {
  if (!(p >= 0 && p <= 1))
    throw std::invalid_argument(fmt::format("{}: p is {}; it must be in [0, 1]", layer_what("nn::Dropout", this->name()), p));
}

template <class T>
Dropout<T>::Dropout(double p, uint64_t seed) : Dropout(std::string(), p, seed) {}

namespace {
// FNV-1a: a hash of the layer's path that is the same in every build.
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (const unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}
}  // namespace

template <class T>
Value Dropout<T>::forward(Tape<T>& tape, Value x) {
  const std::source_location at = this->call_site();
  if (!this->is_training()) return ad::dropout(tape, x, p, false, 0, at);  // the identity
  // dropout hashes its seed: distinct layers and calls need only distinct inputs.
  const auto call = static_cast<uint64_t>(calls(0));
  const uint64_t s = seed ^ (fnv1a(this->name()) + 0x9E3779B97F4A7C15ull * (call + 1));
  calls(0) += T(1);
  return tape.set_label(ad::dropout(tape, x, p, true, s, at), this->name());
}

template <class T>
Value GlobalAvgPool2d<T>::forward(Tape<T>& tape, Value x) {
  const std::source_location at = this->call_site();
  // (N, C, H, W) -> (N, C, 1, 1) -> (N, C).
  const Value pooled = tape.set_label(ad::global_avg_pool2d(tape, x, at), this->name());
  return ad::flatten(tape, pooled, at);
}

template <class T>
Value Pool2d<T>::forward(Tape<T>& tape, Value x) {
  const std::source_location at = this->call_site();
  const Value y = kind == PoolKind::Max ? ad::max_pool2d(tape, x, options, at) : ad::avg_pool2d(tape, x, options, at);
  return tape.set_label(y, this->name());
}

template <class T>
Value ActivationLayer<T>::forward(Tape<T>& tape, Value x) {
  const std::source_location at = this->call_site();
  Value y;
  switch (kind) {
    case Activation::Relu: y = ad::relu(tape, x, at); break;
    case Activation::LeakyRelu: y = ad::leaky_relu(tape, x, slope, at); break;
    case Activation::Sigmoid: y = ad::sigmoid(tape, x, at); break;
    case Activation::Tanh: y = ad::tanh(tape, x, at); break;
  }
  return tape.set_label(y, this->name());
}

template <class T>
Value Flatten<T>::forward(Tape<T>& tape, Value x) {
  return tape.set_label(ad::flatten(tape, x, this->call_site()), this->name());
}

template <class T>
Value Sequential<T>::forward(Tape<T>& tape, Value x) {
  const std::source_location at = this->call_site();
  const auto children = this->named_children();
  for (std::size_t i = 0; i < children.size(); ++i) {
    if (fusion_ && i + 2 < children.size()) {  // exactly these classes (a subclass may have its own forward)
      Module<T>* m[3] = {children[i].second, children[i + 1].second, children[i + 2].second};
      if (typeid(*m[0]) == typeid(Conv2d<T>) && typeid(*m[1]) == typeid(ActivationLayer<T>) &&
          typeid(*m[2]) == typeid(Pool2d<T>)) {
        auto& conv = static_cast<Conv2d<T>&>(*m[0]);
        const auto& act = static_cast<ActivationLayer<T>&>(*m[1]);
        const auto& pool = static_cast<Pool2d<T>&>(*m[2]);
        if (act.kind == Activation::Relu && pool.kind == PoolKind::Max) {
          const Value b = conv.bias ? tape.param(*conv.bias, at) : Value{};
          x = ad::conv2d_relu_max_pool2d(tape, x, tape.param(conv.weight, at), b, conv.options, pool.options, at);
          tape.set_label(x, conv.name() + "+" + act.name() + "+" + pool.name());
          i += 2;
          continue;
        }
      }
    }
    x = (*children[i].second)(tape, x, at);
  }
  return x;
}

template <class T>
std::vector<Module<T>*> Sequential<T>::layers() {
  std::vector<Module<T>*> out;
  for (auto& [name, m] : this->named_children()) out.push_back(m);
  return out;
}

std::string CnnConfig::tag() const {
  return fmt::format("cnn({}x{}x{},c{}-{},k{}p{}s{},{}{}/{},{},{})", in_channels, height, width, channels[0],
                     channels[1], kernel, padding, stride, to_string(pool), pool_window, pool_stride,
                     to_string(activation), classes);
}

template <class T>
Sequential<T> make_cnn(const CnnConfig& cfg, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const bool relu_family = cfg.activation == Activation::Relu || cfg.activation == Activation::LeakyRelu;
  const Init conv_init = cfg.torch_init ? Init::Torch : relu_family ? Init::He : Init::Xavier;
  const Init fc_init = cfg.torch_init ? Init::Torch : Init::Xavier;
  const ad::Conv2dOptions conv{.padding = {cfg.padding, cfg.padding}, .stride = {cfg.stride, cfg.stride}};
  const ad::Pool2dOptions pool{.window = {cfg.pool_window, cfg.pool_window}, .stride = {cfg.pool_stride, cfg.pool_stride}};
  // Shapes through the network, checked by the ops' own shape rules.
  ad::Shape s{1, std::size_t(cfg.in_channels), std::size_t(cfg.height), std::size_t(cfg.width)};

  Sequential<T> m;
  int c_in = cfg.in_channels;
  for (int l = 0; l < 2; ++l) {
    const std::string n = std::to_string(l + 1);
    const ad::Shape ks{std::size_t(cfg.channels[l]), std::size_t(c_in), std::size_t(cfg.kernel), std::size_t(cfg.kernel)};
    s = ad::conv2d_output_shape(s, ks, nullptr, conv);
    s = ad::pool2d_output_shape(cfg.pool == PoolKind::Max ? "max_pool2d" : "avg_pool2d", s, pool);
    m.template add<Conv2d<T>>("conv" + n, c_in, cfg.channels[l], std::array<int, 2>{cfg.kernel, cfg.kernel}, conv, conv_init, rng);
    m.template add<ActivationLayer<T>>("act" + n, cfg.activation);
    m.template add<Pool2d<T>>("pool" + n, cfg.pool, pool);
    c_in = cfg.channels[l];
  }
  m.template add<Flatten<T>>("flatten");
  m.template add<Linear<T>>("fc3", int(s[1] * s[2] * s[3]), cfg.classes, fc_init, rng);
  return m;
}

#define NN_INSTANTIATE(T)                                                                                 \
  template ad::Tensor<T> he_normal<T>(const ad::Shape&, std::size_t, std::mt19937_64&);                  \
  template ad::Tensor<T> xavier_uniform<T>(const ad::Shape&, std::size_t, std::size_t, std::mt19937_64&); \
  template class Conv2d<T>;                                                                               \
  template class Linear<T>;                                                                               \
  template class Pool2d<T>;                                                                               \
  template class ActivationLayer<T>;                                                                      \
  template class Flatten<T>;                                                                              \
  template class BatchNorm2d<T>;                                                                          \
  template class Dropout<T>;                                                                              \
  template class ConvTranspose2d<T>;                                                                      \
  template class GlobalAvgPool2d<T>;                                                                      \
  template class Sequential<T>;                                                                           \
  template Sequential<T> make_cnn<T>(const CnnConfig&, uint64_t);
NN_INSTANTIATE(float)
NN_INSTANTIATE(double)
#undef NN_INSTANTIATE

}  // namespace nn
