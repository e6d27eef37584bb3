// Higher-order gradients: a backward pass recorded on the tape as ordinary,
// differentiable ops, so that a gradient can be combined with other values and
// differentiated again (Hessian-vector products, gradient penalties, gradgradcheck).
//
// How: each op's registry entry (autodiff/op.hpp) has a recorded VJP, record_vjp, that
// expresses its VJP with ops (conv2d's dJ/dx is conv_transpose2d of the output gradient;
// max-pool's is a scatter through the saved switches, whose own VJP is a gather ...).
// ad::grad runs the reverse loop over the tape once, calling record_vjp per node;
// contributions to a value used twice are summed with recorded adds. Each node recorded
// there carries Node::grad_of, the index of the forward node it differentiates, and is
// printed with "(d/d[7])" (format_tape, to_dot, the gdb printers).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "autodiff/gradcheck.hpp"
#include "autodiff/tape.hpp"

namespace ad {

struct GradOptions {
  // Record the gradients as differentiable ops (true), or only compute them: the same
  // recorded VJPs run under NoGradGuard, giving Values with no graph behind them.
  bool create_graph = true;
  // An input that no output depends on gets Value{} instead of a TapeError.
  bool allow_unused = false;
};

// d(sum_k <grad_outputs[k], outputs[k]>)/d(inputs[j]) for each j, as Values on `tape`, of
// the inputs' shapes. grad_outputs: one Value per output, of its shape (they may depend on
// parameters themselves); empty = every output is a scalar seeded with 1. Every input
// must need a gradient (a parameter, or a value computed from one). A node on the path
// whose op has no recorded VJP yet is refused with a TapeError naming the node and op.
// Hooks and anomaly checks of backward() do not run; Parameter::grad is not touched.
template <class T>
std::vector<Value> grad(Tape<T>& tape, const std::vector<Value>& outputs, const std::vector<Value>& inputs,
                        const std::vector<Value>& grad_outputs = {}, const GradOptions& opt = {});

// Second-order check, double precision: for f and a fixed random cotangent u of its
// output, the VJP  (x, u) -> dJ/dx, J = <u, f(x)>,  is a function of the inputs and of u;
// gradgradcheck runs gradcheck (central differences, per element and along a random
// direction; same defaults) on S(x, u) = sum_k <w_k, dJ/dx_k> for fixed random w_k. Its
// analytic gradient is a first-order backward through the recorded VJP, i.e. the second
// backward; its numeric one differentiates the recorded VJP's values. The report names
// an input or "grad_output" (u).
GradcheckResult gradgradcheck(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs,
                              const std::vector<std::string>& names = {}, const GradcheckOptions& opt = {});

// The loss as a function of parameter values put on the tape by the caller.
template <class T>
using LossFn = std::function<Value(Tape<T>& tape, const std::vector<Value>& params)>;

// Hessian-vector product H v of the scalar loss f at the parameters' current values, by
// reverse-over-reverse on one tape: g = grad(f, params) recorded (create_graph), then
// s = sum_k <g_k, v_k> and one ordinary backward of s gives ds/dp = H v (v is a
// constant). Cost: about three backward passes, and no finite-difference error; the
// tape already holds everything a second reverse pass needs, where forward-over-reverse
// would need a tangent (JVP) rule for every op, which the registry does not have.
// The parameters' values are read, their grad left untouched.
template <class T>
std::vector<Tensor<T>> hvp(const LossFn<T>& f, const std::vector<Parameter<T>*>& params,
                           const std::vector<Tensor<T>>& v);

// ---- for the ops' recorded VJPs (OpDef::record_vjp_*) ----

// Input k (Value{} if absent) and the output of node `node`, as handles of this recording.
template <class T>
Value node_input(const Tape<T>& tape, int32_t node, std::size_t k) {
  const int32_t id = tape.nodes()[static_cast<std::size_t>(node)].inputs.at(k);
  return id >= 0 ? tape.handle(id) : Value{};
}
template <class T>
Value node_output(const Tape<T>& tape, int32_t node) {
  return tape.handle(tape.nodes()[static_cast<std::size_t>(node)].output);
}
// Whether record_vjp must give input k a gradient.
inline bool wants(uint32_t want, std::size_t k) { return k < 32 && ((want >> k) & 1u) != 0; }

namespace detail {
// The reverse loop of ad::grad, recorded: the gradient of every value the seeds reach, by
// value id (Value{} where none), for values recorded before the call. `wanted` (by value
// id; empty = all) limits the pass to nodes that lead to one of them.
template <class T>
std::vector<Value> record_backward(Tape<T>& tape, const std::vector<Value>& outputs,
                                   const std::vector<Value>& seeds, bool create_graph,
                                   const std::vector<char>& wanted = {});
}  // namespace detail

}  // namespace ad
