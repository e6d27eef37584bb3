// A model's weights in and out of safetensors files and .npy directories, in PyTorch's
// state_dict names and layouts or ours (nn/weights.hpp).
#include "nn/weights.hpp"

#include <set>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace nn {
namespace {

// One tensor of the model, as a file names and lays it out.
template <class T>
struct Slot {
  std::string name;       // in the file
  ad::Tensor<T>* value;   // in the model: a parameter's value or a buffer
  bool transposed;        // the file holds *value transposed (a Linear weight, PyTorch layout)
};

// The model's tensors in its order (named_parameters(), then named_buffers()), named
// and laid out as `opt` says. A tensor "<layer>.<what>" of a layer that torch_names
// renames is "<torch name of layer>.<what>" in PyTorch's layout.
template <class T>
std::vector<Slot<T>> slots(Module<T>& model, const WeightsOptions& opt) {
  std::set<const ad::Tensor<T>*> linear_weights;  // (D_in, D_out) here, (D_out, D_in) in PyTorch
  for (const auto& [path, m] : model.named_modules())
    if (const auto* linear = dynamic_cast<const Linear<T>*>(m)) linear_weights.insert(&linear->weight.value);
  std::vector<std::pair<std::string, ad::Tensor<T>*>> tensors;
  for (const auto& [name, p] : model.named_parameters()) tensors.emplace_back(name, &p->value);
  for (const auto& [name, b] : model.named_buffers()) tensors.emplace_back(name, b);
  std::vector<Slot<T>> out;
  std::set<std::string> seen;
  for (auto& [ours, t] : tensors) {
    std::string name = ours;
    if (opt.torch_layout)
      for (const auto& [layer, torch_layer] : opt.torch_names)
        if (name.starts_with(layer + ".")) {
          name = torch_layer + name.substr(layer.size());
          break;
        }
    if (!seen.insert(name).second)
      throw std::invalid_argument(fmt::format("weights: two tensors of the model would be named \"{}\"", name));
    out.push_back({std::move(name), t, opt.torch_layout && linear_weights.contains(t)});
  }
  return out;
}

template <class T>
constexpr DType dtype_of() {
  return sizeof(T) == 4 ? DType::F32 : DType::F64;
}

std::string shape_str(const auto& s) { return fmt::format("({})", fmt::join(s, ",")); }

bool is_safetensors_path(const std::string& path) { return path.ends_with(".safetensors"); }

const char* layout_name(const WeightsOptions& opt) { return opt.torch_layout ? "torch" : "tape_autodiff"; }

}  // namespace

template <class T>
std::vector<WeightTensor> model_weights(Module<T>& model, const WeightsOptions& opt) {
  std::vector<WeightTensor> out;
  for (const Slot<T>& s : slots(model, opt)) {
    xt::xarray<double> v = s.transposed ? xt::xarray<double>(xt::cast<double>(xt::transpose(*s.value)))
                                        : xt::xarray<double>(xt::cast<double>(*s.value));
    out.push_back({s.name, dtype_of<T>(), std::move(v)});
  }
  return out;
}

