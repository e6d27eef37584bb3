// User-defined ops: a forward and a VJP written by the user, recorded on the tape as
// a node like any other (OpKind::Custom), so it is printed, drawn, stepped through,
// checked by anomaly mode and re-checked by gradcheck_nodes. Every custom node shares
// one registry entry (OpKind::Custom, autodiff/op.hpp), as a built-in op has its own;
// that entry's VJP calls the CustomOp's virtual vjp.
#pragma once

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <source_location>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "autodiff/tape.hpp"

namespace ad {

// Tensors a custom op keeps from its forward for its VJP, beyond its inputs and output
// (which the VJP always receives): say a batch norm's mean and 1/sqrt(var + eps), so
// that the VJP need not recompute them. The tape owns them (one list per node, kept
// until reset(), their buffers reused by the next step), so the VJP reads what this
// node's forward saved; in no-grad mode they are dropped after the forward.
template <class T>
class CustomSaved {
 public:
  // For a forward: appends into `store`, reusing the tensors already there.
  explicit CustomSaved(std::vector<Tensor<T>>& store) : store_(&store), items_(&store) {}
  // For a VJP: reads `saved`, a forward's list.
  static CustomSaved reading(const std::vector<Tensor<T>>& saved) { return CustomSaved(saved); }

  // Appends a copy of t; returns the stored tensor.
  Tensor<T>& save(const Tensor<T>& t) {
    Tensor<T>& s = save_new(to_shape(t.shape()));
    std::copy(t.begin(), t.end(), s.begin());
    return s;
  }
  // Appends a tensor of `shape` (contents unspecified) for the forward to fill in place.
  Tensor<T>& save_new(const Shape& shape) {
    if (!store_) read_only();
    if (used_ == store_->size()) store_->emplace_back();
    Tensor<T>& s = (*store_)[used_++];
    s.resize(shape);
    return s;
  }
  // The i-th saved tensor, in the order the forward saved them.
  const Tensor<T>& operator[](std::size_t i) const {
    if (i >= size()) out_of_range(i);
    return (*items_)[i];
  }
  std::size_t size() const { return store_ ? used_ : items_->size(); }
  // Drops what a previous step left beyond what this forward saved (called by the tape).
  void trim() {
    if (store_) store_->resize(used_);
  }

 private:
  explicit CustomSaved(const std::vector<Tensor<T>>& saved) : items_(&saved) {}
  [[noreturn]] void out_of_range(std::size_t i) const;
  [[noreturn]] void read_only() const;
  std::vector<Tensor<T>>* store_ = nullptr;  // null: a VJP's read-only view
  const std::vector<Tensor<T>>* items_;
  std::size_t used_ = 0;
};

// The interface of a custom op of one or more inputs. Both scalar types are required:
// training tapes are float, and gradcheck_nodes replays every node in double. Most
// ops write the maths once as templates and wrap them with make_custom_op (below).
//
// An op implements either the plain forward and vjp, or the pair that takes
// CustomSaved (to keep tensors from the forward for the VJP); the tape calls the
// latter, whose defaults call the former.
class CustomOp {
 public:
  virtual ~CustomOp() = default;
  // The name shown on the tape and in error reports, e.g. "cube".
  virtual std::string name() const = 0;
  // The output shape for these input shapes; throw ShapeError (ad::shape_error) when
  // they break the op's rule.
  virtual Shape output_shape(std::span<const Shape> inputs) const = 0;
  // out (already shaped by output_shape) = f(inputs).
  virtual void forward(std::span<const Tensor<float>* const> inputs, Tensor<float>& out) const;
  virtual void forward(std::span<const Tensor<double>* const> inputs, Tensor<double>& out) const;
  // The VJP contract of autodiff/tape.hpp: for every non-null grad_inputs[i] (shaped
  // like inputs[i]), grad_inputs[i] += dJ/d(input i) given grad_out = dJ/d(out).
  virtual void vjp(const Tensor<float>& grad_out, std::span<const Tensor<float>* const> inputs,
                   const Tensor<float>& out, std::span<Tensor<float>* const> grad_inputs) const;
  virtual void vjp(const Tensor<double>& grad_out, std::span<const Tensor<double>* const> inputs,
                   const Tensor<double>& out, std::span<Tensor<double>* const> grad_inputs) const;
  // The same with the node's saved tensors: the forward may save, the VJP reads what
  // that forward saved. By default they call the plain forms above.
  virtual void forward(std::span<const Tensor<float>* const> inputs, Tensor<float>& out, CustomSaved<float>& saved) const {
    forward(inputs, out);
  }
  virtual void forward(std::span<const Tensor<double>* const> inputs, Tensor<double>& out,
                       CustomSaved<double>& saved) const {
    forward(inputs, out);
  }
  virtual void vjp(const Tensor<float>& grad_out, std::span<const Tensor<float>* const> inputs, const Tensor<float>& out,
                   std::span<Tensor<float>* const> grad_inputs, const CustomSaved<float>& saved) const {
    vjp(grad_out, inputs, out, grad_inputs);
  }
  virtual void vjp(const Tensor<double>& grad_out, std::span<const Tensor<double>* const> inputs,
                   const Tensor<double>& out, std::span<Tensor<double>* const> grad_inputs,
                   const CustomSaved<double>& saved) const {
    vjp(grad_out, inputs, out, grad_inputs);
  }
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
// To keep tensors for the VJP, forward and vjp take one more argument:
//     template <class T> void forward(std::span<const Tensor<T>* const> in, Tensor<T>& out, CustomSaved<T>& saved) const;
//     template <class T> void vjp(const Tensor<T>& g, std::span<const Tensor<T>* const> in, const Tensor<T>& out,
//                                 std::span<Tensor<T>* const> grad_in, const CustomSaved<T>& saved) const;
template <class Impl>
class CustomOpOf final : public CustomOp {
 public:
  template <class... Args>
  explicit CustomOpOf(Args&&... args) : impl_(std::forward<Args>(args)...) {}
  std::string name() const override { return impl_.name(); }
  Shape output_shape(std::span<const Shape> in) const override { return impl_.output_shape(in); }
  void forward(std::span<const Tensor<float>* const> in, Tensor<float>& out) const override { run_forward<float>(in, out); }
  void forward(std::span<const Tensor<double>* const> in, Tensor<double>& out) const override {
    run_forward<double>(in, out);
  }
  void vjp(const Tensor<float>& g, std::span<const Tensor<float>* const> in, const Tensor<float>& out,
           std::span<Tensor<float>* const> grad_in) const override {
    run_vjp<float>(g, in, out, grad_in);
  }
  void vjp(const Tensor<double>& g, std::span<const Tensor<double>* const> in, const Tensor<double>& out,
           std::span<Tensor<double>* const> grad_in) const override {
    run_vjp<double>(g, in, out, grad_in);
  }
  void forward(std::span<const Tensor<float>* const> in, Tensor<float>& out, CustomSaved<float>& saved) const override {
    run_forward<float>(in, out, &saved);
  }
  void forward(std::span<const Tensor<double>* const> in, Tensor<double>& out,
               CustomSaved<double>& saved) const override {
    run_forward<double>(in, out, &saved);
  }
  void vjp(const Tensor<float>& g, std::span<const Tensor<float>* const> in, const Tensor<float>& out,
           std::span<Tensor<float>* const> grad_in, const CustomSaved<float>& saved) const override {
    run_vjp<float>(g, in, out, grad_in, &saved);
  }
  void vjp(const Tensor<double>& g, std::span<const Tensor<double>* const> in, const Tensor<double>& out,
           std::span<Tensor<double>* const> grad_in, const CustomSaved<double>& saved) const override {
    run_vjp<double>(g, in, out, grad_in, &saved);
  }
  const Impl& impl() const { return impl_; }

