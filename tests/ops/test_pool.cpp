// Pooling: VJPs against finite differences over many geometries (inputs without
// ties), the design document's appendix B example, both padding semantics, errors.
#include <cmath>
#include <limits>

#include "test_util.hpp"

namespace ad::test {
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
};

TEST(AvgPool2d, VjpMatchesFiniteDifferencesInEveryGeometry) {
  uint64_t seed = 10;
  for (const PoolCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const Pool2dOptions opt{.window = c.window, .stride = c.stride, .padding = c.padding};
    auto f = [&](Tape<double>& t, const std::vector<Value>& v) { return avg_pool2d(t, v[0], opt); };
    EXPECT_GRADCHECK(f, std::vector<T64>{uniform(c.x, seed++)}, std::vector<std::string>{"x"});
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
}  // namespace ad::test
