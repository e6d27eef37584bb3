// User-defined ops: a forward and a VJP written by the user, recorded on the tape as
// a node like any other (OpKind::Custom), so it is printed, drawn, stepped through,
// checked by anomaly mode and re-checked by gradcheck_nodes. Every custom node shares
// one registry entry (OpKind::Custom, autodiff/op.hpp), as a built-in op has its own;
// that entry's VJP calls the CustomOp's virtual vjp.
#pragma once

#include <initializer_list>
#include <memory>
#include <source_location>
#include <span>
#include <string>
#include <utility>

#include "autodiff/tape.hpp"

namespace ad {

// The interface of a custom op of one or more inputs. Both scalar types are required:
// training tapes are float, and gradcheck_nodes replays every node in double. Most
// ops write the maths once as templates and wrap them with make_custom_op (below).
class CustomOp {
 public:
  virtual ~CustomOp() = default;
  // The name shown on the tape and in error reports, e.g. "cube".
  virtual std::string name() const = 0;
  // The output shape for these input shapes; throw ShapeError (ad::shape_error) when
  // they break the op's rule.
  virtual Shape output_shape(std::span<const Shape> inputs) const = 0;
  // out (already shaped by output_shape) = f(inputs).
  virtual void forward(std::span<const Tensor<float>* const> inputs, Tensor<float>& out) const = 0;
  virtual void forward(std::span<const Tensor<double>* const> inputs, Tensor<double>& out) const = 0;
  // The VJP contract of autodiff/tape.hpp: for every non-null grad_inputs[i] (shaped
  // like inputs[i]), grad_inputs[i] += dJ/d(input i) given grad_out = dJ/d(out).
  virtual void vjp(const Tensor<float>& grad_out, std::span<const Tensor<float>* const> inputs,
                   const Tensor<float>& out, std::span<Tensor<float>* const> grad_inputs) const = 0;
  virtual void vjp(const Tensor<double>& grad_out, std::span<const Tensor<double>* const> inputs,
                   const Tensor<double>& out, std::span<Tensor<double>* const> grad_inputs) const = 0;
};

// Adapts a plain class whose forward and vjp are templates over the scalar type:
//   struct Cube {
//     std::string name() const { return "cube"; }
//     Shape output_shape(std::span<const Shape> in) const { return in[0]; }
//     template <class T> void forward(std::span<const Tensor<T>* const> in, Tensor<T>& out) const;
//     template <class T> void vjp(const Tensor<T>& g, std::span<const Tensor<T>* const> in,
//                                 const Tensor<T>& out, std::span<Tensor<T>* const> grad_in) const;
//   };
//   auto cube = ad::make_custom_op<Cube>();
template <class Impl>
class CustomOpOf final : public CustomOp {
 public:
  template <class... Args>
  explicit CustomOpOf(Args&&... args) : impl_(std::forward<Args>(args)...) {}
  std::string name() const override { return impl_.name(); }
  Shape output_shape(std::span<const Shape> in) const override { return impl_.output_shape(in); }
  void forward(std::span<const Tensor<float>* const> in, Tensor<float>& out) const override {
    impl_.template forward<float>(in, out);
  }
  void forward(std::span<const Tensor<double>* const> in, Tensor<double>& out) const override {
    impl_.template forward<double>(in, out);
  }
  void vjp(const Tensor<float>& g, std::span<const Tensor<float>* const> in, const Tensor<float>& out,
           std::span<Tensor<float>* const> grad_in) const override {
    impl_.template vjp<float>(g, in, out, grad_in);
  }
  void vjp(const Tensor<double>& g, std::span<const Tensor<double>* const> in, const Tensor<double>& out,
           std::span<Tensor<double>* const> grad_in) const override {
    impl_.template vjp<double>(g, in, out, grad_in);
  }
  const Impl& impl() const { return impl_; }

 private:
  Impl impl_;
};

template <class Impl, class... Args>
std::shared_ptr<const CustomOp> make_custom_op(Args&&... args) {
  return std::make_shared<const CustomOpOf<Impl>>(std::forward<Args>(args)...);
}

// Records `op` applied to one or more inputs: checks the shapes (op.output_shape), runs
// op.forward, and appends an OpKind::Custom node whose VJP is op.vjp. The tape keeps
// `op` alive until reset().
template <class T>
Value custom(Tape<T>& tape, const std::shared_ptr<const CustomOp>& op, std::initializer_list<Value> inputs,
             std::source_location loc = std::source_location::current());
template <class T>
Value custom(Tape<T>& tape, const std::shared_ptr<const CustomOp>& op, std::span<const Value> inputs,
             std::source_location loc = std::source_location::current());

// The VJP of a custom node, called by the reverse loop through OpKind::Custom's entry.
template <class T>
void custom_vjp(const CustomOp& op, const Tensor<T>& grad_out, std::span<const Tensor<T>* const> inputs,
                const Tensor<T>& out, std::span<Tensor<T>* const> grad_inputs);

}  // namespace ad
