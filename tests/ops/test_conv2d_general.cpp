// conv2d with dilation and groups (ops/conv2d_general.cpp): the forward against the
// document's path (a spread kernel, one conv per group), the VJPs against finite
// differences across groups, dilation, stride and padding, fan-out, per-node checks,
// float, errors, NaN and printing. PyTorch's values: test_golden.
#include <cmath>
#include <limits>

#include <xtensor/xview.hpp>

#include "test_util.hpp"

namespace ad::test::test_conv2d_general {
namespace {

struct GeneralCase {
  const char* name;
  Shape x, k;
  std::array<int, 2> padding, stride, dilation;
  int groups;
  bool bias;
};

const GeneralCase kCases[] = {
    {"groups2", {2, 4, 5, 6}, {6, 2, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 2, true},
    {"depthwise", {2, 3, 6, 5}, {3, 1, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 3, true},
    {"depthwise_multiplier2_strided", {2, 3, 7, 6}, {6, 1, 3, 2}, {1, 0}, {2, 2}, {1, 1}, 3, false},
    {"dilation2", {2, 2, 8, 7}, {3, 2, 3, 3}, {2, 2}, {1, 1}, {2, 2}, 1, true},
    {"dilation_asymmetric_strided", {1, 2, 9, 9}, {2, 2, 2, 3}, {1, 2}, {2, 3}, {3, 2}, 1, true},
    {"groups_dilation_stride_padding", {2, 6, 9, 8}, {4, 3, 2, 2}, {2, 1}, {2, 1}, {2, 3}, 2, true},
    {"grouped_pointwise", {2, 4, 4, 3}, {6, 2, 1, 1}, {0, 0}, {1, 1}, {1, 1}, 2, true},
    {"dilated_kernel_spans_padded_input", {1, 1, 3, 4}, {2, 1, 2, 2}, {1, 0}, {1, 1}, {4, 3}, 1, true},
    {"groups_equal_to_c_out", {1, 4, 5, 5}, {2, 2, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 2, false},
};

Conv2dOptions options(const GeneralCase& c) {
  return {.padding = c.padding, .stride = c.stride, .dilation = c.dilation, .groups = c.groups};
}

// The same convolution on the document's path (ops/conv2d.cpp's kernels, themselves
// checked against the definition): dilation as a kernel with h_d - 1 zero rows between
// taps (and w_d - 1 zero columns), groups as one conv2d per block of channels.
T64 via_plain_conv2d(const T64& x, const T64& k, const T64* b, const Conv2dOptions& a) {
  const std::size_t G = static_cast<std::size_t>(a.groups), O = k.shape()[0], Cg = k.shape()[1];
  const std::size_t KH = k.shape()[2], KW = k.shape()[3], Og = O / G;
  const std::size_t dh = static_cast<std::size_t>(a.dilation[0]), dw = static_cast<std::size_t>(a.dilation[1]);
  T64 spread = xt::zeros<double>({O, Cg, dh * (KH - 1) + 1, dw * (KW - 1) + 1});
  for (std::size_t o = 0; o < O; ++o)
    for (std::size_t c = 0; c < Cg; ++c)
      for (std::size_t p = 0; p < KH; ++p)
        for (std::size_t q = 0; q < KW; ++q) spread(o, c, p * dh, q * dw) = k(o, c, p, q);
  std::vector<T64> blocks;
  for (std::size_t g = 0; g < G; ++g) {
    Tape<double> t;
    const T64 xg = xt::view(x, xt::all(), xt::range(g * Cg, (g + 1) * Cg));
    const T64 kg = xt::view(spread, xt::range(g * Og, (g + 1) * Og));
    const Value bg = b ? t.input(T64(xt::view(*b, xt::range(g * Og, (g + 1) * Og)))) : Value{};
    blocks.push_back(t.value(conv2d(t, t.input(xg), t.input(kg), bg, {.padding = a.padding, .stride = a.stride})));
  }
  const std::size_t N = x.shape()[0], OH = blocks[0].shape()[2], OW = blocks[0].shape()[3];
  T64 y(Shape{N, O, OH, OW});
  for (std::size_t g = 0; g < G; ++g) xt::view(y, xt::all(), xt::range(g * Og, (g + 1) * Og)) = blocks[g];
  return y;
}

TEST(Conv2dGeneral, ForwardMatchesThePlainPathWithASpreadKernelPerGroup) {
  uint64_t seed = 1;
  for (const GeneralCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const T64 x = uniform(c.x, seed++), k = uniform(c.k, seed++), b = uniform({c.k[0]}, seed++);
    Tape<double> tape;
    const Value y = conv2d(tape, tape.input(x), tape.input(k), c.bias ? tape.input(b) : Value{}, options(c));
    EXPECT_TRUE(all_close(tape.value(y), via_plain_conv2d(x, k, c.bias ? &b : nullptr, options(c)), 1e-12, 1e-13));
  }
}

TEST(Conv2dGeneral, VjpMatchesFiniteDifferencesAcrossGroupsDilationStrideAndPadding) {
  uint64_t seed = 100;
  for (const GeneralCase& c : kCases) {
    SCOPED_TRACE(c.name);
    std::vector<T64> in = {uniform(c.x, seed++), uniform(c.k, seed++)};
    std::vector<std::string> names = {"x", "k"};
    if (c.bias) in.push_back(uniform({c.k[0]}, seed++)), names.push_back("b");
    auto f = [&](Tape<double>& t, const std::vector<Value>& v) {
      return conv2d(t, v[0], v[1], c.bias ? v[2] : Value{}, options(c));
    };
    EXPECT_GRADCHECK(f, in, names);
  }
}

TEST(Conv2dGeneral, VjpAddsWhenTheInputFeedsTwoConvolutions) {
  // y = depthwise(x) + dilated(x): dJ/dx holds both contributions.
  auto f = [](Tape<double>& t, const std::vector<Value>& v) {
    const Value a = conv2d(t, v[0], v[1], Value{}, {.padding = {1, 1}, .groups = 2});
    const Value b = conv2d(t, v[0], v[2], Value{}, {.padding = {2, 2}, .dilation = {2, 2}});
    return add(t, a, b);
  };
  EXPECT_GRADCHECK(f, (std::vector<T64>{uniform({2, 2, 5, 5}, 7), uniform({2, 1, 3, 3}, 8), uniform({2, 2, 3, 3}, 9)}),
                   (std::vector<std::string>{"x", "k_depthwise", "k_dilated"}));
}

// A depthwise-separable block (depthwise 3x3, then pointwise 1x1): every node checked alone.
TEST(Conv2dGeneral, GradcheckNodesPassesOnADepthwiseSeparableBlock) {
  Parameter<double> kd("kd", uniform({4, 1, 3, 3}, 1)), bd("bd", uniform({4}, 2)), kp("kp", uniform({3, 4, 1, 1}, 3));
  Tape<double> t;
  const Value x = t.input(uniform({2, 4, 6, 6}, 4)), vkd = t.param(kd), vbd = t.param(bd);  // #0, #1, #2
  const Value h = conv2d(t, x, vkd, vbd, {.padding = {2, 2}, .dilation = {2, 2}, .groups = 4});  // #3
  const Value a = ad::tanh(t, h), vkp = t.param(kp);                                               // #4, #5
  const Value y = conv2d(t, a, vkp, Value{});                                                      // #6
  t.backward(sum(t, y));
  const NodeGradcheckResult r = gradcheck_nodes(t);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_EQ(r.nodes.size(), 4u);
  EXPECT_NE(format_node(t, 3).find("conv2d(#0, #1, #2) -> (2,4,6,6) stride=1x1 pad=2x2 dilation=2x2 groups=4"),
            std::string::npos)
      << format_node(t, 3);
  EXPECT_NE(format_node(t, 6).find("conv2d(#4, #5) -> (2,3,6,6) stride=1x1 pad=0x0 @"), std::string::npos)
      << format_node(t, 6);
}

TEST(Conv2dGeneral, FloatPathAgreesWithDouble) {
  const Conv2dOptions opt{.padding = {2, 1}, .stride = {2, 1}, .dilation = {2, 1}, .groups = 2};
  EXPECT_TRUE(float_agrees_with_double([&](auto& t, const std::vector<Value>& v) { return conv2d(t, v[0], v[1], v[2], opt); },
                                       {uniform({3, 4, 9, 8}, 3), uniform({8, 2, 3, 3}, 4), uniform({8}, 5)}, 1e-5, 1e-4));
}

// Large enough for the images to run in parallel.
TEST(Conv2dGeneral, ParallelImagesAgreeWithThePlainPath) {
  const T64 x = uniform({6, 4, 12, 12}, 1), k = uniform({8, 2, 3, 3}, 2), b = uniform({8}, 3);
  const Conv2dOptions opt{.padding = {2, 2}, .dilation = {2, 2}, .groups = 2};
  Tape<double> t;
  EXPECT_TRUE(all_close(t.value(conv2d(t, t.input(x), t.input(k), t.input(b), opt)), via_plain_conv2d(x, k, &b, opt),
                        1e-12, 1e-13));
}

// groups = 1 and dilation 1x1 stay on the document's path (and print as before).
TEST(Conv2dGeneral, DefaultOptionsArePlain) {
  EXPECT_TRUE(is_plain(Conv2dOptions{}));
  EXPECT_TRUE(is_plain(Conv2dOptions{.padding = {1, 2}, .stride = {2, 2}}));
  EXPECT_FALSE(is_plain(Conv2dOptions{.dilation = {1, 2}}));
  EXPECT_FALSE(is_plain(Conv2dOptions{.groups = 2}));
  Tape<double> t;
  conv2d(t, t.input(uniform({1, 2, 4, 4}, 1)), t.input(uniform({2, 2, 3, 3}, 2)), Value{}, {.padding = {1, 1}});
  EXPECT_NE(format_node(t, 2).find("-> (1,2,4,4) stride=1x1 pad=1x1 @"), std::string::npos) << format_node(t, 2);
}

TEST(Conv2dGeneral, RefusesGroupsThatDoNotDivideAndBadDilation) {
  Tape<double> t;
  const Value x = t.input(uniform({1, 6, 8, 8}, 1));
  const Value k = t.input(uniform({4, 3, 3, 3}, 2));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k, Value{}, {.groups = 0}); }, {"conv2d", "groups 0 must be >= 1"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k, Value{}, {.groups = 4}); },
                                 {"conv2d", "input (1,6,8,8) has C_in = 6 channels, which groups = 4 does not divide"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, t.input(uniform({4, 2, 3, 3}, 3)), Value{}, {.groups = 3}); },
                                 {"conv2d", "kernel (4,2,3,3) has C_out = 4 channels, which groups = 3 does not divide"}));
  // the plain path reports C_in against the kernel; the grouped one C_in / groups
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, t.input(uniform({6, 3, 3, 3}, 3)), Value{}, {.groups = 3}); },
                                 {"conv2d", "input (1,6,8,8) and kernel (6,3,3,3) disagree on C_in / groups (6 / 3 = 2 vs 3)"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k, t.input(uniform({3}, 4)), {.groups = 2}); },
                                 {"conv2d", "bias (3) and kernel (4,3,3,3) disagree on C_out (3 vs 4)"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k, Value{}, {.dilation = {0, 1}, .groups = 2}); },
                                 {"conv2d", "dilation (0,1) must be >= 1 on both axes"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k, Value{}, {.stride = {0, 1}, .groups = 2}); },
                                 {"conv2d", "stride (0,1) must be >= 1"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k, Value{}, {.padding = {-1, 0}, .groups = 2}); },
                                 {"conv2d", "padding (-1,0) must be >= 0"}));
  // 3x3 with dilation 4 spans 9 rows; the input has 8 (+ 2*0 padding)
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k, Value{}, {.dilation = {4, 1}, .groups = 2}); },
                                 {"conv2d", "kernel (3,3) with dilation (4,1) spans 9 rows, more than input (1,6,8,8)",
                                  "4*(3-1)+1 = 9 > H + 2*0 = 8"}));
  const Value y = conv2d(t, x, k, Value{}, {.padding = {1, 0}, .dilation = {4, 1}, .groups = 2});  // 9 <= 8 + 2
  EXPECT_EQ(t.shape(y), (Shape{1, 4, 2, 6}));
  // an empty channel axis is refused; an empty batch is not (below)
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, t.input(T64(Shape{1, 0, 8, 8})), k, Value{}, {.groups = 2}); },
                                 {"conv2d", "input (1,0,8,8) is empty along axis 1"}));
}

