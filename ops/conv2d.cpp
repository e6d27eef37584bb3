// conv2d, forward and VJP. Design document (shared/design/cnn_backprop_derivation.md):
//   forward:        section 2, Z_j = sum_i A_i * K_{j,i} + b_j 1, "*" a cross-correlation
//                   with zero padding (h_p, w_p) and stride (h_s, w_s) as in appendix A;
//                   output size by the note in section 2 (floor).
//   VJP w.r.t. K:   section 3.1.5 "Derivative w.r.t. vK", appendix A eq. a1-1..a1-3.
//   VJP w.r.t. b:   section 3.1.5 "Derivative w.r.t. b": dJ/db_j = dJ/dvZ_j 1.
//   VJP w.r.t. A:   section 3.1.5 "Derivative w.r.t. A", appendix A eq. a2-1..a2-3,
//                   summed over the kernels j that read channel i.
// In index form (0-based, n image, o = j output channel, c = i input channel):
//   y[n,o,i,j]  = b[o] + sum_{c,p,q} k[o,c,p,q] * x[n,c, i*sh+p-ph, j*sw+q-pw]
//
// Implementation: direct convolutions, one image at a time, images in parallel (OpenMP,
// OpenBLAS pinned to one thread); no im2col buffer. Window taps that fall into the
// padding are skipped (rows always, columns where a group of pixels shares them), which
// at ref-CNN's shapes saves 8-16% of the multiply-adds of an im2col GEMM.
//   The kernel is repacked once per call as w[(c,p,q)][o]; a register tile of 6 output
//     pixels x 16 output channels (float; 8 for double) runs over the taps; the
//     pixel-major result is transposed into y (8x8 blocks in registers).
//   dJ/dx (stride 1, padding < kernel) is the direct convolution of grad_out with the
//     flipped kernel, dx[n,c,h,w] += sum_{o,p,q} k[o,c,KH-1-p,KW-1-q] g[n,o,h+p-(KH-1-ph),w+q-(KW-1-pw)];
//     other strides fall back to dcol = K^T g (GEMM) and col2im.
//   dJ/dK and dJ/db: per image and window row (c,p), g times the input over the pixels
//     whose tap row lies inside the image, into per-thread partials that are summed in
//     thread order (deterministic for a given thread count).
// A 1x1 kernel at stride 1 without padding is a plain GEMM on x.
#include "ops/conv2d.hpp"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "autodiff/higher_order.hpp"
#include "ops/blas.hpp"
#include "ops/conv2d_general.hpp"
#include "ops/conv_transpose2d.hpp"
#include "ops/elementwise.hpp"
#include "ops/shape.hpp"
#include "ops/shape_check.hpp"

