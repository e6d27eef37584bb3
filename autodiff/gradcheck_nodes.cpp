// Per-node gradient check: replay one node on a double tape through the op's public
// recording function (so the check exercises exactly the forward and VJP that the
// reverse loop calls) and hand it to gradcheck. See autodiff/gradcheck_nodes.hpp.
#include "autodiff/gradcheck_nodes.hpp"

#include <omp.h>

#include <array>
#include <span>
#include <cmath>
#include <type_traits>

#include "autodiff/custom.hpp"

namespace ad {

namespace {

// Runs the calling thread's parallel regions on one thread while in scope. A replay
// evaluates one op, many times, on small data: OpenMP's fork/join and spin-waiting
// would cost more than the op (by 10x on a busy machine).
class SingleThreaded {
 public:
  SingleThreaded() : prev_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SingleThreaded() { omp_set_num_threads(prev_); }
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  int prev_;
};

// Records `node`'s op on `t` applied to `in` (Value{} where the node had no input),
// through the op's registry entry.
template <class T>
Value replay(Tape<double>& t, const Tape<T>& tape, const Node<T>& node, std::span<const Value> in) {
  if (!node.op->replay) throw TapeError(fmt::format("gradcheck_nodes: op {} has no replay", op_name(node.op)));
  const std::shared_ptr<const CustomOp>* custom =
      node.op == OpKind::Custom ? &tape.custom_ops().at(static_cast<std::size_t>(node.custom)) : nullptr;
  return node.op->replay(t, ReplayArgs{.inputs = in, .attrs = node.attrs, .saved_index = node.saved_index, .custom = custom});
}

// Flat indices of x (input k of the node) where the op is not differentiable, within
// `margin`: the op's own kinks function (ReLU at 0, max-pool ties), none by default.
// x: every input of the node (empty where absent).
template <class T>
std::vector<bool> kinks(const Node<T>& node, std::size_t k, const std::vector<Tensor<double>>& x,
                        const std::vector<char>& present, double margin) {
  std::vector<bool> at(x[k].size(), false);
  if (node.op->kinks_of_inputs) {
    std::vector<const Tensor<double>*> all(x.size(), nullptr);
    for (std::size_t i = 0; i < x.size(); ++i)
      if (present[i]) all[i] = &x[i];
    node.op->kinks_of_inputs(node.attrs, k, std::span<const Tensor<double>* const>(all), margin, at);
  } else if (node.op->kinks) {
    node.op->kinks(node.attrs, k, x[k], margin, at);
  }
  return at;
}

}  // namespace

const NodeGradcheck* NodeGradcheckResult::first_failure() const {
  for (const NodeGradcheck& n : nodes)
    if (!n.result.ok) return &n;
  return nullptr;
}

template <class T>
NodeGradcheckResult gradcheck_nodes(const Tape<T>& tape, const NodeGradcheckOptions& opt) {
  NodeGradcheckResult res;
  const SingleThreaded one_thread;
  for (std::size_t i = 0; i < tape.nodes().size(); ++i) {
    const Node<T>& node = tape.nodes()[i];
    if (node.op->leaf || !tape.requires_grad(Value{node.output})) {
      ++res.not_checked;
      continue;
    }
    NodeGradcheck nc;
    nc.index = i;
    nc.op = node_op_name(tape, node);
    nc.label = node.label;
    nc.where = fmt::format("{}:{}", node.where.basename(), node.where.line);

    // The values the node saw, in double; the inputs that need a gradient are checked,
    // the others enter the replay as constants.
    const std::size_t arity = node.inputs.size();
    std::vector<Tensor<double>> x(arity);
    std::vector<char> present(arity, 0), checked(arity, 0);
    std::vector<std::string> names;
    std::vector<Tensor<double>> inputs;
    std::vector<std::vector<bool>> skip;
    for (std::size_t k = 0; k < arity; ++k)
      if (node.inputs[k] >= 0) present[k] = true, x[k] = xt::cast<double>(tape.value(Value{node.inputs[k]}));
    for (std::size_t k = 0; k < arity; ++k) {
      const int32_t id = node.inputs[k];
      if (id < 0) continue;
      if (!tape.requires_grad(Value{id})) continue;
      checked[k] = true;
      names.emplace_back(node.op->input_name(k));
      const Node<T>* from = tape.slot(Value{id}).producer >= 0 ? &tape.nodes()[static_cast<std::size_t>(tape.slot(Value{id}).producer)] : nullptr;
      nc.inputs.push_back(fmt::format("{} (#{}{})", names.back(), tape.slot(Value{id}).producer,
                                      from && !from->label.empty() ? fmt::format(" \"{}\"", from->label) : std::string()));
      inputs.push_back(x[k]);
      skip.push_back(kinks(node, k, x, present, opt.kink_margin * opt.check.eps));
    }
    auto f = [&](Tape<double>& t, const std::vector<Value>& v) {
      std::vector<Value> in(arity);
      std::size_t j = 0;
      for (std::size_t k = 0; k < arity; ++k)
        if (present[k]) in[k] = checked[k] ? v[j++] : t.input(x[k]);
      return replay(t, tape, node, std::span<const Value>(in));
    };
    // The replay's forward must give what the node recorded.
    {
      Tape<double> t;
      NoGradGuard no_grad(t);
      std::vector<Value> v;
      for (const Tensor<double>& in : inputs) v.push_back(t.input(in));
      const Tensor<double>& y = t.value(f(t, v));
      const Tensor<T>& recorded = tape.value(Value{node.output});
      double scale = 0;
      for (std::size_t e = 0; e < y.size() && e < recorded.size(); ++e) {
        const double r = static_cast<double>(recorded.data()[e]);
        nc.replay_error = std::max(nc.replay_error, std::abs(y.data()[e] - r));
        if (std::isnan(y.data()[e] - r)) nc.replay_error = INFINITY;
        scale = std::max(scale, std::abs(r));
      }
      const double tol = (std::is_same_v<T, float> ? 1e-4 : 1e-10) * (1 + scale);
      if (y.size() != recorded.size() || !(nc.replay_error <= tol)) {
        nc.result.ok = false;
        nc.result.report = fmt::format(
            "the replay does not reproduce the node's recorded output (max |difference| {:.3g}, tolerance {:.3g}): "
            "were its inputs changed after the forward pass, e.g. by an optimizer step? Run gradcheck_nodes "
            "between backward and the step.",
            nc.replay_error, tol);
        res.ok = false;
        res.nodes.push_back(std::move(nc));
        if (opt.stop_at_first_failure) break;
        continue;
      }
    }
    GradcheckOptions go = opt.check;
    go.skip = [&skip](std::size_t input, std::size_t e) { return bool(skip[input][e]); };
    nc.result = gradcheck(f, inputs, names, go);
    nc.skipped = nc.result.skipped;
    res.ok = res.ok && nc.result.ok;
    res.nodes.push_back(std::move(nc));
    if (!res.ok && opt.stop_at_first_failure) break;
  }

  std::size_t skipped = 0;
  for (const NodeGradcheck& n : res.nodes) skipped += n.skipped;
  res.report = fmt::format("gradcheck_nodes {}: {} nodes checked{} ({} leaves or constant nodes not checked)",
                           res.ok ? "passed" : "FAILED", res.nodes.size(),
                           skipped ? fmt::format(", {} elements at kinks or ties skipped", skipped) : std::string(),
                           res.not_checked);
  if (const NodeGradcheck* bad = res.first_failure()) {
    const std::string node = fmt::format("#{} {}{} @ {}", bad->index, bad->op,
                                         bad->label.empty() ? std::string() : fmt::format(" \"{}\"", bad->label),
                                         bad->where);
    if (bad->result.input.empty()) {  // the replay itself failed
      res.report += fmt::format(".\nFirst failing node: {}: {}", node, bad->result.report);
    } else if (bad->result.values_ok) {
      res.report += fmt::format(".\nFirst failing node: {}: its VJP overwrites a gradient buffer instead of adding to "
                                "it.\n{}",
                                node, bad->result.report);
    } else {
      // "w.r.t. kernel (#1 "k1") at kernel[2,0,1,1]", or along the random direction
      std::string what = fmt::format("along a random direction through {}", fmt::join(bad->inputs, ", "));
      for (const std::string& s : bad->inputs)
        if (s.rfind(bad->result.input + " (", 0) == 0)
          what = fmt::format("w.r.t. {} at {}{}", s, bad->result.input, bad->result.position);
      res.report += fmt::format(
          ".\nFirst failing node: {}: its VJP disagrees with finite differences {}: analytic {:.9g} vs numeric "
          "{:.9g}.\n{}",
          node, what, bad->result.analytic, bad->result.numeric, bad->result.report);
    }
  }
  return res;
}

template NodeGradcheckResult gradcheck_nodes<float>(const Tape<float>&, const NodeGradcheckOptions&);
template NodeGradcheckResult gradcheck_nodes<double>(const Tape<double>&, const NodeGradcheckOptions&);

}  // namespace ad
