// nn: layers, the CNN, optimizers against hand-computed updates, a training smoke
// test on a generated fixture, and model checkpoints.
#include <gtest/gtest.h>

#include <xtensor/xrandom.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <random>

#include "autodiff/gradcheck.hpp"
#include "nn/train.hpp"
#include "ops/blas.hpp"
#include "tests/nn/nn_test_util.hpp"

namespace nn::test_train {
namespace {

using nn::test::quadrant_fixture;

CnnConfig tiny_cnn() {
  CnnConfig c;
  c.height = c.width = 12;
  c.channels = {4, 8};
  c.kernel = 3, c.padding = 1;
  c.classes = 4;
  return c;
}

TEST(Cnn, RefCnnHasTheDocumentedShapes) {
  Sequential<float> m = make_cnn<float>(CnnConfig{}, 1);
  const auto ps = m.parameters();
  ASSERT_EQ(ps.size(), 6u);
  EXPECT_EQ(ps[0]->name, "conv1.weight");
  EXPECT_EQ(ad::to_shape(ps[0]->value.shape()), (ad::Shape{16, 1, 5, 5}));
  EXPECT_EQ(ad::to_shape(ps[2]->value.shape()), (ad::Shape{32, 16, 5, 5}));
  EXPECT_EQ(ad::to_shape(ps[4]->value.shape()), (ad::Shape{1568, 10}));  // flatten 32*7*7, W^[3] layout
  EXPECT_EQ(CnnConfig{}.tag(), "cnn(1x28x28,c16-32,k5p2s1,max2/2,relu,10)");
  ad::Tape<float> t;
  const ad::Value y = m.forward(t, t.input(xt::zeros<float>({3, 1, 28, 28})));
  EXPECT_EQ(t.shape(y), (ad::Shape{3, 10}));
  EXPECT_EQ(t.nodes()[t.nodes().size() - 1].label, "fc3");
}

TEST(Cnn, InitialisationIsSeeded) {
  auto a = make_cnn<float>(CnnConfig{}, 7), b = make_cnn<float>(CnnConfig{}, 7), c = make_cnn<float>(CnnConfig{}, 8);
  EXPECT_EQ(a.parameters()[0]->value, b.parameters()[0]->value);
  EXPECT_NE(a.parameters()[0]->value, c.parameters()[0]->value);
}

TEST(Cnn, RejectsAConfigurationThatDoesNotFit) {
  CnnConfig c = tiny_cnn();
  c.kernel = 9, c.padding = 0;  // 12 -> 4 -> pool 2 -> 9x9 kernel on 2x2
  EXPECT_THROW(make_cnn<float>(c, 1), ad::ShapeError);
}

TEST(Cnn, WholeModelGradientMatchesFiniteDifferencesInDouble) {
  for (Activation act : {Activation::Relu, Activation::Tanh}) {
    CnnConfig c = tiny_cnn();
    c.height = c.width = 8;
    c.channels = {2, 3};
    c.activation = act;
    c.pool = act == Activation::Tanh ? PoolKind::Avg : PoolKind::Max;
    Sequential<double> m = make_cnn<double>(c, 3);
    const auto ps = m.parameters();
    std::mt19937_64 rng(5);
    std::normal_distribution<double> nd;
    ad::Tensor<double> x = xt::zeros<double>({2, 1, 8, 8});
    for (double& e : x) e = nd(rng);
    // The layers' parameters are the leaves: backward fills p->grad; compare each
    // element with central differences of the loss.
    ad::Tape<double> t;
    const ad::Value loss = ad::softmax_cross_entropy(t, m.forward(t, t.input(x)), {1, 3});
    t.backward(loss);
    // Central differences on every parameter element against p->grad.
    double worst = 0;
    for (auto* p : ps)
      for (std::size_t i = 0; i < p->value.size(); ++i) {
        const double orig = p->value.data()[i], eps = 1e-6;
        auto J = [&] {
          ad::Tape<double> u;
          ad::NoGradGuard g(u);
          return u.value(ad::softmax_cross_entropy(u, m.forward(u, u.input(x)), {1, 3}))();
        };
        p->value.data()[i] = orig + eps;
        const double jp = J();
        p->value.data()[i] = orig - eps;
        const double jm = J();
        p->value.data()[i] = orig;
        const double num = (jp - jm) / (2 * eps), ana = p->grad.data()[i];
        EXPECT_LE(std::abs(num - ana), 1e-5 + 1e-3 * std::abs(num)) << p->name << "[" << i << "] " << to_string(act);
        worst = std::max(worst, std::abs(num - ana));
      }
    EXPECT_LT(worst, 1e-6);
  }
}

std::vector<ad::Parameter<double>*> one_param(ad::Parameter<double>& p) { return {&p}; }

TEST(Optimizer, SgdIsTheDocumentsUpdate) {
  ad::Parameter<double> p("k", ad::Tensor<double>{1.0, -2.0});
  p.grad = ad::Tensor<double>{0.5, 4.0};
  Sgd<double> opt(one_param(p), {.lr = 0.1});
  opt.step();  // K := K - alpha dJ/dK
  EXPECT_DOUBLE_EQ(p.value(0), 1.0 - 0.1 * 0.5);
  EXPECT_DOUBLE_EQ(p.value(1), -2.0 - 0.1 * 4.0);
}

TEST(Optimizer, MomentumAndNesterovMatchHandComputedSteps) {
  for (bool nesterov : {false, true}) {
    ad::Parameter<double> p("w", ad::Tensor<double>{1.0});
    Sgd<double> opt(one_param(p), {.lr = 0.1, .momentum = 0.9, .nesterov = nesterov, .weight_decay = 0.01});
    // step 1: g = 2 + 0.01*1 = 2.01, v = 2.01
    p.grad = ad::Tensor<double>{2.0};
    opt.step();
    const double v1 = 2.01, w1 = 1.0 - 0.1 * (nesterov ? 2.01 + 0.9 * v1 : v1);
    EXPECT_NEAR(p.value(0), w1, 1e-7);
    // step 2: g = -1 + 0.01*w1, v = 0.9 v1 + g
    p.grad = ad::Tensor<double>{-1.0};
    opt.step();
    const double g2 = -1.0 + 0.01 * w1, v2 = 0.9 * v1 + g2;
    EXPECT_NEAR(p.value(0), w1 - 0.1 * (nesterov ? g2 + 0.9 * v2 : v2), 1e-6);
  }
}

TEST(Optimizer, AdamMatchesHandComputedSteps) {
  ad::Parameter<double> p("w", ad::Tensor<double>{0.5});
  Adam<double> opt(one_param(p), {.lr = 0.01});
  // t=1: m = 0.1 g, v = 0.001 g^2, mhat = g, vhat = g^2 -> step lr * g/|g| (eps aside)
  p.grad = ad::Tensor<double>{3.0};
  opt.step();
  EXPECT_NEAR(p.value(0), 0.5 - 0.01 * 3.0 / (3.0 + 1e-8), 1e-7);
  // t=2 with g = -1
  p.grad = ad::Tensor<double>{-1.0};
  opt.step();
  const double m = 0.9 * 0.3 + 0.1 * -1.0, v = 0.999 * 0.009 + 0.001 * 1.0;
  const double mhat = m / (1 - 0.81), vhat = v / (1 - 0.999 * 0.999);
  EXPECT_NEAR(p.value(0), 0.5 - 0.01 * 3.0 / (3.0 + 1e-8) - 0.01 * mhat / (std::sqrt(vhat) + 1e-8), 1e-6);
}

// Above 64K elements in all the updates run on every thread (nn/optim.cpp,
// for_each_element): every element of every parameter, whatever its size (one of 7),
// must get the same update as the formula on one thread, at any thread count.
TEST(Optimizer, LargeModelsUpdateEveryElementOnAnyThreadCount) {
  const std::size_t sizes[] = {40000, 7, 30001};
  auto make = [&] {
    std::vector<ad::Parameter<float>> ps;
    for (std::size_t k = 0; k < std::size(sizes); ++k) {
      ad::Tensor<float> v = xt::zeros<float>({sizes[k]}), g = v;
      for (std::size_t i = 0; i < sizes[k]; ++i) {
        v(i) = std::sin(0.001f * static_cast<float>(i + 7 * k));
        g(i) = std::cos(0.003f * static_cast<float>(i) + static_cast<float>(k));
      }
      ps.emplace_back("p" + std::to_string(k), v);
      ps.back().grad = g;
    }
    return ps;
  };
  auto pointers = [](std::vector<ad::Parameter<float>>& ps) {
    std::vector<ad::Parameter<float>*> out;
    for (auto& p : ps) out.push_back(&p);
    return out;
  };
  const int threads_before = ad::num_threads();
  for (const int kind : {0, 1, 2}) {  // SGD with momentum, Nesterov, Adam
    SCOPED_TRACE(kind == 0 ? "momentum" : kind == 1 ? "nesterov" : "adam");
    std::vector<std::vector<ad::Tensor<float>>> results;
    for (const int threads : {1, 2, 3}) {
      ad::set_num_threads(threads);
      std::vector<ad::Parameter<float>> ps = make();
      if (kind < 2) {
        Sgd<float> opt(pointers(ps), {.lr = 0.1, .momentum = 0.9, .nesterov = kind == 1, .weight_decay = 0.01});
        opt.step(), opt.step();
      } else {
        Adam<float> opt(pointers(ps), {.lr = 0.01});
        opt.step(), opt.step();
      }
      results.emplace_back();
      for (auto& p : ps) results.back().push_back(p.value);
    }
    // the formula, element by element, in double (two steps with the same gradient)
    std::vector<ad::Parameter<float>> ps = make();
    for (std::size_t k = 0; k < ps.size(); ++k)
      for (std::size_t i = 0; i < sizes[k]; ++i) {
        double w = ps[k].value(i), m = 0, v = 0;
        const double g0 = ps[k].grad(i);
        for (int t = 1; t <= 2; ++t) {
          if (kind < 2) {
            const double g = g0 + 0.01 * w;
            m = 0.9 * m + g;
            w -= 0.1 * (kind == 1 ? g + 0.9 * m : m);
          } else {
            m = 0.9 * m + 0.1 * g0, v = 0.999 * v + 0.001 * g0 * g0;
            w -= 0.01 * (m / (1 - std::pow(0.9, t))) / (std::sqrt(v / (1 - std::pow(0.999, t))) + 1e-8);
          }
        }
        ASSERT_NEAR(results[0][k](i), w, 1e-5) << "parameter " << k << " element " << i;
      }
    for (std::size_t r = 1; r < results.size(); ++r)
      for (std::size_t k = 0; k < ps.size(); ++k)
        EXPECT_EQ(results[r][k], results[0][k]) << r + 1 << " threads, parameter " << k;
  }
  ad::set_num_threads(threads_before);
}

// lr = NaN or < 0, momentum = 2, ... would train on silently (or diverge): refused,
// naming the argument.
TEST(Optimizer, RefusesArgumentsOutOfRangeNamingThem) {
  ad::Parameter<double> p("w", ad::Tensor<double>{1.0});
  const double nan = std::nan(""), inf = std::numeric_limits<double>::infinity();
  using nn::test::expect_error;
  auto sgd = [&](SgdOptions o) { return [&p, o] { Sgd<double> s(one_param(p), o); }; };
  auto adam = [&](AdamOptions o) { return [&p, o] { Adam<double> a(one_param(p), o); }; };
  expect_error<std::invalid_argument>(sgd({.lr = nan}), {"lr = nan"});
  expect_error<std::invalid_argument>(sgd({.lr = -0.1}), {"lr = -0.1", ">= 0"});
  expect_error<std::invalid_argument>(sgd({.lr = inf}), {"lr = inf"});
  expect_error<std::invalid_argument>(sgd({.momentum = 2}), {"Sgd", "momentum = 2", "[0, 1)"});
  expect_error<std::invalid_argument>(sgd({.momentum = 1}), {"momentum = 1"});
  expect_error<std::invalid_argument>(sgd({.momentum = -0.5}), {"momentum = -0.5"});
  expect_error<std::invalid_argument>(sgd({.momentum = nan}), {"momentum = nan"});
  expect_error<std::invalid_argument>(sgd({.weight_decay = -1}), {"weight_decay = -1"});
  expect_error<std::invalid_argument>(sgd({.weight_decay = nan}), {"weight_decay = nan"});
  expect_error<std::invalid_argument>(sgd({.nesterov = true}), {"nesterov", "momentum"});
  expect_error<std::invalid_argument>(adam({.lr = nan}), {"lr = nan"});
  expect_error<std::invalid_argument>(adam({.beta1 = 1}), {"Adam", "beta1 = 1", "[0, 1)"});
  expect_error<std::invalid_argument>(adam({.beta2 = nan}), {"beta2 = nan"});
  expect_error<std::invalid_argument>(adam({.beta2 = -0.1}), {"beta2 = -0.1"});
  expect_error<std::invalid_argument>(adam({.eps = 0}), {"eps = 0", "> 0"});
  expect_error<std::invalid_argument>(adam({.weight_decay = -0.1}), {"weight_decay = -0.1"});
  // the edges that are allowed, and set_lr (the schedules) checked the same way
  Sgd<double> ok(one_param(p), {.lr = 0, .momentum = 0.99, .nesterov = true});
  Adam<double> ok2(one_param(p), {.lr = 0, .beta1 = 0, .beta2 = 0});
  expect_error<std::invalid_argument>([&] { ok.set_lr(nan); }, {"lr = nan"});
  expect_error<std::invalid_argument>([&] { ok2.set_lr(-1); }, {"lr = -1"});
  EXPECT_EQ(ok.lr(), 0.0);
}

TEST(Optimizer, SchedulesFollowTheirFormulas) {
  EXPECT_DOUBLE_EQ(scheduled_lr("constant", 0.1, 2.5, 5), 0.1);
  EXPECT_DOUBLE_EQ(scheduled_lr("cosine", 0.1, 0.0, 5), 0.1);
  EXPECT_NEAR(scheduled_lr("cosine", 0.1, 2.5, 5), 0.05, 1e-15);
  EXPECT_NEAR(scheduled_lr("step", 0.1, 3.2, 9), 0.01, 1e-15);
  EXPECT_THROW(scheduled_lr("warp", 0.1, 0, 1), std::invalid_argument);
}

TEST(Training, LossFallsOnTheFixture) {
  const Dataset d = quadrant_fixture(256, 1);
  Sequential<float> m = make_cnn<float>(tiny_cnn(), 2);
  Adam<float> opt(m.parameters(), {.lr = 3e-3});
  BatchIterator it(d, 32, true, 3);
  ad::Tape<float> tape;
  std::vector<double> losses;
  for (int e = 0; e < 8; ++e) {
    it.start_epoch(static_cast<uint64_t>(e));
    losses.push_back(train_epoch(m, opt, it, tape).loss);
  }
  EXPECT_LT(losses.back(), 0.5 * losses.front()) << "losses " << losses.front() << " -> " << losses.back();
  EXPECT_GT(evaluate(m, d, 100, tape).accuracy, 0.9);
}

TEST(Training, OneBatchOverfitsToFullAccuracy) {
  Dataset d = quadrant_fixture(32, 4);
  std::mt19937_64 rng(9);
  for (auto& l : d.labels) l = static_cast<uint8_t>(rng() % 4);  // random labels: memorisation only
  Sequential<float> m = make_cnn<float>(tiny_cnn(), 5);
  Adam<float> opt(m.parameters(), {.lr = 1e-2});
  BatchIterator it(d, 32, false, 0);
  ad::Tape<float> tape;
  for (int e = 0; e < 100; ++e) {
    it.start_epoch(0);
    train_epoch(m, opt, it, tape);
  }
  EXPECT_EQ(evaluate(m, d, 32, tape).accuracy, 1.0);
}

// A step whose loss is not finite stops training before it changes anything: the
// error names the step, and no parameter (nor the optimizer's state) moves.
TEST(Training, ANonFiniteLossStopsBeforeThatStepsUpdate) {
  const Dataset d = quadrant_fixture(64, 1);
  Sequential<float> m = make_cnn<float>(tiny_cnn(), 2);
  Adam<float> opt(m.parameters(), {.lr = 3e-3});
  BatchIterator it(d, 16, false, 0);
  ad::Tape<float> tape;
  train_epoch(m, opt, it, tape);  // a finite epoch first
  ad::Parameter<float>& bias = *m.parameters().back();  // fc3.bias: +inf makes every logit and loss non-finite
  bias.value(1) = std::numeric_limits<float>::infinity();
  std::vector<ad::Tensor<float>> before;
  for (auto* p : m.parameters()) before.push_back(p->value);
  const std::vector<NamedTensor> state = opt.state("o.");
  it.start_epoch(1);
  try {
    train_epoch(m, opt, it, tape);
    ADD_FAILURE() << "an infinite logit trained on";
  } catch (const NonFiniteLossError& e) {
    EXPECT_EQ(e.step, 1u);
    EXPECT_FALSE(std::isfinite(e.loss));
    EXPECT_NE(std::string(e.what()).find("at step 1 of the epoch (images 1 to 16"), std::string::npos) << e.what();
  }
  for (std::size_t i = 0; i < before.size(); ++i) {
    const auto& v = m.parameters()[i]->value;
    EXPECT_TRUE(std::equal(v.begin(), v.end(), before[i].begin(), [](float a, float b) { return a == b || (a != a && b != b); }))
        << m.parameters()[i]->name << " was updated by the failed step";
  }
  const std::vector<NamedTensor> after = opt.state("o.");
  for (std::size_t i = 0; i < state.size(); ++i) EXPECT_EQ(after[i].value, state[i].value) << state[i].name;
}

using nn::test::TempDir;

TEST(Checkpoint, ModelAndOptimizerRoundTripAndResumeIdentically) {
  TempDir dir;
  const std::string path = dir.file("m.ckpt");
  const Dataset d = quadrant_fixture(64, 1);
  // Run A: 2 epochs straight. Run B: 1 epoch, save, load into a fresh model, 1 more.
  auto make = [] { return make_cnn<float>(tiny_cnn(), 11); };
  Sequential<float> a = make();
  Adam<float> oa(a.parameters(), {});
  ad::Tape<float> tape;
  BatchIterator ia(d, 16, true, 1);
  for (int e = 0; e < 2; ++e) ia.start_epoch(e), train_epoch(a, oa, ia, tape);

  Sequential<float> b = make();
  Adam<float> ob(b.parameters(), {});
  BatchIterator ib(d, 16, true, 1);
  ib.start_epoch(0), train_epoch(b, ob, ib, tape);
  save_model(path, b, ob, 1, tiny_cnn().tag());
  Sequential<float> c = make();
  Adam<float> oc(c.parameters(), {});
  EXPECT_EQ(load_model(path, c, oc, tiny_cnn().tag()), 1);
  ib.start_epoch(1), train_epoch(c, oc, ib, tape);
  for (std::size_t i = 0; i < a.parameters().size(); ++i)
    EXPECT_EQ(a.parameters()[i]->value, c.parameters()[i]->value) << a.parameters()[i]->name;
}

TEST(Checkpoint, RefusesAnotherArchitectureAndLeavesTheModelUntouched) {
  TempDir dir;
  const std::string path = dir.file("m.ckpt");
  Sequential<float> m = make_cnn<float>(tiny_cnn(), 1);
  Sgd<float> o(m.parameters(), {});
  save_model(path, m, o, 3, tiny_cnn().tag());
  CnnConfig other = tiny_cnn();
  other.channels = {4, 6};
  Sequential<float> n = make_cnn<float>(other, 2);
  Sgd<float> on(n.parameters(), {});
  const auto before = n.parameters()[0]->value;
  EXPECT_THROW(load_model(path, n, on, other.tag()), CheckpointError);
  EXPECT_THROW(load_model(path, n, on, tiny_cnn().tag()), CheckpointError);  // right tag, wrong shapes
  EXPECT_EQ(n.parameters()[0]->value, before);
}

TEST(Checkpoint, RefusesAnEpochCountThatIsNotAWholeNumberInRange) {
  TempDir dir;
  const std::string path = dir.file("m.ckpt");
  Sequential<float> m = make_cnn<float>(tiny_cnn(), 1);
  Sgd<float> o(m.parameters(), {});
  save_model(path, m, o, 3, tiny_cnn().tag());
  EXPECT_EQ(load_model(path, m, o, tiny_cnn().tag()), 3);
  const auto before = m.parameters()[0]->value;
  for (const float bad : {std::nanf(""), -1.0f, 1.5f, 1e30f, std::numeric_limits<float>::infinity()}) {
    // A file our own writer produced (valid checksum) whose epoch count is damaged.
    std::vector<NamedTensor> ts = load_checkpoint(path);
    for (auto& t : ts)
      if (t.name == "meta.epochs") t.value(0) = bad;
    save_checkpoint(path + ".bad", ts, tiny_cnn().tag());
    Sequential<float> n = make_cnn<float>(tiny_cnn(), 1);
    Sgd<float> on(n.parameters(), {});
    SCOPED_TRACE(fmt::format("meta.epochs {}", bad));
    nn::test::expect_error<CheckpointError>([&] { load_model(path + ".bad", n, on, tiny_cnn().tag()); },
                                            {"meta.epochs", "m.ckpt.bad"});
    EXPECT_EQ(n.parameters()[0]->value, before) << "the model changed although the load failed";
  }
}

// A checkpoint written before models were modules, by train_cnn at commit 572cea8:
//   train_cnn --data tests/fixtures/fashion-mnist-tiny --epochs 1 --batch 32 --threads 1
//             --channels 2 3 --optimizer momentum --seed 5 --save <file>
// It still loads: the same names, shapes and optimizer state.
TEST(Checkpoint, ACheckpointFromBeforeModulesStillLoads) {
  const std::string path = "tests/fixtures/checkpoints/ref_cnn_c2-3_momentum_572cea8.ckpt";
  CnnConfig cfg;
  cfg.channels = {2, 3};
  cfg.torch_init = true;
  Sequential<float> m = make_cnn<float>(cfg, 1);
  Sgd<float> opt(m.parameters(), {.lr = 0.01, .momentum = 0.9, .nesterov = true});
  EXPECT_EQ(load_model(path, m, opt, cfg.tag()), 1);
  std::string tag;
  const std::vector<NamedTensor> file = load_checkpoint(path, &tag);
  EXPECT_EQ(tag, "cnn(1x28x28,c2-3,k5p2s1,max2/2,relu,10)");
  const auto params = m.named_parameters();
  ASSERT_EQ(params.size(), 6u);
  for (const auto& [name, p] : params) {
    const auto it = std::find_if(file.begin(), file.end(), [&](const NamedTensor& t) { return t.name == name; });
    ASSERT_NE(it, file.end()) << name;
    EXPECT_EQ(xt::cast<float>(p->value), it->value) << name;
  }
  for (const auto& [name, t] : opt.state_refs("optim.")) {
    const auto it = std::find_if(file.begin(), file.end(), [&](const NamedTensor& f) { return f.name == name; });
    ASSERT_NE(it, file.end()) << name;
    EXPECT_EQ(*t, it->value) << name;
  }
}

// A checkpoint whose CRC is right but whose values cannot be a model (a NaN weight,
// an Adam step count that is NaN, negative or fractional, a negative second moment) is
// refused, naming the tensor, and the model is left as it was.
TEST(Checkpoint, RefusesValuesThatCannotBeAModel) {
  TempDir dir;
  const std::string path = dir.file("m.ckpt");
  Sequential<float> m = make_cnn<float>(tiny_cnn(), 1);
  Adam<float> o(m.parameters(), {});
  save_model(path, m, o, 2, tiny_cnn().tag());
  struct Damage {
    std::string tensor;
    float value;
    std::vector<std::string> says;
  };
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  for (const Damage& dmg : std::vector<Damage>{{"conv1.weight", nan, {"conv1.weight", "nan"}},
                                               {"fc3.bias", -inf, {"fc3.bias", "-inf"}},
                                               {"optim.conv2.weight.m", nan, {"optim.conv2.weight.m", "nan"}},
                                               {"optim.step", nan, {"optim.step", "nan"}},
                                               {"optim.step", -1.0f, {"optim.step", "is -1", "whole number"}},
                                               {"optim.step", 2.5f, {"optim.step", "is 2.5"}},
                                               {"optim.fc3.weight.v", -0.5f, {"optim.fc3.weight.v", "-0.5", "negative"}}}) {
    SCOPED_TRACE(fmt::format("{} = {}", dmg.tensor, dmg.value));
    std::vector<NamedTensor> ts = load_checkpoint(path);
    bool found = false;
    for (auto& t : ts)
      if (t.name == dmg.tensor) t.value.data()[t.value.size() - 1] = dmg.value, found = true;
    ASSERT_TRUE(found);
    save_checkpoint(path + ".bad", ts, tiny_cnn().tag());  // a valid checksum
    Sequential<float> n = make_cnn<float>(tiny_cnn(), 7);
    Adam<float> on(n.parameters(), {});
    const auto before = n.parameters()[0]->value;
    std::vector<std::string> says = dmg.says;
    says.push_back(path + ".bad");
    try {
      load_model(path + ".bad", n, on, tiny_cnn().tag());
      ADD_FAILURE() << "loaded";
    } catch (const CheckpointError& e) {
      for (const std::string& w : says) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
    }
    EXPECT_EQ(n.parameters()[0]->value, before) << "the model changed although the load failed";
    EXPECT_EQ(on.state("optim.").back().value(0), 0.0f) << "the optimizer changed although the load failed";
  }
  Sequential<float> n = make_cnn<float>(tiny_cnn(), 7);
  Adam<float> on(n.parameters(), {});
  EXPECT_EQ(load_model(path, n, on, tiny_cnn().tag()), 2);  // the undamaged file loads
}

TEST(StepMemory, RefCnnValuesGradientsAndSavedIndicesPerImage) {
  Sequential<float> m = make_cnn<float>(CnnConfig{}, 1);
  // Fused (Sequential's default): the input (no gradient); the two conv layers' pooled
  // outputs 16x14x14 and 32x7x7, flatten 1568 and the logits 10, each with its
  // gradient; each layer's switches (a one-byte code per pooled output) and its VJP's
  // dJ/dz (16x28x28 and 32x14x14); and each layer's pooled output pixel-major, with
  // 64 elements of room for its alignment (conv2d_relu_max_pool2d_pixel_copy_elements).
  const std::size_t fused = 3136 + 1568 + 1568 + 10, pixel_copies = 3136 + 64 + 1568 + 64;
  EXPECT_EQ(step_bytes_per_example(m, {1, 28, 28}),
            (784 + 2 * fused + 12544 + 6272 + pixel_copies) * sizeof(float) + 3136 + 1568);
  EXPECT_EQ(step_bytes_per_example(m, {1, 28, 28}), cnn_footprint(CnnConfig{}, sizeof(float)).step_bytes_per_example);
  // The three ops apart: also conv1 and its ReLU 16x28x28, conv2 and its ReLU 32x14x14
  // with their gradients, and no dJ/dz buffers.
  m.set_fusion(false);
  const std::size_t with_grad = 2 * 12544 + 3136 + 2 * 6272 + 2 * 1568 + 10;
  const std::size_t expected = (784 + 2 * with_grad) * sizeof(float) + (3136 + 1568) * sizeof(int32_t);
  EXPECT_EQ(step_bytes_per_example(m, {1, 28, 28}), expected);
}

// Sequential records conv -> ReLU -> max pool as the fused op, with the same output and
// gradients as the three ops (set_fusion(false)); other triples stay apart.
TEST(Cnn, SequentialFusesConvReluMaxPoolIntoOneNode) {
  for (const Activation act : {Activation::Relu, Activation::Tanh}) {
    CnnConfig cfg = tiny_cnn();
    cfg.activation = act;
    Sequential<double> m = make_cnn<double>(cfg, 3);
    xt::random::seed(5);
    const ad::Tensor<double> x = xt::random::rand<double>({std::size_t(2), std::size_t(cfg.in_channels),
                                                           std::size_t(cfg.height), std::size_t(cfg.width)});
    std::vector<ad::Tensor<double>> got[2];
    std::size_t fused_nodes[2] = {0, 0};
    for (int fuse = 0; fuse < 2; ++fuse) {
      m.set_fusion(fuse == 1);
      for (auto* p : m.parameters()) p->zero_grad();
      ad::Tape<double> t;
      const ad::Value y = m.forward(t, t.input(x));
      t.backward(ad::sum(t, ad::mul(t, y, y)));
      got[fuse].push_back(t.value(y));
      for (auto* p : m.parameters()) got[fuse].push_back(p->grad);
      for (const auto& n : t.nodes()) {
        if (n.op != ad::OpKind::Conv2dReluMaxPool2d) continue;
        if (fused_nodes[fuse]++ == 0) {
          EXPECT_EQ(n.label, "conv1+act1+pool1");
        }
      }
    }
    EXPECT_EQ(fused_nodes[0], 0u);
    EXPECT_EQ(fused_nodes[1], act == Activation::Relu ? 2u : 0u);
    ASSERT_EQ(got[0].size(), got[1].size());
    for (std::size_t i = 0; i < got[0].size(); ++i) EXPECT_EQ(got[0][i], got[1][i]) << "tensor " << i;
  }
}

// The shape-only estimate train_cnn checks before allocating anything agrees with
// what the built model records, for every kind of layer and geometry; too small an
// input is a ShapeError.
TEST(StepMemory, ShapeOnlyFootprintMatchesTheBuiltModel) {
  std::vector<CnnConfig> configs(6);
  configs[1].pool = PoolKind::Avg, configs[1].activation = Activation::Tanh;
  configs[2].channels = {3, 5}, configs[2].kernel = 3, configs[2].padding = 0, configs[2].stride = 2;
  configs[3] = tiny_cnn();
  configs[4].height = 31, configs[4].width = 17, configs[4].in_channels = 2, configs[4].pool_window = 3,
  configs[4].pool_stride = 1, configs[4].activation = Activation::LeakyRelu;
  configs[5].classes = 3, configs[5].kernel = 1, configs[5].padding = 0;
  for (const CnnConfig& cfg : configs) {
    SCOPED_TRACE(cfg.tag());
    Sequential<float> m = make_cnn<float>(cfg, 1);
    std::size_t params = 0;
    for (auto* p : m.parameters()) params += p->value.size();
    const ad::Shape example{std::size_t(cfg.in_channels), std::size_t(cfg.height), std::size_t(cfg.width)};
    const CnnFootprint f = cnn_footprint(cfg, sizeof(float));
    EXPECT_EQ(f.step_bytes_per_example, step_bytes_per_example(m, example));
    EXPECT_EQ(f.parameters, params);
    Sequential<double> md = make_cnn<double>(cfg, 1);
    EXPECT_EQ(cnn_footprint(cfg, sizeof(double)).step_bytes_per_example, step_bytes_per_example(md, example));
  }
  CnnConfig huge;
  huge.height = huge.width = 4000;  // 2 GB a training example: computed, not allocated
  EXPECT_EQ(cnn_footprint(huge, sizeof(float)).parameters, 16u * 25 + 16 + 32u * 16 * 25 + 32 + 32u * 1000 * 1000 * 10 + 10);
  CnnConfig tiny;
  tiny.height = tiny.width = 1;
  EXPECT_THROW(cnn_footprint(tiny, sizeof(float)), ad::ShapeError);
}

TEST(StepMemory, ARunOverTheBudgetIsRefusedWithTheSizes) {
  EXPECT_NO_THROW(check_memory(1'000'000'000, 2'000'000'000, "x"));
  try {
    check_memory(3'000'000'000, 2'000'000'000, "--batch 99: training");
    ADD_FAILURE() << "3 GB fitted a 2 GB budget";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "--batch 99: training needs about 3.00 GB, more than the budget of 2.000 GB");
  }
  // Budget 0: 80% of what this machine has available.
  if (available_memory_bytes() == 0) GTEST_SKIP() << "neither MemAvailable nor a cgroup limit is readable";
  EXPECT_NO_THROW(check_memory(1024, 0, "a kilobyte"));
  nn::test::expect_error<std::runtime_error>([] { check_memory(std::size_t{1} << 60, 0, "an exabyte"); },
                                             {"an exabyte needs about 1152921504.61 GB, more than 80% of the",
                                              "GB of memory available"});
}

}  // namespace
}  // namespace nn::test_train
