// nn::Module: automatic names, buffers, train/eval, call sites, and the training
// loop, checkpoints and memory estimate on a model that is not a Sequential.
#include <gtest/gtest.h>

#include <random>

#include "nn/train.hpp"
#include "tests/nn/nn_test_util.hpp"

namespace nn::test_module {
namespace {

using nn::test::expect_error;
using nn::test::quadrant_fixture;
using nn::test::TempDir;

// A residual block written by hand: y = relu(x + conv2(relu(conv1(x)))), plus a buffer
// counting the batches it saw in training mode (state that is saved, not trained).
template <class T>
struct Block : Module<T> {
  Conv2d<T>& conv1;
  Conv2d<T>& conv2;
  ad::Tensor<T>& seen;
  int line_add = 0;  // the line of the add below, for the call-site tests
  Block(int c, std::mt19937_64& rng)
      : conv1(this->template register_module<Conv2d<T>>("conv1", c, c, std::array{3, 3}, ad::Conv2dOptions{.padding = {1, 1}},
                                                         Init::He, rng)),
        conv2(this->template register_module<Conv2d<T>>("conv2", c, c, std::array{3, 3}, ad::Conv2dOptions{.padding = {1, 1}},
                                                         Init::He, rng, /*bias=*/false)),
        seen(this->register_buffer("seen", xt::zeros<T>({1}))) {}
  Value forward(Tape<T>& t, Value x) override {
    if (this->is_training()) seen(0) += 1;
    const Value h = ad::relu(t, conv1(t, x));
    line_add = __LINE__ + 1;
    return ad::relu(t, ad::add(t, x, conv2(t, h)));
  }
};

// stem conv -> block1 -> block2 -> flatten -> fc: a model with a forward of its own.
template <class T>
struct TinyResNet : Module<T> {
  Conv2d<T>& stem;
  Block<T>& block1;
  Block<T>& block2;
  Sequential<T>& head;
  TinyResNet(int c, int side, int classes, uint64_t seed) : TinyResNet(c, side, classes, std::mt19937_64(seed)) {}
  Value forward(Tape<T>& t, Value x) override { return head(t, block2(t, block1(t, ad::relu(t, stem(t, x))))); }

