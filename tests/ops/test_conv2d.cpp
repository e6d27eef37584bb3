// conv2d: forward against a direct loop, VJPs against finite differences over many
// geometries, the design document's appendix A example, and record-time errors.
#include <atomic>
#include <cstdlib>
#include <limits>
#include <new>

#include "test_util.hpp"

namespace ad::test {
namespace {

struct ConvCase {
  const char* name;
  Shape x, k;
  std::array<int, 2> padding, stride;
  bool bias;
};

const ConvCase kCases[] = {
    {"basic", {2, 3, 6, 5}, {4, 3, 3, 3}, {1, 1}, {1, 1}, true},
    {"asymmetric_pad_stride", {2, 2, 7, 8}, {3, 2, 3, 2}, {2, 0}, {2, 3}, true},
    {"stride_larger_than_kernel", {2, 2, 9, 9}, {2, 2, 2, 2}, {0, 1}, {3, 4}, true},
    {"kernel_covers_padded_input", {2, 2, 3, 4}, {3, 2, 5, 6}, {1, 1}, {1, 1}, true},
    {"one_by_one", {3, 4, 4, 5}, {2, 4, 1, 1}, {0, 0}, {1, 1}, true},
    {"one_by_one_strided_padded", {2, 3, 5, 5}, {2, 3, 1, 1}, {1, 2}, {2, 1}, true},
    {"large_padding", {1, 2, 3, 3}, {2, 2, 2, 2}, {3, 2}, {1, 2}, true},
    {"no_bias", {2, 3, 5, 6}, {5, 3, 3, 3}, {1, 0}, {2, 1}, false},
    {"non_square_kernel_batch4", {4, 1, 6, 7}, {2, 1, 2, 4}, {0, 2}, {1, 1}, true},
    // more input channels; 5x5 "same" padding with >= 4 interior rows (the direct kernel's
    // row and column classes); dJ/dx through the flipped kernel (stride 1) or col2im
    {"eight_channels_3x3", {2, 8, 4, 3}, {2, 8, 3, 3}, {1, 1}, {1, 1}, true},
    {"same_padding_5x5", {1, 3, 8, 5}, {1, 3, 5, 5}, {2, 2}, {1, 1}, true},
    {"eight_channels_strided", {1, 8, 5, 4}, {2, 8, 3, 3}, {1, 0}, {2, 1}, false},
    // padding at least the kernel on the column axis: the copy without padding columns
    {"padding_beyond_kernel", {2, 2, 5, 6}, {3, 2, 2, 3}, {4, 5}, {1, 2}, true},
    {"padding_beyond_kernel_stride1", {1, 3, 4, 5}, {2, 3, 3, 2}, {1, 3}, {1, 1}, true},
};

// y[n,o,i,j] = b[o] + sum_{c,p,q} k[o,c,p,q] x[n,c,i*sh+p-ph,j*sw+q-pw]: the definition, directly.
T64 conv_reference(const T64& x, const T64& k, const T64* b, std::array<int, 2> pad, std::array<int, 2> st) {
  const long N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  const long O = k.shape()[0], KH = k.shape()[2], KW = k.shape()[3];
  const long OH = (H + 2L * pad[0] - KH) / st[0] + 1, OW = (W + 2L * pad[1] - KW) / st[1] + 1;
  T64 y = xt::zeros<double>({N, O, OH, OW});
  for (long n = 0; n < N; ++n)
    for (long o = 0; o < O; ++o)
      for (long i = 0; i < OH; ++i)
        for (long j = 0; j < OW; ++j) {
          double s = b ? (*b)(o) : 0.0;
          for (long c = 0; c < C; ++c)
            for (long p = 0; p < KH; ++p)
              for (long q = 0; q < KW; ++q) {
                const long ih = i * st[0] + p - pad[0], iw = j * st[1] + q - pad[1];
                if (ih >= 0 && ih < H && iw >= 0 && iw < W) s += k(o, c, p, q) * x(n, c, ih, iw);
              }
          y(n, o, i, j) = s;
        }
  return y;
}

TEST(Conv2d, ForwardMatchesDirectDefinition) {
  uint64_t seed = 1;
  for (const ConvCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const T64 x = uniform(c.x, seed++), k = uniform(c.k, seed++), b = uniform({c.k[0]}, seed++);
    Tape<double> tape;
    const Value y = conv2d(tape, tape.input(x), tape.input(k), c.bias ? tape.input(b) : Value{},
                           {.padding = c.padding, .stride = c.stride});
    EXPECT_TRUE(all_close(tape.value(y), conv_reference(x, k, c.bias ? &b : nullptr, c.padding, c.stride), 1e-12, 1e-13));
  }
}

// The direct plans are built once per geometry and kept (ops/conv2d.cpp, direct_plan):
// geometries that differ from one base in one parameter each, alternating with the
// base, must each get their own plan. Float (the plans of every kernel variant's lanes)
// against the definition; a plan reused for the wrong geometry misplaces whole rows.
TEST(Conv2d, GeometriesDifferingInOneParameterGetTheirOwnPlans) {
  struct Geometry {
    Shape x, k;
    std::array<int, 2> padding, stride;
  };
  const Geometry base{{2, 3, 7, 6}, {4, 3, 3, 3}, {1, 1}, {1, 1}};
  const Geometry variants[] = {
      {{2, 2, 7, 6}, {4, 2, 3, 3}, {1, 1}, {1, 1}},  // C
      {{2, 3, 8, 6}, {4, 3, 3, 3}, {1, 1}, {1, 1}},  // H
      {{2, 3, 7, 5}, {4, 3, 3, 3}, {1, 1}, {1, 1}},  // W
      {{2, 3, 7, 6}, {5, 3, 3, 3}, {1, 1}, {1, 1}},  // C_out
      {{2, 3, 7, 6}, {4, 3, 2, 3}, {1, 1}, {1, 1}},  // KH
      {{2, 3, 7, 6}, {4, 3, 3, 2}, {1, 1}, {1, 1}},  // KW
      {{2, 3, 7, 6}, {4, 3, 3, 3}, {1, 1}, {2, 1}},  // stride rows
      {{2, 3, 7, 6}, {4, 3, 3, 3}, {1, 1}, {1, 2}},  // stride columns
      {{2, 3, 7, 6}, {4, 3, 3, 3}, {2, 1}, {1, 1}},  // padding rows
      {{2, 3, 7, 6}, {4, 3, 3, 3}, {1, 2}, {1, 1}},  // padding columns
  };
  uint64_t seed = 900;
  auto check = [&](const Geometry& g, std::size_t i) {
    SCOPED_TRACE(fmt::format("variant {} (or the base after it)", i));
    const T64 x = uniform(g.x, seed++), k = uniform(g.k, seed++);
    Tape<float> t;
    const Value y = conv2d(t, t.input(xt::cast<float>(x)), t.input(xt::cast<float>(k)), Value{},
                           {.padding = g.padding, .stride = g.stride});
    const T64 exact = conv_reference(x, k, nullptr, g.padding, g.stride);
    EXPECT_TRUE(all_close(xt::cast<double>(t.value(y)), exact, 1e-5, 1e-5));
  };
  for (int round = 0; round < 2; ++round)
    for (std::size_t i = 0; i < std::size(variants); ++i) {
      check(base, i);
      check(variants[i], i);
    }
}

TEST(Conv2d, VjpMatchesFiniteDifferencesInEveryGeometry) {
  uint64_t seed = 100;
  for (const ConvCase& c : kCases) {
    SCOPED_TRACE(c.name);
    std::vector<T64> in = {uniform(c.x, seed++), uniform(c.k, seed++)};
    std::vector<std::string> names = {"x", "k"};
    if (c.bias) in.push_back(uniform({c.k[0]}, seed++)), names.push_back("b");
    const Conv2dOptions opt{.padding = c.padding, .stride = c.stride};
    auto f = [&](Tape<double>& t, const std::vector<Value>& v) {
      return conv2d(t, v[0], v[1], c.bias ? v[2] : Value{}, opt);
    };
    EXPECT_GRADCHECK(f, in, names);
  }
}

TEST(Conv2d, VjpAddsWhenTheInputFeedsTwoConvolutions) {
  // y = conv(x, k1) + conv(x, k2): dJ/dx must hold both contributions.
  const std::vector<T64> in = {uniform({2, 2, 5, 5}, 7), uniform({3, 2, 3, 3}, 8), uniform({3, 2, 3, 3}, 9)};
  auto f = [](Tape<double>& t, const std::vector<Value>& v) {
    const Conv2dOptions opt{.padding = {1, 1}, .stride = {1, 1}};
    return add(t, conv2d(t, v[0], v[1], Value{}, opt), conv2d(t, v[0], v[2], Value{}, opt));
  };
  EXPECT_GRADCHECK(f, in, (std::vector<std::string>{"x", "k1", "k2"}));
}

// The float kernels (16-channel register tiles, 8x8 transposes) against double in
// every geometry above, with the case's C_out and with 19 output channels (a whole
// tile, a whole 8-block and a partial one): the value and every gradient, x included.
TEST(Conv2d, FloatPathAgreesWithDoubleInEveryGeometry) {
  uint64_t seed = 300;
  for (const ConvCase& c : kCases)
    for (const std::size_t c_out : {c.k[0], std::size_t{19}}) {
      SCOPED_TRACE(fmt::format("{}, C_out {}", c.name, c_out));
      const Shape ks{c_out, c.k[1], c.k[2], c.k[3]};
      const T64 x = uniform(c.x, seed++), k = uniform(ks, seed++), b = uniform({c_out}, seed++);
      const Conv2dOptions opt{.padding = c.padding, .stride = c.stride};
      auto run = [&](auto zero) {
        using F = decltype(zero);
        Tape<F> t;
        Parameter<F> px("x", xt::cast<F>(x)), pk("k", xt::cast<F>(k)), pb("b", xt::cast<F>(b));
        const Value y = conv2d(t, t.param(px), t.param(pk), c.bias ? t.param(pb) : Value{}, opt);
        t.backward(y, xt::cast<F>(uniform(t.shape(y), 5)));
        return std::vector<T64>{xt::cast<double>(t.value(y)), xt::cast<double>(px.grad), xt::cast<double>(pk.grad),
                                xt::cast<double>(pb.grad)};
      };
      const std::vector<T64> d = run(0.0), f = run(0.0f);
      const char* what[] = {"y", "dJ/dx", "dJ/dk", "dJ/db"};
      for (std::size_t i = 0; i < d.size(); ++i) EXPECT_TRUE(all_close(f[i], d[i], 1e-4, 1e-4)) << what[i];
    }
}

TEST(Conv2d, FloatPathAgreesWithDouble) {
  const T64 x = uniform({3, 2, 8, 8}, 3), k = uniform({4, 2, 3, 3}, 4), b = uniform({4}, 5);
  Tape<double> td;
  Parameter<double> kd("k", k), bd("b", b);
  const Value yd = conv2d(td, td.input(x), td.param(kd), td.param(bd), {.padding = {1, 1}, .stride = {2, 1}});
  td.backward(sum(td, yd));
  Tape<float> tf;
  Parameter<float> kf("k", xt::cast<float>(k)), bf("b", xt::cast<float>(b));
  const Value yf = conv2d(tf, tf.input(xt::cast<float>(x)), tf.param(kf), tf.param(bf), {.padding = {1, 1}, .stride = {2, 1}});
  tf.backward(sum(tf, yf));
  EXPECT_TRUE(all_close(xt::cast<double>(tf.value(yf)), td.value(yd), 1e-5, 1e-5));
  EXPECT_TRUE(all_close(xt::cast<double>(kf.grad), kd.grad, 1e-5, 1e-4));
  EXPECT_TRUE(all_close(xt::cast<double>(bf.grad), bd.grad, 1e-5, 1e-4));
}

// ref-CNN's two convolutions in float, where a register tile holds 16 channels and
// results are transposed in 8x8 blocks (double: 8 channels, scalar transposes), with
// channel counts that leave partial tiles and blocks: float against double, value and
// every gradient.
TEST(Conv2d, FloatPathAgreesWithDoubleAtRefCnnShapes) {
  struct Layer {
    Shape x, k;
  };
  for (const Layer& l : {Layer{{3, 1, 28, 28}, {16, 1, 5, 5}}, Layer{{3, 16, 14, 14}, {32, 16, 5, 5}},
                         Layer{{2, 16, 14, 14}, {20, 16, 5, 5}}, Layer{{2, 2, 13, 11}, {17, 2, 5, 5}}}) {
    SCOPED_TRACE(shape_str(l.k));
    const T64 x = uniform(l.x, 11), k = uniform(l.k, 12), b = uniform({l.k[0]}, 13);
    const T64 g = uniform({l.x[0], l.k[0], l.x[2], l.x[3]}, 14);
    const Conv2dOptions opt{.padding = {2, 2}};
    Tape<double> td;
    Parameter<double> xd("x", x), kd("k", k), bd("b", b);
    const Value yd = conv2d(td, td.param(xd), td.param(kd), td.param(bd), opt);
    td.backward(yd, g);
    Tape<float> tf;
    Parameter<float> xf("x", xt::cast<float>(x)), kf("k", xt::cast<float>(k)), bf("b", xt::cast<float>(b));
    const Value yf = conv2d(tf, tf.param(xf), tf.param(kf), tf.param(bf), opt);
    tf.backward(yf, xt::cast<float>(g));
    EXPECT_TRUE(all_close(xt::cast<double>(tf.value(yf)), td.value(yd), 1e-4, 1e-4));
    EXPECT_TRUE(all_close(xt::cast<double>(xf.grad), xd.grad, 1e-4, 1e-4));
    EXPECT_TRUE(all_close(xt::cast<double>(kf.grad), kd.grad, 1e-4, 1e-3));
    EXPECT_TRUE(all_close(xt::cast<double>(bf.grad), bd.grad, 1e-4, 1e-3));
  }
}

// The padded copy of the input grew with the padding, not with the output: padding =
// stride = INT_MAX on a tiny input (a 3x3 output) asked for 16 GB, 2^26 for 0.5 GB.
// Under a cap of 64 MB on any one allocation, the forward and every gradient run and
// match the definition and finite differences.
std::atomic<std::size_t> g_allocation_cap{0};

}  // namespace
}  // namespace ad::test

