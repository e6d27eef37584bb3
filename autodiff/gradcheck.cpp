// gradcheck: analytic gradients from one backward() against central differences
// (J(x + eps e) - J(x - eps e)) / (2 eps) of the scalar J = <v, f(x)>.
#include "autodiff/gradcheck.hpp"

#include <algorithm>
#include <cmath>
#include <random>

namespace ad {

namespace {

std::string multi_index(const Tensor<double>& t, std::size_t flat) {
  std::vector<std::size_t> idx(t.dimension());
  for (std::size_t d = t.dimension(); d-- > 0;) {
    idx[d] = flat % t.shape()[d];
    flat /= t.shape()[d];
  }
  return fmt::format("[{}]", fmt::join(idx, ","));
}

Tensor<double> random_normal(const Shape& shape, std::mt19937_64& rng) {
  Tensor<double> t(shape);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (double& e : t) e = nd(rng);
  return t;
}

// Evaluates J = <v, f(x)> without recording gradients.
struct Objective {
  const GradcheckFn& f;
  const Tensor<double>& v;
  std::vector<Parameter<double>>& params;
  Tape<double> tape;

  double operator()() {
    tape.reset();
    NoGradGuard guard(tape);
    std::vector<Value> in;
    for (auto& p : params) in.push_back(tape.input(p.value));
    const Tensor<double>& y = tape.value(f(tape, in));
    double s = 0;
    for (std::size_t i = 0; i < y.size(); ++i) s += v.data()[i] * y.data()[i];
    return s;
  }
};

}  // namespace

GradcheckResult gradcheck(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs,
                          const std::vector<std::string>& names, const GradcheckOptions& opt) {
  std::vector<Parameter<double>> params;
  params.reserve(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i)
    params.emplace_back(i < names.size() ? names[i] : fmt::format("input{}", i), inputs[i]);

  // Analytic: one reverse pass seeded with the cotangent v.
  std::mt19937_64 rng(opt.seed);
  Tape<double> tape;
  std::vector<Value> in;
  for (auto& p : params) in.push_back(tape.param(p));
  const Value y = f(tape, in);
  const Tensor<double> v = random_normal(tape.shape(y), rng);
  tape.backward(y, v, BackwardOptions{.retain_graph = opt.check_accumulation});
  std::vector<Tensor<double>> analytic;
  for (auto& p : params) analytic.push_back(p.grad);

  GradcheckResult r;
  double worst = -std::numeric_limits<double>::infinity();  // largest |a - n| - tolerance
  std::size_t checked = 0;
  auto consider = [&](const std::string& input, std::size_t index, const std::string& pos, double a, double n) {
    ++checked;
    const double excess = std::abs(a - n) - (opt.atol + opt.rtol * std::abs(n));
    if (excess > worst || std::isnan(a) || std::isnan(n)) {
      worst = std::isnan(a) || std::isnan(n) ? std::numeric_limits<double>::infinity() : excess;
      r.input = input, r.index = index, r.position = pos, r.analytic = a, r.numeric = n;
    }
  };

  Objective J{f, v, params, {}};
  auto skipped = [&](std::size_t i, std::size_t e) { return opt.skip && opt.skip(i, e); };
  std::size_t num_skipped = 0;
  for (std::size_t i = 0; i < params.size(); ++i)
    for (std::size_t e = 0; e < params[i].value.size(); ++e) num_skipped += skipped(i, e);
  std::mt19937_64 sample_rng(opt.seed + 1);  // its own stream: sampling leaves v and u as they were
  if (opt.per_element)
    for (std::size_t i = 0; i < params.size(); ++i) {
      Tensor<double>& x = params[i].value;
      std::vector<std::size_t> elements;
      for (std::size_t e = 0; e < x.size(); ++e)
        if (!skipped(i, e)) elements.push_back(e);
      if (opt.max_elements > 0 && elements.size() > opt.max_elements) {
        // a seeded partial shuffle picks the sample; compare it in index order
        for (std::size_t k = 0; k < opt.max_elements; ++k)
          std::swap(elements[k], elements[k + sample_rng() % (elements.size() - k)]);
        elements.resize(opt.max_elements);
        std::sort(elements.begin(), elements.end());
      }
      for (std::size_t e : elements) {
        const double orig = x.data()[e];
        x.data()[e] = orig + opt.eps;
        const double jp = J();
        x.data()[e] = orig - opt.eps;
        const double jm = J();
        x.data()[e] = orig;
        consider(params[i].name, e, multi_index(x, e), analytic[i].data()[e], (jp - jm) / (2 * opt.eps));
      }
    }
  if (opt.directional) {
    std::vector<Tensor<double>> u;
    double a = 0;
    for (std::size_t i = 0; i < params.size(); ++i) {
      u.push_back(random_normal(to_shape(params[i].value.shape()), rng));
      for (std::size_t e = 0; e < u[i].size(); ++e) {
        if (skipped(i, e)) u[i].data()[e] = 0;
        a += analytic[i].data()[e] * u[i].data()[e];
      }
    }
    auto shift = [&](double s) {
      for (std::size_t i = 0; i < params.size(); ++i) params[i].value += s * u[i];
    };
    shift(opt.eps);
    const double jp = J();
    shift(-2 * opt.eps);
    const double jm = J();
    shift(opt.eps);
    // restore exactly: undo the floating-point drift of the shifts
    for (std::size_t i = 0; i < params.size(); ++i) params[i].value = inputs[i];
    // The direction is reported only when no single element failed: an element is
    // what a reader can act on.
    const GradcheckResult by_element = r;
    const double worst_element = worst;
    consider("<random direction>", 0, "", a, (jp - jm) / (2 * opt.eps));
    if (worst_element > 0) r = by_element;  // `worst` stays > 0: the check fails either way
  }
  r.ok = r.values_ok = worst <= 0;
  r.checked = checked;
  r.skipped = num_skipped;

  std::string accumulation;
  if (opt.check_accumulation) {
    // VJPs must add into gradient buffers: a second pass gives exactly twice the first.
    tape.backward(y, v);
    for (std::size_t i = 0; i < params.size() && accumulation.empty(); ++i)
      for (std::size_t e = 0; e < params[i].grad.size(); ++e) {
        const double twice = 2 * analytic[i].data()[e], got = params[i].grad.data()[e];
        if (!(std::abs(got - twice) <= 1e-10 * std::max(1.0, std::abs(twice)))) {
          accumulation = fmt::format(
              " Accumulation FAILED: after a second backward, {}{} is {:.17g}, not twice {:.17g} (a VJP "
              "overwrites its gradient buffer instead of adding to it).",
              params[i].name, multi_index(params[i].grad, e), got, analytic[i].data()[e]);
          r.ok = r.accumulation_ok = false;
          break;
        }
      }
  }

  r.report = fmt::format(
      "gradcheck {}: {} comparisons (eps {:g}, atol {:g}, rtol {:g}){}; worst: {}{} analytic {:.12g} vs "
      "numeric {:.12g} (|diff| {:.3g}).{}",
      r.ok ? "passed" : "FAILED", checked, opt.eps, opt.atol, opt.rtol,
      num_skipped ? fmt::format(", {} elements skipped at kinks or ties", num_skipped) : std::string(), r.input,
      r.position, r.analytic, r.numeric, std::abs(r.analytic - r.numeric), accumulation);
  return r;
}

}  // namespace ad
