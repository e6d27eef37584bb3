// The layers the ResNet needs (BatchNorm2d, Dropout, ConvTranspose2d, grouped Conv2d,
// GlobalAvgPool2d), the ResNet itself, and the debugging tools on its tape.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include <fmt/ranges.h>
#include <xtensor/xview.hpp>

#include "nn/resnet.hpp"
#include "nn/train.hpp"
#include "tests/nn/nn_test_util.hpp"

namespace nn::test_resnet {
namespace {

using nn::test::expect_error;
using nn::test::quadrant_fixture;
using nn::test::TempDir;

template <class T>
ad::Tensor<T> normal(const ad::Shape& s, uint64_t seed, double mean = 0, double sd = 1) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(mean, sd);
  ad::Tensor<T> t(s);
  for (T& e : t) e = static_cast<T>(nd(rng));
  return t;
}

std::vector<std::string> names_of(const auto& named) {
  std::vector<std::string> out;
  for (const auto& [name, x] : named) out.push_back(name);
  return out;
}

TEST(BatchNorm2dLayer, TrainingUpdatesTheRunningStatisticsAndEvalUsesThem) {
  BatchNorm2d<double> bn("bn", 2, {.momentum = 0.25});
  EXPECT_EQ(names_of(bn.named_parameters()), (std::vector<std::string>{"bn.weight", "bn.bias"}));
  EXPECT_EQ(names_of(bn.named_buffers()), (std::vector<std::string>{"bn.running_mean", "bn.running_var"}));
  // Channel 0 ~ N(3, 2^2), channel 1 ~ N(-1, 0.5^2), over 4 x 5 x 5 values each.
  ad::Tensor<double> x = normal<double>({4, 2, 5, 5}, 1);
  for (std::size_t n = 0; n < 4; ++n)
    for (std::size_t i = 0; i < 25; ++i) {
      x(n, 0, i / 5, i % 5) = 3 + 2 * x(n, 0, i / 5, i % 5);
      x(n, 1, i / 5, i % 5) = -1 + 0.5 * x(n, 1, i / 5, i % 5);
    }
  double mean[2] = {0, 0}, var[2] = {0, 0};
  for (std::size_t c = 0; c < 2; ++c) {
    for (std::size_t n = 0; n < 4; ++n)
      for (std::size_t i = 0; i < 25; ++i) mean[c] += x(n, c, i / 5, i % 5) / 100;
    for (std::size_t n = 0; n < 4; ++n)
      for (std::size_t i = 0; i < 25; ++i) var[c] += std::pow(x(n, c, i / 5, i % 5) - mean[c], 2) / 100;
  }
  ad::Tape<double> t;
  const Value y = bn(t, t.input(x));
  // Normalised by the batch: each channel has mean 0 and variance var/(var+eps) ~ 1.
  for (std::size_t c = 0; c < 2; ++c) {
    double m = 0;
    for (std::size_t n = 0; n < 4; ++n)
      for (std::size_t i = 0; i < 25; ++i) m += t.value(y)(n, c, i / 5, i % 5) / 100;
    EXPECT_NEAR(m, 0, 1e-12);
    // running = 0.75 running + 0.25 batch; the variance unbiased (x 100/99), as PyTorch.
    EXPECT_NEAR(bn.running_mean(c), 0.25 * mean[c], 1e-12);
    EXPECT_NEAR(bn.running_var(c), 0.75 + 0.25 * var[c] * 100 / 99, 1e-12);
  }
  EXPECT_EQ(t.nodes().back().label, "bn");
  EXPECT_TRUE(t.nodes().back().attrs.get<ad::BatchNorm2dOptions>().training);
  // Eval: (x - running_mean) / sqrt(running_var + eps), and the statistics stay.
  bn.eval();
  const ad::Tensor<double> rm = bn.running_mean, rv = bn.running_var;
  t.reset();
  const Value z = bn(t, t.input(x));
  EXPECT_FALSE(t.nodes().back().attrs.get<ad::BatchNorm2dOptions>().training);
  EXPECT_NEAR(t.value(z)(1, 0, 2, 3), (x(1, 0, 2, 3) - rm(0)) / std::sqrt(rv(0) + 1e-5), 1e-12);
  EXPECT_EQ(bn.running_mean, rm);
  EXPECT_EQ(bn.running_var, rv);
  BatchNorm2d<float> plain(3, {.affine = false});
  EXPECT_TRUE(plain.named_parameters().empty());
  EXPECT_EQ(plain.weight, nullptr);
  expect_error<std::invalid_argument>([] { BatchNorm2d<float>("bn3", -2); }, {"nn::BatchNorm2d \"bn3\"", "channels is -2"});
}

TEST(DropoutLayer, FreshMasksInTrainingTheIdentityInEvalAndResumable) {
  Dropout<float> drop("drop", 0.5, 7);
  const ad::Tensor<float> x = xt::ones<float>({4, 100});
  ad::Tape<float> t;
  const ad::Tensor<float> a = t.value(drop(t, t.input(x)));
  const ad::Tensor<float> b = t.value(drop(t, t.input(x)));
  std::size_t zeros = 0;
  for (const float v : a) {
    EXPECT_TRUE(v == 0.0f || v == 2.0f) << v;  // dropped, or kept and scaled by 1/(1 - p)
    zeros += v == 0.0f;
  }
  EXPECT_GT(zeros, 150u);
  EXPECT_LT(zeros, 250u);
  EXPECT_NE(a, b) << "two steps drew the same mask";
  EXPECT_EQ(drop.calls(0), 2.0f);
  // Another layer with the same seed draws other masks (its path differs).
  Dropout<float> other("other", 0.5, 7);
  EXPECT_NE(t.value(other(t, t.input(x))), a);
  // Eval: the identity, no node, no count.
  drop.eval();
  const std::size_t nodes = t.nodes().size();
  const Value in = t.input(x);
  EXPECT_EQ(drop(t, in), in);
  EXPECT_EQ(t.nodes().size(), nodes + 1);  // the input's node only
  EXPECT_EQ(drop.calls(0), 2.0f);
  // The count is a buffer: a copy restored from it draws the next mask the original draws.
  drop.train();
  Dropout<float> resumed("drop", 0.5, 7);
  resumed.calls = drop.calls;
  EXPECT_EQ(t.value(resumed(t, t.input(x))), t.value(drop(t, t.input(x))));
  EXPECT_EQ(names_of(drop.named_buffers()), (std::vector<std::string>{"drop.calls"}));
  expect_error<std::invalid_argument>([] { Dropout<float>("d", 1.5); }, {"nn::Dropout \"d\"", "p is 1.5"});
}

TEST(ConvLayers, TransposedGroupedAndGlobalPoolShapes) {
  std::mt19937_64 rng(1);
  ConvTranspose2d<double> up("up", 4, 6, {3, 3}, {.padding = {1, 1}, .stride = {2, 2}, .output_padding = {1, 1}, .groups = 2},
                             Init::Torch, rng);
  EXPECT_EQ(ad::to_shape(up.weight.value.shape()), (ad::Shape{4, 3, 3, 3}));  // (C_in, C_out/groups, KH, KW)
  ASSERT_NE(up.bias, nullptr);
  EXPECT_EQ(ad::to_shape(up.bias->value.shape()), (ad::Shape{6}));
  // PyTorch's bound: 1/sqrt(fan_in), fan_in = (C_out/groups) * 9 = 27.
  EXPECT_LE(xt::amax(xt::abs(up.weight.value))(), 1 / std::sqrt(27.0));
  ad::Tape<double> t;
  const Value y = up(t, t.input(normal<double>({2, 4, 5, 5}, 2)));
  EXPECT_EQ(t.shape(y), (ad::Shape{2, 6, 10, 10}));  // doubles the resolution
  EXPECT_EQ(t.nodes().back().label, "up");

  Conv2d<double> depthwise("dw", 6, 6, {3, 3}, {.padding = {1, 1}, .dilation = {2, 2}, .groups = 6}, Init::He, rng);
  EXPECT_EQ(ad::to_shape(depthwise.weight.value.shape()), (ad::Shape{6, 1, 3, 3}));
  EXPECT_EQ(t.shape(depthwise(t, y)), (ad::Shape{2, 6, 8, 8}));
  expect_error<std::invalid_argument>([&] { Conv2d<float>("g", 6, 4, {3, 3}, {.groups = 4}, Init::He, rng); },
                                      {"nn::Conv2d \"g\"", "groups 4 must divide c_in 6 and c_out 4"});

  GlobalAvgPool2d<double> gap("gap");
  const ad::Tensor<double> x = normal<double>({2, 3, 4, 5}, 3);
  const Value p = gap(t, t.input(x));
  EXPECT_EQ(t.shape(p), (ad::Shape{2, 3}));
  EXPECT_NEAR(t.value(p)(1, 2), xt::mean(xt::view(x, 1, 2, xt::all(), xt::all()))(), 1e-12);
}

// Two stages of 4 and 8 channels, for the fixture's 28x28 images.
ResNetConfig tiny_resnet() {
  ResNetConfig c;
  c.widths = {4, 8};
  return c;
}

TEST(ResNet, HasTheDocumentedStructureAndNames) {
  ResNet<float> m(ResNetConfig{}, 1);
  EXPECT_EQ(m.config().tag(), "resnet(1x28x28,w16-32-64,b1,10)");
  const auto params = names_of(m.named_parameters());
  for (const char* n : {"stem.conv.weight", "stem.bn.weight", "stage1.0.conv1.weight", "stage1.0.bn2.bias",
                        "stage2.0.downsample.0.weight", "stage2.0.downsample.1.weight", "stage3.0.conv2.weight",
                        "fc.weight", "fc.bias"})
    EXPECT_NE(std::find(params.begin(), params.end(), n), params.end()) << n;
  // Convolutions before batch norm carry no bias; only the stride-2 stages downsample.
  EXPECT_EQ(std::find(params.begin(), params.end(), "stem.conv.bias"), params.end());
  EXPECT_EQ(std::find(params.begin(), params.end(), "stage1.0.downsample.0.weight"), params.end());
  const auto buffers = names_of(m.named_buffers());
  EXPECT_EQ(buffers.size(), 2u * (1 + 2 + 3 + 3));  // stem bn; per block bn1, bn2 (and the downsample's)
  EXPECT_EQ(buffers.front(), "stem.bn.running_mean");
  ad::Tape<float> t;
  EXPECT_EQ(t.shape(m(t, t.input(xt::zeros<float>({2, 1, 28, 28})))), (ad::Shape{2, 10}));
  expect_error<std::invalid_argument>([] { ResNet<float>(ResNetConfig{.widths = {}}, 1); }, {"widths is empty"});
  expect_error<std::invalid_argument>([] { ResNet<float>(ResNetConfig{.widths = {8, 0}}, 1); }, {"width 0"});
}

// Every node of a residual block with a strided downsample, in training mode (batch
// norm's VJP through the batch statistics), checked against central differences in
// double; the tape prints and draws every node with its attributes.
TEST(ResNet, GradcheckNodesPassesEveryNodeOfAResidualBlockInDouble) {
  std::mt19937_64 rng(3);
  BasicBlock<double> block(2, 4, 2, rng);
  for (auto* p : block.parameters()) p->value += normal<double>(ad::to_shape(p->value.shape()), 5, 0, 0.1);  // not 1 and 0
  ad::Tape<double> t;
  const Value x = t.input(normal<double>({3, 2, 6, 6}, 4), "x");
  const Value y = block(t, x);
  EXPECT_EQ(t.shape(y), (ad::Shape{3, 4, 3, 3}));
  const Value loss = ad::sum(t, ad::mul(t, y, t.input(normal<double>({3, 4, 3, 3}, 6))));
  t.backward(loss);
  const ad::NodeGradcheckResult r = ad::gradcheck_nodes(t);
  EXPECT_TRUE(r.ok) << r.report;
  std::map<std::string, int> checked;
  for (const auto& n : r.nodes) ++checked[n.op];
  EXPECT_EQ(checked["conv2d"], 3);  // conv1, conv2, the 1x1 downsample
  EXPECT_EQ(checked["batch_norm2d"], 3);
  EXPECT_EQ(checked["add"], 1);
  EXPECT_EQ(checked["relu"], 2);
  const std::string printed = fmt::format("{}", t);
  for (const char* s : {"batch_norm2d(", "\"downsample.1\"", "\"bn1\"", "conv2d(", "stride=2x2"})
    EXPECT_NE(printed.find(s), std::string::npos) << s << "\n" << printed;
  const std::string dot = ad::to_dot(t);
  EXPECT_NE(dot.find("batch_norm2d"), std::string::npos);
  EXPECT_NE(dot.find("downsample.0"), std::string::npos);
}

// The smoke test of the ResNet's training: a few epochs on the Fashion-MNIST fixture
// (256 images), with augmentation; then a checkpoint restores the same evaluation.
TEST(ResNet, LossFallsOnTheFixtureAndItsCheckpointKeepsTheRunningStatistics) {
  TempDir dir;
  const Dataset d = load_fashion_mnist("tests/fixtures/fashion-mnist-tiny", "train");
  ResNet<float> m(tiny_resnet(), 2);
  Adam<float> opt(m.parameters(), {.lr = 0.01});
  BatchIterator it(d, 32, true, 3);
  it.set_augmentation({.max_shift = 2, .horizontal_flip = true});
  ad::Tape<float> tape;
  std::vector<double> losses;
  for (int e = 0; e < 8; ++e) {
    it.start_epoch(static_cast<uint64_t>(e));
    losses.push_back(train_epoch(m, opt, it, tape).loss);
  }
  EXPECT_LT(losses.back(), 0.75 * losses.front()) << "losses " << fmt::format("{}", fmt::join(losses, " "));
  const EpochStats before = evaluate(m, d, 64, tape);
  EXPECT_TRUE(m.is_training()) << "evaluate left the model in evaluation mode";

  save_model(dir.file("r.ckpt"), m, opt, 8, tiny_resnet().tag());
  ResNet<float> n(tiny_resnet(), 9);
  Adam<float> on(n.parameters(), {.lr = 0.01});
  EXPECT_EQ(load_model(dir.file("r.ckpt"), n, on, tiny_resnet().tag()), 8);
  const auto bm = m.named_buffers(), bn = n.named_buffers();
  ASSERT_EQ(bm.size(), bn.size());
  for (std::size_t i = 0; i < bm.size(); ++i) EXPECT_EQ(*bm[i].second, *bn[i].second) << bm[i].first;
  const EpochStats after = evaluate(n, d, 64, tape);
  EXPECT_EQ(after.accuracy, before.accuracy);
  EXPECT_DOUBLE_EQ(after.loss, before.loss);
}

}  // namespace
}  // namespace nn::test_resnet
