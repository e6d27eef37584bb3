// custom_model: a model of your own in ~40 lines. A LeNet-style CNN (tanh + average
// pooling) from the library's layers, plus a layer written directly with tape ops,
// trained on a slice of Fashion-MNIST.   build/release/examples/custom_model [DIR]
#include "nn/train.hpp"

// A user-defined module: a residual dense block y = x + tanh(x W + b), from raw ops.
// Its parameters are registered once by their short names ("res4.weight" in the model).
struct ResidualDense : nn::Module<float> {
  ad::Parameter<float>& w;
  ad::Parameter<float>& b;
  ResidualDense(std::string name, int d, std::mt19937_64& rng)
      : nn::Module<float>(std::move(name)),
        w(register_parameter("weight", nn::xavier_uniform<float>({std::size_t(d), std::size_t(d)}, d, d, rng))),
        b(register_parameter("bias", xt::zeros<float>({std::size_t(d)}))) {}
  ad::Value forward(ad::Tape<float>& t, ad::Value x) override {
    return ad::add(t, x, ad::tanh(t, ad::linear(t, x, t.param(w), t.param(b))));
  }
};

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : nn::kDefaultFashionMnistDir;
  const nn::Dataset train = nn::load_fashion_mnist(dir, "train"), test = nn::load_fashion_mnist(dir, "t10k");
  std::mt19937_64 rng(42);
  nn::Sequential<float> model;  // (N,1,28,28)
  model.add<nn::Conv2d<float>>("conv1", 1, 6, std::array{5, 5}, ad::Conv2dOptions{.padding = {2, 2}}, nn::Init::Xavier, rng);
  model.add<nn::ActivationLayer<float>>("tanh1", nn::Activation::Tanh);
  model.add<nn::AvgPool2d<float>>("pool1");  // (N,6,14,14)
  model.add<nn::Conv2d<float>>("conv2", 6, 16, std::array{5, 5}, ad::Conv2dOptions{}, nn::Init::Xavier, rng);
  model.add<nn::ActivationLayer<float>>("tanh2", nn::Activation::Tanh);
  model.add<nn::AvgPool2d<float>>("pool2");  // (N,16,5,5)
  model.add<nn::Flatten<float>>();
  model.add<nn::Linear<float>>("fc3", 400, 64, nn::Init::Xavier, rng);
  model.add<ResidualDense>("res4", 64, rng);
  model.add<nn::Linear<float>>("fc5", 64, 10, nn::Init::Xavier, rng);

  nn::Adam<float> opt(model.parameters(), {.lr = 2e-3});
  nn::BatchIterator batches(train, 64, /*shuffle=*/true, /*seed=*/1, /*limit=*/10000);
  ad::Tape<float> tape;
  for (int epoch = 0; epoch < 3; ++epoch) {
    batches.start_epoch(epoch);
    const nn::EpochStats s = nn::train_epoch(model, opt, batches, tape);
    fmt::print("epoch {}: loss {:.4f}, train accuracy {:.4f}, {:.0f} img/s\n", epoch + 1, s.loss, s.accuracy, s.images / s.seconds);
  }
  fmt::print("test accuracy: {:.4f}\n", nn::evaluate(model, test, 1000, tape).accuracy);
}
