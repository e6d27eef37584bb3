// Weights in and out: a model's named tensors as a safetensors file or a directory of
// .npy files (formats: nn/tensor_files.hpp), in PyTorch's state_dict names and layouts
// by default, so that a model trained in PyTorch runs or fine-tunes here and the
// reverse (tools/torch_interop.py; README, "Weights in and out").
//
// Loading into a model checks every name and shape before it changes anything: a bad
// or mismatching file is a WeightsError naming the file and the defect, and the model
// keeps its weights.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "nn/layers.hpp"
#include "nn/tensor_files.hpp"

namespace nn {

// ---------------------------------------------------------------- models

// How a model's tensors are named and laid out in a file.
struct WeightsOptions {
  // true: PyTorch's state_dict. Linear weights are (D_out, D_in) (ours are (D_in, D_out):
  // transposed on the way out and back), convolution kernels (C_out, C_in, KH, KW) and
  // biases as ours, and each layer is named as `torch_names` says.
  // false: our names and layouts, as in Module::named_parameters() ("fc3.weight" (D_in, D_out)).
  bool torch_layout = true;
  // Our layer name -> PyTorch module name, for layers whose names differ. The default is
  // make_cnn's CNN as PyTorch's ref-CNN names it (bench/bench_torch.cpp,
  // tools/torch_interop.py): conv1, conv2, fc.
  std::map<std::string, std::string> torch_names = {{"fc3", "fc"}};
  // When not empty: written as the safetensors metadata "tape_autodiff.model", and a file
  // whose metadata names another model is refused (a file without it is accepted).
  std::string model_tag = {};
};

// The model's tensors named and laid out as `opt` says, in the model's order, with the
// model's dtype (F32 for float, F64 for double): its parameters, then its buffers
// (batch-norm running statistics), for any module (nn/module.hpp).
template <class T>
std::vector<WeightTensor> model_weights(Module<T>& model, const WeightsOptions& opt = {});

// Sets every tensor of the model from `tensors` (named and laid out as `opt` says; F32
// or F64, converted to T). The names must be exactly the model's and every shape must
// match; otherwise throws WeightsError (naming `source`, every missing and unexpected
// name and every mismatching shape) and changes nothing.
template <class T>
void set_model_weights(Module<T>& model, const std::vector<WeightTensor>& tensors,
                       const WeightsOptions& opt = {}, const std::string& source = "weights");

// save_weights / load_weights: a path ending in ".safetensors" is a safetensors file;
// any other path is a directory of .npy files. A safetensors file also records the
// layout ("tape_autodiff.layout": "torch" or "tape_autodiff") and, when set, the model
// tag; loading refuses a file whose recorded layout or tag differs from `opt`'s.
template <class T>
void save_weights(const std::string& path, Module<T>& model, const WeightsOptions& opt = {});
template <class T>
void load_weights(const std::string& path, Module<T>& model, const WeightsOptions& opt = {});

}  // namespace nn
