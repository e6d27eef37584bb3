// conv_transpose2d: the forward against the scatter definition, the adjoint identity
// with conv2d, VJPs against finite differences (stride, padding, output_padding,
// dilation, groups), fan-out, per-node checks, float, errors, NaN, the empty batch and
// printing. PyTorch's values: test_golden.
#include <cmath>
#include <limits>

#include <xtensor/xview.hpp>

#include "test_util.hpp"

namespace ad::test::test_conv_transpose2d {
namespace {

struct TransposeCase {
  const char* name;
  Shape x, k;
  ConvTranspose2dOptions opt;
  bool bias;
};

const TransposeCase kCases[] = {
    {"stride1", {2, 3, 4, 4}, {3, 2, 3, 3}, {}, true},
    {"stride2_padding1_outpad1", {2, 3, 4, 5}, {3, 2, 3, 3}, {.padding = {1, 1}, .stride = {2, 2}, .output_padding = {1, 1}}, true},
    {"asymmetric", {1, 2, 3, 4}, {2, 3, 2, 3}, {.padding = {0, 2}, .stride = {3, 1}, .output_padding = {2, 0}}, true},
    {"one_by_one_stride2", {2, 4, 3, 3}, {4, 2, 1, 1}, {.stride = {2, 2}, .output_padding = {1, 0}}, false},
    {"stride_larger_than_kernel", {1, 2, 3, 3}, {2, 2, 2, 2}, {.padding = {1, 0}, .stride = {3, 4}}, true},
    {"groups2", {2, 4, 3, 3}, {4, 3, 3, 3}, {.padding = {1, 1}, .stride = {2, 1}, .output_padding = {1, 0}, .groups = 2}, true},
    {"depthwise", {1, 3, 4, 4}, {3, 1, 3, 3}, {.stride = {2, 2}, .groups = 3}, true},
    {"dilation", {1, 2, 3, 4}, {2, 2, 3, 2}, {.padding = {1, 0}, .stride = {1, 2}, .dilation = {2, 3}}, false},
    {"outpad_not_below_stride_but_below_dilation", {1, 2, 3, 3}, {2, 2, 3, 3},
     {.padding = {1, 0}, .output_padding = {1, 1}, .dilation = {2, 2}}, true},
};

// Every x[n,o,i,j] scatters through the kernel:
// y[n, g Cg + c', i s + p d - pad, j s + q d - pad] += k[o,c',p,q] x[n,o,i,j]; y[n,c] += b[c].
T64 transpose_reference(const T64& x, const T64& k, const T64* b, const ConvTranspose2dOptions& a) {
  const long N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  const long Cg = k.shape()[1], KH = k.shape()[2], KW = k.shape()[3], G = a.groups;
  const long OH = (H - 1) * a.stride[0] - 2 * a.padding[0] + a.dilation[0] * (KH - 1) + a.output_padding[0] + 1;
  const long OW = (W - 1) * a.stride[1] - 2 * a.padding[1] + a.dilation[1] * (KW - 1) + a.output_padding[1] + 1;
  T64 y = xt::zeros<double>({N, Cg * G, OH, OW});
  for (long n = 0; n < N; ++n)
    for (long o = 0; o < C; ++o)
      for (long i = 0; i < H; ++i)
        for (long j = 0; j < W; ++j)
          for (long c = 0; c < Cg; ++c)
            for (long p = 0; p < KH; ++p)
              for (long q = 0; q < KW; ++q) {
                const long h = i * a.stride[0] + p * a.dilation[0] - a.padding[0];
                const long w = j * a.stride[1] + q * a.dilation[1] - a.padding[1];
                if (h >= 0 && h < OH && w >= 0 && w < OW) y(n, (o / (C / G)) * Cg + c, h, w) += k(o, c, p, q) * x(n, o, i, j);
              }
  if (b)
    for (long n = 0; n < N; ++n)
      for (long c = 0; c < Cg * G; ++c) xt::view(y, n, c) += (*b)(c);
  return y;
}

TEST(ConvTranspose2d, ForwardMatchesTheScatterDefinition) {
  uint64_t seed = 1;
  for (const TransposeCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const T64 x = uniform(c.x, seed++), k = uniform(c.k, seed++), b = uniform({c.k[1] * c.opt.groups}, seed++);
    Tape<double> t;
    const Value y = conv_transpose2d(t, t.input(x), t.input(k), c.bias ? t.input(b) : Value{}, c.opt);
    EXPECT_TRUE(all_close(t.value(y), transpose_reference(x, k, c.bias ? &b : nullptr, c.opt), 1e-12, 1e-13));
  }
}

// <conv2d(X, k), x> = <X, conv_transpose2d(x, k)> for every X: the transpose, exactly.
TEST(ConvTranspose2d, IsTheAdjointOfConv2d) {
  uint64_t seed = 50;
  for (const TransposeCase& c : kCases) {
    if (c.opt.output_padding[0] >= c.opt.stride[0] || c.opt.output_padding[1] >= c.opt.stride[1]) continue;
    SCOPED_TRACE(c.name);
    const T64 x = uniform(c.x, seed++), k = uniform(c.k, seed++);
    Tape<double> t;
    const Value y = conv_transpose2d(t, t.input(x), t.input(k), Value{}, c.opt);
    const T64 X = uniform(t.shape(y), seed++);
    const Value cx = conv2d(t, t.input(X), t.input(k), Value{}, transposed_conv(c.opt));
    ASSERT_EQ(t.shape(cx), c.x);
    EXPECT_NEAR(xt::sum(t.value(cx) * x)(), xt::sum(X * t.value(y))(), 1e-11);
  }
}

TEST(ConvTranspose2d, VjpMatchesFiniteDifferencesInEveryGeometry) {
  uint64_t seed = 100;
  for (const TransposeCase& c : kCases) {
    SCOPED_TRACE(c.name);
    std::vector<T64> in = {uniform(c.x, seed++), uniform(c.k, seed++)};
    std::vector<std::string> names = {"x", "k"};
    if (c.bias) in.push_back(uniform({c.k[1] * c.opt.groups}, seed++)), names.push_back("b");
    auto f = [&](Tape<double>& t, const std::vector<Value>& v) {
      return conv_transpose2d(t, v[0], v[1], c.bias ? v[2] : Value{}, c.opt);
    };
    EXPECT_GRADCHECK(f, in, names);
  }
}

// y = up(x, k1) * up(x, k2): x and both outputs feed two ops each.
TEST(ConvTranspose2d, VjpAddsWhenInputAndOutputAreUsedTwice) {
  auto f = [](Tape<double>& t, const std::vector<Value>& v) {
    const ConvTranspose2dOptions opt{.padding = {1, 1}, .stride = {2, 2}, .output_padding = {1, 1}};
    const Value a = conv_transpose2d(t, v[0], v[1], Value{}, opt), b = conv_transpose2d(t, v[0], v[2], Value{}, opt);
    return add(t, mul(t, a, b), a);
  };
  EXPECT_GRADCHECK(f, (std::vector<T64>{uniform({2, 2, 3, 3}, 1), uniform({2, 2, 3, 3}, 2), uniform({2, 2, 3, 3}, 3)}),
                   (std::vector<std::string>{"x", "k1", "k2"}));
}

// A small encoder-decoder: conv2d stride 2 down, conv_transpose2d stride 2 back up to
// the input's size (output_padding 1 for the odd size), every node checked alone.
TEST(ConvTranspose2d, GradcheckNodesPassesOnAnEncoderDecoder) {
  Parameter<double> kd("kd", uniform({4, 2, 3, 3}, 1)), ku("ku", uniform({4, 2, 3, 3}, 2)), bu("bu", uniform({2}, 3));
  Tape<double> t;
  const Value x = t.input(uniform({2, 2, 7, 7}, 4)), vkd = t.param(kd);                  // #0, #1
  const Value h = ad::tanh(t, conv2d(t, x, vkd, Value{}, {.padding = {1, 1}, .stride = {2, 2}}));  // #2, #3
  const Value vku = t.param(ku), vbu = t.param(bu);                                              // #4, #5
  const Value y = conv_transpose2d(t, h, vku, vbu, {.padding = {1, 1}, .stride = {2, 2}});      // #6
  EXPECT_EQ(t.shape(y), (Shape{2, 2, 7, 7}));
  t.backward(mse(t, y, x));
  const NodeGradcheckResult r = gradcheck_nodes(t);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_EQ(r.nodes.size(), 4u);
  EXPECT_NE(format_node(t, 6).find("conv_transpose2d(#3, #4, #5) -> (2,2,7,7) stride=2x2 pad=1x1 @"), std::string::npos)
      << format_node(t, 6);
  Tape<double> t2;
  conv_transpose2d(t2, t2.input(uniform({1, 4, 3, 3}, 5)), t2.input(uniform({4, 1, 3, 3}, 6)), Value{},
                   {.stride = {2, 2}, .output_padding = {1, 0}, .dilation = {1, 2}, .groups = 2});
  EXPECT_NE(format_node(t2, 2).find("-> (1,2,8,9) stride=2x2 pad=0x0 out_pad=1x0 dilation=1x2 groups=2"), std::string::npos)
      << format_node(t2, 2);
}

TEST(ConvTranspose2d, FloatPathAgreesWithDouble) {
  for (const TransposeCase& c : kCases) {
    SCOPED_TRACE(c.name);
    auto f = [&](auto& t, const std::vector<Value>& v) { return conv_transpose2d(t, v[0], v[1], v[2], c.opt); };
    EXPECT_TRUE(float_agrees_with_double(f, {uniform(c.x, 3), uniform(c.k, 4), uniform({c.k[1] * c.opt.groups}, 5)},
                                         1e-5, 1e-4));
  }
}

TEST(ConvTranspose2d, RefusesBadShapesAndOptions) {
  Tape<double> t;
  const Value x = t.input(uniform({1, 4, 3, 3}, 1));
  const Value k = t.input(uniform({4, 2, 3, 3}, 2));
  EXPECT_TRUE(throws_shape_error([&] { conv_transpose2d(t, t.input(uniform({4, 3, 3}, 3)), k, Value{}); },
                                 {"conv_transpose2d", "input (4,3,3)", "rank 4", "(N, C_in, H, W)"}));
  EXPECT_TRUE(throws_shape_error([&] { conv_transpose2d(t, x, t.input(uniform({3, 2, 3, 3}, 3)), Value{}); },
                                 {"conv_transpose2d", "input (1,4,3,3) and kernel (3,2,3,3) disagree on C_in (4 vs 3)",
                                  "(C_in, C_out/groups, KH, KW)"}));
  EXPECT_TRUE(throws_shape_error([&] { conv_transpose2d(t, x, k, Value{}, {.groups = 3}); },
                                 {"conv_transpose2d", "C_in = 4 channels, which groups = 3 does not divide"}));
  EXPECT_TRUE(throws_shape_error([&] { conv_transpose2d(t, x, k, t.input(uniform({2}, 3)), {.groups = 2}); },
                                 {"conv_transpose2d", "bias (2) and kernel (4,2,3,3) with groups = 2 disagree on C_out (2 vs 2 * 2 = 4)"}));
  EXPECT_TRUE(throws_shape_error([&] { conv_transpose2d(t, x, k, Value{}, {.stride = {2, 2}, .output_padding = {0, 2}}); },
                                 {"conv_transpose2d", "output_padding (0,2) must be >= 0 and smaller than either stride (2,2) or dilation (1,1)"}));
  EXPECT_TRUE(throws_shape_error([&] { conv_transpose2d(t, x, k, Value{}, {.output_padding = {-1, 0}}); },
                                 {"conv_transpose2d", "output_padding (-1,0) must be >= 0"}));
  EXPECT_TRUE(throws_shape_error([&] { conv_transpose2d(t, x, k, Value{}, {.stride = {1, 0}}); }, {"stride (1,0) must be >= 1"}));
  EXPECT_TRUE(throws_shape_error([&] { conv_transpose2d(t, x, k, Value{}, {.padding = {0, -1}}); }, {"padding (0,-1) must be >= 0"}));
  EXPECT_TRUE(throws_shape_error([&] { conv_transpose2d(t, x, k, Value{}, {.dilation = {0, 1}}); }, {"dilation (0,1) must be >= 1"}));
  EXPECT_TRUE(throws_shape_error([&] { conv_transpose2d(t, x, k, Value{}, {.groups = 0}); }, {"groups 0 must be >= 1"}));
  // (3 - 1) * 1 - 2 * 3 + (3 - 1) + 0 + 1 = -1
  EXPECT_TRUE(throws_shape_error([&] { conv_transpose2d(t, x, k, Value{}, {.padding = {3, 0}}); },
                                 {"conv_transpose2d", "gives an output of -1 x 5: too small"}));
  EXPECT_TRUE(throws_shape_error([&] { conv_transpose2d(t, t.input(T64(Shape{1, 4, 0, 3})), k, Value{}); },
                                 {"conv_transpose2d", "input (1,4,0,3) is empty along axis 2"}));
}

// x[0,1,1,1] = NaN reaches exactly the output pixels it scatters to: rows and columns
// 1*2 + {0,1,2} - 1 = {1,2,3}, in every output channel; everything else stays finite.
TEST(ConvTranspose2d, NaNReachesOnlyWhereItScatters) {
  T64 x = uniform({1, 2, 3, 3}, 1);
  x(0, 1, 1, 1) = std::numeric_limits<double>::quiet_NaN();
  Tape<double> t;
  const T64 y = t.value(conv_transpose2d(t, t.input(x), t.input(uniform({2, 2, 3, 3}, 2)), Value{},
                                         {.padding = {1, 1}, .stride = {2, 2}, .output_padding = {1, 1}}));
  ASSERT_EQ(to_shape(y.shape()), (Shape{1, 2, 6, 6}));
  for (std::size_t c = 0; c < 2; ++c)
    for (std::size_t h = 0; h < 6; ++h)
      for (std::size_t w = 0; w < 6; ++w)
        EXPECT_EQ(std::isnan(y(0, c, h, w)), h >= 1 && h <= 3 && w >= 1 && w <= 3) << c << " " << h << " " << w;
}

TEST(ConvTranspose2d, EmptyBatchGivesAnEmptyOutput) {
  Parameter<double> k("k", uniform({3, 2, 3, 3}, 1)), b("b", uniform({2}, 2));
  Tape<double> t;
  const Value y = conv_transpose2d(t, t.input(T64(Shape{0, 3, 4, 4})), t.param(k), t.param(b),
                                   {.padding = {1, 1}, .stride = {2, 2}, .output_padding = {1, 1}});
  EXPECT_EQ(t.shape(y), (Shape{0, 2, 8, 8}));
  t.backward(y, T64(Shape{0, 2, 8, 8}));
  EXPECT_EQ(k.grad, xt::zeros<double>({3, 2, 3, 3}));
  EXPECT_EQ(b.grad, xt::zeros<double>({2}));
}

}  // namespace
}  // namespace ad::test::test_conv_transpose2d
