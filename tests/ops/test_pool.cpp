// Pooling: VJPs against finite differences over many geometries (inputs without
// ties), the design document's appendix B example, both padding semantics, errors.
#include <cmath>
#include <limits>
#include <random>

#include "test_util.hpp"

namespace ad::test::test_pool {
namespace {

struct PoolCase {
  const char* name;
  Shape x;
  std::array<int, 2> window, stride, padding;
};

const PoolCase kCases[] = {
    {"basic", {2, 3, 6, 6}, {2, 2}, {2, 2}, {0, 0}},
    {"asymmetric", {2, 2, 7, 9}, {3, 2}, {1, 2}, {1, 1}},
    {"stride_larger_than_window", {1, 2, 9, 10}, {2, 2}, {3, 4}, {1, 0}},
    {"overlapping", {2, 1, 5, 5}, {3, 3}, {1, 1}, {1, 1}},
    {"window_covers_padded_input", {2, 2, 3, 4}, {5, 5}, {1, 1}, {1, 1}},
    {"one_by_one", {2, 3, 4, 4}, {1, 1}, {2, 1}, {0, 0}},
    {"large_padding", {1, 2, 3, 3}, {4, 4}, {1, 2}, {3, 3}},
    // the 2x2 / stride 2 window of the fast path, but with padding: the general loop
    {"two_by_two_padded", {2, 3, 5, 7}, {2, 2}, {2, 2}, {1, 1}},
    {"two_by_two_padded_rows", {1, 2, 6, 6}, {2, 2}, {2, 2}, {1, 0}},
};

// The definition, directly: y[n,c,i,j] over the window taps x[n,c,i*sh+p-ph,j*sw+q-pw],
// padding as zeros (avg: counted in the mean; max: taking part with Zero, skipped with
// NegInf). For max pooling also the switch: the flat index h*W+w of the first winner in
// row-major window order (-1 for a padding zero), where a NaN wins and keeps the window.
struct PoolRef {
  T64 y;
  std::vector<int32_t> switches;
};
PoolRef pool_reference(const T64& x, const PoolCase& c, bool max, MaxPoolPadding mode) {
  const long N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  const long KH = c.window[0], KW = c.window[1];
  const long OH = (H + 2 * c.padding[0] - KH) / c.stride[0] + 1, OW = (W + 2 * c.padding[1] - KW) / c.stride[1] + 1;
  PoolRef r{xt::zeros<double>({N, C, OH, OW}), {}};
  for (long n = 0; n < N; ++n)
    for (long ch = 0; ch < C; ++ch)
      for (long i = 0; i < OH; ++i)
        for (long j = 0; j < OW; ++j) {
          double sum = 0, best = 0;
          long where = -2;  // -2: nothing yet
          for (long p = 0; p < KH; ++p)
            for (long q = 0; q < KW; ++q) {
              const long h = i * c.stride[0] + p - c.padding[0], w = j * c.stride[1] + q - c.padding[1];
              const bool in = h >= 0 && h < H && w >= 0 && w < W;
              const double v = in ? x(n, ch, h, w) : 0.0;
              sum += v;
              if (!in && mode == MaxPoolPadding::NegInf) continue;
              if (where != -2 && std::isnan(best)) continue;  // a NaN already won
              if (where == -2 || v > best || std::isnan(v)) best = v, where = in ? h * W + w : -1;
            }
          r.y(n, ch, i, j) = max ? best : sum / static_cast<double>(KH * KW);
          r.switches.push_back(static_cast<int32_t>(where));
        }
  return r;
}

bool same_or_both_nan(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

// max_pool2d on x in element type F: its output (as double) and its saved switches.
template <class F>
std::pair<T64, std::vector<int32_t>> run_max_pool(const T64& x, const Pool2dOptions& opt) {
  Tape<F> t;
  Parameter<F> p("x", xt::cast<F>(x));
  const Value y = max_pool2d(t, t.param(p), opt);
  return {xt::cast<double>(t.value(y)), t.nodes().back().saved_index};
}

// Forward of both pools against the definition in every geometry, both padding modes,
// float and double; max pooling's switches too.
TEST(Pool2d, ForwardMatchesTheDefinitionInEveryGeometry) {
  uint64_t seed = 40;
  for (const PoolCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const T64 x = uniform(c.x, seed++);
    const Pool2dOptions avg{.window = c.window, .stride = c.stride, .padding = c.padding};
    Tape<double> t;
    EXPECT_TRUE(all_close(t.value(avg_pool2d(t, t.input(x), avg)), pool_reference(x, c, false, {}).y, 1e-14, 1e-15));
    Tape<float> tf;
    EXPECT_TRUE(all_close(xt::cast<double>(tf.value(avg_pool2d(tf, tf.input(xt::cast<float>(x)), avg))),
                          pool_reference(x, c, false, {}).y, 1e-6, 1e-6));
    for (MaxPoolPadding mode : {MaxPoolPadding::NegInf, MaxPoolPadding::Zero}) {
      if (mode == MaxPoolPadding::NegInf && (c.padding[0] >= c.window[0] || c.padding[1] >= c.window[1])) continue;
      SCOPED_TRACE(mode == MaxPoolPadding::Zero ? "zero padding" : "-inf padding");
      const Pool2dOptions opt{.window = c.window, .stride = c.stride, .padding = c.padding, .max_padding = mode};
      const T64 xf = xt::cast<double>(xt::cast<float>(x));  // what the float tape holds
      for (const auto& [in, got] : {std::pair{x, run_max_pool<double>(x, opt)}, std::pair{xf, run_max_pool<float>(xf, opt)}}) {
        const PoolRef want = pool_reference(in, c, true, mode);
        EXPECT_TRUE(all_close(got.first, want.y, 0, 0));
        EXPECT_EQ(got.second, want.switches);
      }
    }
  }
}

// Ties (values from {-1, 0, 1}: windows tie among themselves and with padding zeros)
// and NaNs, on every path, the general loop included: the first winner in row-major
// window order, the first NaN, exactly as the definition says.
TEST(MaxPool2d, TiesAndNaNsPickTheFirstWinnerInEveryGeometry) {
  uint64_t seed = 60;
  for (const PoolCase& c : kCases)
    for (const bool with_nan : {false, true})
      for (MaxPoolPadding mode : {MaxPoolPadding::NegInf, MaxPoolPadding::Zero}) {
        if (mode == MaxPoolPadding::NegInf && (c.padding[0] >= c.window[0] || c.padding[1] >= c.window[1])) continue;
        SCOPED_TRACE(fmt::format("{} {}{}", c.name, mode == MaxPoolPadding::Zero ? "zero padding" : "-inf padding",
                                 with_nan ? ", NaNs" : ""));
        T64 x = uniform(c.x, seed++);
        std::mt19937_64 rng(seed);
        for (double& e : x) e = std::round(e);  // -1, 0, 1: ties everywhere
        if (with_nan)
          for (double& e : x)
            if (rng() % 5 == 0) e = std::numeric_limits<double>::quiet_NaN();
        const Pool2dOptions opt{.window = c.window, .stride = c.stride, .padding = c.padding, .max_padding = mode};
        const PoolRef want = pool_reference(x, c, true, mode);
        for (const auto& [y, sw] : {run_max_pool<double>(x, opt), run_max_pool<float>(x, opt)}) {
          ASSERT_EQ(y.size(), want.y.size());
          for (std::size_t i = 0; i < y.size(); ++i)
            EXPECT_TRUE(same_or_both_nan(y.data()[i], want.y.data()[i]))
                << "output " << i << ": " << y.data()[i] << " vs " << want.y.data()[i];
          EXPECT_EQ(sw, want.switches);
        }
      }
}

TEST(AvgPool2d, VjpMatchesFiniteDifferencesInEveryGeometry) {
  uint64_t seed = 10;
  for (const PoolCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const Pool2dOptions opt{.window = c.window, .stride = c.stride, .padding = c.padding};
    auto f = [&](Tape<double>& t, const std::vector<Value>& v) { return avg_pool2d(t, v[0], opt); };
    EXPECT_GRADCHECK(f, std::vector<T64>{uniform(c.x, seed++)}, std::vector<std::string>{"x"});
  }
}

// The float kernels (the 2x2 fast path is vectorised for float) against double, value
// and dJ/dx, in every geometry, both pools and both padding modes.
TEST(Pool2d, FloatPathAgreesWithDoubleInEveryGeometry) {
  uint64_t seed = 80;
  for (const PoolCase& c : kCases)
    for (int kind = 0; kind < 3; ++kind) {  // avg, max -inf padding, max zero padding
      const MaxPoolPadding mode = kind == 2 ? MaxPoolPadding::Zero : MaxPoolPadding::NegInf;
      if (kind == 1 && (c.padding[0] >= c.window[0] || c.padding[1] >= c.window[1])) continue;
      SCOPED_TRACE(fmt::format("{} {}", c.name, kind == 0 ? "avg" : kind == 1 ? "max, -inf padding" : "max, zero padding"));
      const Pool2dOptions opt{.window = c.window, .stride = c.stride, .padding = c.padding, .max_padding = mode};
      const T64 x = distinct(c.x, seed++);  // no ties: float and double pick the same winners
      auto run = [&](auto zero) {
        using F = decltype(zero);
        Tape<F> t;
        Parameter<F> p("x", xt::cast<F>(x));
        const Value y = kind == 0 ? avg_pool2d(t, t.param(p), opt) : max_pool2d(t, t.param(p), opt);
        t.backward(y, xt::cast<F>(uniform(t.shape(y), 7)));
        return std::pair{T64(xt::cast<double>(t.value(y))), T64(xt::cast<double>(p.grad))};
      };
      const auto [yd, gd] = run(0.0);
      const auto [yf, gf] = run(0.0f);
      EXPECT_TRUE(all_close(yf, yd, 1e-6, 1e-6));
      EXPECT_TRUE(all_close(gf, gd, 1e-6, 1e-6));
    }
}

// An empty batch (N = 0), as PyTorch accepts it: an empty output, and a backward that
// writes nothing.
TEST(Pool2d, AnEmptyBatchGivesAnEmptyOutput) {
  for (const bool max : {false, true}) {
    SCOPED_TRACE(max ? "max" : "avg");
    Tape<double> t;
    Parameter<double> p("x", T64(Shape{0, 3, 6, 6}));
    for (const Pool2dOptions& opt : {Pool2dOptions{}, Pool2dOptions{.window = {3, 3}, .stride = {1, 2}, .padding = {1, 1}}}) {
      const Value y = max ? max_pool2d(t, t.param(p), opt) : avg_pool2d(t, t.param(p), opt);
      EXPECT_EQ(t.shape(y)[0], 0u);
      EXPECT_EQ(t.shape(y)[1], 3u);
      t.backward(y, T64(t.shape(y)), {.retain_graph = true});
      EXPECT_EQ(p.grad.size(), 0u);
    }
  }
}

TEST(AvgPool2d, PaddingZerosCountInTheMean) {
  // The document's P has every entry 1/(h_l w_l): a corner window with three padding
  // taps averages one value over 4.
  Tape<double> t;
  const T64 x = {{{{4.0, 8.0}, {12.0, 16.0}}}};
  const Value y = avg_pool2d(t, t.input(x), {.window = {2, 2}, .stride = {1, 1}, .padding = {1, 1}});
  ASSERT_EQ(t.shape(y), (Shape{1, 1, 3, 3}));
  EXPECT_DOUBLE_EQ(t.value(y)(0, 0, 0, 0), 1.0);
  EXPECT_DOUBLE_EQ(t.value(y)(0, 0, 1, 1), 10.0);
}

TEST(MaxPool2d, VjpMatchesFiniteDifferencesInEveryGeometry) {
  uint64_t seed = 20;
  for (const PoolCase& c : kCases)
    for (MaxPoolPadding mode : {MaxPoolPadding::NegInf, MaxPoolPadding::Zero}) {
      if (mode == MaxPoolPadding::NegInf && (c.padding[0] >= c.window[0] || c.padding[1] >= c.window[1])) continue;
      SCOPED_TRACE(fmt::format("{} {}", c.name, mode == MaxPoolPadding::Zero ? "zero padding" : "-inf padding"));
      const Pool2dOptions opt{.window = c.window, .stride = c.stride, .padding = c.padding, .max_padding = mode};
      auto f = [&](Tape<double>& t, const std::vector<Value>& v) { return max_pool2d(t, v[0], opt); };
      // distinct values at least 2/size apart, none within eps of the padding's 0
      T64 x = distinct(c.x, seed++);
      for (double& e : x) e += e >= 0 ? 0.01 : -0.01;
      EXPECT_GRADCHECK(f, std::vector<T64>{x}, std::vector<std::string>{"x"});
    }
}

TEST(MaxPool2d, VjpAddsWhenTheInputFeedsTwoPools) {
  auto f = [](Tape<double>& t, const std::vector<Value>& v) {
    const Value a = max_pool2d(t, v[0], {.window = {2, 2}, .stride = {2, 2}});
    const Value b = max_pool2d(t, v[0], {.window = {2, 2}, .stride = {2, 2}});
    return add(t, a, b);
  };
  EXPECT_GRADCHECK(f, std::vector<T64>{distinct({2, 2, 4, 4}, 3)}, std::vector<std::string>{"x"});
}

// The 2x2 / stride 2 window has its own branch-free loop: the winner must still be the
// first in row-major window order on ties, and the first NaN (which propagates).
TEST(MaxPool2d, TwoByTwoWindowPicksTheFirstWinnerAndPropagatesNaN) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const bool use_float : {false, true}) {
    SCOPED_TRACE(use_float ? "float" : "double");
    // windows: all tied | max twice (positions 1 and 3) | NaN at 2 and 3 | max at 3 | -inf and NaN first,
    // the five repeated (mirrored) so that 8 outputs in a row take the vector loop and 2 the tail
    constexpr int kOut = 10;
    const double inf = std::numeric_limits<double>::infinity();
    const double row0[10] = {1, 1, 2, 5, 0, 4, -1, -2, -inf, nan}, row1[10] = {1, 1, 3, 5, nan, nan, -3, 7, 0, 0};
    T64 x = xt::zeros<double>({1, 1, 2, 2 * kOut});
    for (int c = 0; c < 10; ++c) {
      x(0, 0, 0, c) = x(0, 0, 0, 10 + c) = row0[c];
      x(0, 0, 1, c) = x(0, 0, 1, 10 + c) = row1[c];
    }
    double want_y[kOut];
    int want_winner[kOut][2];  // (row, col) in x
    const double y5[5] = {1, 5, nan, 7, nan};
    const int w5[5][2] = {{0, 0}, {0, 3}, {1, 4}, {1, 7}, {0, 9}};
    for (int j = 0; j < kOut; ++j) {
      want_y[j] = y5[j % 5];
      want_winner[j][0] = w5[j % 5][0];
      want_winner[j][1] = w5[j % 5][1] + (j >= 5 ? 10 : 0);
    }
    auto check = [&](auto zero) {
      using F = decltype(zero);
      Tape<F> t;
      Parameter<F> p("x", xt::cast<F>(x));
      const Value y = max_pool2d(t, t.param(p), {.window = {2, 2}, .stride = {2, 2}});
      ASSERT_EQ(t.shape(y), (Shape{1, 1, 1, kOut}));
      Tensor<F> seed = xt::zeros<F>({1, 1, 1, kOut});
      for (int j = 0; j < kOut; ++j) seed(0, 0, 0, j) = static_cast<F>(j + 1);
      t.backward(y, seed);
      for (int j = 0; j < kOut; ++j) {
        const double v = static_cast<double>(t.value(y)(0, 0, 0, j));
        if (std::isnan(want_y[j])) EXPECT_TRUE(std::isnan(v)) << "window " << j;
        else EXPECT_EQ(v, want_y[j]) << "window " << j;
        for (int r = 0; r < 2; ++r)
          for (int c = 2 * j; c < 2 * j + 2; ++c) {
            const bool winner = want_winner[j][0] == r && want_winner[j][1] == c;
            EXPECT_EQ(static_cast<double>(p.grad(0, 0, r, c)), winner ? j + 1.0 : 0.0) << "x[" << r << "," << c << "]";
          }
      }
    };
    if (use_float) check(0.0f);
    else check(0.0);
  }
}

// Float rows of 7 and 14 outputs take the vector loop's short-row path (reading past
// the row, lanes dropped) except at the very end of the tensor (a padded copy): value
// and switch (through the gradient) against the scalar double path.
TEST(MaxPool2d, TwoByTwoFloatAgreesWithDoubleOnShortRows) {
  for (const Shape& xs : {Shape{2, 3, 14, 14}, Shape{3, 2, 28, 28}, Shape{1, 2, 5, 9}}) {
    SCOPED_TRACE(shape_str(xs));
    const T64 x = distinct(xs, 31), g = uniform({xs[0], xs[1], xs[2] / 2, xs[3] / 2}, 32);
    Tape<double> td;
    Parameter<double> pd("x", x);
    const Value yd = max_pool2d(td, td.param(pd), {.window = {2, 2}, .stride = {2, 2}});
    td.backward(yd, g);
    Tape<float> tf;
    Parameter<float> pf("x", xt::cast<float>(x));
    const Value yf = max_pool2d(tf, tf.param(pf), {.window = {2, 2}, .stride = {2, 2}});
    tf.backward(yf, xt::cast<float>(g));
    EXPECT_TRUE(all_close(xt::cast<double>(tf.value(yf)), td.value(yd), 1e-6, 1e-7));
    EXPECT_TRUE(all_close(xt::cast<double>(pf.grad), pd.grad, 1e-6, 1e-7));
  }
}

// Appendix B: I (3,4), window (3,2), padding (1,1), stride (1,2) gives A (3,3), with
// the padding zeros taking part: A21 = max{0, I11, I21, I31}, etc.
TEST(MaxPool2d, DocumentAppendixBExample) {
  const Pool2dOptions doc{.window = {3, 2}, .stride = {1, 2}, .padding = {1, 1}, .max_padding = MaxPoolPadding::Zero};
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const T64 x = distinct({1, 1, 3, 4}, seed);
    auto I = [&](int r, int c) { return x(0, 0, r - 1, c - 1); };
    auto mx = [](std::initializer_list<double> v) { return std::max(v); };
    const double expected[3][3] = {
        {mx({0, I(1, 1), I(2, 1)}), mx({0, I(1, 2), I(2, 2), I(1, 3), I(2, 3)}), mx({0, I(1, 4), I(2, 4)})},
        {mx({0, I(1, 1), I(2, 1), I(3, 1)}), mx({I(1, 2), I(2, 2), I(3, 2), I(1, 3), I(2, 3), I(3, 3)}),
         mx({0, I(1, 4), I(2, 4), I(3, 4)})},
        {mx({0, I(2, 1), I(3, 1)}), mx({0, I(2, 2), I(2, 3), I(3, 2), I(3, 3)}), mx({0, I(2, 4), I(3, 4)})}};
    Tape<double> t;
    Parameter<double> p("I", x);
    const Value a = max_pool2d(t, t.param(p), doc);
    ASSERT_EQ(t.shape(a), (Shape{1, 1, 3, 3}));
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) EXPECT_EQ(t.value(a)(0, 0, i, j), expected[i][j]) << "A" << i + 1 << j + 1;
    // The mask (eq. b-1): seeding dJ/dA21 = 1 sends 1 to the winner of A21's window,
    // or nowhere when a padding zero won.
    T64 seedg = xt::zeros<double>({1, 1, 3, 3});
    seedg(0, 0, 1, 0) = 1.0;
    t.backward(a, seedg);
    const double a21 = expected[1][0];
    for (int r = 1; r <= 3; ++r)
      for (int c = 1; c <= 4; ++c) {
        const bool winner = c == 1 && a21 != 0.0 && I(r, 1) == a21;
        EXPECT_EQ(p.grad(0, 0, r - 1, c - 1), winner ? 1.0 : 0.0) << "I" << r << c << " seed " << seed;
      }
  }
}

