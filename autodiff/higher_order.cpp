// Higher-order gradients: the recorded reverse loop (ad::grad, backward with
// create_graph), gradgradcheck and Hessian-vector products.
#include "autodiff/higher_order.hpp"

#include <fmt/format.h>

#include <memory>
#include <optional>
#include <random>

#include "ops/elementwise.hpp"

namespace ad {

namespace detail {

namespace {
// Nodes recorded while it lives are marked as part of the VJP of one forward node.
template <class T>
struct GradOfScope {
  Tape<T>& tape;
  int32_t prev;
  GradOfScope(Tape<T>& t, int32_t node) : tape(t), prev(t.grad_of()) { t.set_grad_of(node); }
  ~GradOfScope() { tape.set_grad_of(prev); }
  GradOfScope(const GradOfScope&) = delete;
  GradOfScope& operator=(const GradOfScope&) = delete;
};
}  // namespace

template <class T>
std::vector<Value> record_backward(Tape<T>& tape, const std::vector<Value>& outputs, const std::vector<Value>& seeds,
                                   bool create_graph, const std::vector<char>& wanted) {
  const std::size_t num_values = tape.num_values();
  const std::size_t num_nodes = tape.nodes().size();
  // reaches[v]: v depends on a wanted value (or, with no list, needs a gradient at all),
  // so its gradient must be propagated. One forward sweep over the nodes.
  std::vector<char> reaches(num_values, 0);
  for (std::size_t v = 0; v < num_values; ++v)
    reaches[v] = tape.slot(Value{static_cast<int32_t>(v)}).requires_grad && (wanted.empty() || (v < wanted.size() && wanted[v]));
  if (!wanted.empty())
    for (std::size_t i = 0; i < num_nodes; ++i) {
      const Node<T>& node = tape.nodes()[i];
      for (int32_t id : node.inputs)
        if (id >= 0 && reaches[static_cast<std::size_t>(id)]) reaches[static_cast<std::size_t>(node.output)] = 1;
    }

  std::optional<NoGradGuard<T>> no_graph;
  if (!create_graph) no_graph.emplace(tape);

  std::vector<Value> grads(num_values);
  auto accumulate = [&](int32_t id, Value g) {
    Value& slot = grads[static_cast<std::size_t>(id)];
    slot = slot.valid() ? add(tape, slot, g) : g;
  };
  for (std::size_t k = 0; k < outputs.size(); ++k) accumulate(outputs[k].id, seeds[k]);

  std::vector<int32_t> inputs;
  std::vector<Value> grads_in;
  for (std::size_t i = num_nodes; i-- > 0;) {
    const Node<T>& node = tape.nodes()[i];
    if (node.op->leaf) continue;
    const auto out = static_cast<std::size_t>(node.output);
    if (out >= num_values || !grads[out].valid() || !reaches[out]) continue;
    uint32_t want = 0;
    for (std::size_t k = 0; k < node.inputs.size() && k < 32; ++k) {
      const int32_t id = node.inputs[k];
      if (id >= 0 && reaches[static_cast<std::size_t>(id)]) want |= 1u << k;
    }
    if (want == 0) continue;
    const auto record_vjp = node.op->template record_vjp<T>();
    if (!record_vjp)
      throw TapeError(fmt::format(
          "grad: node #{} {} (recorded at {}:{}) has no recorded VJP yet, so its gradient cannot be "
          "differentiated again (higher-order gradients; see the README for the ops covered). Use a "
          "first-order backward() for it",
          i, node_op_name(tape, node), node.where.basename(), node.where.line));
    inputs = node.inputs;  // `node` is invalidated by what record_vjp records
    grads_in.assign(inputs.size(), Value{});
    {
      GradOfScope<T> scope(tape, static_cast<int32_t>(i));
      record_vjp(tape, static_cast<int32_t>(i), grads[out], want, grads_in);
      for (std::size_t k = 0; k < inputs.size(); ++k) {
        if (!grads_in[k].valid()) continue;
        const Value in{inputs[k]};
        if (tape.shape(grads_in[k]) != tape.shape(in))
          throw std::logic_error(fmt::format("grad: the recorded VJP of node #{} {} gave input {} a gradient of shape "
                                             "{}, not its shape {}",
                                             i, node_op_name(tape, tape.nodes()[i]), k,
                                             shape_str(tape.shape(grads_in[k])), shape_str(tape.shape(in))));
        accumulate(inputs[k], grads_in[k]);
      }
    }
  }
  return grads;
}

}  // namespace detail

template <class T>
std::vector<Value> grad(Tape<T>& tape, const std::vector<Value>& outputs, const std::vector<Value>& inputs,
                        const std::vector<Value>& grad_outputs, const GradOptions& opt) {
  if (outputs.empty()) throw TapeError("grad: no outputs to differentiate");
  if (!grad_outputs.empty() && grad_outputs.size() != outputs.size())
    throw TapeError(fmt::format("grad: {} outputs but {} grad_outputs (give one per output, or none for scalar outputs)",
                                outputs.size(), grad_outputs.size()));
  std::vector<Value> seeds;
  for (std::size_t k = 0; k < outputs.size(); ++k) {
    const Shape ys = tape.shape(outputs[k]);
    if (!tape.requires_grad(outputs[k]))
      throw TapeError(fmt::format("grad: output {} (value #{}) does not depend on any parameter; there is nothing "
                                  "to differentiate",
                                  k, outputs[k].id));
    if (grad_outputs.empty()) {
      if (tape.value(outputs[k]).size() != 1)
        throw TapeError(fmt::format("grad: output {} (value #{}) has shape {}; pass grad_outputs for outputs that "
                                    "are not scalars",
                                    k, outputs[k].id, shape_str(ys)));
      std::optional<NoGradGuard<T>> constant;  // without create_graph: no node, as for the rest
      if (!opt.create_graph) constant.emplace(tape);
      seeds.push_back(tape.input(xt::ones<T>(ys), "grad seed"));
    } else {
      if (tape.shape(grad_outputs[k]) != ys)
        throw ShapeError(fmt::format("grad: grad_outputs[{}] {} and output {} (value #{}) {} disagree in shape (they "
                                     "must be equal)",
                                     k, shape_str(tape.shape(grad_outputs[k])), k, outputs[k].id, shape_str(ys)));
      seeds.push_back(grad_outputs[k]);
    }
  }
  std::vector<char> wanted(tape.num_values(), 0);
  for (std::size_t j = 0; j < inputs.size(); ++j) {
    if (!tape.requires_grad(inputs[j]))
      throw TapeError(fmt::format("grad: input {} (value #{}) needs no gradient (an input or constant; put it on the "
                                  "tape with tape.param() to differentiate with respect to it)",
                                  j, inputs[j].id));
    wanted[static_cast<std::size_t>(inputs[j].id)] = 1;
  }
  const std::vector<Value> all = detail::record_backward(tape, outputs, seeds, opt.create_graph, wanted);
  std::vector<Value> result;
  for (std::size_t j = 0; j < inputs.size(); ++j) {
    const Value g = all[static_cast<std::size_t>(inputs[j].id)];
    if (!g.valid() && !opt.allow_unused)
      throw TapeError(fmt::format("grad: no output depends on input {} (value #{}); pass allow_unused to get Value{{}} "
                                  "for it",
                                  j, inputs[j].id));
    result.push_back(g);
  }
  return result;
}

GradcheckResult gradgradcheck(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs,
                              const std::vector<std::string>& names, const GradcheckOptions& opt) {
  const std::size_t n = inputs.size();
  // The output's shape, for the cotangent u.
  Shape out_shape;
  {
    Tape<double> probe;
    NoGradGuard<double> guard(probe);
    std::vector<Value> in;
    for (const auto& x : inputs) in.push_back(probe.input(x));
    out_shape = probe.shape(f(probe, in));
  }
  std::mt19937_64 rng(opt.seed + 0x9e3779b9u);
  std::normal_distribution<double> nd(0.0, 1.0);
  auto random = [&](const Shape& s) {
    Tensor<double> t(s);
    for (double& e : t) e = nd(rng);
    return t;
  };
  const Tensor<double> u = random(out_shape);
  auto w = std::make_shared<std::vector<Tensor<double>>>();
  for (const auto& x : inputs) w->push_back(random(to_shape(x.shape())));
  // Parameters standing in for the inputs when gradcheck evaluates S numerically (its
  // inputs are then constants under NoGradGuard, and ad::grad needs parameters).
  auto stand_in = std::make_shared<std::vector<Parameter<double>>>(n + 1);

  GradcheckFn S = [f, w, stand_in, n](Tape<double>& tape, const std::vector<Value>& in) -> Value {
    const bool enabled = tape.grad_enabled();
    tape.set_grad_enabled(true);
    std::vector<Value> v = in;
    if (!enabled || !tape.requires_grad(in[0]))
      for (std::size_t k = 0; k <= n; ++k) {
        Parameter<double>& p = (*stand_in)[k];
        p.value = tape.value(in[k]);
        p.zero_grad();
        v[k] = tape.param(p);
      }
    const std::vector<Value> xs(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n));
    const Value y = f(tape, xs);
    const std::vector<Value> g = grad(tape, {y}, xs, {v[n]}, {.create_graph = true, .allow_unused = true});
    Value s;
    for (std::size_t k = 0; k < n; ++k) {
      if (!g[k].valid()) continue;
      const Value term = sum(tape, mul(tape, g[k], tape.input((*w)[k], "gradgradcheck w")));
      s = s.valid() ? add(tape, s, term) : term;
    }
    tape.set_grad_enabled(enabled);
    if (!s.valid()) throw TapeError("gradgradcheck: the function's output depends on none of its inputs");
    return s;
  };
  std::vector<Tensor<double>> all = inputs;
  all.push_back(u);
  std::vector<std::string> all_names;
  for (std::size_t k = 0; k < n; ++k) all_names.push_back(k < names.size() ? names[k] : fmt::format("input{}", k));
  all_names.push_back("grad_output");
  GradcheckResult r = gradcheck(S, all, all_names, opt);
  r.report = "gradgradcheck (gradcheck of the recorded VJP): " + r.report;

