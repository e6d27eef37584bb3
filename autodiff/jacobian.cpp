// Jacobians by reverse mode: row i of d f/d x is the VJP of the cotangent e_i.
#include "autodiff/jacobian.hpp"

namespace ad {

namespace {

// jacobians(), also handing back the output shape.
std::vector<Tensor<double>> jacobians_of(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs, Shape& ys) {
  std::vector<Parameter<double>> params;
  params.reserve(inputs.size());
  for (std::size_t k = 0; k < inputs.size(); ++k) params.emplace_back(fmt::format("input{}", k), inputs[k]);
  Tape<double> tape;
  std::vector<Value> in;
  for (auto& p : params) in.push_back(tape.param(p));
  const Value y = f(tape, in);
  ys = tape.shape(y);
  const std::size_t m = tape.value(y).size();
  std::vector<Tensor<double>> jac;
  for (const auto& x : inputs) jac.push_back(xt::zeros<double>({m, x.size()}));
  Tensor<double> seed = xt::zeros<double>(ys);
  for (std::size_t i = 0; i < m; ++i) {
    for (auto& p : params) p.zero_grad();
    seed.data()[i] = 1.0;  // e_i
    tape.backward(y, seed, BackwardOptions{.retain_graph = true});
    seed.data()[i] = 0.0;
    // row i of J_k = e_i^T J_k = the gradient of <e_i, f> w.r.t. x_k
    for (std::size_t k = 0; k < params.size(); ++k)
      std::copy(params[k].grad.begin(), params[k].grad.end(), jac[k].data() + i * inputs[k].size());
  }
  return jac;
}

}  // namespace

std::vector<Tensor<double>> jacobians(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs) {
  Shape ys;
  return jacobians_of(f, inputs, ys);
}

Tensor<double> jacobian(const std::function<Value(Tape<double>&, Value)>& f, const Tensor<double>& x) {
  return jacobians([&](Tape<double>& t, const std::vector<Value>& v) { return f(t, v[0]); }, {x})[0];
}

std::size_t vec_position(const Shape& shape, std::size_t flat) {
  if (shape.size() < 2) return flat;
  const std::size_t H = shape[shape.size() - 2], W = shape[shape.size() - 1];
  const std::size_t plane = flat / (H * W), r = (flat % (H * W)) / W, c = flat % W;
  return plane * H * W + c * H + r;  // vec stacks the columns of each (H, W) plane
}

Tensor<double> to_vec_layout(const Tensor<double>& jacobian, const Shape& out, const Shape& in) {
  const std::size_t m = xt::compute_size(out), n = xt::compute_size(in);
  if (jacobian.dimension() != 2 || jacobian.shape()[0] != m || jacobian.shape()[1] != n)
    throw ShapeError(fmt::format("to_vec_layout: a Jacobian {} cannot map an input {} to an output {}; it must be "
                                 "(output size, input size)",
                                 shape_str(jacobian.shape()), shape_str(in), shape_str(out)));
  Tensor<double> doc = xt::zeros<double>({m, n});
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < n; ++j) doc(vec_position(out, i), vec_position(in, j)) = jacobian(i, j);
  return doc;
}

std::vector<Tensor<double>> vec_jacobians(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs) {
  Shape ys;
  std::vector<Tensor<double>> jac = jacobians_of(f, inputs, ys);
  for (std::size_t k = 0; k < jac.size(); ++k) jac[k] = to_vec_layout(jac[k], ys, to_shape(inputs[k].shape()));
  return jac;
}

}  // namespace ad
