// Jacobians by one VJP per output element, and the design document's matrices:
// appendix A's d_vZ/d_vbeta (eq. a1-1) and d_vZ/d_vA (eq. a2-1), appendix B's
// max-pooling mask d_vA/d_vI (eq. b-1), in numerator layout with the column-stacking vec.
#include "test_util.hpp"

namespace ad::test::test_jacobian {
namespace {

TEST(Jacobian, OfALinearMapIsItsMatrix) {
  const T64 x = uniform({1, 3}, 1), w = uniform({3, 2}, 2);
  const std::vector<T64> j = jacobians([](Tape<double>& t, const std::vector<Value>& v) { return linear(t, v[0], v[1], Value{}); },
                                       {x, w});
  ASSERT_EQ(j[0].shape(), (std::vector<std::size_t>{2, 3}));
  ASSERT_EQ(j[1].shape(), (std::vector<std::size_t>{2, 6}));
  for (std::size_t o = 0; o < 2; ++o)
    for (std::size_t i = 0; i < 3; ++i) {
      EXPECT_DOUBLE_EQ(j[0](o, i), w(i, o));  // dy_o/dx_i = W[i, o]
      for (std::size_t c = 0; c < 2; ++c) EXPECT_DOUBLE_EQ(j[1](o, i * 2 + c), c == o ? x(0, i) : 0.0);  // dy_o/dW[i,c]
    }
}

TEST(Jacobian, OfAnElementwiseOpIsDiagonal) {
  const T64 x = uniform({2, 2}, 3);
  const T64 j = jacobian([](Tape<double>& t, Value v) { return mul(t, v, v); }, x);
  for (std::size_t r = 0; r < 4; ++r)
    for (std::size_t c = 0; c < 4; ++c) EXPECT_DOUBLE_EQ(j(r, c), r == c ? 2 * x.data()[r] : 0.0);
}

TEST(Jacobian, VecStacksTheColumnsOfEachPlane) {
  // A (3,4) plane: element (r, c) = flat r*4 + c goes to c*3 + r.
  EXPECT_EQ(vec_position({3, 4}, 0), 0u);
  EXPECT_EQ(vec_position({3, 4}, 1), 3u);   // a12 follows a11, a21, a31
  EXPECT_EQ(vec_position({3, 4}, 4), 1u);   // a21
  EXPECT_EQ(vec_position({3, 4}, 6), 7u);   // a23: column 3, row 2
  EXPECT_EQ(vec_position({3, 4}, 11), 11u);
  // (N, C, H, W): planes in row-major order, each stacked by columns.
  EXPECT_EQ(vec_position({1, 2, 2, 3}, 6 + 1), 6u + 2u);
  EXPECT_EQ(vec_position({5}, 3), 3u);
  EXPECT_EQ(vec_position({}, 0), 0u);
  EXPECT_THROW(to_vec_layout(xt::zeros<double>({4, 5}), {2, 2}, {2, 3}), ShapeError);
}

// Appendix A: A (3,4) convolved with beta (2,2), padding (1,1), stride (1,2) gives Z
// (4,3), with z_pq = sum_{r,s} beta_rs a_{p-2+r, 2q-3+s} (1-based, a = 0 in the padding;
// e.g. z32 = a22 b11 + a23 b12 + a32 b21 + a33 b22, rep.2).
TEST(Jacobian, DocumentAppendixAConvolutionMatrices) {
  T64 A = xt::zeros<double>({1, 1, 3, 4}), beta = xt::zeros<double>({1, 1, 2, 2});
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) A(0, 0, r, c) = 10.0 * (r + 1) + (c + 1);  // a_rc = "rc"
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 2; ++c) beta(0, 0, r, c) = 0.1 * (r + 1) + 0.01 * (c + 1);
  auto a = [&](int r, int c) { return r >= 1 && r <= 3 && c >= 1 && c <= 4 ? A(0, 0, r - 1, c - 1) : 0.0; };
  auto b = [&](int r, int c) { return r >= 1 && r <= 2 && c >= 1 && c <= 2 ? beta(0, 0, r - 1, c - 1) : 0.0; };
  const std::vector<T64> j = vec_jacobians(
      [](Tape<double>& t, const std::vector<Value>& v) {
        return conv2d(t, v[0], v[1], Value{}, {.padding = {1, 1}, .stride = {1, 2}});
      },
      {A, beta});
  const T64& dZ_dA = j[0];
  const T64& dZ_dbeta = j[1];
  ASSERT_EQ(dZ_dbeta.shape(), (std::vector<std::size_t>{12, 4}));  // eq. a1-1: vZ (12) x vbeta (4)
  ASSERT_EQ(dZ_dA.shape(), (std::vector<std::size_t>{12, 12}));    // eq. a2-1: vZ (12) x vA (12)
  // 1-based positions in the document's vectors: vZ = [z11; z21; z31; z41; z12; ...].
  auto z = [](int p, int q) { return static_cast<std::size_t>((q - 1) * 4 + (p - 1)); };
  auto vb = [](int r, int s) { return static_cast<std::size_t>((s - 1) * 2 + (r - 1)); };
  auto vA = [](int k, int l) { return static_cast<std::size_t>((l - 1) * 3 + (k - 1)); };
  // The entries the text works out.
  EXPECT_EQ(dZ_dbeta(z(3, 2), vb(2, 1)), a(3, 2));  // dz32/dbeta21 = a32
  EXPECT_EQ(dZ_dA(z(3, 2), vA(2, 3)), b(1, 2));     // dz32/dA23 = beta12
  // Every entry: column beta_rs of eq. a1-1 is vec(A * dbeta/dbeta_rs) (eq. a1-3), column
  // A_kl of eq. a2-1 is vec(dA/dA_kl * beta) (eq. a2-3).
  for (int p = 1; p <= 4; ++p)
    for (int q = 1; q <= 3; ++q) {
      for (int r = 1; r <= 2; ++r)
        for (int s = 1; s <= 2; ++s)
          EXPECT_EQ(dZ_dbeta(z(p, q), vb(r, s)), a(p - 2 + r, 2 * q - 3 + s)) << "dz" << p << q << "/dbeta" << r << s;
      for (int k = 1; k <= 3; ++k)
        for (int l = 1; l <= 4; ++l)
          EXPECT_EQ(dZ_dA(z(p, q), vA(k, l)), b(k - p + 2, l - 2 * q + 3)) << "dz" << p << q << "/dA" << k << l;
    }
}