namespace ad {

namespace {

// Geometry of one conv2d call, in plain integers.
struct ConvGeom {
  std::size_t N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw;
  std::size_t ckk() const { return C * KH * KW; }  // taps per output channel
  std::size_t p() const { return OH * OW; }        // output pixels per image
  bool one_by_one() const { return KH == 1 && KW == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
};

template <class T>
ConvGeom geom(const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a) {
  ConvGeom g{};
  g.N = x.shape()[0], g.C = x.shape()[1], g.H = x.shape()[2], g.W = x.shape()[3];
  g.O = k.shape()[0], g.KH = k.shape()[2], g.KW = k.shape()[3];
  g.sh = static_cast<std::size_t>(a.stride[0]), g.sw = static_cast<std::size_t>(a.stride[1]);
  g.ph = static_cast<std::size_t>(a.padding[0]), g.pw = static_cast<std::size_t>(a.padding[1]);
  g.OH = (g.H + 2 * g.ph - g.KH) / g.sh + 1;
  g.OW = (g.W + 2 * g.pw - g.KW) / g.sw + 1;
  return g;
}

// A growing per-thread scratch buffer, kept across calls (no malloc churn per step).
template <class T>
T* scratch(std::size_t n, int which) {
  thread_local std::vector<T> buf[5];
  if (buf[which].size() < n) buf[which].resize(n);
  return buf[which].data();
}

// ---- SIMD: 32-byte vectors through GCC/Clang vector extensions (AVX with -march=native) ----

template <class T>
struct Simd {
  typedef T V __attribute__((vector_size(32)));
  // The same vector at any address of a T (unaligned loads and stores).
  typedef T VU __attribute__((vector_size(32), aligned(alignof(T)), may_alias));
  static constexpr std::size_t L = 32 / sizeof(T);  // lanes
};
// at(p): the vector of L elements at p, to read or assign. Vectors pass by reference
// only: a by-value AVX vector in a signature changes the ABI when some target of the
// build compiles this file without AVX (GCC warns, -Wpsabi).
template <class T>
inline const typename Simd<T>::VU& at(const T* p) {
  return *reinterpret_cast<const typename Simd<T>::VU*>(p);
}
template <class T>
inline typename Simd<T>::VU& at(T* p) {
  return *reinterpret_cast<typename Simd<T>::VU*>(p);
}

// ---- transposes between (channels, pixels) and (pixels, channels) ---------------------
//
// 8x8 blocks of float in registers (three rounds of shuffles), scalar elsewhere.
inline void transpose8x8(typename Simd<float>::V r[8]) {
  using V = typename Simd<float>::V;
  using I = int32_t __attribute__((vector_size(32)));
  const I lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
  const I lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
  const I lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
  V t[8], u[8];
  for (int k = 0; k < 8; k += 2) t[k] = __builtin_shuffle(r[k], r[k + 1], lo), t[k + 1] = __builtin_shuffle(r[k], r[k + 1], hi);
  for (int k = 0; k < 8; k += 4) {
    u[k] = __builtin_shuffle(t[k], t[k + 2], lo2), u[k + 1] = __builtin_shuffle(t[k], t[k + 2], hi2);
    u[k + 2] = __builtin_shuffle(t[k + 1], t[k + 3], lo2), u[k + 3] = __builtin_shuffle(t[k + 1], t[k + 3], hi2);
  }
  for (int k = 0; k < 4; ++k) r[k] = __builtin_shuffle(u[k], u[k + 4], lo4), r[k + 4] = __builtin_shuffle(u[k], u[k + 4], hi4);
}

// out[o, s] = (accumulate ? out[o, s] : bias[o] or 0) + yt[s, o] for o < O, s < P;
// yt is (P, Opad).
template <class T>
void pixels_to_planes(const T* yt, std::size_t P, std::size_t Opad, std::size_t O, const T* bias, bool accumulate,
                      T* out) {
  std::size_t o0 = 0;
  if constexpr (std::is_same_v<T, float>) {
    using V = typename Simd<float>::V;
    for (; o0 + 8 <= O; o0 += 8) {
      std::size_t s = 0;
      for (; s + 8 <= P; s += 8) {
        V r[8];
        for (int k = 0; k < 8; ++k) r[k] = at(yt + (s + k) * Opad + o0);
        transpose8x8(r);  // r[k] = channel o0 + k, pixels s .. s+7
        for (int k = 0; k < 8; ++k) {
          T* dst = out + (o0 + k) * P + s;
          if (accumulate) at(dst) += r[k];
          else at(dst) = r[k] + (bias ? bias[o0 + k] : T(0));
        }
      }
      for (std::size_t o = o0; o < o0 + 8; ++o)
        for (std::size_t t = s; t < P; ++t)
          out[o * P + t] = (accumulate ? out[o * P + t] : bias ? bias[o] : T(0)) + yt[t * Opad + o];
    }
  }
  for (std::size_t o = o0; o < O; ++o)
    for (std::size_t s = 0; s < P; ++s) out[o * P + s] = (accumulate ? out[o * P + s] : bias ? bias[o] : T(0)) + yt[s * Opad + o];
}

// gt[s, o] = g[o, s] for o < O, 0 for the padding channels O <= o < Opad; g is (O, P).
template <class T>
void planes_to_pixels(const T* g, std::size_t O, std::size_t P, std::size_t Opad, T* gt) {
  for (std::size_t s = 0; s < P; ++s) std::fill(gt + s * Opad + O, gt + (s + 1) * Opad, T(0));
  std::size_t o0 = 0;
  if constexpr (std::is_same_v<T, float>) {
    using V = typename Simd<float>::V;
    for (; o0 + 8 <= O; o0 += 8) {
      std::size_t s = 0;
      for (; s + 8 <= P; s += 8) {
        V r[8];
        for (int k = 0; k < 8; ++k) r[k] = at(g + (o0 + k) * P + s);
        transpose8x8(r);  // r[k] = pixel s + k, channels o0 .. o0+7
        for (int k = 0; k < 8; ++k) at(gt + (s + k) * Opad + o0) = r[k];
      }
      for (std::size_t o = o0; o < o0 + 8; ++o)
        for (std::size_t t = s; t < P; ++t) gt[t * Opad + o] = g[o * P + t];
    }
  }
  for (std::size_t o = o0; o < O; ++o)
    for (std::size_t s = 0; s < P; ++s) gt[s * Opad + o] = g[o * P + s];
}

constexpr std::size_t kTile = 6;   // output pixels per register tile
constexpr std::size_t kBlock = 2;  // channel vectors per register tile
template <class T>
constexpr std::size_t kChan = kBlock * Simd<T>::L;  // channels per register tile

inline std::size_t round_up(std::size_t n, std::size_t m) { return (n + m - 1) / m * m; }

// Worth a parallel region: below this many multiply-adds the team's start-up and
// barrier cost more than the work (and a lot more when the cores are busy).
inline bool worth_threads(const ConvGeom& g) { return g.N > 1 && g.N * g.O * g.p() * g.ckk() >= (1u << 18); }

// ---- the direct convolution of one image ------------------------------------------
//
// in (C, H, W) -> out (O, OH, OW): out[o, i, j] = sum_{c,p,q} w[(c*KH+p)*KW+q][o] *
// in[c, i*sh+p-ph, j*sw+q-pw] over the taps inside the image. Input rows in the
// padding are skipped by grouping output rows into classes with the same valid window
// rows; input columns in the padding by grouping, inside a class of at least
// kMinRowsForColumns rows, the output columns with the same valid window columns.
// Each group lists its taps, so a register tile runs one flat loop over them.
// Taps are read from a zero-padded copy of the input, (C, H, Wp) with input column w
// at column w + L (L = pw), so a group may also keep a padding column (as a zero).
//   A padding of at least the kernel width (pw >= KW) would make that copy grow with
// the padding, not with the input (pw = 2^26 is 512 MB a row): there every row class is
// grouped by columns, no group reads a padding column, and the copy has no padding
// (L = 0, Wp = W), so the memory stays that of the input and the output.
struct DirectPlan {
  std::size_t C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw;
  bool unpadded;     // pw >= KW: columns always grouped, the copy holds no padding
  std::size_t L;     // the copy's left zero margin: input column w is at w + L
  std::size_t Wp;    // the copy's row width
  std::size_t Opad;  // O rounded up to whole register tiles; w is (C*KH*KW, Opad)
  // One tap (c, p, q): its offset in the copy from a pixel's first valid input row
  // (p = p0) and its group's first column (q = q0), and the offset of w's row (c, p, q).
  struct Tap {
    std::size_t x, w;
  };
  // Output columns [j0, j1) whose windows have the columns q in [q0, q1) inside the
  // image, with the taps (c, p, q) of its row class and those columns.
  struct ColClass {
    std::size_t j0, j1, q0, q1;
    std::vector<Tap> taps;
  };
  // Output rows [i0, i1) whose windows have the rows p in [p0, p1) inside the image,
  // and the column groups its pixels are tiled by.
  struct RowClass {
    std::size_t i0, i1, p0;
    std::vector<ColClass> cols;
  };
  std::vector<RowClass> classes;
  std::vector<ColClass> col_classes;  // the column groups, without taps
  static constexpr std::size_t kMinRowsForColumns = 4;  // so that column groups fill a tile

