// Second derivatives against PyTorch 1.13, float64 (tools/gen_golden_hvp.py): per case,
// the gradient g = d<u, f(x)>/dx recorded with ad::grad (create_graph), then H v by a
// plain backward of <g, v>, and v^T H v, compared with torch.autograd.grad's double backward.
#include <xtensor/xnpy.hpp>

#include <filesystem>
#include <functional>

#include "test_util.hpp"

namespace ad::test::test_golden_hvp {
namespace {

struct Case {
  std::string dir;
  explicit Case(const std::string& name) : dir("tests/golden/hvp/" + name + "/") {}
  T64 load(const std::string& f) const {
    if (!std::filesystem::exists(dir + f + ".npy"))
      throw std::runtime_error("missing golden file " + dir + f + ".npy (run from the repo root)");
    return xt::load_npy<double>(dir + f + ".npy");
  }
  std::vector<int> labels() const {
    const auto l = xt::load_npy<int64_t>(dir + "labels.npy");
    return std::vector<int>(l.begin(), l.end());
  }
};

::testing::AssertionResult matches(const T64& got, const T64& want) {
  const double scale = std::max(1e-300, xt::amax(xt::abs(want))());
  return all_close(got, want, 1e-10, 1e-10 * scale);
}

using Build = std::function<Value(Tape<double>&, const std::vector<Value>&, const Case&)>;

void check(const std::string& name, const std::vector<std::string>& inputs, const Build& build) {
  SCOPED_TRACE(name);
  const Case c(name);
  std::vector<Parameter<double>> params;
  params.reserve(inputs.size());
  for (const auto& in : inputs) params.emplace_back(in, c.load(in));
  Tape<double> t;
  std::vector<Value> x;
  for (auto& p : params) x.push_back(t.param(p));
  const Value y = build(t, x, c);
  const T64 u = c.load("u");
  const Value uv = t.input(T64(xt::reshape_view(u, t.value(y).shape())), "u");
  const std::vector<Value> g = grad(t, {y}, x, {uv}, {.allow_unused = true});
  Value q;
  for (std::size_t k = 0; k < x.size(); ++k) {
    ASSERT_TRUE(g[k].valid()) << inputs[k];
    EXPECT_TRUE(matches(t.value(g[k]), c.load("g_" + inputs[k]))) << "g_" << inputs[k];
    const Value term = sum(t, mul(t, g[k], t.input(c.load("v_" + inputs[k]))));
    q = q.valid() ? add(t, q, term) : term;
  }
  t.backward(q);
  double vhv = 0;
  for (std::size_t k = 0; k < x.size(); ++k) {
    EXPECT_TRUE(matches(params[k].grad, c.load("hv_" + inputs[k]))) << "hv_" << inputs[k];
    vhv += xt::sum(params[k].grad * c.load("v_" + inputs[k]))();
  }
  const double want = c.load("vhv")(0);
  EXPECT_NEAR(vhv, want, 1e-10 * std::max(1.0, std::abs(want)));
}

Value sq(Tape<double>& t, Value y) { return mul(t, y, y); }

TEST(GoldenHvp, Conv2d) {
  check("conv2d", {"x", "k", "b"}, [](Tape<double>& t, const std::vector<Value>& v, const Case&) {
    return sq(t, conv2d(t, v[0], v[1], v[2], {.padding = {1, 0}, .stride = {2, 1}}));
  });
}
TEST(GoldenHvp, Conv2dDilationGroups) {
  check("conv2d_dilation_groups", {"x", "k", "b"}, [](Tape<double>& t, const std::vector<Value>& v, const Case&) {
    return conv2d(t, v[0], v[1], v[2], {.padding = {1, 2}, .stride = {2, 1}, .dilation = {2, 1}, .groups = 2});
  });
}
TEST(GoldenHvp, ConvTranspose2d) {
  check("conv_transpose2d", {"x", "k", "b"}, [](Tape<double>& t, const std::vector<Value>& v, const Case&) {
    return conv_transpose2d(t, v[0], v[1], v[2], {.padding = {1, 0}, .stride = {2, 2}, .output_padding = {1, 0}});
  });
}
TEST(GoldenHvp, MaxPool2d) {
  check("max_pool2d", {"x"}, [](Tape<double>& t, const std::vector<Value>& v, const Case&) {
    return sq(t, max_pool2d(t, v[0], {.window = {3, 2}, .stride = {2, 1}, .padding = {1, 0}}));
  });
}
TEST(GoldenHvp, AvgPool2d) {
  check("avg_pool2d", {"x"}, [](Tape<double>& t, const std::vector<Value>& v, const Case&) {
    return sq(t, avg_pool2d(t, v[0], {.window = {3, 2}, .stride = {2, 1}, .padding = {1, 1}}));
  });
}
TEST(GoldenHvp, ReluAndLeakyRelu) {
  check("relu", {"x"}, [](Tape<double>& t, const std::vector<Value>& v, const Case&) { return sq(t, relu(t, v[0])); });
  check("leaky_relu", {"x"},
        [](Tape<double>& t, const std::vector<Value>& v, const Case&) { return sq(t, leaky_relu(t, v[0], 0.2)); });
}
TEST(GoldenHvp, SigmoidAndTanh) {
  check("sigmoid", {"x"}, [](Tape<double>& t, const std::vector<Value>& v, const Case&) { return sigmoid(t, v[0]); });
  check("tanh", {"x"}, [](Tape<double>& t, const std::vector<Value>& v, const Case&) { return ad::tanh(t, v[0]); });
}
TEST(GoldenHvp, Linear) {
  check("linear", {"x", "w", "b"},
        [](Tape<double>& t, const std::vector<Value>& v, const Case&) { return sq(t, linear(t, v[0], v[1], v[2])); });
}
TEST(GoldenHvp, FlattenAddMulBroadcast) {
  check("flatten_add_mul", {"x", "y"}, [](Tape<double>& t, const std::vector<Value>& v, const Case&) {
    return flatten(t, add(t, mul(t, v[0], v[1]), v[0]));
  });
}
TEST(GoldenHvp, SoftmaxCrossEntropy) {
  check("softmax_cross_entropy", {"z"}, [](Tape<double>& t, const std::vector<Value>& v, const Case& c) {
    return softmax_cross_entropy(t, v[0], c.labels());
  });
}
TEST(GoldenHvp, BatchNorm2dTrainingAndEval) {
  check("batch_norm2d_train", {"x", "w", "b"}, [](Tape<double>& t, const std::vector<Value>& v, const Case&) {
    return batch_norm2d(t, v[0], v[1], v[2], nullptr, nullptr);
  });
  check("batch_norm2d_eval", {"x", "w", "b"}, [](Tape<double>& t, const std::vector<Value>& v, const Case&) {
    T64 rm{0.3, -0.2}, rv{1.5, 0.7};
    return ad::tanh(t, batch_norm2d(t, v[0], v[1], v[2], &rm, &rv, {.training = false}));
  });
}
TEST(GoldenHvp, RefCnnLossInEveryParameterAndTheImages) {
  check("ref_cnn", {"x", "k1", "b1", "k2", "b2", "w3", "b3"},
        [](Tape<double>& t, const std::vector<Value>& v, const Case& c) {
          const Value a1 = max_pool2d(t, relu(t, conv2d(t, v[0], v[1], v[2], {.padding = {1, 1}})));
          const Value a2 = max_pool2d(t, relu(t, conv2d(t, a1, v[3], v[4], {.padding = {1, 1}})));
          return softmax_cross_entropy(t, linear(t, flatten(t, a2), v[5], v[6]), c.labels());
        });
}

}  // namespace
}  // namespace ad::test::test_golden_hvp
