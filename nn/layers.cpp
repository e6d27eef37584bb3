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
// A weight of `shape` and a bias of `n` by the chosen scheme.
template <class T>
std::pair<ad::Tensor<T>, ad::Tensor<T>> init_weight_bias(Init init, const ad::Shape& shape, std::size_t n,
                                                         std::size_t fan_in, std::size_t fan_out, std::mt19937_64& rng) {
  if (init == Init::Torch) {  // kaiming_uniform(a = sqrt(5)): bound 1/sqrt(fan_in), bias alike
    const double b = 1.0 / std::sqrt(static_cast<double>(fan_in));
    std::uniform_real_distribution<double> u(-b, b);
    ad::Tensor<T> w(shape), bias(ad::Shape{n});
    for (T& e : w) e = static_cast<T>(u(rng));
    for (T& e : bias) e = static_cast<T>(u(rng));
    return {std::move(w), std::move(bias)};
  }
  return {init == Init::He ? he_normal<T>(shape, fan_in, rng) : xavier_uniform<T>(shape, fan_in, fan_out, rng),
          xt::zeros<T>({n})};
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

template <class T>
Conv2d<T>::Conv2d(std::string name, int c_in, int c_out, std::array<int, 2> kernel, ad::Conv2dOptions opt,
                  Init init, std::mt19937_64& rng)
    : Layer<T>(std::move(name)), options(opt) {
  const ad::Shape ks{std::size_t(c_out), std::size_t(c_in), std::size_t(kernel[0]), std::size_t(kernel[1])};
  auto [w, b] = init_weight_bias<T>(init, ks, ks[0], ks[1] * ks[2] * ks[3], ks[0] * ks[2] * ks[3], rng);
  weight = Parameter<T>(this->name_ + ".weight", std::move(w));
  bias = Parameter<T>(this->name_ + ".bias", std::move(b));
}

template <class T>
Value Conv2d<T>::forward(Tape<T>& tape, Value x) {
  return tape.set_label(ad::conv2d(tape, x, tape.param(weight), tape.param(bias), options), this->name_);
}

template <class T>
Linear<T>::Linear(std::string name, int d_in, int d_out, Init init, std::mt19937_64& rng)
    : Layer<T>(std::move(name)) {
  const ad::Shape ws{std::size_t(d_in), std::size_t(d_out)};
  auto [w, b] = init_weight_bias<T>(init, ws, ws[1], ws[0], ws[1], rng);
  weight = Parameter<T>(this->name_ + ".weight", std::move(w));
  bias = Parameter<T>(this->name_ + ".bias", std::move(b));
}

template <class T>
Value Linear<T>::forward(Tape<T>& tape, Value x) {
  return tape.set_label(ad::linear(tape, x, tape.param(weight), tape.param(bias)), this->name_);
}

template <class T>
Value Pool2d<T>::forward(Tape<T>& tape, Value x) {
  const Value y = kind == PoolKind::Max ? ad::max_pool2d(tape, x, options) : ad::avg_pool2d(tape, x, options);
  return tape.set_label(y, this->name_);
}

template <class T>
Value ActivationLayer<T>::forward(Tape<T>& tape, Value x) {
  Value y;
  switch (kind) {
    case Activation::Relu: y = ad::relu(tape, x); break;
    case Activation::LeakyRelu: y = ad::leaky_relu(tape, x, slope); break;
    case Activation::Sigmoid: y = ad::sigmoid(tape, x); break;
    case Activation::Tanh: y = ad::tanh(tape, x); break;
  }
  return tape.set_label(y, this->name_);
}

template <class T>
Value Flatten<T>::forward(Tape<T>& tape, Value x) {
  return tape.set_label(ad::flatten(tape, x), this->name_);
}

template <class T>
Value Sequential<T>::forward(Tape<T>& tape, Value x) {
  for (auto& l : layers_) x = l->forward(tape, x);
  return x;
}

template <class T>
std::vector<Parameter<T>*> Sequential<T>::parameters() {
  std::vector<Parameter<T>*> ps;
  for (auto& l : layers_)
    for (Parameter<T>* p : l->parameters()) ps.push_back(p);
  return ps;
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