  template <class T>
  DirectPlan(std::size_t C_, std::size_t H_, std::size_t W_, std::size_t O_, std::size_t KH_, std::size_t KW_,
             std::size_t sh_, std::size_t sw_, std::size_t ph_, std::size_t pw_, T*)
      : C(C_), H(H_), W(W_), O(O_), KH(KH_), KW(KW_), sh(sh_), sw(sw_), ph(ph_), pw(pw_) {
    OH = (H + 2 * ph - KH) / sh + 1;
    OW = (W + 2 * pw - KW) / sw + 1;
    unpadded = pw >= KW;
    L = unpadded ? 0 : pw;
    Wp = unpadded ? W : std::max(W + pw, (OW - 1) * sw + KW);
    Opad = round_up(O, kChan<T>);
    for (std::size_t j = 0; j < OW;) {
      const auto q = valid_range(j, sw, pw, W, KW);
      std::size_t j1 = j + 1;
      while (j1 < OW && valid_range(j1, sw, pw, W, KW) == q) ++j1;
      col_classes.push_back({j, j1, q.first, q.second, {}});
      j = j1;
    }
    for (std::size_t i = 0; i < OH;) {
      const auto p = valid_range(i, sh, ph, H, KH);
      std::size_t i1 = i + 1;
      while (i1 < OH && valid_range(i1, sh, ph, H, KH) == p) ++i1;
      RowClass rc{i, i1, p.first, {}};
      if (unpadded || (i1 - i >= kMinRowsForColumns && col_classes.size() > 1))
        rc.cols = col_classes;
      else
        rc.cols = {{0, OW, 0, KW, {}}};
      for (ColClass& cc : rc.cols)
        for (std::size_t c = 0; c < C; ++c)
          for (std::size_t r = p.first; r < p.second; ++r)
            for (std::size_t q = cc.q0; q < cc.q1; ++q)
              cc.taps.push_back({(c * H + r - p.first) * Wp + (q - cc.q0), ((c * KH + r) * KW + q) * Opad});
      classes.push_back(std::move(rc));
      i = i1;
    }
  }
  // Window offsets k in [k0, k1) of output index i lie inside the image along one axis:
  // 0 <= i*s + k - pad < n.
  static std::pair<std::size_t, std::size_t> valid_range(std::size_t i, std::size_t s, std::size_t pad,
                                                         std::size_t n, std::size_t kn) {
    const std::size_t top = i * s;  // padded index of k = 0
    const std::size_t k0 = top >= pad ? 0 : pad - top;
    const std::size_t k1 = n + pad > top ? std::min(kn, n + pad - top) : 0;
    return {std::min(k0, k1), k1};
  }
  std::size_t padded_size() const { return C * H * Wp; }
  // Offset in the copy of window column q0 of output column j, on its row: padded
  // column j*sw + q0 is input column j*sw + q0 - pw (>= 0 whenever the group has taps
  // and the copy has no padding).
  std::size_t column(std::size_t j, std::size_t q0) const { return j * sw + q0 + L - pw; }
};

// Zero-padded copy: xp[c, h, w + L] = x[c, h, w], zeros elsewhere in each row.
// (One fill of the buffer, then a plain loop per row: rows are a few dozen elements,
// too short for a memmove or memset call each.)
template <class T>
void pad_columns(const T* x, const DirectPlan& pl, T* xp) {
  const std::size_t W = pl.W, Wp = pl.Wp, L = pl.L;
  if (Wp > W) std::fill(xp, xp + pl.padded_size(), T(0));
  for (std::size_t r = 0; r < pl.C * pl.H; ++r) {
    T* dst = xp + r * Wp + L;
    const T* src = x + r * W;
    for (std::size_t w = 0; w < W; ++w) dst[w] = src[w];
  }
}

// One register tile: NT pixels x kChan channels from w's first column.
// acc[b][t] = sum_{(c,p) in rows, q in [q0,q1)} w[(c,p,q)][b*L ...] * xt[t][tap (c,p,q)],
// where xt[t] points at pixel t's first valid input row in the padded input; the
// result goes to yt[t][...], pixel t's row of the pixel-major result.
template <class T, std::size_t NT>
void direct_tile(const T* const* xt, T* const* yt, const DirectPlan::Tap* taps, std::size_t ntaps, const T* w) {
  using V = typename Simd<T>::V;
  constexpr std::size_t L = Simd<T>::L;
  V acc[kBlock][NT];
  for (std::size_t b = 0; b < kBlock; ++b)
    for (std::size_t t = 0; t < NT; ++t) acc[b][t] = V{};
  for (std::size_t k = 0; k < ntaps; ++k) {
    const DirectPlan::Tap tap = taps[k];
    V wv[kBlock];
    for (std::size_t b = 0; b < kBlock; ++b) wv[b] = at(w + tap.w + b * L);
    for (std::size_t t = 0; t < NT; ++t) {
      const T xv = xt[t][tap.x];
      for (std::size_t b = 0; b < kBlock; ++b) acc[b][t] += wv[b] * xv;
    }
  }
  for (std::size_t t = 0; t < NT; ++t)
    for (std::size_t b = 0; b < kBlock; ++b) at(yt[t] + b * L) = acc[b][t];
}

template <class T>
void direct_tile_n(std::size_t nt, const T* const* xt, T* const* yt, const DirectPlan::Tap* taps, std::size_t ntaps,
                   const T* w) {
  switch (nt) {
    case 6: return direct_tile<T, 6>(xt, yt, taps, ntaps, w);
    case 5: return direct_tile<T, 5>(xt, yt, taps, ntaps, w);
    case 4: return direct_tile<T, 4>(xt, yt, taps, ntaps, w);
    case 3: return direct_tile<T, 3>(xt, yt, taps, ntaps, w);
    case 2: return direct_tile<T, 2>(xt, yt, taps, ntaps, w);
    default: return direct_tile<T, 1>(xt, yt, taps, ntaps, w);
  }
}

// out (O, OH*OW) = [accumulate ? out : bias] + conv(in, w). xp: C*H*Wp scratch,
// yt: OH*OW*Opad scratch (pixel-major result, transposed into `out` at the end).
template <class T>
void direct_conv_image(const DirectPlan& pl, const T* in, const T* w, const T* bias, bool accumulate, T* out,
                       T* xp, T* yt) {
  pad_columns(in, pl, xp);
  const std::size_t P = pl.OH * pl.OW;
  for (const DirectPlan::RowClass& rc : pl.classes)
    for (const DirectPlan::ColClass& cc : rc.cols) {
      // The group's pixels (i, j), row-major, in ceil(n/6) tiles of near-equal size
      // (>= 4 when n >= 4): small tiles leave the FMAs waiting on their own latency.
      const std::size_t n = (rc.i1 - rc.i0) * (cc.j1 - cc.j0);
      const std::size_t tiles = (n + kTile - 1) / kTile;
      const bool in_padding = cc.taps.empty();  // no tap inside the image
      for (std::size_t o0 = 0; o0 < pl.Opad; o0 += kChan<T>)
        for (std::size_t k = 0, i = rc.i0, j = cc.j0; k < tiles; ++k) {
          const std::size_t nt = n / tiles + (k < n % tiles ? 1 : 0);
          const T* xt[kTile] = {};
          T* yts[kTile] = {};
          for (std::size_t t = 0; t < nt; ++t) {  // the next nt pixels (i, j) of the group
            yts[t] = yt + (i * pl.OW + j) * pl.Opad + o0;
            if (in_padding) std::fill(yts[t], yts[t] + kChan<T>, T(0));
            else xt[t] = xp + (i * pl.sh + rc.p0 - pl.ph) * pl.Wp + pl.column(j, cc.q0);  // first valid tap
            if (++j == cc.j1) j = cc.j0, ++i;
          }
          if (!in_padding)
            direct_tile_n<T>(nt, xt, yts, cc.taps.data(), cc.taps.size(), w + o0);
        }
    }
  pixels_to_planes(yt, P, pl.Opad, pl.O, bias, accumulate, out);  // out[o, s] (+)= yt[s, o]
}

// ---- dJ/dK of one image, added into gk (C*KH*KW, Opad) -----------------------------
//
// gk[(c,p,q), o] += sum_{i,j} gt[i*OW+j, o] * xp[c, i*sh+p-ph, j*sw+q] for the rows i
// whose tap row i*sh+p-ph lies inside the image; gt is grad_out transposed, (P, Opad).
// Over `rows` rows of the output and its columns [j0, j0 + nj) (gt0 and xr0 point at
// column j0 of the first row; a row of gt holds OW pixels).
template <class T, std::size_t QW>
void dk_taps(const T* xr0, std::size_t x_row_step, const T* gt0, std::size_t rows, std::size_t nj, std::size_t OW,
             std::size_t sw, std::size_t Opad, T* gk) {
  using V = typename Simd<T>::V;
  constexpr std::size_t L = Simd<T>::L;
  V acc[kBlock][QW];
  for (std::size_t b = 0; b < kBlock; ++b)
    for (std::size_t q = 0; q < QW; ++q) acc[b][q] = V{};
  for (std::size_t r = 0; r < rows; ++r) {
    const T* xr = xr0 + r * x_row_step;
    const T* gr = gt0 + r * OW * Opad;
    for (std::size_t j = 0; j < nj; ++j) {
      V gv[kBlock];
      for (std::size_t b = 0; b < kBlock; ++b) gv[b] = at(gr + j * Opad + b * L);
      for (std::size_t q = 0; q < QW; ++q) {
        const T xv = xr[j * sw + q];
        for (std::size_t b = 0; b < kBlock; ++b) acc[b][q] += gv[b] * xv;
      }
    }
  }
  for (std::size_t q = 0; q < QW; ++q)
    for (std::size_t b = 0; b < kBlock; ++b) {
      T* dst = gk + q * Opad + b * L;
      at(dst) += acc[b][q];
    }
}

// dK over output columns [j0, j1) and window columns [q0, q1) of row (c, p): xr0 is the
// copy's row of output row i0 at column j0's window column q0, gt0 grad_out's (i0, j0).
template <class T>
void dk_columns(const DirectPlan& pl, const T* xr0, const T* gt0, std::size_t rows, std::size_t j0, std::size_t j1,
                std::size_t q0, std::size_t q1, T* gk_row) {
  const std::size_t step = pl.sh * pl.Wp, nj = j1 - j0;
  for (std::size_t o0 = 0; o0 < pl.Opad; o0 += kChan<T>)
    for (std::size_t qs = q0; qs < q1; qs += 5) {
      const T* xr = xr0 + (qs - q0);
      const T* gt = gt0 + o0;
      T* dst = gk_row + qs * pl.Opad + o0;
      switch (std::min<std::size_t>(5, q1 - qs)) {
        case 5: dk_taps<T, 5>(xr, step, gt, rows, nj, pl.OW, pl.sw, pl.Opad, dst); break;
        case 4: dk_taps<T, 4>(xr, step, gt, rows, nj, pl.OW, pl.sw, pl.Opad, dst); break;
        case 3: dk_taps<T, 3>(xr, step, gt, rows, nj, pl.OW, pl.sw, pl.Opad, dst); break;
        case 2: dk_taps<T, 2>(xr, step, gt, rows, nj, pl.OW, pl.sw, pl.Opad, dst); break;
        default: dk_taps<T, 1>(xr, step, gt, rows, nj, pl.OW, pl.sw, pl.Opad, dst); break;
      }
    }
}

template <class T>
void dk_image(const DirectPlan& pl, const T* xp, const T* gt, T* gk) {
  for (std::size_t c = 0; c < pl.C; ++c)
    for (std::size_t p = 0; p < pl.KH; ++p) {
      // rows i with 0 <= i*sh + p - ph < H
      const std::size_t i0 = p >= pl.ph ? 0 : (pl.ph - p + pl.sh - 1) / pl.sh;
      const std::size_t i1 = pl.H + pl.ph > p ? std::min(pl.OH, (pl.H + pl.ph - p - 1) / pl.sh + 1) : 0;
      if (i0 >= i1) continue;
      const T* xrow = xp + (c * pl.H + i0 * pl.sh + p - pl.ph) * pl.Wp;  // input row of output row i0
      const T* gt0 = gt + i0 * pl.OW * pl.Opad;
      T* gk_row = gk + (c * pl.KH + p) * pl.KW * pl.Opad;
      if (!pl.unpadded) {  // every column, padding zeros included
        dk_columns(pl, xrow + pl.column(0, 0), gt0, i1 - i0, 0, pl.OW, 0, pl.KW, gk_row);
        continue;
      }
      for (const DirectPlan::ColClass& cc : pl.col_classes)  // only the taps inside the image
        if (cc.q0 < cc.q1)
          dk_columns(pl, xrow + pl.column(cc.j0, cc.q0), gt0 + cc.j0 * pl.Opad, i1 - i0, cc.j0, cc.j1, cc.q0, cc.q1,
                     gk_row);
    }
}

// The adjoint of im2col: grad_x[c, i*sh+p-ph, j*sw+q-pw] += dcol[(c,p,q), (i,j)].
template <class T>
void col2im_add(const T* dcol, const ConvGeom& g, T* grad_x) {
  const std::size_t P = g.p();
  for (std::size_t c = 0; c < g.C; ++c)
    for (std::size_t p = 0; p < g.KH; ++p)
      for (std::size_t q = 0; q < g.KW; ++q) {
        const T* src = dcol + ((c * g.KH + p) * g.KW + q) * P;
        // output columns j whose input column j*sw + q - pw lies in [0, W)
        const std::size_t j0 = q >= g.pw ? 0 : (g.pw - q + g.sw - 1) / g.sw;
        const std::size_t j1 = std::max(j0, g.W + g.pw > q ? std::min(g.OW, (g.W - 1 + g.pw - q) / g.sw + 1) : 0);
        for (std::size_t i = 0; i < g.OH; ++i, src += g.OW) {
          const std::ptrdiff_t ih = static_cast<std::ptrdiff_t>(i * g.sh + p) - static_cast<std::ptrdiff_t>(g.ph);
          if (ih < 0 || ih >= static_cast<std::ptrdiff_t>(g.H)) continue;
          T* dst = grad_x + (c * g.H + static_cast<std::size_t>(ih)) * g.W;
          for (std::size_t j = j0; j < j1; ++j) dst[j * g.sw + q - g.pw] += src[j];
        }
      }
}

}  // namespace

Shape conv2d_output_shape(const Shape& x, const Shape& k, const Shape* b, const Conv2dOptions& a) {
  if (!is_plain(a)) return conv2d_general_output_shape(x, k, b, a);  // dilation, groups: conv2d_general.cpp
  const char* op = "conv2d";
  check_rank(op, "input", x, 4, "(N, C_in, H, W)");
  check_rank(op, "kernel", k, 4, "(C_out, C_in, KH, KW)");
  check_nonempty_but_batch(op, "input", x);  // N = 0: an empty output
  check_nonempty(op, "kernel", k);
  if (x[1] != k[1])
    shape_error(op, "input {} and kernel {} disagree on C_in ({} vs {})", shape_str(x), shape_str(k), x[1], k[1]);
  if (b) {
    check_rank(op, "bias", *b, 1, "(C_out)");
    if ((*b)[0] != k[0])
      shape_error(op, "bias {} and kernel {} disagree on C_out ({} vs {})", shape_str(*b), shape_str(k), (*b)[0], k[0]);
  }
  auto [oh, ow] = check_window(op, "kernel", x, {k[2], k[3]}, a.stride, a.padding);
  const Shape out{x[0], k[0], oh, ow};
  check_output_size(op, x, out, a.stride, a.padding);
  return out;
}

template <class T>
void conv2d_forward(const Tensor<T>& x, const Tensor<T>& k, const Tensor<T>* b, const Conv2dOptions& a,
                    Tensor<T>& y) {
  if (!is_plain(a)) return conv2d_general_forward(x, k, b, a, y);  // dilation, groups: conv2d_general.cpp
  const ConvGeom g = geom(x, k, a);
  const std::size_t CKK = g.ckk(), P = g.p();
  const T* kp = k.data();
  const T* bp = b ? b->data() : nullptr;
  if (g.one_by_one()) {
    // y_n (C_out, P) = K (C_out, C_in) x_n (C_in, P) [+ b 1^T]
#pragma omp parallel for schedule(static) if (worth_threads(g))
    for (std::size_t n = 0; n < g.N; ++n) {
      T* yn = y.data() + n * g.O * P;
      for (std::size_t o = 0; o < g.O; ++o) std::fill(yn + o * P, yn + (o + 1) * P, bp ? bp[o] : T(0));
      gemm<T>(false, false, g.O, P, CKK, T(1), kp, x.data() + n * g.C * g.H * g.W, T(1), yn);
    }
    return;
  }
  const DirectPlan pl(g.C, g.H, g.W, g.O, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, static_cast<T*>(nullptr));
  // w[(c,p,q), o] = k[o,c,p,q], zero for the padding channels o >= C_out
  T* w = scratch<T>(CKK * pl.Opad, 4);
  for (std::size_t t = 0; t < CKK; ++t)
    for (std::size_t o = 0; o < pl.Opad; ++o) w[t * pl.Opad + o] = o < g.O ? kp[o * CKK + t] : T(0);
#pragma omp parallel for schedule(static) if (worth_threads(g))
  for (std::size_t n = 0; n < g.N; ++n) {
    T* xp = scratch<T>(pl.padded_size(), 0);
    T* yt = scratch<T>(P * pl.Opad, 1);
    direct_conv_image(pl, x.data() + n * g.C * g.H * g.W, w, bp, false, y.data() + n * g.O * P, xp, yt);
  }
}

template <class T>
void conv2d_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a,
                Tensor<T>* grad_x, Tensor<T>* grad_k, Tensor<T>* grad_b) {
  if (!is_plain(a)) return conv2d_general_vjp(grad_out, x, k, a, grad_x, grad_k, grad_b);  // conv2d_general.cpp
  if (!grad_x && !grad_k && !grad_b) return;
  const ConvGeom g = geom(x, k, a);
  const std::size_t CKK = g.ckk(), P = g.p(), HW = g.H * g.W;
  const T* gp = grad_out.data();
  const T* kp = k.data();
  const bool one = g.one_by_one();

  // dJ/dK through the direct plan of the forward (its padded input and taps).
  const DirectPlan pl(g.C, g.H, g.W, g.O, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, static_cast<T*>(nullptr));
  // dJ/dx as the direct convolution of grad_out with the flipped kernel (stride 1,
  // padding < kernel): input (C_out, OH, OW), output (C_in, H, W), padding KH-1-ph.
  const bool dx_direct = grad_x && !one && g.sh == 1 && g.sw == 1 && g.ph < g.KH && g.pw < g.KW;
  std::optional<DirectPlan> plx;
  T* wflip = nullptr;
  if (dx_direct) {
    plx.emplace(g.O, g.OH, g.OW, g.C, g.KH, g.KW, 1, 1, g.KH - 1 - g.ph, g.KW - 1 - g.pw, static_cast<T*>(nullptr));
    // wflip[(o,p,q), c] = k[o, c, KH-1-p, KW-1-q]
    wflip = scratch<T>(g.O * g.KH * g.KW * plx->Opad, 4);
    for (std::size_t o = 0; o < g.O; ++o)
      for (std::size_t p = 0; p < g.KH; ++p)
        for (std::size_t q = 0; q < g.KW; ++q) {
          T* dst = wflip + ((o * g.KH + p) * g.KW + q) * plx->Opad;
          for (std::size_t c = 0; c < plx->Opad; ++c)
            dst[c] = c < g.C ? kp[((o * g.C + c) * g.KH + g.KH - 1 - p) * g.KW + g.KW - 1 - q] : T(0);
        }
  }

  // Each thread sums dJ/dK and dJ/db over its images into its own partials; the
  // partials are added in thread order afterwards, so the result does not depend on
  // timing. dJ/dK partials are (C*KH*KW, Opad) on the direct path, (C_out, C_in) for
  // a 1x1 kernel; dJ/db partials have Opad entries.
  const std::size_t kpart = one ? g.O * CKK : CKK * pl.Opad;
  const std::size_t part = kpart + pl.Opad;
  const int nt = omp_get_max_threads();
  T* partial = scratch<T>(static_cast<std::size_t>(nt) * part, 3);
  std::fill(partial, partial + static_cast<std::size_t>(nt) * part, T(0));
#pragma omp parallel num_threads(nt) if (worth_threads(g))
  {
    T* gk = partial + static_cast<std::size_t>(omp_get_thread_num()) * part;
    T* gb = gk + kpart;
#pragma omp for schedule(static)
    for (std::size_t n = 0; n < g.N; ++n) {
      const T* xn = x.data() + n * g.C * HW;
      const T* gn = gp + n * g.O * P;
      // dK[o,c,p,q] += sum_{i,j} g[n,o,i,j] * x[n,c,i*sh+p-ph,j*sw+q-pw]
      // dJ/db_o += sum_{i,j} g[n,o,i,j]  (section 3.1.5: dJ/dvZ_j times the ones vector)
      if (one) {
        if (grad_b)
          for (std::size_t o = 0; o < g.O; ++o)
            for (std::size_t i = 0; i < P; ++i) gb[o] += gn[o * P + i];
        if (grad_k) gemm<T>(false, true, g.O, CKK, P, T(1), gn, xn, T(1), gk);  // (C_out, C_in) += g_n x_n^T
      } else if (grad_k || grad_b) {
        using V = typename Simd<T>::V;
        constexpr std::size_t L = Simd<T>::L;
        T* gt = scratch<T>(P * pl.Opad, 2);
        planes_to_pixels(gn, g.O, P, pl.Opad, gt);
        if (grad_b)
          for (std::size_t o = 0; o < pl.Opad; o += L) {
            V acc = at(gb + o);
            for (std::size_t s = 0; s < P; ++s) acc += at(gt + s * pl.Opad + o);
            at(gb + o) = acc;
          }
        if (grad_k) {
          T* xp = scratch<T>(pl.padded_size(), 0);
          pad_columns(xn, pl, xp);
          dk_image(pl, xp, gt, gk);
        }
      }
      if (grad_x) {
        // dx[n,c,i*sh+p-ph,j*sw+q-pw] += sum_o k[o,c,p,q] * g[n,o,i,j]
        T* gxn = grad_x->data() + n * g.C * HW;
        if (one) {
          gemm<T>(true, false, CKK, P, g.O, T(1), kp, gn, T(1), gxn);
        } else if (dx_direct) {
          T* gpad = scratch<T>(plx->padded_size(), 0);
          T* yt = scratch<T>(HW * plx->Opad, 1);
          direct_conv_image(*plx, gn, wflip, static_cast<const T*>(nullptr), true, gxn, gpad, yt);
        } else {
          // dcol (CKK, P) = K^T (CKK, C_out) x g_n (C_out, P), then col2im adds it up.
          T* dcol = scratch<T>(CKK * P, 1);
          gemm<T>(true, false, CKK, P, g.O, T(1), kp, gn, T(0), dcol);
          col2im_add(dcol, g, gxn);
        }
      }
    }
  }
  for (int t = 0; t < nt; ++t) {
    const T* gk = partial + static_cast<std::size_t>(t) * part;
    if (grad_k) {
      T* dst = grad_k->data();
      if (one)
        for (std::size_t i = 0; i < g.O * CKK; ++i) dst[i] += gk[i];
      else
        for (std::size_t o = 0; o < g.O; ++o)
          for (std::size_t tap = 0; tap < CKK; ++tap) dst[o * CKK + tap] += gk[tap * pl.Opad + o];
    }
    if (grad_b)
      for (std::size_t o = 0; o < g.O; ++o) grad_b->data()[o] += gk[kpart + o];
  }
}

template <class T>
Value conv2d(Tape<T>& tape, Value x, Value k, Value b, const Conv2dOptions& opt,
             std::source_location loc) {
  return record_conv<T, Conv2dOptions>(tape, OpKind::Conv2d, x, k, b, opt, loc, conv2d_output_shape, conv2d_forward<T>);
}

// ---- conv2d_backward_kernel and conv2d_backward_input (higher-order gradients) ----
// Both VJPs of conv2d as ops. dJ/dx (section 3.1.6) is the transpose of the convolution
// applied to g, i.e. conv_transpose2d(g, k), which exists with its own VJPs; dJ/dK
// (section 3.1.5, appendix A) is a new op, bilinear in x and g:
//   dK[o,c,p,q] = sum_{n,i,j} g[n,o,i,j] x[n,c,i*sh+p*dh-ph, j*sw+q*dw-pw]
// Its VJP for a cotangent u (kernel-shaped), from d<u, dK>:
//   w.r.t. x: sum_{o,p,q} u[o,c,p,q] g[n,o,i,j] at x[n,c,i*sh+p*dh-ph, ..] = conv2d's input
//             gradient with kernel u and output gradient g;
//   w.r.t. g: sum_{c,p,q} u[o,c,p,q] x[n,c,i*sh+p*dh-ph, ..] = conv2d(x, u)[n,o,i,j].
// Both are recorded again as conv_transpose2d and conv2d, so the third order is free.

template <class T>
Value conv2d_backward_kernel(Tape<T>& tape, Value x, Value grad_out, std::size_t KH, std::size_t KW,
                             const Conv2dOptions& opt, std::source_location loc) {
  const Shape xs = tape.shape(x), gs = tape.shape(grad_out);
  check_rank("conv2d_backward_kernel", "input", xs, 4, "(N, C_in, H, W)");
  check_rank("conv2d_backward_kernel", "grad_out", gs, 4, "(N, C_out, OH, OW)");
  if (opt.groups < 1 || xs[1] % static_cast<std::size_t>(opt.groups) != 0)
    shape_error("conv2d_backward_kernel", "groups {} do not divide C_in of input {}", opt.groups, shape_str(xs));
  const Shape ks{gs[1], xs[1] / static_cast<std::size_t>(opt.groups), KH, KW};
  const Shape expected = conv2d_output_shape(xs, ks, nullptr, opt);
  if (expected != gs)
    shape_error("conv2d_backward_kernel", "grad_out {} is not the output shape {} of input {} and kernel {}",
                shape_str(gs), shape_str(expected), shape_str(xs), shape_str(ks));
  Value y = tape.new_value(ks, tape.any_requires_grad({x, grad_out}));
  Tensor<T>& yv = tape.mutable_value(y);
  zero_fill(yv);
  const Tensor<T> kernel_shape(ks, T(0));  // conv2d_vjp reads the kernel's shape only for dJ/dK
  conv2d_vjp<T>(tape.value(grad_out), tape.value(x), kernel_shape, opt, nullptr, &yv, nullptr);
  tape.record(OpKind::Conv2dBackwardKernel, {x, grad_out}, y,
              Attrs::of(Conv2dBackwardKernelAttrs{opt, static_cast<uint32_t>(KH), static_cast<uint32_t>(KW)}), loc);
  return y;
}

template <class T>
Value conv2d_backward_input(Tape<T>& tape, Value grad_out, Value k, const Shape& input_shape, const Conv2dOptions& opt,
                            std::source_location loc) {
  const Shape gs = tape.shape(grad_out), ks = tape.shape(k);
  ConvTranspose2dOptions t{.padding = opt.padding, .stride = opt.stride, .dilation = opt.dilation, .groups = opt.groups};
  for (std::size_t d = 0; d < 2; ++d) {
    // H = (OH - 1) s - 2 p + d (KH - 1) + output_padding + 1, output_padding in [0, s)
    const auto extent = static_cast<std::ptrdiff_t>(gs[2 + d] - 1) * opt.stride[d] - 2 * opt.padding[d] +
                        static_cast<std::ptrdiff_t>(opt.dilation[d]) * static_cast<std::ptrdiff_t>(ks[2 + d] - 1) + 1;
    t.output_padding[d] = static_cast<int>(static_cast<std::ptrdiff_t>(input_shape[2 + d]) - extent);
  }
  return conv_transpose2d(tape, grad_out, k, Value{}, t, loc);
}

namespace {

// Recorded VJPs of conv2d and conv2d_backward_kernel (derivations above):
//   conv2d: gx = conv2d_backward_input(g, K), gK = conv2d_backward_kernel(x, g),
//           gb[o] = sum_{n,i,j} g[n,o,i,j] = sum_to(g, (1, C_out, 1, 1)) read as (C_out).
template <class T> void conv2d_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  const auto a = attrs_as<Conv2dOptions>(t.nodes()[static_cast<std::size_t>(n)].attrs);
  const Value x = node_input(t, n, 0), k = node_input(t, n, 1);
  const Shape ks = t.shape(k);
  if (wants(want, 0)) gi[0] = conv2d_backward_input(t, g, k, t.shape(x), a);
  if (wants(want, 1)) gi[1] = conv2d_backward_kernel(t, x, g, ks[2], ks[3], a);
  if (wants(want, 2)) gi[2] = reshape(t, sum_to(t, g, Shape{1, ks[0], 1, 1}), {static_cast<int64_t>(ks[0])});
}
template <class T>
void conv2d_backward_kernel_record_vjp(Tape<T>& t, int32_t n, Value u, uint32_t want, std::span<Value> gi) {
  const auto a = attrs_as<Conv2dBackwardKernelAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs).conv;
  const Value x = node_input(t, n, 0), g = node_input(t, n, 1);
  if (wants(want, 0)) gi[0] = conv2d_backward_input(t, g, u, t.shape(x), a);
  if (wants(want, 1)) gi[1] = conv2d(t, x, u, Value{}, a);
}
template <class T> void conv2d_backward_kernel_node_vjp(Tape<T>* tape, const Node<T>& node) {
  const auto a = attrs_as<Conv2dBackwardKernelAttrs>(node.attrs).conv;
  const Tensor<T>& u = tape->grad_out(node);
  const Tensor<T>& x = tape->input_value(node, 0);
  if (Tensor<T>* gx = tape->input_grad(node, 0)) conv2d_vjp<T>(tape->input_value(node, 1), x, u, a, gx, nullptr, nullptr);
  if (Tensor<T>* gg = tape->input_grad(node, 1)) {
    Tensor<T> y(gg->shape());
    conv2d_forward<T>(x, u, nullptr, a, y);
    *gg += y;
  }
}
Value conv2d_backward_kernel_replay(Tape<double>& t, const ReplayArgs& r) {
  const auto a = r.attrs.get<Conv2dBackwardKernelAttrs>();
  return conv2d_backward_kernel(t, r.inputs[0], r.inputs[1], a.KH, a.KW, a.conv);
}

}  // namespace

