// Modules as LibTorch users know them: a module computes `forward` (written by each
// module, e.g. a residual block), owns named parameters (trained), buffers (state that
// is not trained but saved, e.g. batch norm's running statistics) and child modules,
// and is switched between training and evaluation as a whole (`train()` / `eval()`).
//
// Names are given once, when a parameter, buffer or child is registered, and are
// joined into paths automatically: a Conv2d registered as "conv2" in a block
// registered as "block1" holds the parameter "block1.conv2.weight" (its
// Parameter::name, so the tape labels the parameter with it, and the checkpoint key).
//
// Ownership: everything registered lives on the heap, owned by the module, so the
// references register_* return stay valid when the module is moved (make_cnn returns
// a Sequential by value). Modules are not copyable.
//
//   struct Block : nn::Module<float> {
//     nn::Conv2d<float>& conv = register_module<nn::Conv2d<float>>("conv", 8, 8, std::array{3, 3}, opt, init, rng);
//     ad::Value forward(ad::Tape<float>& t, ad::Value x) override { return ad::add(t, x, ad::relu(t, conv(t, x))); }
//   };
//
// Call a module as `m(tape, x)`: the library's layers record their nodes at the line of
// that call (the user's line, e.g. `model.cpp:42`), not at their own line in
// nn/layers.cpp. A layer's `forward` called directly records at its own line.
#pragma once

#include <memory>
#include <source_location>
#include <string>
#include <utility>
#include <vector>

#include "autodiff/ad.hpp"

namespace nn {

using ad::Parameter;
using ad::Tape;
using ad::Value;

template <class T>
class Module {
 public:
  // `name`: the module's path until a parent registers it (which renames it and
  // everything below it); empty for a root model.
  explicit Module(std::string name = {}) : name_(std::move(name)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  Module(Module&&) noexcept = default;
  Module& operator=(Module&&) noexcept = default;

  // What the module computes: (N, ...) -> (N, ...), recorded on `tape`.
  virtual Value forward(Tape<T>& tape, Value x) = 0;
  // forward(tape, x), with `loc` (the caller's line) as the call site of the nodes the
  // library's layers record inside it.
  Value operator()(Tape<T>& tape, Value x, std::source_location loc = std::source_location::current());

  // The module's path ("block1.conv2"); also the label of the nodes a layer records.
  const std::string& name() const { return name_; }

  // ---- registration (names: non-empty, no '.', unique within the module) ----

  // A trainable tensor, named "<path>.<name>"; the module owns it.
  Parameter<T>& register_parameter(const std::string& name, ad::Tensor<T> value);
  // State saved in checkpoints but not trained (running statistics).
  ad::Tensor<T>& register_buffer(const std::string& name, ad::Tensor<T> value);
  // A child module, owned by this one and renamed to "<path>.<name>" (with everything
  // below it). Returns the child.
  template <class M>
  M& register_module(const std::string& name, std::unique_ptr<M> child) {
    static_assert(std::is_base_of_v<Module<T>, M>, "register_module: M must derive from nn::Module<T>");
    M* ref = child.get();  // (not *child: a null child is refused by adopt, not dereferenced)
    adopt(name, std::unique_ptr<Module<T>>(std::move(child)));
    return *ref;
  }
  // Constructs the child M(args...) in place: register_module<Conv2d<float>>("conv1", 1, 16, ...).
  template <class M, class... Args>
  M& register_module(const std::string& name, Args&&... args) {
    return register_module(name, std::make_unique<M>(std::forward<Args>(args)...));
  }

  // ---- what a model holds, depth first in registration order (the checkpoint order),
  // ---- named by full path (starting with this module's own path, if it has one)

  std::vector<Parameter<T>*> parameters();
  // ("block1.conv2.weight", parameter); the name is also the parameter's own name.
  std::vector<std::pair<std::string, Parameter<T>*>> named_parameters();
  // ("block1.bn1.running_mean", tensor).
  std::vector<std::pair<std::string, ad::Tensor<T>*>> named_buffers();
  // The direct children, by their registered (local) names.
  std::vector<std::pair<std::string, Module<T>*>> named_children();
  // This module (its own path; "" for a root) and every module below it.
  std::vector<std::pair<std::string, Module<T>*>> named_modules();

  // ---- training and evaluation ----

  // Sets training mode (on) or evaluation mode (off) for this module and every module
  // below it. Batch norm uses batch statistics and updates its running statistics in
  // training mode, and its running statistics in evaluation mode; dropout is the
  // identity in evaluation mode. A new module is in training mode.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

 protected:
  // The call site a layer records its nodes at: the line of the `m(tape, x)` call that
  // is running this module's forward, or, when forward was called directly, `own`
  // (the layer's own line).
  std::source_location call_site(std::source_location own = std::source_location::current()) const {
    return has_call_site_ ? call_site_ : own;
  }

 private:
  void adopt(const std::string& name, std::unique_ptr<Module<T>> child);
  void check_new_name(const std::string& name, const char* what) const;
  // Sets this module's path and renames what it holds.
  void set_path(const std::string& path);
  void collect_parameters(const std::string& prefix, std::vector<std::pair<std::string, Parameter<T>*>>& out);
  void collect_buffers(const std::string& prefix, std::vector<std::pair<std::string, ad::Tensor<T>*>>& out);
  void collect_modules(const std::string& prefix, std::vector<std::pair<std::string, Module<T>*>>& out);

  template <class X>
  struct Entry {
    std::string name;  // the local name ("weight", "conv2")
    std::unique_ptr<X> item;
  };
  std::string name_;
  std::vector<Entry<Parameter<T>>> parameters_;
  std::vector<Entry<ad::Tensor<T>>> buffers_;
  std::vector<Entry<Module<T>>> children_;
  bool training_ = true;
  bool has_call_site_ = false;
  std::source_location call_site_;
};

// "a.b" from "a" and "b"; "b" when the prefix is empty.
std::string join_name(const std::string& prefix, const std::string& name);

extern template class Module<float>;
extern template class Module<double>;

}  // namespace nn
