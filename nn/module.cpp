// Module: registration, automatic names, the walks over a model, train/eval.
#include "nn/module.hpp"

#include <stdexcept>

namespace nn {

std::string join_name(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

template <class T>
Value Module<T>::operator()(Tape<T>& tape, Value x, std::source_location loc) {
  // Restored on the way out (also by an exception), so a module called from another
  // module's forward and then directly sees the right call site each time.
  struct Restore {
    Module& m;
    bool had;
    std::source_location loc;
    ~Restore() { m.has_call_site_ = had, m.call_site_ = loc; }
  } restore{*this, has_call_site_, call_site_};
  has_call_site_ = true;
  call_site_ = loc;
  return forward(tape, x);
}

template <class T>
void Module<T>::check_new_name(const std::string& name, const char* what) const {
  const std::string owner = name_.empty() ? "the root module" : "module \"" + name_ + "\"";
  if (name.empty() || name.find('.') != std::string::npos)
    throw std::invalid_argument(
        fmt::format("{}: {} name \"{}\" must be non-empty and without '.' (paths are joined with '.')", owner, what, name));
  const auto taken = [&](const auto& entries) {
    for (const auto& e : entries)
      if (e.name == name) return true;
    return false;
  };
  if (taken(parameters_) || taken(buffers_) || taken(children_))
    throw std::invalid_argument(fmt::format("{}: a parameter, buffer or module named \"{}\" is already registered", owner, name));
}

template <class T>
Parameter<T>& Module<T>::register_parameter(const std::string& name, ad::Tensor<T> value) {
  check_new_name(name, "parameter");
  parameters_.push_back({name, std::make_unique<Parameter<T>>(join_name(name_, name), std::move(value))});
  return *parameters_.back().item;
}

template <class T>
ad::Tensor<T>& Module<T>::register_buffer(const std::string& name, ad::Tensor<T> value) {
  check_new_name(name, "buffer");
  buffers_.push_back({name, std::make_unique<ad::Tensor<T>>(std::move(value))});
  return *buffers_.back().item;
}

template <class T>
void Module<T>::adopt(const std::string& name, std::unique_ptr<Module<T>> child) {
  if (!child) throw std::invalid_argument(fmt::format("register_module: the module \"{}\" is null", name));
  check_new_name(name, "module");
  child->set_path(join_name(name_, name));
  child->train(training_);
  children_.push_back({name, std::move(child)});
}

template <class T>
void Module<T>::set_path(const std::string& path) {
  name_ = path;
  for (auto& p : parameters_) p.item->name = join_name(path, p.name);
  for (auto& c : children_) c.item->set_path(join_name(path, c.name));
}

template <class T>
void Module<T>::collect_parameters(const std::string& prefix, std::vector<std::pair<std::string, Parameter<T>*>>& out) {
  for (auto& p : parameters_) out.emplace_back(join_name(prefix, p.name), p.item.get());
  for (auto& c : children_) c.item->collect_parameters(join_name(prefix, c.name), out);
}

template <class T>
void Module<T>::collect_buffers(const std::string& prefix, std::vector<std::pair<std::string, ad::Tensor<T>*>>& out) {
  for (auto& b : buffers_) out.emplace_back(join_name(prefix, b.name), b.item.get());
  for (auto& c : children_) c.item->collect_buffers(join_name(prefix, c.name), out);
}

template <class T>
void Module<T>::collect_modules(const std::string& prefix, std::vector<std::pair<std::string, Module<T>*>>& out) {
  out.emplace_back(prefix, this);
  for (auto& c : children_) c.item->collect_modules(join_name(prefix, c.name), out);
}

template <class T>
std::vector<std::pair<std::string, Parameter<T>*>> Module<T>::named_parameters() {
  std::vector<std::pair<std::string, Parameter<T>*>> out;
  collect_parameters(name_, out);
  return out;
}

template <class T>
std::vector<Parameter<T>*> Module<T>::parameters() {
  std::vector<Parameter<T>*> out;
  for (auto& [name, p] : named_parameters()) out.push_back(p);
  return out;
}

template <class T>
std::vector<std::pair<std::string, ad::Tensor<T>*>> Module<T>::named_buffers() {
  std::vector<std::pair<std::string, ad::Tensor<T>*>> out;
  collect_buffers(name_, out);
  return out;
}

template <class T>
std::vector<std::pair<std::string, Module<T>*>> Module<T>::named_children() {
  std::vector<std::pair<std::string, Module<T>*>> out;
  for (auto& c : children_) out.emplace_back(c.name, c.item.get());
  return out;
}

template <class T>
std::vector<std::pair<std::string, Module<T>*>> Module<T>::named_modules() {
  std::vector<std::pair<std::string, Module<T>*>> out;
  collect_modules(name_, out);
  return out;
}

template <class T>
void Module<T>::train(bool on) {
  training_ = on;
  for (auto& c : children_) c.item->train(on);
}

template class Module<float>;
template class Module<double>;

}  // namespace nn
