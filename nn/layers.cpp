// Layers, initialisers and the 3-layer CNN.
#include "nn/layers.hpp"

#include <cmath>
#include <stdexcept>

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

ad::Shape conv_kernel_shape(const std::string& name, int c_in, int c_out, std::array<int, 2> kernel) {
  check_positive("nn::Conv2d", name, "c_in", c_in);
  check_positive("nn::Conv2d", name, "c_out", c_out);
  check_positive("nn::Conv2d", name, "the kernel height", kernel[0]);
  check_positive("nn::Conv2d", name, "the kernel width", kernel[1]);
  return {std::size_t(c_out), std::size_t(c_in), std::size_t(kernel[0]), std::size_t(kernel[1])};
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
        const ad::Shape ks = conv_kernel_shape(this->name(), c_in, c_out, kernel);
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
  for (auto& [name, m] : this->named_children()) x = (*m)(tape, x, at);
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
  template class Sequential<T>;                                                                           \
  template Sequential<T> make_cnn<T>(const CnnConfig&, uint64_t);
NN_INSTANTIATE(float)
NN_INSTANTIATE(double)
#undef NN_INSTANTIATE

}  // namespace nn