  // The recorded VJP must also give the first-order VJP's values (the finite differences
  // above only see the recorded one): both from the same tape, element by element.
  std::vector<Parameter<double>> xs;
  xs.reserve(n);
  for (std::size_t k = 0; k < n; ++k) xs.emplace_back(all_names[k], inputs[k]);
  Tape<double> tape;
  std::vector<Value> xv;
  for (auto& p : xs) xv.push_back(tape.param(p));
  const Value y = f(tape, xv);
  const std::vector<Value> recorded = grad(tape, {y}, xv, {tape.input(u)}, {.create_graph = false, .allow_unused = true});
  tape.backward(y, u);
  for (std::size_t k = 0; k < n; ++k) {
    const Tensor<double>& first = xs[k].grad;
    for (std::size_t e = 0; e < first.size(); ++e) {
      const double a = recorded[k].valid() ? tape.value(recorded[k]).data()[e] : 0.0, b = first.data()[e];
      if (std::abs(a - b) <= 1e-10 * std::max(1.0, std::abs(b))) continue;
      r.ok = r.values_ok = false;
      r.report += fmt::format(
          " Recorded VJP FAILED: {} element {} is {:.17g} by the recorded VJP but {:.17g} by the first-order VJP.",
          all_names[k], e, a, b);
      return r;
    }
  }
  return r;
}

