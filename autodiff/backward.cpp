// The reverse loop's dispatch: one `switch` over the op kind that calls the op's
// named VJP with the node's saved data (see the VJP contract in autodiff/tape.hpp).
// A debugger can `break conv2d_vjp` and walk up one frame to see the node.
// User-defined ops (OpKind::Custom) go through their CustomOp's virtual vjp; the
// built-in ops never do.
#include "autodiff/custom.hpp"
#include "ops/activation.hpp"
#include "ops/conv2d.hpp"
#include "ops/elementwise.hpp"
#include "ops/flatten.hpp"
#include "ops/loss.hpp"
#include "ops/matmul.hpp"
#include "ops/pool.hpp"

namespace ad {

template <class T>
void Tape<T>::dispatch_vjp(const Node<T>& node) {
  const Value in0{node.inputs[0]}, in1{node.inputs[1]}, in2{node.inputs[2]};
  const Tensor<T>& g = slots_[static_cast<std::size_t>(node.output)].grad;  // dJ/d(output)
  auto x0 = [&]() -> const Tensor<T>& { return value(in0); };
  auto x1 = [&]() -> const Tensor<T>& { return value(in1); };
  switch (node.op) {
    case OpKind::Input:
    case OpKind::Parameter:
      break;  // leaves: nothing upstream
    case OpKind::Conv2d:
      conv2d_vjp(g, x0(), x1(), node.attrs, grad_buffer(in0), grad_buffer(in1), grad_buffer(in2));
      break;
    case OpKind::AvgPool2d:
      avg_pool2d_vjp(g, node.attrs, grad_buffer(in0));
      break;
    case OpKind::MaxPool2d:
      max_pool2d_vjp(g, node.saved_index, grad_buffer(in0));
      break;
    case OpKind::Relu:
      relu_vjp(g, x0(), grad_buffer(in0));
      break;
    case OpKind::LeakyRelu:
      leaky_relu_vjp(g, x0(), static_cast<T>(node.attrs.alpha), grad_buffer(in0));
      break;
    case OpKind::Sigmoid:
      sigmoid_vjp(g, value(Value{node.output}), grad_buffer(in0));
      break;
    case OpKind::Tanh:
      tanh_vjp(g, value(Value{node.output}), grad_buffer(in0));
      break;
    case OpKind::Flatten:
      flatten_vjp(g, grad_buffer(in0));
      break;
    case OpKind::Linear:
      linear_vjp(g, x0(), x1(), grad_buffer(in0), grad_buffer(in1), grad_buffer(in2));
      break;
    case OpKind::Matmul:
      matmul_vjp(g, x0(), x1(), grad_buffer(in0), grad_buffer(in1));
      break;
    case OpKind::Add:
      add_vjp(g, grad_buffer(in0), grad_buffer(in1));
      break;
    case OpKind::BiasAdd:
      bias_add_vjp(g, grad_buffer(in0), grad_buffer(in1));
      break;
    case OpKind::Mul:
      mul_vjp(g, x0(), x1(), grad_buffer(in0), grad_buffer(in1));
      break;
    case OpKind::Scale:
      scale_vjp(g, static_cast<T>(node.attrs.alpha), grad_buffer(in0));
      break;
    case OpKind::Sum:
      broadcast_scalar_vjp(g, T(1), grad_buffer(in0));
      break;
    case OpKind::Mean:
      broadcast_scalar_vjp(g, T(1) / static_cast<T>(x0().size()), grad_buffer(in0));
      break;
    case OpKind::SoftmaxCrossEntropy:
      softmax_cross_entropy_vjp(g, node.saved, node.saved_index, grad_buffer(in0));
      break;
    case OpKind::Mse:
      mse_vjp(g, x0(), x1(), grad_buffer(in0), grad_buffer(in1));
      break;
    case OpKind::Custom: {
      std::array<const Tensor<T>*, 3> xs{};
      std::array<Tensor<T>*, 3> grads{};
      const std::size_t n = static_cast<std::size_t>(node.num_inputs());
      for (std::size_t i = 0; i < n; ++i) {
        xs[i] = &value(Value{node.inputs[i]});
        grads[i] = grad_buffer(Value{node.inputs[i]});
      }
      custom_vjp(custom_op(node.custom), g, std::span<const Tensor<T>* const>(xs.data(), n),
                 value(Value{node.output}), std::span<Tensor<T>* const>(grads.data(), n));
      break;
    }
  }
}

template void Tape<float>::dispatch_vjp(const Node<float>&);
template void Tape<double>::dispatch_vjp(const Node<double>&);

}  // namespace ad
