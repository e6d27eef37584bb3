// conv2d_relu_max_pool2d (ops/conv2d_relu_pool.hpp): the fused op gives, bit for bit,
// the output and gradients of max_pool2d(relu(conv2d(...))) recorded as three ops, in
// float and double, on every kernel variant this processor runs, with Winograd on and
// off, on the fused path (2x2/2 pools) and the fallback (other pools, 1x1 and general
// convolutions), NaN included; it passes first- and second-order gradchecks in double;
// its shape errors carry its own name.
#include <cmath>
#include <cstring>

#include <xtensor/xview.hpp>

#include "ops/isa.hpp"
#include "test_util.hpp"

namespace ad::test::test_conv2d_relu_pool {
namespace {

struct FusedCase {
  const char* name;
  Shape x, k;
  bool bias;
  Conv2dOptions conv;
  Pool2dOptions pool;
};

const FusedCase kCases[] = {
    // ref-CNN's two layers: the direct kernel (C_in = 1) and Winograd's (16 channels, float)
    {"conv1", {3, 1, 28, 28}, {16, 1, 5, 5}, true, {.padding = {2, 2}}, {}},
    {"conv2", {3, 16, 14, 14}, {32, 16, 5, 5}, true, {.padding = {2, 2}}, {}},
    // odd conv outputs (the pool drops the last row and column), no bias, 5 channels
    // (partial vectors), a strided convolution, Winograd with odd outputs
    {"odd_no_bias", {2, 3, 9, 11}, {5, 3, 3, 3}, false, {.padding = {1, 1}}, {}},
    {"strided", {2, 4, 12, 10}, {6, 4, 3, 3}, true, {.padding = {1, 1}, .stride = {2, 2}}, {}},
    {"winograd_odd", {2, 8, 13, 11}, {7, 8, 5, 5}, true, {.padding = {2, 2}}, {}},
    // the fallback: pools the output pass does not do, and convolutions off its paths
    {"pool_3x3_s2_p1", {2, 3, 9, 9}, {4, 3, 3, 3}, true, {.padding = {1, 1}}, {.window = {3, 3}, .stride = {2, 2}, .padding = {1, 1}}},
    {"pool_overlapping", {2, 2, 7, 6}, {3, 2, 3, 3}, true, {.padding = {1, 1}}, {.window = {2, 2}, .stride = {1, 1}}},
    // other pools with at most half the conv output's rows and columns of windows: the
    // VJP's pixel-major dJ/dz, whose winners outside a window's 2x2 block are summed in
    // window order (overlapping 3x3 windows), non-overlapping 3x3 windows, and -1
    // switches (a padding zero won)
    {"pool_3x3_s2_p1_even", {2, 3, 10, 10}, {4, 3, 3, 3}, true, {.padding = {1, 1}}, {.window = {3, 3}, .stride = {2, 2}, .padding = {1, 1}}},
    {"pool_3x3_s3", {2, 3, 9, 9}, {4, 3, 3, 3}, true, {.padding = {1, 1}}, {.window = {3, 3}, .stride = {3, 3}}},
    {"pool_zero_padding_3x3", {2, 2, 8, 8}, {3, 2, 3, 3}, true, {.padding = {1, 1}}, {.window = {3, 3}, .stride = {2, 2}, .padding = {1, 1}, .max_padding = MaxPoolPadding::Zero}},
    {"pool_zero_padding", {1, 2, 6, 6}, {3, 2, 3, 3}, true, {}, {.padding = {1, 1}, .max_padding = MaxPoolPadding::Zero}},
    {"conv_1x1", {2, 8, 6, 6}, {4, 8, 1, 1}, true, {}, {}},
    {"conv_grouped_dilated", {2, 4, 9, 9}, {6, 2, 3, 3}, true, {.padding = {2, 2}, .dilation = {2, 2}, .groups = 2}, {}},
};

// Output and gradients (x, k, b) of the fused op or of the three ops, on Tape<T>.
template <class T>
std::vector<Tensor<T>> run(bool fused, const FusedCase& c, const T64& x, const T64& k, const T64& b) {
  Parameter<T> px("x", xt::cast<T>(x)), pk("k", xt::cast<T>(k)), pb("b", xt::cast<T>(b));
  Tape<T> t;
  const Value xv = t.param(px), kv = t.param(pk), bv = c.bias ? t.param(pb) : Value{};
  const Value y = fused ? conv2d_relu_max_pool2d(t, xv, kv, bv, c.conv, c.pool)
                        : max_pool2d(t, relu(t, conv2d(t, xv, kv, bv, c.conv)), c.pool);
  t.backward(y, Tensor<T>(xt::cast<T>(uniform(to_shape(t.value(y).shape()), 99))));
  return {t.value(y), px.grad, pk.grad, pb.grad};
}

// The same bits (NaN payloads and signed zeros included), or where the first difference is.
template <class T>
::testing::AssertionResult same_bits(const Tensor<T>& a, const Tensor<T>& b) {
  if (a.shape() != b.shape()) return ::testing::AssertionFailure() << "shapes differ";
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(a.data() + i, b.data() + i, sizeof(T)) != 0)
      return ::testing::AssertionFailure() << "element " << i << ": " << a.data()[i] << " vs " << b.data()[i];
  return ::testing::AssertionSuccess();
}

template <class T>
void expect_same_as_three_ops(const FusedCase& c, const T64& x, const T64& k, const T64& b, const std::string& where) {
  const std::vector<Tensor<T>> fused = run<T>(true, c, x, k, b), apart = run<T>(false, c, x, k, b);
  const char* what[] = {"output", "dJ/dx", "dJ/dk", "dJ/db"};
  for (std::size_t i = 0; i < fused.size(); ++i)
    EXPECT_TRUE(same_bits(fused[i], apart[i])) << where << ", " << what[i];
}

struct IsaGuard {
  Isa isa = active_isa();
  WinogradMode wino = conv2d_winograd();
  ~IsaGuard() { set_isa(isa), set_conv2d_winograd(wino); }
};

TEST(Conv2dReluMaxPool2d, EqualsTheThreeOpsBitForBitOnEveryKernelVariant) {
  IsaGuard guard;
  for (Isa isa : kernel_variants()) {
    set_isa(isa);
    for (WinogradMode wino : {WinogradMode::Auto, WinogradMode::On, WinogradMode::Off}) {
      set_conv2d_winograd(wino);
      uint64_t seed = 1;
      for (const FusedCase& c : kCases) {
        const T64 x = uniform(c.x, seed++), k = uniform(c.k, seed++, -0.5, 0.5), b = uniform({c.k[0]}, seed++);
        const std::string where = fmt::format("{} on {}, Winograd {}", c.name, isa_name(isa), static_cast<int>(wino));
        expect_same_as_three_ops<float>(c, x, k, b, where + ", float");
        if (wino == WinogradMode::Auto) expect_same_as_three_ops<double>(c, x, k, b, where + ", double");
      }
    }
  }
}

// Inference (no switches wanted) takes the output pass without the winners' indices:
// the same output as with them.
TEST(Conv2dReluMaxPool2d, WithoutSwitchesGivesTheSameOutput) {
  IsaGuard guard;
  for (Isa isa : kernel_variants()) {
    set_isa(isa);
    uint64_t seed = 41;
    for (const FusedCase& c : kCases) {
      T64 x = uniform(c.x, seed++), k = uniform(c.k, seed++, -0.5, 0.5), b = uniform({c.k[0]}, seed++);
      x(0, 0, 1, 2) = std::nan("");
      const Tensor<float> xf = xt::cast<float>(x), kf = xt::cast<float>(k), bf = xt::cast<float>(b);
      const Shape ys = conv2d_relu_max_pool2d_output_shape(c.x, c.k, nullptr, c.conv, c.pool);
      Tensor<float> with(ys), without(ys);
      std::vector<int32_t> switches(with.size());
      conv2d_relu_max_pool2d_forward(xf, kf, c.bias ? &bf : nullptr, c.conv, c.pool, with, switches.data());
      conv2d_relu_max_pool2d_forward(xf, kf, c.bias ? &bf : nullptr, c.conv, c.pool, without, nullptr);
      EXPECT_TRUE(same_bits(with, without)) << c.name << " on " << isa_name(isa);
    }
  }
}

// NaN and infinity: a NaN wins its window and passes its gradient on (max_pool2d's and
// relu's rules), -inf loses, +inf wins; the same bits as the three ops.
TEST(Conv2dReluMaxPool2d, PropagatesNanAndInfinityAsTheThreeOps) {
  IsaGuard guard;
  for (Isa isa : kernel_variants()) {
    set_isa(isa);
    for (const FusedCase& c : {kCases[0], kCases[1], kCases[5]}) {
      T64 x = uniform(c.x, 7), k = uniform(c.k, 8, -0.5, 0.5), b = uniform({c.k[0]}, 9);
      x(0, 0, 3, 4) = std::nan("");
      x(1, 0, 8, 8) = INFINITY;
      x(2 % c.x[0], 0, 1, 1) = -INFINITY;
      expect_same_as_three_ops<float>(c, x, k, b, fmt::format("{} on {}, float", c.name, isa_name(isa)));
      expect_same_as_three_ops<double>(c, x, k, b, fmt::format("{} on {}, double", c.name, isa_name(isa)));
    }
  }
}

// The VJPs that write their input's first gradient instead of adding it to a zeroed
// buffer (Tape::grad_buffer_for_overwrite: the fused op's dJ/dx on each of its paths,
// flatten, linear) write all of it: a tape reused with other data, whose buffers still
// hold the last step's gradients, gives a fresh tape's gradients bit for bit, for the
// parameters and for the values between them.
TEST(Conv2dReluMaxPool2d, OverwrittenGradientsOfAReusedTapeAreAFreshTapes) {
  IsaGuard guard;
  // conv2 (Winograd dJ/dx), conv1 (direct), strided (GEMM and col2im), Winograd with odd
  // outputs, 3x3 pools (planar dJ/dz; pixel-major with winners outside the blocks), 1x1
  // (GEMM), grouped and dilated (conv2d's general VJP)
  for (const std::size_t ci : {1, 0, 3, 4, 5, 7, 11, 12})
    for (WinogradMode wino : {WinogradMode::On, WinogradMode::Off}) {
      set_conv2d_winograd(wino);
      const FusedCase& c = kCases[ci];
      const Shape ys = conv2d_relu_max_pool2d_output_shape(c.x, c.k, nullptr, c.conv, c.pool);
      Parameter<float> px("x", Tensor<float>(c.x)), pk("k", xt::cast<float>(uniform(c.k, 1, -0.5, 0.5)));
      Parameter<float> pb("b", xt::cast<float>(uniform({c.k[0]}, 2)));
      Parameter<float> pw("w", xt::cast<float>(uniform({ys[1] * ys[2] * ys[3], 3}, 3)));
      // h = x * x (a value with a gradient, not a parameter) -> fused -> flatten -> linear
      auto run = [&](Tape<float>& t, uint64_t seed) {
        px.value = xt::cast<float>(uniform(c.x, seed));
        for (Parameter<float>* p : {&px, &pk, &pb, &pw}) p->zero_grad();
        const Value x = t.param(px);
        const Value h = mul(t, x, x);
        const Value f = conv2d_relu_max_pool2d(t, h, t.param(pk), t.param(pb), c.conv, c.pool);
        const Value flat = flatten(t, f);
        const Value logits = linear(t, flat, t.param(pw), Value{});
        t.backward(sum(t, mul(t, logits, logits)));
        return std::vector<Tensor<float>>{t.grad(h), t.grad(f), t.grad(flat), t.grad(logits),
                                          px.grad,   pk.grad,   pb.grad,      pw.grad};
      };
      Tape<float> reused, fresh;
      run(reused, 10);
      reused.reset();
      const std::vector<Tensor<float>> again = run(reused, 11), first = run(fresh, 11);
      const char* what[] = {"h", "fused", "flatten", "logits", "x", "k", "b", "w"};
      for (std::size_t i = 0; i < again.size(); ++i)
        EXPECT_TRUE(same_bits(again[i], first[i])) << c.name << ", Winograd " << static_cast<int>(wino) << ", dJ/d"
                                                   << what[i];
    }
}

// A bias that makes every ReLU input negative: the output is all zeros and no gradient
// reaches anything but... nothing: dJ/dx, dJ/dk and dJ/db are zero.
TEST(Conv2dReluMaxPool2d, AllNegativeGivesZerosAndNoGradient) {
  const FusedCase& c = kCases[1];
  const T64 x = uniform(c.x, 3, 0, 1), k = uniform(c.k, 4, 0, 0.01), b = xt::full_like(uniform({c.k[0]}, 5), -100.0);
  const std::vector<Tensor<float>> r = run<float>(true, c, x, k, b);
  for (const Tensor<float>& t : r) EXPECT_EQ(xt::amax(xt::abs(t))(), 0.0f);
}

TEST(Conv2dReluMaxPool2d, FirstAndSecondOrderGradcheckInDouble) {
  using V = std::vector<Value>;
  for (const Pool2dOptions pool : {Pool2dOptions{}, Pool2dOptions{.window = {3, 2}, .stride = {2, 1}, .padding = {1, 0}}}) {
    GradcheckFn f = [pool](Tape<double>& t, const V& v) {
      return conv2d_relu_max_pool2d(t, v[0], v[1], v[2], {.padding = {1, 1}}, pool);
    };
    // inputs away from ReLU's kink and the pools' ties at this step size
    const std::vector<T64> in{distinct({2, 2, 6, 5}, 11), uniform({3, 2, 3, 3}, 12, -0.5, 0.5), uniform({3}, 13, 0.1, 0.3)};
    const std::vector<std::string> names{"x", "k", "b"};
    EXPECT_GRADCHECK(f, in, names);
    const GradcheckResult r = gradgradcheck(f, in, names);
    EXPECT_TRUE(r.ok) << r.report;
  }
}

// gradcheck_nodes skips what ReLU's kink and the pool's ties make one-sided: images zero
// in a block and no bias put z exactly at 0 there (every candidate tied, at the kink).
TEST(Conv2dReluMaxPool2d, GradcheckNodesSkipsItsKinksAndTies) {
  T64 xv = uniform({1, 2, 8, 8}, 31);
  xt::view(xv, xt::all(), xt::all(), xt::range(0, 5), xt::range(0, 5)) = 0.0;
  Parameter<double> x("x", xv), k("k", uniform({3, 2, 3, 3}, 32)), b("b", T64(xt::zeros<double>({3})));
  Tape<double> t;
  const Value y = conv2d_relu_max_pool2d(t, t.param(x), t.param(k), t.param(b), {.padding = {1, 1}});
  sum(t, mul(t, y, t.input(uniform({1, 3, 4, 4}, 33))));
  const NodeGradcheckResult r = gradcheck_nodes(t);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_NE(r.report.find("at kinks or ties skipped"), std::string::npos) << r.report;
}

TEST(Conv2dReluMaxPool2d, FloatAgreesWithDouble) {
  for (const FusedCase& c : {kCases[0], kCases[1], kCases[4]}) {
    auto f = [&c](auto& t, const std::vector<Value>& v) { return conv2d_relu_max_pool2d(t, v[0], v[1], v[2], c.conv, c.pool); };
    EXPECT_TRUE(float_agrees_with_double(f, {uniform(c.x, 21), uniform(c.k, 22, -0.5, 0.5), uniform({c.k[0]}, 23)}, 1e-4, 1e-4))
        << c.name;
  }
}

// One node on the tape, with both ops' attributes, and switches (and in float the output's
// pixel-major copy) only when a gradient is needed.
TEST(Conv2dReluMaxPool2d, IsOneNodeThatKeepsOnlyItsOutputSwitchesAndPixelCopy) {
  Tape<float> t;
  Parameter<float> k("k", xt::cast<float>(uniform({4, 1, 3, 3}, 1)));
  const Value y = conv2d_relu_max_pool2d(t, t.input(xt::cast<float>(uniform({2, 1, 8, 8}, 2))), t.param(k), Value{},
                                         {.padding = {1, 1}});
  ASSERT_EQ(t.shape(y), (Shape{2, 4, 4, 4}));
  const Node<float>& n = t.nodes().back();
  EXPECT_EQ(op_name(n.op), "conv2d_relu_max_pool2d");
  EXPECT_EQ(n.saved_index.size(), 2u * 4 * 4 * 4 / 4);  // one byte a switch (codes), four to an element
  // (N, PH, PW, C_out rounded up to whole vectors) and 64 for its alignment
  ASSERT_EQ(n.saved.dimension(), 1u);
  EXPECT_EQ((n.saved.size() - 64) % (2 * 4 * 4), 0u);
  EXPECT_GE((n.saved.size() - 64) / (2 * 4 * 4), 4u);
  EXPECT_EQ(conv2d_relu_max_pool2d_pixel_copy_elements({2, 4, 4, 4}, {4, 1, 3, 3}, {.padding = {1, 1}}, {}, 4),
            n.saved.size());
  EXPECT_NE(format_node(t, t.nodes().size() - 1).find("stride=1x1 pad=1x1 pool=2x2/2x2 pool_pad=0x0"), std::string::npos)
      << format_node(t, t.nodes().size() - 1);
  Tape<float> t2;
  conv2d_relu_max_pool2d(t2, t2.input(xt::cast<float>(uniform({2, 1, 8, 8}, 2))), t2.input(k.value), Value{});
  EXPECT_TRUE(t2.nodes().back().saved_index.empty());  // no gradient: no switches
  EXPECT_EQ(t2.nodes().back().saved.dimension(), 0u);  // nor a copy
  // 27 codes after a reset: seven elements in the buffer the first node had (32 of them,
  // recycled with their contents), the last one's fourth byte zero, not left over
  const int8_t stale = reinterpret_cast<const int8_t*>(n.saved_index.data())[27];
  ASSERT_NE(stale, 0) << "the check needs a nonzero byte to be recycled";
  t.reset();
  Parameter<float> k3("k3", xt::cast<float>(uniform({3, 1, 3, 3}, 3)));
  conv2d_relu_max_pool2d(t, t.input(xt::cast<float>(uniform({1, 1, 6, 6}, 4))), t.param(k3), Value{},
                         {.padding = {1, 1}});
  const std::vector<int32_t>& codes = t.nodes().back().saved_index;
  ASSERT_EQ(codes.size(), 7u);
  EXPECT_EQ(reinterpret_cast<const int8_t*>(codes.data())[27], 0);
}

// Two layers, as in a CNN: the second reads its input from the pixel-major copy the
// first left in its node (ops/conv2d_relu_pool.cpp, pixel_copy), in its forward and its
// dJ/dK, instead of transposing the tape's value. The same bits as with the first
// layer's output copied to a value of its own (reshape: the second then reads it
// planar), on every kernel variant, Winograd on and off, 1 and 2 threads, one image
// (split across the threads by channel ranges) and three; with C_out filling whole
// vectors (read in place), not filling them (16 < 20 < 32: copied with zeros), and 24
// (on AVX2 the kernels' rows are 32 and the copy's 24: written apart).
TEST(Conv2dReluMaxPool2d, ASecondLayerReadsTheFirstsPixelCopyWithTheSameBits) {
  IsaGuard guard;
  const int threads_before = num_threads();
  struct Chain {
    const char* name;
    Shape x, k1, k2;
  };
  const Chain chains[] = {{"16 -> 32", {3, 3, 16, 16}, {16, 3, 5, 5}, {32, 16, 5, 5}},
                          {"20 -> 8", {3, 2, 12, 12}, {20, 2, 3, 3}, {8, 20, 5, 5}},
                          {"24 -> 12", {3, 2, 12, 10}, {24, 2, 5, 5}, {12, 24, 5, 5}}};
  const Conv2dOptions conv{.padding = {2, 2}};
  auto run_chain = [&](const Chain& c, std::size_t batch, bool apart) {
    Shape xs = c.x;
    xs[0] = batch;
    Parameter<float> px("x", xt::cast<float>(uniform(xs, 1))), k1("k1", xt::cast<float>(uniform(c.k1, 2, -0.5, 0.5))),
        b1("b1", xt::cast<float>(uniform({c.k1[0]}, 3))), k2("k2", xt::cast<float>(uniform(c.k2, 4, -0.5, 0.5))),
        b2("b2", xt::cast<float>(uniform({c.k2[0]}, 5)));
    Tape<float> t;
    const int p1 = static_cast<int>(c.k1[2] / 2);  // "same" padding: 3x3 or 5x5
    Value y1 = conv2d_relu_max_pool2d(t, t.param(px), t.param(k1), t.param(b1), {.padding = {p1, p1}});
    if (apart) {
      const Shape s = t.shape(y1);
      y1 = reshape(t, y1, {int64_t(s[0]), int64_t(s[1]), int64_t(s[2]), int64_t(s[3])});
    }
    const Value y2 = conv2d_relu_max_pool2d(t, y1, t.param(k2), t.param(b2), conv);
    t.backward(y2, Tensor<float>(xt::cast<float>(uniform(to_shape(t.value(y2).shape()), 6))));
    return std::vector<Tensor<float>>{t.value(y2), px.grad, k1.grad, b1.grad, k2.grad, b2.grad};
  };
  const char* what[] = {"output", "dJ/dx", "dJ/dk1", "dJ/db1", "dJ/dk2", "dJ/db2"};
  for (Isa isa : kernel_variants()) {
    set_isa(isa);
    for (WinogradMode wino : {WinogradMode::Auto, WinogradMode::Off})
      for (int threads : {1, 2})
        for (std::size_t batch : {std::size_t(1), std::size_t(3)})
          for (const Chain& c : chains) {
            set_conv2d_winograd(wino);
            set_num_threads(threads);
            const std::vector<Tensor<float>> copied = run_chain(c, batch, false), apart = run_chain(c, batch, true);
            for (std::size_t i = 0; i < copied.size(); ++i)
              EXPECT_TRUE(same_bits(copied[i], apart[i]))
                  << c.name << " on " << isa_name(isa) << ", Winograd " << static_cast<int>(wino) << ", " << threads
                  << " threads, batch " << batch << ": " << what[i];
          }
  }
  set_num_threads(threads_before);
}

// A step whose first layer needs no gradient keeps no copy (nor switches): the second
// layer must not read the copy that the node in that place on the tape had the step
// before (its buffer is recycled, with last step's values).
TEST(Conv2dReluMaxPool2d, NoLayerReadsAnEarlierStepsPixelCopy) {
  const Conv2dOptions conv{.padding = {2, 2}};
  Parameter<float> k1("k1", xt::cast<float>(uniform({16, 3, 5, 5}, 1, -0.5, 0.5))),
      k2("k2", xt::cast<float>(uniform({8, 16, 5, 5}, 2, -0.5, 0.5)));
  const Tensor<float> x1 = xt::cast<float>(uniform({2, 3, 12, 12}, 3)), x2 = xt::cast<float>(uniform({2, 3, 12, 12}, 4));
  auto second_step = [&](Tape<float>& t) {  // layer 1 from inputs only, layer 2 trained
    k2.zero_grad();
    const Value y1 = conv2d_relu_max_pool2d(t, t.input(x2), t.input(k1.value), Value{}, conv);
    const Value y2 = conv2d_relu_max_pool2d(t, y1, t.param(k2), Value{}, conv);
    t.backward(sum(t, y2));
    return std::vector<Tensor<float>>{t.value(y2), k2.grad};
  };
  Tape<float> t;
  const Value y1 = conv2d_relu_max_pool2d(t, t.input(x1), t.param(k1), Value{}, conv);
  t.backward(sum(t, conv2d_relu_max_pool2d(t, y1, t.param(k2), Value{}, conv)));
  ASSERT_GT(t.nodes()[2].saved.size(), 1u) << "the first step should leave a copy to recycle";
  t.reset();
  const std::vector<Tensor<float>> reused = second_step(t);
  Tape<float> fresh;
  const std::vector<Tensor<float>> expected = second_step(fresh);
  EXPECT_TRUE(same_bits(reused[0], expected[0])) << "output";
  EXPECT_TRUE(same_bits(reused[1], expected[1])) << "dJ/dk2";
}

// An input that is zero around a patch (a digit on its background) with a zero bias:
// outputs whose 5x5 neighbourhood is all zeros are exactly +0, as the direct sum gives
// them, and stay dead, whatever the kernels, so the float path's bias gradient counts the
// same live windows as the direct sum's. conv1's forward by Winograd along the rows
// (F(4, 5)) mixes a tile's 8 inputs and needs its map of such outputs for this: without
// it they were rounding noise, half of it alive, and dJ/db1 was 7.7% off oneDNN's in
// bench's check. Elsewhere the output is within the float tolerance of the direct sum's.
TEST(Conv2dReluMaxPool2d, AZeroBackgroundStaysDeadOnEveryKernelVariant) {
  IsaGuard guard;
  T64 x = xt::zeros<double>({2, 1, 28, 28});
  // columns 11-20 (13-22 of the zero-padded input): the row Winograd's tiles of 4 outputs
  // at 8-11 and 20-23 hold outputs with all-zero windows (8 and 23) and read the patch
  // through inputs that reach them in the transforms (placed at 9-18, they only met it
  // through the tile's first and last inputs, which reach one output each)
  const T64 patch = uniform({2, 1, 12, 10}, 31, 0, 1);
  xt::view(x, xt::all(), xt::all(), xt::range(8, 20), xt::range(11, 21)) = patch;
  const T64 k = uniform({16, 1, 5, 5}, 32, -0.5, 0.5), b = xt::zeros<double>({16});
  const FusedCase c{"background", {2, 1, 28, 28}, {16, 1, 5, 5}, true, {.padding = {2, 2}}, {}};
  // conv2d's own output (no ReLU, no pool), where the zeros are to be seen directly
  auto conv = [&] {
    Tape<float> t;
    return Tensor<float>(
        t.value(conv2d(t, t.input(xt::cast<float>(x)), t.input(xt::cast<float>(k)), t.input(xt::cast<float>(b)),
                       c.conv)));
  };
  auto expect_zeros_kept = [](const Tensor<float>& got, const Tensor<float>& direct, const std::string& what) {
    ASSERT_EQ(got.shape(), direct.shape()) << what;
    std::size_t zeros = 0, bad = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      const float d = direct.data()[i], g = got.data()[i];
      const bool ok = d == 0.0f ? std::memcmp(&d, &g, sizeof d) == 0 : std::abs(g - d) <= 1e-4f * (1 + std::abs(d));
      zeros += d == 0.0f;
      if (!ok && bad++ < 3) ADD_FAILURE() << what << ", element " << i << ": " << g << " vs " << d;
    }
    EXPECT_EQ(bad, 0u) << what;
    EXPECT_GT(zeros, got.size() / 4) << what << ": the case should have a background";
  };
  set_conv2d_winograd(WinogradMode::Off);
  const std::vector<Tensor<float>> direct = run<float>(true, c, x, k, b);
  const Tensor<float> direct_conv = conv();
  for (Isa isa : kernel_variants()) {
    set_isa(isa);
    for (WinogradMode wino : {WinogradMode::Auto, WinogradMode::On}) {
      set_conv2d_winograd(wino);
      const std::string where = fmt::format("{}, Winograd {}", isa_name(isa), static_cast<int>(wino));
      const std::vector<Tensor<float>> got = run<float>(true, c, x, k, b);
      expect_zeros_kept(got[0], direct[0], where + ": output");
      EXPECT_TRUE(same_bits(got[3], direct[3])) << where << ": dJ/db";
      expect_zeros_kept(conv(), direct_conv, where + ": conv2d");
    }
  }
}