// (noinline: inlined into callers, free() on what operator new returned makes GCC warn.)
[[gnu::noinline]] void* operator new(std::size_t n) {
  const std::size_t cap = ad::test::g_allocation_cap.load(std::memory_order_relaxed);
  if (cap != 0 && n > cap) throw std::bad_alloc();
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace ad::test {
namespace {

TEST(Conv2d, MemoryFollowsTheOutputNotThePadding) {
  struct Cap {
    Cap() { g_allocation_cap = std::size_t{64} << 20; }
    ~Cap() { g_allocation_cap = 0; }
  };
  for (const int pad : {std::numeric_limits<int>::max(), 1 << 26, 1000}) {
    SCOPED_TRACE(pad);
    const T64 x = uniform({2, 3, 2, 2}, 1), k = uniform({4, 3, 2, 2}, 2), b = uniform({4}, 3);
    const Conv2dOptions opt{.padding = {pad, pad}, .stride = {pad, pad}};
    const Cap cap;
    Tape<double> t;
    Value y;
    ASSERT_NO_THROW(y = conv2d(t, t.input(x), t.input(k), t.input(b), opt));
    ASSERT_EQ(t.shape(y), (Shape{2, 4, 3, 3}));
    EXPECT_TRUE(all_close(t.value(y), conv_reference(x, k, &b, opt.padding, opt.stride), 1e-12, 1e-13));
    auto f = [&](Tape<double>& tt, const std::vector<Value>& v) { return conv2d(tt, v[0], v[1], v[2], opt); };
    EXPECT_GRADCHECK(f, (std::vector<T64>{x, k, b}), (std::vector<std::string>{"x", "k", "b"}));
    Tape<float> tf;  // the float kernels too
    Parameter<float> kf("k", xt::cast<float>(k));
    const Value yf = conv2d(tf, tf.input(xt::cast<float>(x)), tf.param(kf), tf.input(xt::cast<float>(b)), opt);
    EXPECT_NO_THROW(tf.backward(sum(tf, yf)));
    EXPECT_TRUE(all_close(xt::cast<double>(tf.value(yf)), conv_reference(x, k, &b, opt.padding, opt.stride), 1e-5, 1e-5));
  }
}

// An empty batch (N = 0), as PyTorch accepts it: an empty output; backward adds
// nothing to the kernel and bias gradients.
TEST(Conv2d, AnEmptyBatchGivesAnEmptyOutput) {
  for (const Conv2dOptions& opt : {Conv2dOptions{}, Conv2dOptions{.padding = {1, 2}, .stride = {2, 1}}}) {
    for (const std::size_t kh : {std::size_t{1}, std::size_t{3}}) {
      Tape<float> t;
      Parameter<float> x("x", Tensor<float>(Shape{0, 3, 5, 5})), k("k", xt::cast<float>(uniform({4, 3, kh, kh}, 1))),
          b("b", xt::cast<float>(uniform({4}, 2)));
      const Value y = conv2d(t, t.param(x), t.param(k), t.param(b), opt);
      EXPECT_EQ(t.shape(y)[0], 0u);
      EXPECT_EQ(t.shape(y)[1], 4u);
      t.backward(y, Tensor<float>(t.shape(y)));
      EXPECT_EQ(k.grad, xt::zeros<float>(k.value.shape()));
      EXPECT_EQ(b.grad, xt::zeros<float>({4}));
    }
  }
}

// Appendix A: A (3,4) convolved with beta (2,2), padding (1,1), stride (1,2) gives
// Z (4,3); dz32/dbeta21 = a32 and dz32/dA23 = beta12 (1-based indices as in the text).
TEST(Conv2d, DocumentAppendixAExample) {
  T64 A = xt::zeros<double>({1, 1, 3, 4}), beta = xt::zeros<double>({1, 1, 2, 2});
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) A(0, 0, r, c) = 10.0 * (r + 1) + (c + 1);  // a_rc = "rc"
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 2; ++c) beta(0, 0, r, c) = 0.1 * (r + 1) + 0.01 * (c + 1);
  Tape<double> tape;
  Parameter<double> pa("A", A), pb("beta", beta);
  const Value z = conv2d(tape, tape.param(pa), tape.param(pb), Value{}, {.padding = {1, 1}, .stride = {1, 2}});
  ASSERT_EQ(tape.shape(z), (Shape{1, 1, 4, 3}));
  auto a = [&](int r, int c) { return A(0, 0, r - 1, c - 1); };
  auto b = [&](int r, int c) { return beta(0, 0, r - 1, c - 1); };
  // z32 = a22 b11 + a23 b12 + a32 b21 + a33 b22 (rep.2)
  EXPECT_DOUBLE_EQ(tape.value(z)(0, 0, 2, 1), a(2, 2) * b(1, 1) + a(2, 3) * b(1, 2) + a(3, 2) * b(2, 1) + a(3, 3) * b(2, 2));
  EXPECT_DOUBLE_EQ(tape.value(z)(0, 0, 0, 0), a(1, 1) * b(2, 2));  // z11: only a11 meets beta22
  // Seed dJ/dZ = e_32, so the gradients are row z32 of the Jacobians eq. a1-1 / a2-1.
  T64 seed = xt::zeros<double>({1, 1, 4, 3});
  seed(0, 0, 2, 1) = 1.0;
  tape.backward(z, seed);
  EXPECT_DOUBLE_EQ(pb.grad(0, 0, 1, 0), a(3, 2));  // dz32/dbeta21 = a32
  EXPECT_DOUBLE_EQ(pa.grad(0, 0, 1, 2), b(1, 2));  // dz32/dA23 = beta12
  EXPECT_DOUBLE_EQ(pa.grad(0, 0, 0, 0), 0.0);      // a11 is not in z32's window
}

TEST(Conv2d, RejectsBadArgumentsWithTheShapesAndTheRule) {
  Tape<double> t;
  const Value x = t.input(uniform({1, 3, 28, 28}, 1)), k = t.input(uniform({8, 1, 3, 3}, 2));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k, Value{}); },
                                 {"conv2d: input (1,3,28,28) and kernel (8,1,3,3) disagree on C_in (3 vs 1)"}));
  const Value k3 = t.input(uniform({8, 3, 3, 3}, 3));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, t.input(uniform({3, 28, 28}, 4)), k3, Value{}); },
                                 {"conv2d", "input (3,28,28)", "rank 4"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k3, t.input(uniform({5}, 5))); },
                                 {"conv2d", "bias (5)", "kernel (8,3,3,3)", "C_out (5 vs 8)"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k3, Value{}, {.padding = {0, 0}, .stride = {0, 1}}); },
                                 {"conv2d", "stride (0,1)", ">= 1"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, k3, Value{}, {.padding = {-1, 0}}); },
                                 {"conv2d", "padding (-1,0)", ">= 0"}));
  const Value big = t.input(uniform({8, 3, 31, 3}, 6));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, x, big, Value{}, {.padding = {1, 1}}); },
                                 {"conv2d", "kernel (31,3)", "larger than input (1,3,28,28)", "KH 31 > H + 2*1 = 30"}));
  EXPECT_TRUE(throws_shape_error([&] { conv2d(t, t.input(T64(Shape{1, 3, 0, 28})), k3, Value{}); },
                                 {"conv2d", "input (1,3,0,28)", "empty along axis 2"}));
}

}  // namespace
}  // namespace ad::test
