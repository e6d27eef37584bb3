// Optimizers over ad::Parameter's, and learning-rate schedules.
#pragma once

#include <string>
#include <vector>

#include "autodiff/tape.hpp"
#include "nn/checkpoint.hpp"

namespace nn {

template <class T>
class Optimizer {
 public:
  // Throws std::invalid_argument naming `lr` unless it is a finite number >= 0.
  explicit Optimizer(std::vector<ad::Parameter<T>*> params, double lr) : params_(std::move(params)), lr_(checked_lr(lr)) {}
  virtual ~Optimizer() = default;
  // One update from the gradients accumulated in every parameter's grad.
  virtual void step() = 0;
  void zero_grad() {
    for (auto* p : params_) p->zero_grad();
  }
  double lr() const { return lr_; }
  void set_lr(double lr) { lr_ = checked_lr(lr); }
  // The optimizer's state (momentum, moments, step count) as named tensors, for
  // checkpoints: names are "<prefix><param name>.<slot>".
  virtual std::vector<NamedTensor> state(const std::string& prefix) const { return {}; }
  // Pointers into the state, in the same order and with the same names as state().
  virtual std::vector<std::pair<std::string, xt::xarray<float>*>> state_refs(const std::string& prefix) { return {}; }
  // What is wrong with `value` as the state tensor at `index` of state_refs() (e.g. a
  // negative step count), or "" when it is usable. Every tensor must also be finite;
  // load_model checks that for all of them.
  virtual std::string state_defect(std::size_t index, const xt::xarray<float>& value) const { return {}; }

 protected:
  static double checked_lr(double lr);
  std::vector<ad::Parameter<T>*> params_;
  double lr_;
};

// The design document's section 3: K := K - alpha dJ/dK, b := b - alpha dJ/db.
// With momentum mu (PyTorch's convention): v := mu v + g, p := p - alpha v;
// Nesterov: p := p - alpha (g + mu v). weight_decay adds wd * p to g first.
// The constructor throws std::invalid_argument naming the option unless lr >= 0,
// 0 <= momentum < 1, weight_decay >= 0 (all finite), and nesterov has a momentum.
struct SgdOptions {
  double lr = 0.01;
  double momentum = 0.0;
  bool nesterov = false;
  double weight_decay = 0.0;
};

template <class T>
class Sgd : public Optimizer<T> {
 public:
  Sgd(std::vector<ad::Parameter<T>*> params, SgdOptions opt);
  void step() override;
  std::vector<NamedTensor> state(const std::string& prefix) const override;
  std::vector<std::pair<std::string, xt::xarray<float>*>> state_refs(const std::string& prefix) override;

 private:
  SgdOptions opt_;
  std::vector<xt::xarray<float>> velocity_;  // float in checkpoints; also used for double
};

// Adam (Kingma & Ba), PyTorch's formulation: m := b1 m + (1-b1) g,
// v := b2 v + (1-b2) g^2, p := p - lr m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps).
// The constructor throws std::invalid_argument naming the option unless lr >= 0,
// 0 <= beta1, beta2 < 1, eps > 0, weight_decay >= 0 (all finite).
struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;  // L2, added to g
};

template <class T>
class Adam : public Optimizer<T> {
 public:
  Adam(std::vector<ad::Parameter<T>*> params, AdamOptions opt);
  void step() override;
  std::vector<NamedTensor> state(const std::string& prefix) const override;
  std::vector<std::pair<std::string, xt::xarray<float>*>> state_refs(const std::string& prefix) override;
  // v must be >= 0 (sqrt), the step count a whole number in [0, 2^24].
  std::string state_defect(std::size_t index, const xt::xarray<float>& value) const override;

 private:
  AdamOptions opt_;
  std::vector<xt::xarray<float>> m_, v_;
  xt::xarray<float> t_ = xt::zeros<float>({1});  // step count (a tensor so it checkpoints)
};

// Learning rate after `epoch` epochs (fractional: 1.5 = half way through the second)
// of `epochs`: "constant"; "cosine", from lr down to 0 over the run, updated every
// step; "step", x0.1 every 3 epochs. Throws std::invalid_argument for another name.
double scheduled_lr(const std::string& schedule, double lr, double epoch, int epochs);

}  // namespace nn