template <class T>
std::vector<Tensor<T>> hvp(const LossFn<T>& f, const std::vector<Parameter<T>*>& params,
                           const std::vector<Tensor<T>>& v) {
  if (v.size() != params.size())
    throw ShapeError(fmt::format("hvp: {} parameters but {} vectors (one per parameter)", params.size(), v.size()));
  // Copies: the second backward accumulates into their grad, not the caller's.
  std::vector<Parameter<T>> copies;
  copies.reserve(params.size());
  for (std::size_t k = 0; k < params.size(); ++k) {
    if (v[k].shape() != params[k]->value.shape())
      throw ShapeError(fmt::format("hvp: vector {} {} and parameter \"{}\" {} disagree in shape (they must be equal)",
                                   k, shape_str(v[k].shape()), params[k]->name, shape_str(params[k]->value.shape())));
    copies.emplace_back(params[k]->name, params[k]->value);
  }
  Tape<T> tape;
  std::vector<Value> p;
  for (auto& c : copies) p.push_back(tape.param(c));
  const Value loss = f(tape, p);
  // g = dJ/dp, recorded (reverse), then s = <g, v>; ds/dp = H v by one more reverse pass.
  const std::vector<Value> g = grad(tape, {loss}, p, {}, {.create_graph = true, .allow_unused = true});
  Value s;
  for (std::size_t k = 0; k < p.size(); ++k) {
    if (!g[k].valid()) continue;
    const Value term = sum(tape, mul(tape, g[k], tape.input(v[k], "hvp v")));
    s = s.valid() ? add(tape, s, term) : term;
  }
  std::vector<Tensor<T>> result;
  if (s.valid() && tape.requires_grad(s)) tape.backward(s);
  for (auto& c : copies) result.push_back(c.grad);
  return result;
}

#define AD_INSTANTIATE(T)                                                                                          \
  template std::vector<Value> grad<T>(Tape<T>&, const std::vector<Value>&, const std::vector<Value>&,             \
                                      const std::vector<Value>&, const GradOptions&);                             \
  template std::vector<Tensor<T>> hvp<T>(const LossFn<T>&, const std::vector<Parameter<T>*>&,                     \
                                         const std::vector<Tensor<T>>&);                                          \
  template std::vector<Value> detail::record_backward<T>(Tape<T>&, const std::vector<Value>&,                     \
                                                         const std::vector<Value>&, bool, const std::vector<char>&);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