// ---- the registry entry (autodiff/op.hpp) ----

namespace {

template <class T>
void conv2d_node_vjp(Tape<T>* tape, const Node<T>& node) {
  conv2d_vjp(tape->grad_out(node), tape->input_value(node, 0), tape->input_value(node, 1),
             attrs_as<Conv2dOptions>(node.attrs), tape->input_grad(node, 0), tape->input_grad(node, 1),
             tape->input_grad(node, 2));
}

Value conv2d_replay(Tape<double>& t, const ReplayArgs& r) {
  return conv2d(t, r.inputs[0], r.inputs[1], r.inputs[2], r.attrs.get<Conv2dOptions>());
}

std::string conv2d_format(const Attrs& attrs, std::span<const int32_t>) {
  const auto a = attrs.get<Conv2dOptions>();
  std::string s = fmt::format("stride={}x{} pad={}x{}", a.stride[0], a.stride[1], a.padding[0], a.padding[1]);
  if (a.dilation[0] != 1 || a.dilation[1] != 1) s += fmt::format(" dilation={}x{}", a.dilation[0], a.dilation[1]);
  if (a.groups != 1) s += fmt::format(" groups={}", a.groups);
  return s;
}

}  // namespace

constinit const OpDef conv2d_op{.name = "conv2d", .input_names = {"input", "kernel", "bias"},
                                .vjp_float = conv2d_node_vjp<float>, .vjp_double = conv2d_node_vjp<double>,
                                .replay = conv2d_replay, .format_attrs = conv2d_format,
                                .record_vjp_float = conv2d_record_vjp<float>, .record_vjp_double = conv2d_record_vjp<double>};
