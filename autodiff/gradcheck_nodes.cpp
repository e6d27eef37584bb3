// Per-node gradient check: replay one node on a double tape through the op's public
// recording function (so the check exercises exactly the forward and VJP that the
// reverse loop calls) and hand it to gradcheck. See autodiff/gradcheck_nodes.hpp.
#include "autodiff/gradcheck_nodes.hpp"

#include <omp.h>

#include <array>
#include <cmath>
#include <type_traits>

#include "autodiff/custom.hpp"
#include "ops/activation.hpp"
#include "ops/conv2d.hpp"
#include "ops/elementwise.hpp"
#include "ops/flatten.hpp"
#include "ops/loss.hpp"
#include "ops/matmul.hpp"
#include "ops/pool.hpp"

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

// What input k of an op is called in reports.
const char* input_role(OpKind op, std::size_t k) {
  switch (op) {
    case OpKind::Conv2d: return k == 0 ? "input" : k == 1 ? "kernel" : "bias";
    case OpKind::Linear: return k == 0 ? "input" : k == 1 ? "weight" : "bias";
    case OpKind::BiasAdd: return k == 0 ? "input" : "bias";
    case OpKind::Matmul:
    case OpKind::Add:
    case OpKind::Mul: return k == 0 ? "a" : "b";
    case OpKind::SoftmaxCrossEntropy: return "logits";
    case OpKind::Mse: return k == 0 ? "prediction" : "target";
    case OpKind::Custom: return k == 0 ? "input0" : k == 1 ? "input1" : "input2";
    default: return "input";
  }
}

// Records `node`'s op on `t` applied to `in` (Value{} where the node had no input).
template <class T>
Value replay(Tape<double>& t, const Tape<T>& tape, const Node<T>& node, const std::array<Value, 3>& in) {
  const Attrs& a = node.attrs;
  const Pool2dOptions pool{.window = a.window, .stride = a.stride, .padding = a.padding, .max_padding = a.max_padding};
  switch (node.op) {
    case OpKind::Conv2d: return conv2d(t, in[0], in[1], in[2], {.padding = a.padding, .stride = a.stride});
    case OpKind::AvgPool2d: return avg_pool2d(t, in[0], pool);
    case OpKind::MaxPool2d: return max_pool2d(t, in[0], pool);
    case OpKind::Relu: return relu(t, in[0]);
    case OpKind::LeakyRelu: return leaky_relu(t, in[0], a.alpha);
    case OpKind::Sigmoid: return sigmoid(t, in[0]);
    case OpKind::Tanh: return ad::tanh(t, in[0]);
    case OpKind::Flatten: return flatten(t, in[0]);
    case OpKind::Linear: return linear(t, in[0], in[1], in[2]);
    case OpKind::Matmul: return matmul(t, in[0], in[1]);
    case OpKind::Add: return add(t, in[0], in[1]);
    case OpKind::BiasAdd: return bias_add(t, in[0], in[1]);
    case OpKind::Mul: return mul(t, in[0], in[1]);
    case OpKind::Scale: return scale(t, in[0], a.alpha);
    case OpKind::Sum: return sum(t, in[0]);
    case OpKind::Mean: return mean(t, in[0]);
    case OpKind::SoftmaxCrossEntropy:  // the labels are saved in the node
      return softmax_cross_entropy(t, in[0], std::vector<int>(node.saved_index.begin(), node.saved_index.end()));
    case OpKind::Mse: return mse(t, in[0], in[1]);
    case OpKind::Custom: {
      const auto& op = tape.custom_ops().at(static_cast<std::size_t>(node.custom));
      switch (node.num_inputs()) {
        case 1: return custom(t, op, {in[0]});
        case 2: return custom(t, op, {in[0], in[1]});
        default: return custom(t, op, {in[0], in[1], in[2]});
      }
    }
    case OpKind::Input:
    case OpKind::Parameter: break;
  }
  throw TapeError(fmt::format("gradcheck_nodes: cannot replay op {}", op_name(node.op)));
}

