// The tape: slots, node recording, buffer reuse between steps, and the reverse loop.
// The per-op dispatch of the reverse loop is in autodiff/backward.cpp.
#include "autodiff/tape.hpp"

#include <algorithm>

namespace ad {

std::string_view op_name(OpKind op) {
  switch (op) {
    case OpKind::Input: return "input";
    case OpKind::Parameter: return "param";
    case OpKind::Conv2d: return "conv2d";
    case OpKind::AvgPool2d: return "avg_pool2d";
    case OpKind::MaxPool2d: return "max_pool2d";
    case OpKind::Relu: return "relu";
    case OpKind::LeakyRelu: return "leaky_relu";
    case OpKind::Sigmoid: return "sigmoid";
    case OpKind::Tanh: return "tanh";
    case OpKind::Flatten: return "flatten";
    case OpKind::Linear: return "linear";
    case OpKind::Matmul: return "matmul";
    case OpKind::Add: return "add";
    case OpKind::BiasAdd: return "bias_add";
    case OpKind::Mul: return "mul";
    case OpKind::Scale: return "scale";
    case OpKind::Sum: return "sum";
    case OpKind::Mean: return "mean";
    case OpKind::SoftmaxCrossEntropy: return "softmax_cross_entropy";
    case OpKind::Mse: return "mse";
  }
  return "?";
}

template <class T>
const Slot<T>& Tape<T>::slot(Value v) const {
  if (v.id < 0 || static_cast<std::size_t>(v.id) >= slots_.size())
    throw TapeError(fmt::format("tape: value #{} is not on this tape (it holds {} values; was the "
                                "tape reset since the value was made?)",
                                v.id, slots_.size()));
  return slots_[static_cast<std::size_t>(v.id)];
}

template <class T>
Slot<T>& Tape<T>::slot_mut(Value v) {
  return const_cast<Slot<T>&>(static_cast<const Tape&>(*this).slot(v));
}

template <class T>
const Tensor<T>& Tape<T>::value(Value v) const {
  const Slot<T>& s = slot(v);
  return s.param ? s.param->value : s.data;
}

template <class T>
Tensor<T>& Tape<T>::mutable_value(Value v) {
  Slot<T>& s = slot_mut(v);
  if (s.param) throw TapeError(fmt::format("tape: value #{} is a parameter; ops never write it", v.id));
  return s.data;
}

template <class T>
const Tensor<T>& Tape<T>::grad(Value v) const {
  const Slot<T>& s = slot(v);
  if (!s.requires_grad)
    throw TapeError(fmt::format("tape: value #{} has no gradient: no parameter flows into it", v.id));
  if (s.param) return s.param->grad;
  if (!s.grad_ready)
    throw TapeError(fmt::format("tape: value #{} has no gradient yet: run backward() on a value that "
                                "depends on it",
                                v.id));
  return s.grad;
}

template <class T>
bool Tape<T>::any_requires_grad(std::initializer_list<Value> vs) const {
  if (!grad_enabled_) return false;
  for (Value v : vs)
    if (v.valid() && slot(v).requires_grad) return true;
  return false;
}

template <class T>
Value Tape<T>::new_value(const Shape& shape, bool requires_grad) {
  Slot<T>& s = slots_.emplace_back();
  if (next_data_ < spare_data_.size()) s.data = std::move(spare_data_[next_data_++]);
  if (next_grad_ < spare_grad_.size()) s.grad = std::move(spare_grad_[next_grad_++]);
  s.data.resize(shape);  // no reallocation when the size matches last step's
  s.requires_grad = requires_grad && grad_enabled_;
  return Value{static_cast<int32_t>(slots_.size() - 1)};
}

template <class T>
Value Tape<T>::input(const Tensor<T>& x, std::string label, std::source_location loc) {
  Value v = new_value(to_shape(x.shape()), false);
  std::copy(x.begin(), x.end(), slots_.back().data.begin());
  if (Node<T>* n = record(OpKind::Input, {}, v, Attrs{}, loc)) n->label = std::move(label);
  return v;
}

template <class T>
Value Tape<T>::param(Parameter<T>& p, std::source_location loc) {
  Slot<T>& s = slots_.emplace_back();
  s.param = &p;
  s.requires_grad = grad_enabled_;
  Value v{static_cast<int32_t>(slots_.size() - 1)};
  if (Node<T>* n = record(OpKind::Parameter, {}, v, Attrs{}, loc)) n->label = p.name;
  return v;
}

template <class T>
Node<T>* Tape<T>::record(OpKind op, std::array<Value, 3> inputs, Value out, const Attrs& attrs,
                         const std::source_location& loc) {
  if (!grad_enabled_) return nullptr;
  Node<T>& n = nodes_.emplace_back();
  n.op = op;
  for (std::size_t i = 0; i < 3; ++i) n.inputs[i] = inputs[i].id;
  n.output = out.id;
  n.attrs = attrs;
  n.where = SourceLoc::from(loc);
  if (next_saved_ < spare_saved_.size()) n.saved = std::move(spare_saved_[next_saved_++]);
  if (next_index_ < spare_index_.size()) n.saved_index = std::move(spare_index_[next_index_++]);
  n.saved_index.clear();
  slot_mut(out).producer = static_cast<int32_t>(nodes_.size() - 1);
  return &n;
}

template <class T>
Value Tape<T>::set_label(Value v, std::string label) {
  const Slot<T>& s = slot(v);
  if (s.producer >= 0) nodes_[static_cast<std::size_t>(s.producer)].label = std::move(label);
  return v;
}

template <class T>
void Tape<T>::reset() {
  // Keep every buffer, in recording order, so that the next step with the same
  // sequence of ops gets back buffers of exactly the sizes it needs.
  spare_data_.clear();
  spare_grad_.clear();
  spare_saved_.clear();
  spare_index_.clear();
  for (Slot<T>& s : slots_) {
    if (s.param) continue;
    spare_data_.push_back(std::move(s.data));
    spare_grad_.push_back(std::move(s.grad));
  }
  for (Node<T>& n : nodes_) {
    spare_saved_.push_back(std::move(n.saved));
    spare_index_.push_back(std::move(n.saved_index));
  }
  next_data_ = next_grad_ = next_saved_ = next_index_ = 0;
  slots_.clear();
  nodes_.clear();
  consumed_ = false;
}

template <class T>
Tensor<T>* Tape<T>::grad_buffer(Value v) {
  if (!v.valid()) return nullptr;
  Slot<T>& s = slot_mut(v);
  if (!s.requires_grad) return nullptr;
  if (s.param) {
    Parameter<T>& p = *s.param;
    if (p.grad.shape() != p.value.shape()) p.zero_grad();
    return &p.grad;
  }
  if (!s.grad_ready) {
    s.grad.resize(s.data.shape());
    s.grad.fill(T(0));
    s.grad_ready = true;
  }
  return &s.grad;
}

template <class T>
void Tape<T>::backward(Value loss, BackwardOptions opt) {
  const Tensor<T>& y = value(loss);
  if (y.size() != 1)
    throw TapeError(fmt::format("backward: value #{} has shape {}; backward(v) needs a scalar, pass a "
                                "seed gradient for other shapes",
                                loss.id, shape_str(y.shape())));
  Tensor<T> seed = xt::ones<T>(y.shape());
  run_backward(loss, seed, opt);
}

template <class T>
void Tape<T>::backward(Value out, const Tensor<T>& seed, BackwardOptions opt) {
  const Tensor<T>& y = value(out);
  if (seed.shape() != y.shape())
    throw ShapeError(fmt::format("backward: seed gradient {} and value #{} {} disagree in shape (they "
                                 "must be equal)",
                                 shape_str(seed.shape()), out.id, shape_str(y.shape())));
  run_backward(out, seed, opt);
}

template <class T>
void Tape<T>::run_backward(Value out, const Tensor<T>& seed, BackwardOptions opt) {
  if (consumed_)
    throw TapeError(
        "backward: this tape was already used by a backward() without retain_graph; running it "
        "again would add the same gradients twice. Pass BackwardOptions{.retain_graph = true} to "
        "the first call, or reset() and record a new step");
  if (!slot(out).requires_grad)
    throw TapeError(fmt::format("backward: value #{} does not depend on any parameter (or was made "
                                "under NoGradGuard); there is nothing to differentiate",
                                out.id));
  for (Slot<T>& s : slots_) s.grad_ready = false;
  Tensor<T>* g = grad_buffer(out);
  for (std::size_t i = 0; i < seed.size(); ++i) g->data()[i] += seed.data()[i];
  // One reverse pass: a node runs only if its output needs a gradient and received one.
  for (std::size_t i = nodes_.size(); i-- > 0;) {
    const Node<T>& n = nodes_[i];
    const Slot<T>& o = slots_[static_cast<std::size_t>(n.output)];
    if (!o.requires_grad || o.param || !o.grad_ready) continue;
    dispatch_vjp(n);
  }
  consumed_ = !opt.retain_graph;
}

template class Tape<float>;
template class Tape<double>;

}  // namespace ad
