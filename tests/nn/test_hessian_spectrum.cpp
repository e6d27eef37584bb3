// The largest Hessian eigenvalue of the ref-CNN's loss by power iteration on ad::hvp,
// iteration by iteration against PyTorch's double backward on the same weights, batch and
// start vector (tools/hessian_spectrum.py --golden; examples/hessian_spectrum runs the
// same iteration from the command line).
#include <xtensor/xnpy.hpp>

#include <cmath>

#include "nn/layers.hpp"
#include "nn/tensor_files.hpp"
#include "nn/weights.hpp"
#include "tests/test_util.hpp"

namespace ad::test::test_hessian_spectrum {
namespace {

TEST(HessianSpectrum, PowerIterationMatchesPyTorchDoubleBackward) {
  nn::CnnConfig cfg;
  cfg.channels = {4, 8};
  nn::Sequential<double> model = nn::make_cnn<double>(cfg, 0);
  nn::load_weights("tests/golden/torch_interop/ref_cnn_c4_8.safetensors", model);
  T64 images;
  std::vector<int> labels;
  for (const nn::WeightTensor& t : nn::read_safetensors("tests/golden/torch_interop/batch.safetensors")) {
    if (t.name == "images") images = t.value;
    if (t.name == "labels")
      for (double l : t.value) labels.push_back(static_cast<int>(l));
  }
  ASSERT_EQ(labels.size(), 4u);
  const T64 want = xt::load_npy<double>("tests/golden/hessian_spectrum/lambdas.npy");

  LossFn<double> loss = [&](Tape<double>& t, const std::vector<Value>& p) {
    Value x = t.input(images);
    x = max_pool2d(t, relu(t, conv2d(t, x, p[0], p[1], {.padding = {2, 2}})));
    x = max_pool2d(t, relu(t, conv2d(t, x, p[2], p[3], {.padding = {2, 2}})));
    return softmax_cross_entropy(t, linear(t, flatten(t, x), p[4], p[5]), labels);
  };
  const std::vector<Parameter<double>*> params = model.parameters();
  std::vector<T64> v;
  double j = 0, norm2 = 0;
  for (const Parameter<double>* p : params) {
    T64 t(p->value.shape());
    for (double& e : t) {
      e = std::cos(0.7 * ++j);
      norm2 += e * e;
    }
    v.push_back(std::move(t));
  }
  for (T64& t : v) t /= std::sqrt(norm2);
  for (std::size_t it = 0; it < want.size(); ++it) {
    const std::vector<T64> hv = hvp(loss, params, v);
    double lambda = 0, hv2 = 0;
    for (std::size_t k = 0; k < v.size(); ++k) {
      lambda += xt::sum(v[k] * hv[k])();
      hv2 += xt::sum(hv[k] * hv[k])();
    }
    EXPECT_NEAR(lambda, want(it), 1e-9 * std::abs(want(it))) << "iteration " << it + 1;
    for (std::size_t k = 0; k < v.size(); ++k) v[k] = hv[k] / std::sqrt(hv2);
  }
}

}  // namespace
}  // namespace ad::test::test_hessian_spectrum