 private:
  // Impl's forms with or without CustomSaved; called without a tape (saved null), a
  // saving Impl gets an empty list that it may fill and its VJP finds empty.
  template <class T>
  void run_forward(std::span<const Tensor<T>* const> in, Tensor<T>& out, CustomSaved<T>* saved = nullptr) const {
    if constexpr (requires(CustomSaved<T>& s) { impl_.template forward<T>(in, out, s); }) {
      std::vector<Tensor<T>> scratch;
      CustomSaved<T> none(scratch);
      impl_.template forward<T>(in, out, saved ? *saved : none);
    } else {
      impl_.template forward<T>(in, out);
    }
  }
  template <class T>
  void run_vjp(const Tensor<T>& g, std::span<const Tensor<T>* const> in, const Tensor<T>& out,
               std::span<Tensor<T>* const> grad_in, const CustomSaved<T>* saved = nullptr) const {
    if constexpr (requires(const CustomSaved<T>& s) { impl_.template vjp<T>(g, in, out, grad_in, s); }) {
      const std::vector<Tensor<T>> empty;
      impl_.template vjp<T>(g, in, out, grad_in, saved ? *saved : CustomSaved<T>::reading(empty));
    } else {
      impl_.template vjp<T>(g, in, out, grad_in);
    }
  }
  Impl impl_;
};

template <class Impl, class... Args>
std::shared_ptr<const CustomOp> make_custom_op(Args&&... args) {
  return std::make_shared<const CustomOpOf<Impl>>(std::forward<Args>(args)...);
}

// Records `op` applied to one or more inputs (any number): checks the shapes
// (op.output_shape), runs op.forward, and appends an OpKind::Custom node whose VJP is
// op.vjp. The tape keeps `op` and what its forward saved alive until reset().
template <class T>
Value custom(Tape<T>& tape, const std::shared_ptr<const CustomOp>& op, std::initializer_list<Value> inputs,
             std::source_location loc = std::source_location::current());
template <class T>
Value custom(Tape<T>& tape, const std::shared_ptr<const CustomOp>& op, std::span<const Value> inputs,
             std::source_location loc = std::source_location::current());

// The VJP of a custom node, called by the reverse loop through OpKind::Custom's entry
// with the tensors the node's forward saved.
template <class T>
void custom_vjp(const CustomOp& op, const Tensor<T>& grad_out, std::span<const Tensor<T>* const> inputs,
                const Tensor<T>& out, std::span<Tensor<T>* const> grad_inputs, const CustomSaved<T>& saved);
// The same for an op that saved nothing.
template <class T>
void custom_vjp(const CustomOp& op, const Tensor<T>& grad_out, std::span<const Tensor<T>* const> inputs,
                const Tensor<T>& out, std::span<Tensor<T>* const> grad_inputs);

}  // namespace ad