TEST(Conv2dReluMaxPool2d, ShapeErrorsNameTheOpAndThePart) {
  Tape<double> t;
  const Value x = t.input(uniform({1, 3, 6, 6}, 1));
  auto message = [&](auto f) {
    try {
      f();
    } catch (const ShapeError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string channels = message([&] { conv2d_relu_max_pool2d(t, x, t.input(uniform({4, 2, 3, 3}, 2)), Value{}); });
  EXPECT_NE(channels.find("conv2d_relu_max_pool2d: conv2d: input (1,3,6,6) and kernel (4,2,3,3) disagree on C_in (3 vs 2)"),
            std::string::npos)
      << channels;
  const std::string window = message([&] {
    conv2d_relu_max_pool2d(t, x, t.input(uniform({4, 3, 5, 5}, 3)), Value{}, {}, {.window = {3, 3}, .stride = {1, 1}});
  });
  EXPECT_NE(window.find("conv2d_relu_max_pool2d: max_pool2d:"), std::string::npos) << window;
  const std::string pad = message([&] {
    conv2d_relu_max_pool2d(t, x, t.input(uniform({4, 3, 3, 3}, 4)), Value{}, {}, {.padding = {2, 2}});
  });
  EXPECT_NE(pad.find("must be smaller than the window"), std::string::npos) << pad;
}

}  // namespace
}  // namespace ad::test::test_conv2d_relu_pool