template <class T>
void set_model_weights(Module<T>& model, const std::vector<WeightTensor>& tensors, const WeightsOptions& opt,
                       const std::string& source) {
  const auto fail = [&](const std::string& what) { return WeightsError(fmt::format("weights {}: {}", source, what)); };
  std::map<std::string, const WeightTensor*> have;
  for (const WeightTensor& t : tensors)
    if (!have.emplace(t.name, &t).second) throw fail(fmt::format("tensor \"{}\" appears twice", t.name));
  const std::vector<Slot<T>> want = slots(model, opt);

  std::vector<std::string> missing, unexpected, mismatched;
  std::set<std::string> wanted;
  for (const Slot<T>& s : want) {
    wanted.insert(s.name);
    const auto it = have.find(s.name);
    if (it == have.end()) {
      missing.push_back(fmt::format("\"{}\"", s.name));
      continue;
    }
    std::vector<std::size_t> expect(s.value->shape().begin(), s.value->shape().end());
    if (s.transposed) std::reverse(expect.begin(), expect.end());
    const auto& got = it->second->value.shape();
    if (!std::equal(got.begin(), got.end(), expect.begin(), expect.end()))
      mismatched.push_back(fmt::format("\"{}\" has shape {} but the model's is {}{}", s.name, shape_str(got), shape_str(expect),
                                       s.transposed ? " (PyTorch's (D_out, D_in) layout)" : ""));
  }
  for (const auto& [name, t] : have)
    if (!wanted.contains(name)) unexpected.push_back(fmt::format("\"{}\"", name));
  std::vector<std::string> problems;
  if (!missing.empty()) problems.push_back(fmt::format("missing tensors the model needs: {}", fmt::join(missing, ", ")));
  if (!unexpected.empty())
    problems.push_back(fmt::format("unexpected tensors the model does not have: {}", fmt::join(unexpected, ", ")));
  if (!mismatched.empty()) problems.push_back(fmt::format("{}", fmt::join(mismatched, "; ")));
  if (!problems.empty())
    throw fail(fmt::format("{} (expected the {} layout{})", fmt::join(problems, "; "), layout_name(opt),
                           opt.torch_layout ? ", PyTorch's state_dict names" : ""));

  // Every check passed: build the new values, then move them in (nothing can fail
  // between the first and the last assignment).
  std::vector<ad::Tensor<T>> staged;
  staged.reserve(want.size());
  for (const Slot<T>& s : want) {
    const xt::xarray<double>& v = have.at(s.name)->value;
    staged.push_back(s.transposed ? ad::Tensor<T>(xt::cast<T>(xt::transpose(v))) : ad::Tensor<T>(xt::cast<T>(v)));
  }
  for (std::size_t i = 0; i < want.size(); ++i) *want[i].value = std::move(staged[i]);
}

template <class T>
void save_weights(const std::string& path, Module<T>& model, const WeightsOptions& opt) {
  const std::vector<WeightTensor> tensors = model_weights(model, opt);
  if (!is_safetensors_path(path)) return write_npy_dir(path, tensors);
  std::map<std::string, std::string> metadata{{"tape_autodiff.layout", layout_name(opt)}};
  if (opt.torch_layout) metadata["format"] = "pt";  // what Hugging Face's loaders look for
  if (!opt.model_tag.empty()) metadata["tape_autodiff.model"] = opt.model_tag;
  write_safetensors(path, tensors, metadata);
}

template <class T>
void load_weights(const std::string& path, Module<T>& model, const WeightsOptions& opt) {
  if (!is_safetensors_path(path)) return set_model_weights(model, read_npy_dir(path), opt, path);
  std::map<std::string, std::string> metadata;
  const std::vector<WeightTensor> tensors = read_safetensors(path, &metadata);
  // A file we wrote says how; a square Linear weight would pass the shape checks in
  // either layout, so a layout that differs is refused, not guessed.
  if (const auto it = metadata.find("tape_autodiff.layout"); it != metadata.end() && it->second != layout_name(opt))
    throw WeightsError(fmt::format("weights {}: written in the {} layout, but loading expects the {} layout", path,
                                   it->second, layout_name(opt)));
  if (const auto it = metadata.find("tape_autodiff.model");
      it != metadata.end() && !opt.model_tag.empty() && it->second != opt.model_tag)
    throw WeightsError(fmt::format("weights {}: holds the model \"{}\" but this model is \"{}\"", path, it->second, opt.model_tag));
  set_model_weights(model, tensors, opt, path);
}

#define NN_INSTANTIATE(T)                                                                                         \
  template std::vector<WeightTensor> model_weights<T>(Module<T>&, const WeightsOptions&);                      \
  template void set_model_weights<T>(Module<T>&, const std::vector<WeightTensor>&, const WeightsOptions&,      \
                                     const std::string&);                                                          \
  template void save_weights<T>(const std::string&, Module<T>&, const WeightsOptions&);                        \
  template void load_weights<T>(const std::string&, Module<T>&, const WeightsOptions&);
NN_INSTANTIATE(float)
NN_INSTANTIATE(double)
#undef NN_INSTANTIATE

}  // namespace nn