TEST(MaxPool2d, NegInfPaddingNeverWins) {
  Tape<double> t;
  const T64 x = {{{{-3.0, -1.0}, {-2.0, -4.0}}}};
  const Value y = max_pool2d(t, t.input(x), {.window = {2, 2}, .stride = {1, 1}, .padding = {1, 1}});
  EXPECT_DOUBLE_EQ(t.value(y)(0, 0, 0, 0), -3.0);  // PyTorch: padding is -inf
  const Value z = max_pool2d(t, t.input(x), {.window = {2, 2}, .stride = {1, 1}, .padding = {1, 1},
                                             .max_padding = MaxPoolPadding::Zero});
  EXPECT_DOUBLE_EQ(t.value(z)(0, 0, 0, 0), 0.0);  // the document: padding zeros compete
}

TEST(MaxPool2d, SavesTheSwitchesAsPlaneIndices) {
  Tape<double> t;
  Parameter<double> p("x", T64{{{{1.0, 5.0, 2.0, 0.0}, {3.0, 4.0, 9.0, 7.0}}}});
  max_pool2d(t, t.param(p), {.window = {2, 2}, .stride = {2, 2}});
  const auto& node = t.nodes().back();
  EXPECT_EQ(node.op, OpKind::MaxPool2d);
  EXPECT_EQ(node.saved_index, (std::vector<int32_t>{1, 6}));  // 5 at (0,1), 9 at (1,2)
}

