// hessian_spectrum: the largest (in magnitude) eigenvalue of the Hessian of the ref-CNN's
// loss with respect to all its parameters, at given weights and on a given batch, by
// power iteration on Hessian-vector products (ad::hvp: reverse-over-reverse, in double).
//
//   hessian_spectrum --weights W.safetensors --channels 4 8 --batch-file B.safetensors
//   hessian_spectrum --weights W.safetensors --channels 16 32 --data DIR --batch 64
//
// The weights are a PyTorch state_dict (train_cnn --export, tools/torch_interop.py); the
// batch is a safetensors file with "images" (N,1,28,28) and "labels" (N) (as
// tests/golden/torch_interop/batch.safetensors), or the first --batch test images of
// Fashion-MNIST. The start vector is deterministic, v[j] = cos(0.7 (j + 1)) over the
// parameters concatenated in the model's order and layout, normalised, so that
// tools/hessian_spectrum.py runs the same iteration in PyTorch (float64) and the two
// can be compared iteration by iteration (tests: HessianSpectrum.*).
#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>

#include "nn/data.hpp"
#include "nn/layers.hpp"
#include "nn/tensor_files.hpp"
#include "nn/weights.hpp"

int main(int argc, char** argv) {
  CLI::App app{"Largest Hessian eigenvalue of the ref-CNN loss by power iteration on Hessian-vector products"};
  std::string weights, batch_file, data_dir;
  std::vector<int> channels{16, 32};
  int batch = 64, iters = 20;
  app.add_option("--weights", weights, "PyTorch state_dict of a ref-CNN (.safetensors)")->required();
  app.add_option("--channels", channels, "the two conv layers' channels")->expected(2);
  app.add_option("--batch-file", batch_file, "safetensors with images (N,1,28,28) and labels (N)");
  app.add_option("--data", data_dir, "Fashion-MNIST directory: the first --batch test images");
  app.add_option("--batch", batch, "images from --data")->check(CLI::Range(1, 10000));
  app.add_option("--iters", iters, "power iterations")->check(CLI::Range(1, 1000));
  CLI11_PARSE(app, argc, argv);
  if (batch_file.empty() == data_dir.empty()) {
    fmt::print(stderr, "hessian_spectrum: give exactly one of --batch-file and --data\n");
    return 2;
  }
  try {
    nn::CnnConfig cfg;
    cfg.channels = {channels[0], channels[1]};
    nn::Sequential<double> model = nn::make_cnn<double>(cfg, 0);
    nn::load_weights(weights, model);
    ad::Tensor<double> images;
    std::vector<int> labels;
    if (!batch_file.empty()) {
      for (const nn::WeightTensor& t : nn::read_safetensors(batch_file)) {
        if (t.name == "images") images = t.value;
        if (t.name == "labels")
          for (double l : t.value) labels.push_back(static_cast<int>(l));
      }
    } else {
      const nn::Dataset test = nn::load_fashion_mnist(data_dir, "t10k");
      nn::BatchIterator it(test, static_cast<std::size_t>(batch), /*shuffle=*/false, /*seed=*/0);
      it.start_epoch(0);
      it.next(images, labels);
    }
    if (images.dimension() != 4 || labels.size() != images.shape()[0])
      throw std::runtime_error("the batch needs images (N,1,28,28) and N labels");

    const std::vector<ad::Parameter<double>*> params = model.parameters();
    ad::LossFn<double> loss = [&](ad::Tape<double>& tape, const std::vector<ad::Value>& p) {
      // The model's layers read their own Parameter objects: hvp hands us copies on the
      // tape, so run the layers by hand on those copies (conv, relu, pool, conv, relu,
      // pool, flatten, linear), as nn::make_cnn builds them.
      const ad::Conv2dOptions conv{.padding = {cfg.padding, cfg.padding}};
      ad::Value x = tape.input(images, "images");
      x = ad::max_pool2d(tape, ad::relu(tape, ad::conv2d(tape, x, p[0], p[1], conv)));
      x = ad::max_pool2d(tape, ad::relu(tape, ad::conv2d(tape, x, p[2], p[3], conv)));
      return ad::softmax_cross_entropy(tape, ad::linear(tape, ad::flatten(tape, x), p[4], p[5]), labels);
    };

    // v[j] = cos(0.7 (j + 1)), normalised over all parameters.
    std::vector<ad::Tensor<double>> v;
    std::size_t j = 0;
    double norm2 = 0;
    for (const ad::Parameter<double>* p : params) {
      ad::Tensor<double> t(p->value.shape());
      for (double& e : t) {
        e = std::cos(0.7 * static_cast<double>(++j));
        norm2 += e * e;
      }
      v.push_back(std::move(t));
    }
    for (auto& t : v) t /= std::sqrt(norm2);

    fmt::print("ref-CNN c{}-{}, {} parameters, batch of {}\n", channels[0], channels[1], j, labels.size());
    double lambda = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int it = 1; it <= iters; ++it) {
      const std::vector<ad::Tensor<double>> hv = ad::hvp(loss, params, v);  // H v
      double vhv = 0, hv2 = 0;
      for (std::size_t k = 0; k < v.size(); ++k) {
        vhv += xt::sum(v[k] * hv[k])();
        hv2 += xt::sum(hv[k] * hv[k])();
      }
      lambda = vhv;  // the Rayleigh quotient v^T H v (|v| = 1)
      fmt::print("iteration {:3d}: lambda {:.12e}  |Hv| {:.6e}\n", it, lambda, std::sqrt(hv2));
      for (std::size_t k = 0; k < v.size(); ++k) v[k] = hv[k] / std::sqrt(hv2);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("largest |eigenvalue| of the Hessian: {:.12e} ({} Hessian-vector products, {:.3f} s each)\n", lambda,
               iters, seconds / iters);
  } catch (const std::exception& e) {
    fmt::print(stderr, "hessian_spectrum: {}\n", e.what());
    return 1;
  }
}