// An empty batch (N = 0), as on the plain path and in PyTorch: an empty output, and
// backward adds nothing to the kernel's and bias's gradients.
TEST(Conv2dGeneral, AnEmptyBatchGivesAnEmptyOutput) {
  Tape<double> t;
  const Value x = t.input(T64(Shape{0, 6, 8, 8}));
  Parameter<double> k("k", uniform({4, 3, 3, 3}, 1)), b("b", uniform({4}, 2));
  const Value y = conv2d(t, x, t.param(k), t.param(b), {.padding = {1, 1}, .dilation = {2, 1}, .groups = 2});
  EXPECT_EQ(t.shape(y), (Shape{0, 4, 6, 8}));  // H: 8 + 2 - (2*(3-1)+1) + 1 = 6
  t.backward(y, T64(t.shape(y)));
  EXPECT_EQ(k.grad, xt::zeros<double>({4, 3, 3, 3}));
  EXPECT_EQ(b.grad, xt::zeros<double>({4}));
}

// A NaN reaches only the outputs whose windows read it: its own group's channels.
TEST(Conv2dGeneral, NaNStaysInItsGroup) {
  T64 x = uniform({1, 4, 5, 5}, 1);
  x(0, 3, 2, 2) = std::numeric_limits<double>::quiet_NaN();  // group 1 (channels 2, 3)
  Tape<double> t;
  const T64 y = t.value(conv2d(t, t.input(x), t.input(uniform({4, 2, 3, 3}, 2)), Value{},
                               {.padding = {1, 1}, .dilation = {2, 2}, .groups = 2}));
  // Output (i, j) reads input rows i - 1 + {0, 2, 4} and the same columns: row and
  // column 2 only for i = j = 1.
  for (std::size_t o = 0; o < 4; ++o)
    for (std::size_t i = 0; i < 3; ++i)
      for (std::size_t j = 0; j < 3; ++j)
        EXPECT_EQ(std::isnan(y(0, o, i, j)), o >= 2 && i == 1 && j == 1) << o << " " << i << " " << j;
}

}  // namespace
}  // namespace ad::test::test_conv2d_general