TEST(Pool2d, RejectsBadArgumentsWithTheShapesAndTheRule) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 3, 6, 6}, 1));
  EXPECT_TRUE(throws_shape_error([&] { max_pool2d(t, t.input(uniform({3, 6, 6}, 2))); },
                                 {"max_pool2d", "input (3,6,6)", "rank 4"}));
  EXPECT_TRUE(throws_shape_error([&] { avg_pool2d(t, x, {.window = {2, 2}, .stride = {0, 2}}); },
                                 {"avg_pool2d", "stride (0,2)"}));
  EXPECT_TRUE(throws_shape_error([&] { avg_pool2d(t, x, {.window = {2, 2}, .stride = {2, 2}, .padding = {0, -1}}); },
                                 {"avg_pool2d", "padding (0,-1)"}));
  EXPECT_TRUE(throws_shape_error([&] { max_pool2d(t, x, {.window = {9, 2}, .stride = {1, 1}, .padding = {1, 0}}); },
                                 {"max_pool2d", "window (9,2)", "larger than input (2,3,6,6)", "KH 9 > H + 2*1 = 8"}));
  EXPECT_TRUE(throws_shape_error([&] { max_pool2d(t, x, {.window = {2, 2}, .stride = {1, 1}, .padding = {2, 0}}); },
                                 {"max_pool2d", "padding (2,0) must be smaller than the window (2,2)"}));
  EXPECT_TRUE(throws_shape_error([&] { avg_pool2d(t, x, {.window = {0, 2}}); }, {"avg_pool2d", "window (0,2)"}));
}

}  // namespace
}  // namespace ad::test::test_pool