AD_REGISTER_OP(conv2d_op);

namespace {
std::string conv2d_backward_kernel_format(const Attrs& attrs, std::span<const int32_t> s) {
  const auto a = attrs.get<Conv2dBackwardKernelAttrs>();
  return fmt::format("kernel={}x{} ", a.KH, a.KW) + conv2d_format(Attrs::of(a.conv), s);
}
}  // namespace
constinit const OpDef conv2d_backward_kernel_op{
    .name = "conv2d_backward_kernel", .input_names = {"input", "grad_out"},
    .vjp_float = conv2d_backward_kernel_node_vjp<float>, .vjp_double = conv2d_backward_kernel_node_vjp<double>,
    .replay = conv2d_backward_kernel_replay, .format_attrs = conv2d_backward_kernel_format,
    .record_vjp_float = conv2d_backward_kernel_record_vjp<float>,
    .record_vjp_double = conv2d_backward_kernel_record_vjp<double>};
AD_REGISTER_OP(conv2d_backward_kernel_op);

#define AD_INSTANTIATE(T)                                                                        \
  template void conv2d_forward<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>*,         \
                                  const Conv2dOptions&, Tensor<T>&);                                     \
  template void conv2d_vjp<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, const Conv2dOptions&, \
                              Tensor<T>*, Tensor<T>*, Tensor<T>*);                               \
  template Value conv2d<T>(Tape<T>&, Value, Value, Value, const Conv2dOptions&, std::source_location);    \
  template Value conv2d_backward_kernel<T>(Tape<T>&, Value, Value, std::size_t, std::size_t, const Conv2dOptions&, \
                                           std::source_location);                                          \
  template Value conv2d_backward_input<T>(Tape<T>&, Value, Value, const Shape&, const Conv2dOptions&,     \
                                          std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
