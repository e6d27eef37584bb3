// Every op and the whole 3-layer CNN against PyTorch 1.13 in double precision.
// The .npy files come from tools/gen_golden.py (see tests/golden/README.md).
#include <xtensor/xnpy.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>

#include "test_util.hpp"

namespace ad::test::test_golden {
namespace {

constexpr double kRtol = 1e-10;

struct Golden {
  std::string dir;
  explicit Golden(const std::string& name) : dir("tests/golden/" + name + "/") {}
  bool has(const std::string& f) const { return std::filesystem::exists(dir + f + ".npy"); }
  T64 load(const std::string& f) const {
    if (!has(f)) throw std::runtime_error("missing golden file " + dir + f + ".npy (run from the repo root)");
    return xt::load_npy<double>(dir + f + ".npy");
  }
  std::vector<int> labels() const {
    const auto l = xt::load_npy<int64_t>(dir + "labels.npy");
    return std::vector<int>(l.begin(), l.end());
  }
  std::array<int, 2> pair(std::size_t i) const {
    const T64 a = load("attrs");
    return {static_cast<int>(a(i)), static_cast<int>(a(i + 1))};
  }
};

// Relative to the largest reference magnitude of the tensor: 1e-10 of it.
::testing::AssertionResult matches(const T64& got, const T64& want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " vs golden " << want.size();
  const double scale = std::max(1e-300, xt::amax(xt::abs(want))());
  return all_close(got, want, kRtol, kRtol * scale);
}

// Builds one op on a tape from the golden inputs (as parameters), seeds backward with
// cot, and compares the output and the gradient of every input named in `grads`.
void check_case(const std::string& name, const std::vector<std::string>& inputs,
                const std::function<Value(Tape<double>&, const Golden&, const std::vector<Value>&)>& build) {
  SCOPED_TRACE(name);
  const Golden g(name);
  std::vector<Parameter<double>> params;
  params.reserve(inputs.size());
  for (const auto& in : inputs) params.emplace_back(in, g.load(in));
  Tape<double> t;
  std::vector<Value> v;
  for (auto& p : params) v.push_back(t.param(p));
  const Value y = build(t, g, v);
  EXPECT_TRUE(matches(t.value(y), g.load("out"))) << "forward output";
  const T64 cot = g.load("cot");
  t.backward(y, T64(xt::reshape_view(cot, t.value(y).shape())));
  for (auto& p : params) EXPECT_TRUE(matches(p.grad, g.load("grad_" + p.name))) << "grad_" << p.name;
}

TEST(Conv2d, MatchesPyTorchGoldenFiles) {
  for (const char* c : {"conv2d_basic", "conv2d_asym", "conv2d_stride_gt_kernel", "conv2d_1x1", "conv2d_whole",
                        "conv2d_large_pad", "conv2d_nobias"}) {
    const bool bias = Golden(c).has("b");
    check_case(c, bias ? std::vector<std::string>{"x", "k", "b"} : std::vector<std::string>{"x", "k"},
               [bias](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
                 return conv2d(t, v[0], v[1], bias ? v[2] : Value{}, {.padding = g.pair(0), .stride = g.pair(2)});
               });
  }
}

// Dilation and groups (the general path): attrs [ph, pw, sh, sw, has_bias, dh, dw, groups].
TEST(Conv2d, DilatedAndGroupedMatchPyTorchGoldenFiles) {
  for (const char* c : {"conv2d_groups2", "conv2d_depthwise", "conv2d_dilation", "conv2d_groups_dilation_stride"}) {
    const bool bias = Golden(c).has("b");
    check_case(c, bias ? std::vector<std::string>{"x", "k", "b"} : std::vector<std::string>{"x", "k"},
               [bias](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
                 return conv2d(t, v[0], v[1], bias ? v[2] : Value{},
                               {.padding = g.pair(0), .stride = g.pair(2), .dilation = g.pair(5),
                                .groups = static_cast<int>(g.load("attrs")(7))});
               });
  }
}

// attrs [ph, pw, sh, sw, has_bias, oph, opw, dh, dw, groups]; stride 2 with output_padding 1 first.
TEST(ConvTranspose2d, MatchesPyTorchGoldenFiles) {
  for (const char* c : {"conv_transpose2d_stride2_outpad1", "conv_transpose2d_asym", "conv_transpose2d_groups_dilation",
                        "conv_transpose2d_outpad_ge_stride"}) {
    const bool bias = Golden(c).has("b");
    check_case(c, bias ? std::vector<std::string>{"x", "k", "b"} : std::vector<std::string>{"x", "k"},
               [bias](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
                 return conv_transpose2d(t, v[0], v[1], bias ? v[2] : Value{},
                                         {.padding = g.pair(0), .stride = g.pair(2), .output_padding = g.pair(5),
                                          .dilation = g.pair(7), .groups = static_cast<int>(g.load("attrs")(9))});
               });
  }
}

Pool2dOptions pool_opts(const Golden& g) { return {.window = g.pair(0), .stride = g.pair(2), .padding = g.pair(4)}; }

TEST(AvgPool2d, MatchesPyTorchGoldenFiles) {
  for (const char* c : {"avg_pool2d_basic", "avg_pool2d_asym", "avg_pool2d_stride_gt_window"})
    check_case(c, {"x"}, [](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
      return avg_pool2d(t, v[0], pool_opts(g));
    });
}

TEST(MaxPool2d, MatchesPyTorchGoldenFiles) {
  for (const char* c : {"max_pool2d_basic", "max_pool2d_asym", "max_pool2d_stride_gt_window"})
    check_case(c, {"x"}, [](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
      return max_pool2d(t, v[0], pool_opts(g));
    });
}

TEST(Relu, MatchesPyTorchGoldenFiles) {
  check_case("relu", {"x"}, [](Tape<double>& t, const Golden&, const std::vector<Value>& v) { return relu(t, v[0]); });
  check_case("leaky_relu", {"x"}, [](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
    return leaky_relu(t, v[0], g.load("attrs")(0));
  });
}
TEST(Sigmoid, MatchesPyTorchGoldenFiles) {
  check_case("sigmoid", {"x"}, [](Tape<double>& t, const Golden&, const std::vector<Value>& v) { return sigmoid(t, v[0]); });
}
TEST(Tanh, MatchesPyTorchGoldenFiles) {
  check_case("tanh", {"x"}, [](Tape<double>& t, const Golden&, const std::vector<Value>& v) { return ad::tanh(t, v[0]); });
}
TEST(Flatten, MatchesPyTorchGoldenFiles) {
  check_case("flatten", {"x"}, [](Tape<double>& t, const Golden&, const std::vector<Value>& v) { return flatten(t, v[0]); });
}
TEST(Linear, MatchesPyTorchGoldenFiles) {
  check_case("linear", {"x", "w", "b"},
             [](Tape<double>& t, const Golden&, const std::vector<Value>& v) { return linear(t, v[0], v[1], v[2]); });
}
TEST(SoftmaxCrossEntropy, MatchesPyTorchGoldenFiles) {
  check_case("softmax_cross_entropy", {"logits"}, [](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
    return softmax_cross_entropy(t, v[0], g.labels());
  });
}
TEST(Mse, MatchesPyTorchGoldenFiles) {
  check_case("mse", {"pred", "target"},
             [](Tape<double>& t, const Golden&, const std::vector<Value>& v) { return mse(t, v[0], v[1]); });
}

// Training mode: batch statistics and the running-statistic update; eval mode: the
// running statistics. attrs [training, momentum, eps, affine].
TEST(BatchNorm2d, MatchesPyTorchGoldenFilesWithTheRunningStatistics) {
  for (const char* c : {"batch_norm2d_train", "batch_norm2d_train_plain", "batch_norm2d_eval"}) {
    const Golden g(c);
    const bool affine = g.load("attrs")(3) != 0;
    T64 rm = g.load("running_mean"), rv = g.load("running_var");
    check_case(c, affine ? std::vector<std::string>{"x", "weight", "bias"} : std::vector<std::string>{"x"},
               [&](Tape<double>& t, const Golden& gc, const std::vector<Value>& v) {
                 const T64 a = gc.load("attrs");
                 return batch_norm2d(t, v[0], affine ? v[1] : Value{}, affine ? v[2] : Value{}, &rm, &rv,
                                     {.training = a(0) != 0, .momentum = a(1), .eps = a(2)});
               });
    EXPECT_TRUE(matches(rm, g.load("running_mean_after"))) << c << " running_mean";
    EXPECT_TRUE(matches(rv, g.load("running_var_after"))) << c << " running_var";
  }
}

// PyTorch's mask (mask.npy, 1 = kept) through dropout_forward and dropout_vjp: the
// 1/(1 - p) scaling and the gradient. attrs [p].
TEST(Dropout, MatchesPyTorchGoldenFilesForItsMask) {
  const Golden g("dropout");
  const double p = g.load("attrs")(0);
  const T64 x = g.load("x"), m = g.load("mask");
  std::vector<int32_t> bits((m.size() + 31) / 32, 0);
  for (std::size_t i = 0; i < m.size(); ++i)
    if (m.data()[i] != 0) bits[i / 32] = static_cast<int32_t>(static_cast<uint32_t>(bits[i / 32]) | (1u << (i % 32)));
  T64 y(x.shape());
  dropout_forward(x, p, bits, y);
  EXPECT_TRUE(matches(y, g.load("out")));
  T64 gx = xt::zeros<double>(x.shape());
  dropout_vjp(T64(xt::reshape_view(g.load("cot"), x.shape())), p, bits, &gx);
  EXPECT_TRUE(matches(gx, g.load("grad_x")));
}

// attrs [axis] (negative from the end); one line is shifted by +50 / +80.
TEST(Softmax, MatchesPyTorchGoldenFiles) {
  for (const char* c : {"softmax_last", "softmax_axis1"})
    check_case(c, {"x"}, [](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
      return softmax(t, v[0], static_cast<int>(g.load("attrs")(0)));
    });
  for (const char* c : {"log_softmax_last", "log_softmax_axis0"})
    check_case(c, {"x"}, [](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
      return log_softmax(t, v[0], static_cast<int>(g.load("attrs")(0)));
    });
}
// attrs [ignore_index]; some labels are ignored.
TEST(NllLoss, MatchesPyTorchGoldenFiles) {
  for (const char* c : {"nll_loss", "nll_loss_ignore2"})
    check_case(c, {"log_probs"}, [](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
      return nll_loss(t, v[0], g.labels(), {.ignore_index = static_cast<int>(g.load("attrs")(0))});
    });
}

// Binary ops with broadcasting: b is (1,3,1,1), (3,1,1), (1), (5,1) against (4,1,3), ...
TEST(BinaryOps, MatchPyTorchGoldenFilesWhenBroadcasting) {
  const std::pair<const char*, Value (*)(Tape<double>&, Value, Value, std::source_location)> cases[] = {
      {"add_bcast_channel", add<double>},   {"sub_bcast_chw", sub<double>},      {"mul_bcast_scalar", mul<double>},
      {"mul_bcast_two_sided", mul<double>}, {"div_bcast_two_sided", div<double>}, {"div_same_shape", div<double>}};
  for (const auto& [name, op] : cases)
    check_case(name, {"a", "b"}, [op](Tape<double>& t, const Golden&, const std::vector<Value>& v) {
      return op(t, v[0], v[1], std::source_location::current());
    });
}

TEST(UnaryOps, MatchPyTorchGoldenFiles) {
  using Unary = Value (*)(Tape<double>&, Value, std::source_location);
  const std::pair<const char*, Unary> plain[] = {{"neg", neg<double>},   {"exp", ad::exp<double>},
                                                 {"log", ad::log<double>}, {"sqrt", ad::sqrt<double>},
                                                 {"abs", ad::abs<double>}};
  for (const auto& [name, op] : plain)
    check_case(name, {"x"}, [op](Tape<double>& t, const Golden&, const std::vector<Value>& v) {
      return op(t, v[0], std::source_location::current());
    });
  for (const char* c : {"pow_2_5", "pow_neg_2"})
    check_case(c, {"x"}, [](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
      return ad::pow(t, v[0], g.load("attrs")(0));
    });
  // attrs [min, max]; an infinite bound stands for none (std::nullopt).
  for (const char* c : {"clamp", "clamp_max"})
    check_case(c, {"x"}, [](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
      const T64 a = g.load("attrs");
      const auto bound = [](double b) { return std::isinf(b) ? std::nullopt : std::optional<double>(b); };
      return clamp(t, v[0], bound(a(0)), bound(a(1)));
    });
}

TEST(ShapeOps, MatchPyTorchGoldenFiles) {
  const auto ints = [](const Golden& g) {
    const T64 a = g.load("attrs");
    return std::vector<int>(a.begin(), a.end());
  };
  check_case("reshape", {"x"}, [&](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
    const std::vector<int> s = ints(g);
    return reshape(t, v[0], std::vector<int64_t>(s.begin(), s.end()));
  });
  check_case("permute", {"x"}, [&](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
    return permute(t, v[0], ints(g));
  });
  check_case("transpose", {"x"}, [&](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
    return transpose(t, v[0], ints(g)[0], ints(g)[1]);
  });
  check_case("concat", {"a", "b", "c"}, [&](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
    return concat(t, v, ints(g)[0]);
  });
  // The pieces of split joined in reverse order.
  check_case("split_concat", {"x"}, [&](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
    const std::vector<int> a = ints(g);
    std::vector<Value> pieces = split(t, v[0], std::vector<std::size_t>(a.begin() + 1, a.end()), a[0]);
    std::reverse(pieces.begin(), pieces.end());
    return concat(t, pieces, a[0]);
  });
  // Piece i of chunk scaled by i + 1, joined again.
  check_case("chunk", {"x"}, [&](Tape<double>& t, const Golden& g, const std::vector<Value>& v) {
    const std::vector<int> a = ints(g);
    std::vector<Value> pieces = chunk(t, v[0], static_cast<std::size_t>(a[1]), a[0]);
    for (std::size_t i = 0; i < pieces.size(); ++i) pieces[i] = scale(t, pieces[i], static_cast<double>(i + 1));
    return concat(t, pieces, a[0]);
  });
}

TEST(GlobalAvgPool2d, MatchesPyTorchGoldenFiles) {
  check_case("global_avg_pool2d", {"x"},
             [](Tape<double>& t, const Golden&, const std::vector<Value>& v) { return global_avg_pool2d(t, v[0]); });
}

// The document's 3-layer CNN (conv-act-pool, conv-act-pool, flatten, fully
// connected, loss): every parameter gradient from generic backprop over the tape.
TEST(Tape, WholeCnnMatchesPyTorchGoldenFiles) {
  const std::vector<std::string> params = {"k1", "b1", "k2", "b2", "w3", "b3"};
  // cnn_a: relu + max pool, then tanh + avg pool
  check_case("cnn_a", params, [](Tape<double>& t, const Golden& g, const std::vector<Value>& p) {
    const Value x = t.input(g.load("x"));
    Value h = max_pool2d(t, relu(t, conv2d(t, x, p[0], p[1], {.padding = {1, 1}})), {.window = {2, 2}, .stride = {2, 2}});
    h = avg_pool2d(t, ad::tanh(t, conv2d(t, h, p[2], p[3], {.padding = {1, 1}})), {.window = {2, 2}, .stride = {2, 2}});
    return softmax_cross_entropy(t, linear(t, flatten(t, h), p[4], p[5]), g.labels());
  });
  // cnn_b: sigmoid + padded avg pool, then leaky relu + padded max pool
  check_case("cnn_b", params, [](Tape<double>& t, const Golden& g, const std::vector<Value>& p) {
    const Value x = t.input(g.load("x"));
    Value h = avg_pool2d(t, sigmoid(t, conv2d(t, x, p[0], p[1], {.padding = {1, 0}})),
                         {.window = {3, 3}, .stride = {2, 2}, .padding = {1, 1}});
    h = max_pool2d(t, leaky_relu(t, conv2d(t, h, p[2], p[3], {.padding = {1, 1}}), 0.1),
                   {.window = {2, 2}, .stride = {1, 1}, .padding = {1, 1}});
    return softmax_cross_entropy(t, linear(t, flatten(t, h), p[4], p[5]), g.labels());
  });
}

}  // namespace
}  // namespace ad::test::test_golden