 private:
  TinyResNet(int c, int side, int classes, std::mt19937_64&& rng)
      : stem(this->template register_module<Conv2d<T>>("stem", 1, c, std::array{3, 3}, ad::Conv2dOptions{.padding = {1, 1}},
                                                        Init::He, rng)),
        block1(this->template register_module<Block<T>>("block1", c, rng)),
        block2(this->template register_module<Block<T>>("block2", c, rng)),
        head(this->template register_module<Sequential<T>>("head")) {
    head.template add<MaxPool2d<T>>();
    head.template add<Flatten<T>>();
    head.template add<Linear<T>>("fc", c * (side / 2) * (side / 2), classes, Init::Xavier, rng);
  }
};

std::vector<std::string> names_of(const auto& named) {
  std::vector<std::string> out;
  for (const auto& [name, x] : named) out.push_back(name);
  return out;
}

TEST(Module, ChildrenAreNamedByTheirPathOnce) {
  TinyResNet<float> m(2, 12, 4, 1);
  const std::vector<std::string> expected = {"stem.weight",         "stem.bias",          "block1.conv1.weight",
                                             "block1.conv1.bias",   "block1.conv2.weight", "block2.conv1.weight",
                                             "block2.conv1.bias",   "block2.conv2.weight", "head.fc.weight",
                                             "head.fc.bias"};
  EXPECT_EQ(names_of(m.named_parameters()), expected);
  // The parameter's own name is its path: the tape labels it so, and checkpoints key on it.
  for (const auto& [name, p] : m.named_parameters()) EXPECT_EQ(p->name, name);
  EXPECT_EQ(m.parameters().size(), expected.size());
  EXPECT_EQ(names_of(m.named_buffers()), (std::vector<std::string>{"block1.seen", "block2.seen"}));
  EXPECT_EQ(names_of(m.named_children()), (std::vector<std::string>{"stem", "block1", "block2", "head"}));
  EXPECT_EQ(names_of(m.named_modules()),
            (std::vector<std::string>{"", "stem", "block1", "block1.conv1", "block1.conv2", "block2", "block2.conv1",
                                      "block2.conv2", "head", "head.0", "head.flatten", "head.fc"}));
  EXPECT_EQ(m.block1.conv2.name(), "block1.conv2");
  EXPECT_EQ(m.block1.conv2.bias, nullptr);  // registered without a bias
  // Nodes are labelled with the module's path and parameters with theirs.
  ad::Tape<float> t;
  m(t, t.input(xt::zeros<float>({2, 1, 12, 12})));
  std::vector<std::string> labels;
  for (const auto& n : t.nodes()) labels.push_back(n.label);
  for (const char* l : {"block2.conv1", "block2.conv2.weight", "head.fc"})
    EXPECT_NE(std::find(labels.begin(), labels.end(), l), labels.end()) << l;
}

TEST(Module, RegisteringRenamesEverythingBelow) {
  // A block built on its own, then adopted twice over.
  std::mt19937_64 rng(1);
  auto block = std::make_unique<Block<float>>(2, rng);
  EXPECT_EQ(block->conv1.weight.name, "conv1.weight");
  Sequential<float> outer;
  auto inner = std::make_unique<Sequential<float>>();
  Block<float>& b = inner->register_module("res", std::move(block));
  outer.register_module("stage2", std::move(inner));
  EXPECT_EQ(b.conv1.weight.name, "stage2.res.conv1.weight");
  EXPECT_EQ(b.name(), "stage2.res");
  EXPECT_EQ(names_of(outer.named_buffers()), (std::vector<std::string>{"stage2.res.seen"}));
}

TEST(Module, ANamedRootNamesItsWalksByItsPath) {
  std::mt19937_64 rng(1);
  Sequential<float> s("features");
  s.add<Linear<float>>("fc", 2, 2, Init::Xavier, rng);
  // Every walk names by full path, the same as Parameter::name.
  EXPECT_EQ(names_of(s.named_parameters()), (std::vector<std::string>{"features.fc.weight", "features.fc.bias"}));
  for (const auto& [name, p] : s.named_parameters()) EXPECT_EQ(p->name, name);
  EXPECT_EQ(names_of(s.named_modules()), (std::vector<std::string>{"features", "features.fc"}));
  EXPECT_EQ(names_of(s.named_children()), (std::vector<std::string>{"fc"}));
  Block<float> b(2, rng);
  EXPECT_EQ(names_of(b.conv1.named_parameters()), (std::vector<std::string>{"conv1.weight", "conv1.bias"}));
}

TEST(Module, RefusesBadAndDuplicateNames) {
  std::mt19937_64 rng(1);
  Sequential<float> s("features");
  s.add<Linear<float>>("fc", 2, 2, Init::Xavier, rng);
  expect_error<std::invalid_argument>([&] { s.add<Linear<float>>("fc", 2, 2, Init::Xavier, rng); },
                                      {"module \"features\"", "\"fc\" is already registered"});
  expect_error<std::invalid_argument>([&] { s.register_parameter("a.b", xt::zeros<float>({1})); },
                                      {"\"a.b\"", "without '.'"});
  expect_error<std::invalid_argument>([&] { s.register_buffer("", xt::zeros<float>({1})); }, {"non-empty"});
  expect_error<std::invalid_argument>([&] { s.register_module("x", std::unique_ptr<Linear<float>>()); }, {"null"});
}

TEST(Module, TrainAndEvalReachEveryModule) {
  TinyResNet<float> m(2, 12, 4, 1);
  for (const auto& [name, mod] : m.named_modules()) EXPECT_TRUE(mod->is_training()) << name;
  m.eval();
  for (const auto& [name, mod] : m.named_modules()) EXPECT_FALSE(mod->is_training()) << name;
  m.block1.train();
  EXPECT_TRUE(m.block1.conv2.is_training());
  EXPECT_FALSE(m.block2.is_training());
  // The block's forward reads its mode: the buffer counts training batches only.
  ad::Tape<float> t;
  m(t, t.input(xt::zeros<float>({1, 1, 12, 12})));
  EXPECT_EQ(m.block1.seen(0), 1.0f);
  EXPECT_EQ(m.block2.seen(0), 0.0f);
  // A child registered into a model in evaluation mode joins it in that mode.
  Sequential<float> s;
  s.eval();
  auto& fc = s.add<Flatten<float>>();
  EXPECT_FALSE(fc.is_training());
}

TEST(Module, MovingAModelKeepsItsReferences) {
  TinyResNet<float> a(2, 12, 4, 1);
  ad::Parameter<float>* w = &a.block1.conv1.weight;
  TinyResNet<float> b(std::move(a));
  EXPECT_EQ(&b.block1.conv1.weight, w);
  EXPECT_EQ(b.named_parameters()[2].second, w);
  ad::Tape<float> t;
  EXPECT_EQ(t.shape(b(t, t.input(xt::zeros<float>({1, 1, 12, 12})))), (ad::Shape{1, 4}));
}

// Nodes a library layer records carry the line that called the module, not a line in
// nn/layers.cpp; ops in a user's own forward keep their own lines.
TEST(Module, NodesShowTheCallersLine) {
  std::mt19937_64 rng(1);
  Block<float> block(2, rng);
  ad::Tape<float> t;
  const Value x = t.input(xt::zeros<float>({1, 2, 4, 4}));
  block(t, x);
  int conv_nodes = 0;
  for (const auto& n : t.nodes()) {
    if (n.op == ad::OpKind::Input) continue;
    EXPECT_EQ(n.where.basename(), "test_module.cpp") << n.label << " recorded at " << n.where.basename() << ":" << n.where.line;
    if (n.op == ad::OpKind::Conv2d) ++conv_nodes;
    // conv2 is called on the add's line in Block::forward: its nodes (weight and conv) show it.
    if (n.op == ad::OpKind::Add || n.label.starts_with("conv2")) {
      EXPECT_EQ(n.where.line, static_cast<uint32_t>(block.line_add)) << n.label;
    }
  }
  EXPECT_EQ(conv_nodes, 2);
  // A Sequential passes its caller's line on to its layers.
  Sequential<float> s;
  s.add<Conv2d<float>>("conv", 2, 2, std::array{3, 3}, ad::Conv2dOptions{}, Init::He, rng);
  s.add<ActivationLayer<float>>("act", Activation::Relu);
  t.reset();
  const int line_seq = __LINE__ + 1;
  s(t, t.input(xt::zeros<float>({1, 2, 4, 4})));
  for (const auto& n : t.nodes()) {
    if (n.op != ad::OpKind::Input) {
      EXPECT_EQ(n.where.line, static_cast<uint32_t>(line_seq)) << n.label;
    }
  }
}

TEST(Module, ADirectForwardRecordsAtTheLayersOwnLine) {
  std::mt19937_64 rng(1);
  Conv2d<float> conv(1, 1, std::array{1, 1}, ad::Conv2dOptions{}, Init::He, rng);
  ad::Tape<float> t;
  const Value x = t.input(xt::zeros<float>({1, 1, 2, 2}));
  conv(t, x);
  conv.forward(t, x);  // called directly: the layer's own line
  const auto& nodes = t.nodes();
  EXPECT_EQ(nodes[3].where.basename(), "test_module.cpp");
  EXPECT_EQ(nodes.back().where.basename(), "layers.cpp");
}

TEST(LayerArguments, ANegativeOrZeroSizeIsAClearError) {
  std::mt19937_64 rng(1);
  expect_error<std::invalid_argument>(
      [&] { Conv2d<float>("conv1", 3, -8, std::array{3, 3}, ad::Conv2dOptions{}, Init::He, rng); },
      {"nn::Conv2d \"conv1\"", "c_out is -8", "positive"});
  expect_error<std::invalid_argument>([&] { Conv2d<float>(-1, 8, std::array{3, 3}, ad::Conv2dOptions{}, Init::Torch, rng); },
                                      {"nn::Conv2d", "c_in is -1"});
  expect_error<std::invalid_argument>([&] { Conv2d<float>(1, 8, std::array{0, 3}, ad::Conv2dOptions{}, Init::He, rng); },
                                      {"kernel height is 0"});
  expect_error<std::invalid_argument>([&] { Linear<float>("fc", 0, 10, Init::Xavier, rng); },
                                      {"nn::Linear \"fc\"", "d_in is 0"});
}

// ---- the training loop, evaluation, checkpoints and the memory estimate on a custom model

TEST(ModuleTraining, ACustomModelLearnsTheFixture) {
  const Dataset d = quadrant_fixture(256, 1);
  TinyResNet<float> m(4, 12, 4, 2);
  Adam<float> opt(m.parameters(), {.lr = 3e-3});
  BatchIterator it(d, 32, true, 3);
  ad::Tape<float> tape;
  std::vector<double> losses;
  for (int e = 0; e < 6; ++e) {
    it.start_epoch(static_cast<uint64_t>(e));
    losses.push_back(train_epoch(m, opt, it, tape).loss);
  }
  EXPECT_LT(losses.back(), 0.5 * losses.front()) << "losses " << losses.front() << " -> " << losses.back();
  EXPECT_EQ(m.block1.seen(0), 6.0f * 8.0f);  // 8 batches an epoch, in training mode
  EXPECT_GT(evaluate(m, d, 100, tape).accuracy, 0.9);
  EXPECT_EQ(m.block1.seen(0), 48.0f) << "evaluate ran the model in training mode";
}

TEST(ModuleTraining, TrainEpochRecordsAtTheCallersLine) {
  // A Sequential's layers and the loss show the line that called train_epoch; the
  // layers inside a custom model show the lines of its forward that called them.
  const Dataset d = quadrant_fixture(16, 1);
  std::mt19937_64 rng(1);
  Sequential<float> seq;
  seq.add<Flatten<float>>();
  seq.add<Linear<float>>("fc", 144, 4, Init::Xavier, rng);
  TinyResNet<float> res(2, 12, 4, 2);
  for (Module<float>* m : {static_cast<Module<float>*>(&seq), static_cast<Module<float>*>(&res)}) {
    Sgd<float> opt(m->parameters(), {.lr = 0.01});
    BatchIterator it(d, 16, false, 0);
    ad::Tape<float> tape;
    it.start_epoch(0);
    const int line = __LINE__ + 1;
    train_epoch(*m, opt, it, tape);
    for (const auto& n : tape.nodes()) {
      EXPECT_EQ(n.where.basename(), "test_module.cpp") << n.label;
      const bool at_call = m == &seq || n.op == ad::OpKind::SoftmaxCrossEntropy || n.op == ad::OpKind::Input;
      if (at_call) {
        EXPECT_EQ(n.where.line, static_cast<uint32_t>(line)) << n.label;
      } else {
        EXPECT_NE(n.where.line, static_cast<uint32_t>(line)) << n.label;
      }
    }
  }
}

TEST(ModuleTraining, EvaluateRestoresEachModulesMode) {
  const Dataset d = quadrant_fixture(8, 1);
  TinyResNet<float> m(2, 12, 4, 2);
  m.block2.eval();
  ad::Tape<float> tape;
  evaluate(m, d, 8, tape);
  EXPECT_TRUE(m.is_training());
  EXPECT_TRUE(m.block1.is_training());
  EXPECT_FALSE(m.block2.is_training());
  EXPECT_FALSE(m.block2.conv1.is_training());
  EXPECT_EQ(m.block1.seen(0), 0.0f);
}

TEST(ModuleCheckpoint, ParametersBuffersAndOptimizerRoundTrip) {
  TempDir dir;
  const std::string path = dir.file("res.ckpt");
  const Dataset d = quadrant_fixture(64, 1);
  TinyResNet<float> a(2, 12, 4, 7);
  Adam<float> oa(a.parameters(), {});
  ad::Tape<float> tape;
  BatchIterator it(d, 16, true, 1);
  it.start_epoch(0);
  train_epoch(a, oa, it, tape);
  save_model(path, a, oa, 1, "tiny-resnet");
  const auto names = names_of(load_checkpoint(path));
  EXPECT_NE(std::find(names.begin(), names.end(), "block2.seen"), names.end());

  TinyResNet<float> b(2, 12, 4, 8);  // other initial values
  Adam<float> ob(b.parameters(), {});
  EXPECT_EQ(load_model(path, b, ob, "tiny-resnet"), 1);
  EXPECT_EQ(b.block2.seen(0), 4.0f);
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  for (std::size_t i = 0; i < pa.size(); ++i) EXPECT_EQ(pa[i].second->value, pb[i].second->value) << pa[i].first;
  // The same next epoch from both: the optimizer state came along too.
  it.start_epoch(1);
  train_epoch(a, oa, it, tape);
  it.start_epoch(1);
  train_epoch(b, ob, it, tape);
  for (std::size_t i = 0; i < pa.size(); ++i) EXPECT_EQ(pa[i].second->value, pb[i].second->value) << pa[i].first;
}

TEST(ModuleCheckpoint, AMissingBufferIsRefusedAndNothingChanges) {
  TempDir dir;
  const std::string path = dir.file("res.ckpt");
  TinyResNet<float> a(2, 12, 4, 7);
  Sgd<float> oa(a.parameters(), {});
  save_model(path, a, oa, 1, "tiny-resnet");
  std::vector<NamedTensor> ts = load_checkpoint(path);
  std::erase_if(ts, [](const NamedTensor& t) { return t.name == "block1.seen"; });
  save_checkpoint(path, ts, "tiny-resnet");
  TinyResNet<float> b(2, 12, 4, 8);
  Sgd<float> ob(b.parameters(), {});
  const auto before = b.stem.weight.value;
  expect_error<CheckpointError>([&] { load_model(path, b, ob, "tiny-resnet"); }, {"missing", "\"block1.seen\""});
  EXPECT_EQ(b.stem.weight.value, before);
}

TEST(ModuleMemory, TheEstimateCountsACustomModelAndLeavesItsBuffers) {
  TinyResNet<float> m(2, 12, 4, 1);
  const std::size_t bytes = step_bytes_per_example(m, {1, 12, 12});
  // Input 144 (no gradient); stem conv + relu 2x(2x144); per block conv1, relu, conv2,
  // add, relu: 5x(2x144); pool 72, flatten 72, logits 4: all with gradients. Max pool's
  // argmax: one int32 per output.
  const std::size_t with_grad = 2 * 288 + 2 * 5 * 288 + 72 + 72 + 4;
  EXPECT_EQ(bytes, (144 + 2 * with_grad) * sizeof(float) + 72 * sizeof(int32_t));
  EXPECT_EQ(m.block1.seen(0), 0.0f) << "the probe's forward changed a buffer";
}

}  // namespace
}  // namespace nn::test_module
