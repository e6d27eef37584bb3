// Optimizers. Updates run over raw buffers; state is kept in float so that it can
// go into a checkpoint as it is (the double instantiation converts on the fly).
#include "nn/optim.hpp"

#include <cmath>
#include <numbers>
#include <stdexcept>

#include <fmt/format.h>

namespace nn {

namespace {
template <class T>
std::vector<xt::xarray<float>> zeros_like(const std::vector<ad::Parameter<T>*>& ps) {
  std::vector<xt::xarray<float>> z;
  for (auto* p : ps) z.push_back(xt::zeros<float>(p->value.shape()));
  return z;
}

template <class T>
std::vector<NamedTensor> named(const std::vector<ad::Parameter<T>*>& ps, const std::string& prefix, const char* slot,
                               const std::vector<xt::xarray<float>>& t) {
  std::vector<NamedTensor> out;
  for (std::size_t i = 0; i < ps.size(); ++i) out.push_back({prefix + ps[i]->name + "." + slot, t[i]});
  return out;
}

template <class T>
void refs(std::vector<std::pair<std::string, xt::xarray<float>*>>& out, const std::vector<ad::Parameter<T>*>& ps,
          const std::string& prefix, const char* slot, std::vector<xt::xarray<float>>& t) {
  for (std::size_t i = 0; i < ps.size(); ++i) out.emplace_back(prefix + ps[i]->name + "." + slot, &t[i]);
}

// f(k, i) for every element i of every parameter k, in one parallel region when the
// parameters hold more than 64K elements in all (a ResNet's 11M on one thread is serial
// time that no thread count divides), else on the calling thread. Each thread takes a
// static share of every parameter with no barrier between parameters (f(k, i) touches
// element i of parameter k's buffers only), so the result does not depend on the
// thread count.
template <class T, class F>
void for_each_element(const std::vector<ad::Parameter<T>*>& ps, F f) {
  std::size_t total = 0;
  for (const ad::Parameter<T>* p : ps) total += p->value.size();
  if (total > 65536) {
#pragma omp parallel
    for (std::size_t k = 0; k < ps.size(); ++k) {
      const std::size_t n = ps[k]->value.size();
#pragma omp for simd schedule(static) nowait
      for (std::size_t i = 0; i < n; ++i) f(k, i);
    }
  } else {
    for (std::size_t k = 0; k < ps.size(); ++k) {
      const std::size_t n = ps[k]->value.size();
#pragma omp simd
      for (std::size_t i = 0; i < n; ++i) f(k, i);
    }
  }
}

// Throws std::invalid_argument("<who>: <name> = <v> must be <rule>") unless ok.
void require(bool ok, const char* who, const char* name, double v, const char* rule) {
  if (!ok) throw std::invalid_argument(fmt::format("{}: {} = {} must be {}", who, name, v, rule));
}

}  // namespace

template <class T>
double Optimizer<T>::checked_lr(double lr) {
  require(std::isfinite(lr) && lr >= 0, "optimizer", "lr", lr, "a finite number >= 0");
  return lr;
}

template <class T>
Sgd<T>::Sgd(std::vector<ad::Parameter<T>*> params, SgdOptions opt) : Optimizer<T>(std::move(params), opt.lr), opt_(opt) {
  // (0 <= x is false for NaN, so every check below also refuses NaN.)
  require(opt.momentum >= 0 && opt.momentum < 1, "Sgd", "momentum", opt.momentum, "in [0, 1)");
  require(opt.weight_decay >= 0 && std::isfinite(opt.weight_decay), "Sgd", "weight_decay", opt.weight_decay,
          "a finite number >= 0");
  if (opt.nesterov && opt.momentum == 0)
    throw std::invalid_argument("Sgd: nesterov = true needs a momentum > 0 (with momentum 0 it is plain SGD)");
  if (opt_.momentum != 0.0) velocity_ = zeros_like(this->params_);
}

template <class T>
void Sgd<T>::step() {
  const T lr = static_cast<T>(this->lr_), mu = static_cast<T>(opt_.momentum), wd = static_cast<T>(opt_.weight_decay);
  const std::vector<ad::Parameter<T>*>& ps = this->params_;
  if (mu == T(0)) {
    for_each_element(ps, [&](std::size_t k, std::size_t i) {
      T& w = ps[k]->value.data()[i];
      w -= lr * (ps[k]->grad.data()[i] + wd * w);  // K := K - alpha dJ/dK
    });
    return;
  }
  const bool nesterov = opt_.nesterov;
  for_each_element(ps, [&](std::size_t k, std::size_t i) {
    T& w = ps[k]->value.data()[i];
    float& v = velocity_[k].data()[i];
    const T gi = ps[k]->grad.data()[i] + wd * w;
    const T vi = mu * static_cast<T>(v) + gi;
    v = static_cast<float>(vi);
    w -= lr * (nesterov ? gi + mu * vi : vi);
  });
}

template <class T>
std::vector<NamedTensor> Sgd<T>::state(const std::string& prefix) const {
  return velocity_.empty() ? std::vector<NamedTensor>{} : named(this->params_, prefix, "velocity", velocity_);
}

template <class T>
std::vector<std::pair<std::string, xt::xarray<float>*>> Sgd<T>::state_refs(const std::string& prefix) {
  std::vector<std::pair<std::string, xt::xarray<float>*>> out;
  if (!velocity_.empty()) refs(out, this->params_, prefix, "velocity", velocity_);
  return out;
}

template <class T>
Adam<T>::Adam(std::vector<ad::Parameter<T>*> params, AdamOptions opt)
    : Optimizer<T>(std::move(params), opt.lr), opt_(opt) {
  require(opt.beta1 >= 0 && opt.beta1 < 1, "Adam", "beta1", opt.beta1, "in [0, 1)");
  require(opt.beta2 >= 0 && opt.beta2 < 1, "Adam", "beta2", opt.beta2, "in [0, 1)");
  require(opt.eps > 0 && std::isfinite(opt.eps), "Adam", "eps", opt.eps, "a finite number > 0");
  require(opt.weight_decay >= 0 && std::isfinite(opt.weight_decay), "Adam", "weight_decay", opt.weight_decay,
          "a finite number >= 0");
  m_ = zeros_like(this->params_);
  v_ = zeros_like(this->params_);
}

template <class T>
void Adam<T>::step() {
  const double t = static_cast<double>(t_(0)) + 1.0;
  t_(0) = static_cast<float>(t);
  const T b1 = static_cast<T>(opt_.beta1), b2 = static_cast<T>(opt_.beta2), wd = static_cast<T>(opt_.weight_decay);
  const T c1 = static_cast<T>(1.0 - std::pow(opt_.beta1, t)), c2 = static_cast<T>(1.0 - std::pow(opt_.beta2, t));
  const T lr = static_cast<T>(this->lr_), eps = static_cast<T>(opt_.eps);
  const std::vector<ad::Parameter<T>*>& ps = this->params_;
  for_each_element(ps, [&](std::size_t k, std::size_t i) {
    T& w = ps[k]->value.data()[i];
    float& m = m_[k].data()[i];
    float& v = v_[k].data()[i];
    const T gi = ps[k]->grad.data()[i] + wd * w;
    const T mi = b1 * static_cast<T>(m) + (T(1) - b1) * gi;
    const T vi = b2 * static_cast<T>(v) + (T(1) - b2) * gi * gi;
    m = static_cast<float>(mi);
    v = static_cast<float>(vi);
    w -= lr * (mi / c1) / (std::sqrt(vi / c2) + eps);
  });
}

template <class T>
std::vector<NamedTensor> Adam<T>::state(const std::string& prefix) const {
  std::vector<NamedTensor> out = named(this->params_, prefix, "m", m_);
  for (auto& nt : named(this->params_, prefix, "v", v_)) out.push_back(std::move(nt));
  out.push_back({prefix + "step", t_});
  return out;
}

template <class T>
std::vector<std::pair<std::string, xt::xarray<float>*>> Adam<T>::state_refs(const std::string& prefix) {
  std::vector<std::pair<std::string, xt::xarray<float>*>> out;
  refs(out, this->params_, prefix, "m", m_);
  refs(out, this->params_, prefix, "v", v_);
  out.emplace_back(prefix + "step", &t_);
  return out;
}

template <class T>
std::string Adam<T>::state_defect(std::size_t index, const xt::xarray<float>& value) const {
  const std::size_t n = this->params_.size();  // state_refs order: m (n), v (n), step
  if (index >= n && index < 2 * n) {
    for (std::size_t i = 0; i < value.size(); ++i)
      if (value.data()[i] < 0) return fmt::format("holds {} at flat index {}; a second moment is never negative", value.data()[i], i);
  } else if (index == 2 * n) {
    const float t = value.size() == 1 ? value.data()[0] : -1.0f;
    if (!(t >= 0.0f && t <= 16777216.0f) || t != std::floor(t))
      return fmt::format("is {}, not a whole number of steps in [0, 2^24]", t);
  }
  return {};
}

double scheduled_lr(const std::string& schedule, double lr, double epoch, int epochs) {
  if (schedule == "constant") return lr;
  if (schedule == "cosine") return 0.5 * lr * (1.0 + std::cos(std::numbers::pi * epoch / std::max(epochs, 1)));
  if (schedule == "step") return lr * std::pow(0.1, std::floor(epoch / 3));
  throw std::invalid_argument("unknown learning-rate schedule '" + schedule + "' (constant, cosine, step)");
}

template class Optimizer<float>;
template class Optimizer<double>;
template class Sgd<float>;
template class Sgd<double>;
template class Adam<float>;
template class Adam<double>;

}  // namespace nn