// Appendix B: I (3,4), window (3,2), padding (1,1), stride (1,2), the padding zeros
// competing (MaxPoolPadding::Zero), A (3,3). Each row A_pq of eq. b-1 has a single 1,
// at column j = (c-1) h_i + r of the winner I_rc, and no 1 when a padding zero wins.
TEST(Jacobian, DocumentAppendixBMaxPoolMask) {
  const Pool2dOptions doc{.window = {3, 2}, .stride = {1, 2}, .padding = {1, 1}, .max_padding = MaxPoolPadding::Zero};
  int rows_with_winner = 0, rows_won_by_padding = 0;
  for (uint64_t seed = 0; seed < 10; ++seed) {
    const T64 I = distinct({1, 1, 3, 4}, seed) + 0.05;  // distinct, none exactly 0
    const T64 mask = vec_jacobians([&](Tape<double>& t, const std::vector<Value>& v) { return max_pool2d(t, v[0], doc); },
                                   {I})[0];
    ASSERT_EQ(mask.shape(), (std::vector<std::size_t>{9, 12}));
    for (int p = 1; p <= 3; ++p)
      for (int q = 1; q <= 3; ++q) {
        // The window of A_pq: rows 1 + (p-1) - 1 .. +2, columns 1 + 2(q-1) - 1 .. +1 (eq. b-2.2).
        double best = -1e9;
        int win_r = 0, win_c = 0;  // 0: a padding zero
        for (int r = p - 1; r <= p + 1; ++r)
          for (int c = 2 * q - 2; c <= 2 * q - 1; ++c) {
            const bool in = r >= 1 && r <= 3 && c >= 1 && c <= 4;
            const double v = in ? I(0, 0, r - 1, c - 1) : 0.0;
            if (v > best) best = v, win_r = in ? r : 0, win_c = in ? c : 0;
          }
        const std::size_t row = static_cast<std::size_t>((q - 1) * 3 + (p - 1));
        double ones = 0;
        for (std::size_t j = 0; j < 12; ++j) ones += mask(row, j);
        if (win_r == 0) {
          ++rows_won_by_padding;
          EXPECT_EQ(ones, 0.0) << "A" << p << q << " is a padding zero: its row routes nothing (seed " << seed << ")";
          continue;
        }
        ++rows_with_winner;
        const std::size_t j = static_cast<std::size_t>((win_c - 1) * 3 + win_r);  // 1-based, as in the text
        EXPECT_EQ(mask(row, j - 1), 1.0) << "A" << p << q << " winner I" << win_r << win_c << " (seed " << seed << ")";
        EXPECT_EQ(ones, 1.0) << "A" << p << q << " (seed " << seed << ")";
      }
  }
  EXPECT_GT(rows_with_winner, 0);
  EXPECT_GT(rows_won_by_padding, 0);  // both kinds of row were exercised
}

}  // namespace
}  // namespace ad::test::test_jacobian