// Flat indices of x where the op is not differentiable (within `margin`): ReLU-type
// kinks at 0, and the near-winners of max-pool windows whose best two candidates are
// within `margin` (a padding zero is a candidate with MaxPoolPadding::Zero).
std::vector<bool> kinks(OpKind op, const Attrs& a, const Tensor<double>& x, double margin) {
  std::vector<bool> at(x.size(), false);
  if (op == OpKind::Relu || op == OpKind::LeakyRelu) {
    for (std::size_t i = 0; i < x.size(); ++i) at[i] = std::abs(x.data()[i]) <= margin;
  } else if (op == OpKind::MaxPool2d) {
    const std::ptrdiff_t H = static_cast<std::ptrdiff_t>(x.shape()[2]), W = static_cast<std::ptrdiff_t>(x.shape()[3]);
    const std::size_t planes = x.shape()[0] * x.shape()[1];
    const std::ptrdiff_t OH = (H + 2 * a.padding[0] - a.window[0]) / a.stride[0] + 1;
    const std::ptrdiff_t OW = (W + 2 * a.padding[1] - a.window[1]) / a.stride[1] + 1;
    const bool zero_pad = a.max_padding == MaxPoolPadding::Zero;
    std::vector<std::pair<double, std::ptrdiff_t>> cand;  // (value, index in plane; -1 = padding)
    for (std::size_t pl = 0; pl < planes; ++pl) {
      const double* xp = x.data() + pl * static_cast<std::size_t>(H * W);
      for (std::ptrdiff_t i = 0; i < OH; ++i)
        for (std::ptrdiff_t j = 0; j < OW; ++j) {
          cand.clear();
          for (std::ptrdiff_t p = 0; p < a.window[0]; ++p)
            for (std::ptrdiff_t q = 0; q < a.window[1]; ++q) {
              const std::ptrdiff_t ih = i * a.stride[0] + p - a.padding[0], iw = j * a.stride[1] + q - a.padding[1];
              if (ih >= 0 && ih < H && iw >= 0 && iw < W) cand.emplace_back(xp[ih * W + iw], ih * W + iw);
              else if (zero_pad) cand.emplace_back(0.0, -1);
            }
          double best = -INFINITY;
          for (const auto& c : cand) best = std::max(best, c.first);
          std::size_t near = 0;
          for (const auto& c : cand) near += c.first >= best - margin;
          if (near < 2) continue;  // a clear winner: differentiable
          for (const auto& c : cand)
            if (c.first >= best - margin && c.second >= 0) at[pl * static_cast<std::size_t>(H * W) + static_cast<std::size_t>(c.second)] = true;
        }
    }
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
    if (node.op == OpKind::Input || node.op == OpKind::Parameter || !tape.requires_grad(Value{node.output})) {
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
    std::array<Tensor<double>, 3> x;
    std::array<bool, 3> present{}, checked{};
    std::vector<std::string> names;
    std::vector<Tensor<double>> inputs;
    std::vector<std::vector<bool>> skip;
    for (std::size_t k = 0; k < 3; ++k) {
      const int32_t id = node.inputs[k];
      if (id < 0) continue;
      present[k] = true;
      x[k] = xt::cast<double>(tape.value(Value{id}));
      if (!tape.requires_grad(Value{id})) continue;
      checked[k] = true;
      names.emplace_back(input_role(node.op, k));
      const Node<T>* from = tape.slot(Value{id}).producer >= 0 ? &tape.nodes()[static_cast<std::size_t>(tape.slot(Value{id}).producer)] : nullptr;
      nc.inputs.push_back(fmt::format("{} (#{}{})", names.back(), tape.slot(Value{id}).producer,
                                      from && !from->label.empty() ? fmt::format(" \"{}\"", from->label) : std::string()));
      inputs.push_back(x[k]);
      skip.push_back(kinks(node.op, node.attrs, x[k], opt.kink_margin * opt.check.eps));
    }
    auto f = [&](Tape<double>& t, const std::vector<Value>& v) {
      std::array<Value, 3> in{};
      std::size_t j = 0;
      for (std::size_t k = 0; k < 3; ++k)
        if (present[k]) in[k] = checked[k] ? v[j++] : t.input(x[k]);
      return replay(t, tape, node, in);
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
