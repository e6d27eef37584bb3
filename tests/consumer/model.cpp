#include "model.hpp"

#include <autodiff/ad.hpp>
#include <nn/layers.hpp>
#include <nn/optim.hpp>
#include <nn/weights.hpp>
#include <xtensor/xrandom.hpp>

TrainResult train_tiny_cnn(int steps, const std::string& weights_path) {
  nn::CnnConfig cfg;
  cfg.height = cfg.width = 8;
  cfg.channels = {2, 4};
  cfg.kernel = 3, cfg.padding = 1;
  cfg.classes = 3;
  nn::Sequential<float> model = nn::make_cnn<float>(cfg, 1);
  xt::random::seed(0);
  const ad::Tensor<float> images = xt::random::rand<float>({6, 1, 8, 8});
  const std::vector<int> labels = {0, 1, 2, 0, 1, 2};
  nn::Adam<float> opt(model.parameters(), {.lr = 0.02});
  ad::Tape<float> tape;
  TrainResult r;
  for (int s = 0; s < steps; ++s) {
    tape.reset();
    opt.zero_grad();
    const ad::Value loss = ad::softmax_cross_entropy(tape, model.forward(tape, tape.input(images)), labels);
    tape.backward(loss);
    opt.step();
    (s == 0 ? r.first_loss : r.last_loss) = tape.value(loss)();
  }
  const auto logits = [&](nn::Sequential<float>& m) {
    ad::Tape<float> t;
    ad::NoGradGuard guard(t);
    return ad::Tensor<float>(t.value(m.forward(t, t.input(images))));
  };
  nn::save_weights(weights_path, model);
  nn::Sequential<float> fresh = nn::make_cnn<float>(cfg, 2);
  nn::load_weights(weights_path, fresh);
  r.reloaded_same_logits = logits(fresh) == logits(model);
  return r;
}
