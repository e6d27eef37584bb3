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
// OpenBLAS pinned to one thread; an image is also split between threads by channel
// ranges when the batch has fewer images than the team: WorkItems); no im2col buffer.
// Window taps that fall into the padding are skipped (rows always, columns where a
// group of pixels shares them), which at ref-CNN's shapes saves 8-16% of the
// multiply-adds of an im2col GEMM.
//   The plan of a geometry (ops/conv2d_direct.hpp) is shared; the per-image kernels
//     (ops/conv2d_simd.inc) are compiled per instruction set with the vector width as a
//     parameter and chosen at run time (ops/isa.hpp): AVX-512, AVX2 or the baseline.
//   The kernel is repacked once per call as w[(c,p,q)][o]; a register tile of up to 12
//     output pixels x 1-2 vectors of output channels runs over the taps; the
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
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "autodiff/higher_order.hpp"
#include "ops/blas.hpp"
#include "ops/conv2d_direct.hpp"
#include "ops/conv2d_general.hpp"
#include "ops/conv_transpose2d.hpp"
#include "ops/elementwise.hpp"
#include "ops/scratch.hpp"
#include "ops/shape.hpp"
#include "ops/shape_check.hpp"

namespace ad {

namespace {

// Asks for p[0, n) in the core's L2 cache (prefetcht1), a cache line at a time.
template <class T>
void prefetch_l2(const T* p, std::size_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (std::size_t b = 0; b < n * sizeof(T); b += 64) __builtin_prefetch(c + b, 0, 2);
}

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

// A growing per-thread scratch buffer, kept across calls (no malloc churn per step), at
// its slot's offset within a page (ops/scratch.hpp).
struct Conv2dScratch {};
template <class T>
T* scratch(std::size_t n, int which) {
  return ThreadScratch<T, Conv2dScratch, 8>::get(n, static_cast<std::size_t>(which));
}

// Worth a parallel region: below this many multiply-adds the team's start-up and
// barrier cost more than the work (and a lot more when the cores are busy).
inline bool worth_threads(const ConvGeom& g) { return g.N > 1 && g.N * g.O * g.p() * g.ckk() >= (1u << 18); }

// Work items: within an image as well as across images. Where the batch has fewer
// images than the team has threads (and the work is worth threads), each image is split
// into `parts` items by ranges of its channels in whole register blocks of one vector
// (chan = the lanes, instead of the kernels' usual block), so that the team shares
// N * parts items: the forward's output channels; in the VJP, C_out for dJ/dK and dJ/db
// and C_in for dJ/dx. Each item repeats its image's input preparation (the padded copy,
// or Winograd's grid and input transforms) for its channels. Every output element of the
// forward and of dJ/dx is computed by the same operations in the same order whichever
// item computes it and whatever the block, so they are bit-identical for every split and
// thread count; dJ/dK and dJ/db are per-thread partial sums as before (deterministic for
// a given thread count).
struct WorkItems {
  std::size_t lanes;  // the kernels' vector lanes
  std::size_t parts;  // items per image
  bool parallel;      // worth a parallel region
  // The plans' chan for `channels` output channels.
  template <class T>
  std::size_t chan(const conv::Kernels<T>& kn, std::size_t channels) const {
    return parts > 1 ? lanes : kn.chan_block(channels);
  }
  // Item i: image i / parts, the channels [first, second) of Opad (empty where there are
  // fewer blocks than parts).
  std::pair<std::size_t, std::size_t> channels(std::size_t i, std::size_t Opad, std::size_t chan) const {
    const std::size_t s = i % parts, blocks = Opad / chan;
    return {s * blocks / parts * chan, (s + 1) * blocks / parts * chan};
  }
};
// `channels`: the most channels an item's ranges split (0: do not split).
template <class T>
WorkItems work_items(const conv::Kernels<T>& kn, const ConvGeom& g, std::size_t channels) {
  const std::size_t team = static_cast<std::size_t>(omp_get_max_threads());
  const bool macs = g.N * g.O * g.p() * g.ckk() >= (1u << 18);
  if (g.N >= team || !macs || channels == 0) return {kn.lanes, 1, worth_threads(g)};
  const std::size_t blocks = (channels + kn.lanes - 1) / kn.lanes;
  const std::size_t parts = std::max<std::size_t>(1, std::min(blocks, (team + g.N - 1) / g.N));
  return {kn.lanes, parts, g.N * parts > 1};
}

using conv::DirectPlan;
using conv::WinogradPlan;
using conv::WinoRowPlan;

// Winograd F(2x2, 5x5) (ops/conv2d_direct.hpp) replaces the direct convolution for a 5x5
// kernel at stride 1 with kWinogradMinC..kWinogradMaxC input channels (the channels its
// 36 small GEMMs sum over), in float only: the double path stays the direct sum, exact
// to rounding. Below 4 input channels (conv1 of ref-CNN: 1) the transforms cost more
// than they save. Its float error grows with the channels summed: against double, on
// inputs and kernels uniform in [-1, 1] at ref-CNN's shapes (12 seeds), the worst element
// used 0.75 of the float path's tolerance (1e-4 absolute + 1e-4 relative) at 32
// channels and 0.46 at 16, where the direct sum uses 0.06-0.16; at 64 it reaches the
// limit, so wider layers stay direct. Whether it is used: WinogradMode (ops/conv2d.hpp).
constexpr std::size_t kWinogradMinC = 4, kWinogradMaxC = 32;
// dJ/dK by Winograd (conv2d_vjp) sums over every 2x2 tile of every image instead: its
// float error grows with that count, not with the channels. Against double, on inputs,
// kernels and output gradients uniform in [-1, 1], the worst element used 0.70 of the
// float path's gradient tolerance (1e-3 absolute + 1e-4 relative, tests/ops/test_isa)
// at ref-CNN's conv2 and batch 64 (12 seeds, 16 and 32 input channels), 0.50-0.66 at the
// same tile count on 28x28 and 56x56 inputs, 0.80-0.86 at batch 128 and up to 1.18 at
// batch 256; the direct sum used 0.04-0.17. So it is used up to 64 images of 7x7 tiles
// (or as many tiles in fewer, larger images) per call; a larger batch stays direct.
constexpr std::size_t kWinogradDkMaxTiles = 64 * 49;
// The same for dJ/dK by Winograd along the rows (WinoRowPlan), whose tiles are 4 outputs
// of a row: on inputs and gradients uniform in [-1, 1] at 5x5, 1 -> 16 channels, 28x28,
// its worst element used 0.25 of the tolerance at batch 64 (the direct sum 0.09), 0.42
// at 256 (0.15), 0.60 at 1024 (0.28), 0.90 at 2048 and 1.40 at 4096 (0.49, 0.41); at 3
// input channels 0.26-0.28 (0.13-0.20). So it is used up to 1024 such images a call.
constexpr std::size_t kWinogradRowDkMaxTiles = 1024 * 28 * 7;
std::atomic<int> g_winograd{-1};  // a WinogradMode; -1: not read yet from AD_WINOGRAD

// Winograd wanted at all: AD_WINOGRAD / set_conv2d_winograd, or the kernels' preference.
bool winograd_wanted(const conv::Kernels<float>& kn) {
  const WinogradMode m = conv2d_winograd();
  return m == WinogradMode::On || (m == WinogradMode::Auto && kn.wino_preferred);
}

bool winograd_for(const conv::Kernels<float>& kn, std::size_t C, std::size_t KH, std::size_t KW, std::size_t sh,
                  std::size_t sw) {
  return winograd_wanted(kn) && kn.wino_image && KH == 5 && KW == 5 && sh == 1 && sw == 1 && C >= kWinogradMinC &&
         C <= kWinogradMaxC;
}
template <class T>
bool winograd_for(const conv::Kernels<T>&, std::size_t, std::size_t, std::size_t, std::size_t, std::size_t) {
  return false;
}

// The forward and dJ/dK by Winograd along the rows (WinoRowPlan): 5x5 kernels at stride
// 1 with fewer input channels than F(2x2, 5x5) takes (conv1 of a CNN), in the same modes.
bool winograd_rows_for(const conv::Kernels<float>& kn, std::size_t C, std::size_t KH, std::size_t KW,
                       std::size_t sh, std::size_t sw) {
  return winograd_wanted(kn) && kn.wino_row_dk_image && kn.wino_row_pixels && KH == 5 && KW == 5 && sh == 1 && sw == 1 &&
         C < kWinogradMinC;
}

// U (C, 5, Opad / L, 8, L) of the forward by Winograd along the rows (ops/conv2d_simd.inc,
// wino_row_pixels): U[c][p][o / L][xi][o % L] = (G k[o, c, p, .])[xi] with F(4, 5)'s G,
// whose row xi < 7 is s_xi (1, a, a^2, a^3, a^4) at its point a and whose row 7 picks
// k[., ., ., 4] (row 0's sign moved to B^T); in double, rounded once. Zero for o >= O.
// Call from every thread of a team.
void wino_row_kernels_in_team(const float* k, std::size_t O, std::size_t C, std::size_t Opad, std::size_t L,
                              float* U) {
  static constexpr double a[7] = {0, 1, -1, 2, -2, 0.5, -0.5};
  static constexpr double s[7] = {1, -2.0 / 9, -2.0 / 9, 1.0 / 90, 1.0 / 90, 32.0 / 45, 32.0 / 45};
#pragma omp for schedule(static)
  for (std::size_t o = 0; o < Opad; ++o)
    for (std::size_t c = 0; c < C; ++c)
      for (std::size_t p = 0; p < 5; ++p) {
        float* u = U + ((c * 5 + p) * Opad + o / L * L) * 8 + o % L;
        const float* kr = o < O ? k + ((o * C + c) * 5 + p) * 5 : nullptr;
        for (std::size_t xi = 0; xi < 8; ++xi) {
          double v = 0;
          if (kr && xi == 7) {
            v = kr[4];
          } else if (kr) {
            double aq = 1;  // a^q
            for (std::size_t q = 0; q < 5; ++q, aq *= a[xi]) v += aq * kr[q];
            v *= s[xi];
          }
          u[xi * L] = static_cast<float>(v);
        }
      }
}

// chan: output channels per register block (0: the kernels' choice for O).
WinogradPlan winograd_plan(const conv::Kernels<float>& kn, std::size_t C, std::size_t H, std::size_t W,
                           std::size_t O, std::size_t ph, std::size_t pw, std::size_t chan = 0) {
  if (chan == 0) chan = kn.chan_block(O);
  return WinogradPlan(C, H, W, O, ph, pw, kn.lanes, chan, kn.wino_block(chan));
}

// U for the 5x5 kernels k (O, C, 5, 5) (ops/conv2d_simd.inc), zero in the padding
// channels: call from every thread of a team (an omp for over the input channels, each
// thread writing whole rows of U).
void winograd_kernels_in_team(const conv::Kernels<float>& kn, const WinogradPlan& pl, const float* k, float* U) {
#pragma omp for schedule(static)
  for (std::size_t c = 0; c < pl.C; ++c) kn.wino_kernel(k, pl.C, pl.O, pl.Opad, c, c + 1, U);
}

// The same for dJ/dx's convolution, whose kernel is the forward's flipped and
// transposed, kflip[c, o, p, q] = k[o, c, KH-1-p, KW-1-q] (C_in, C_out, 5, 5) with k
// (C_out, C_in, 5, 5): this plan's input channels are the forward's C_out, its outputs
// the forward's C_in. Each thread writes kflip[:, o] for its o (the rows wino_kernel
// then reads), so the flip needs no barrier and no serial loop before the region.
// flip = false: transposed only, U[xi][o][c] = (G k[o, c] G^T)[xi], the U^T that
// dJ/dx from dJ/dK's blocks multiplies by (wino_dk_dx_image).
void winograd_flipped_kernels_in_team(const conv::Kernels<float>& kn, const WinogradPlan& pl, const float* k,
                                      float* kflip, float* U, bool flip = true) {
#pragma omp for schedule(static)
  for (std::size_t o = 0; o < pl.C; ++o) {
    for (std::size_t c = 0; c < pl.O; ++c)
      for (std::size_t t = 0; t < 25; ++t)
        kflip[(c * pl.C + o) * 25 + t] = k[(o * pl.O + c) * 25 + (flip ? 24 - t : t)];
    kn.wino_kernel(kflip, pl.C, pl.O, pl.Opad, o, o + 1, U);
  }
}

// w[(c,p,q), o] = k[o,c,p,q] for the direct kernels, zero in the padding channels
// o >= C_out: an omp for over the taps (c,p,q), from every thread of a team; the caller
// waits at its barrier before any image reads w.
template <class T>
void direct_weights_in_team(const T* k, std::size_t CKK, std::size_t O, std::size_t Opad, T* w) {
#pragma omp for schedule(static)
  for (std::size_t t = 0; t < CKK; ++t)
    for (std::size_t o = 0; o < Opad; ++o) w[t * Opad + o] = o < O ? k[o * CKK + t] : T(0);
}

// wflip[(o,p,q), c] = k[o, c, KH-1-p, KW-1-q], zero in the padding channels c >= C_in:
// dJ/dx's weights for the direct kernels, whose input channels are the forward's C_out
// (k is (C_out, C_in, KH, KW)); an omp for over o, as direct_weights_in_team.
template <class T>
void direct_flipped_weights_in_team(const T* k, std::size_t O, std::size_t C, std::size_t KH, std::size_t KW,
                                    std::size_t Cpad, T* wflip) {
#pragma omp for schedule(static)
  for (std::size_t o = 0; o < O; ++o)
    for (std::size_t p = 0; p < KH; ++p)
      for (std::size_t q = 0; q < KW; ++q) {
        T* dst = wflip + ((o * KH + p) * KW + q) * Cpad;
        for (std::size_t c = 0; c < Cpad; ++c)
          dst[c] = c < C ? k[((o * C + c) * KH + KH - 1 - p) * KW + KW - 1 - q] : T(0);
      }
}

// dK[o, c] += G^T M[c][o] G (5x5 from 6x6) for every input channel c and the output
// channels o0 <= o < min(o0 + kDkOut, O), M (36, C, Opad) the sum in thread order of the
// team's dJ/dK partials; G is F(2x2, 5x5)'s kernel transform (ops/conv2d_simd.inc,
// winograd_g), applied in double, kDkOut output channels side by side in a vector
// (M's rows hold them next to each other). dk is dK (O, C, 5, 5).
constexpr std::size_t kDkOut = 8;

// dK[o, c, p, q] += sum_xi A^T[q][xi] s[xi] M[c][p][xi][o] for every input channel c and
// the output channels o0 <= o < min(o0 + kDkOut, O), M (C, 5, 8, Opad) the team's sum
// of the row Winograd's partials (WinoRowPlan; A^T is F(5, 4)'s, s the factors of its G
// that the float transform leaves out: ops/conv2d_simd.inc), in double. dk is dK (O, C,
// 5, 5).
template <class T>
void wino_row_dk_output(const double* M, std::size_t C, std::size_t O, std::size_t Opad, std::size_t o0, T* dk) {
  static constexpr double kAT[5][8] = {{1, 1, 1, 1, 1, 1, 1, 0},
                                       {0, 1, -1, 2, -2, 0.5, -0.5, 0},
                                       {0, 1, 1, 4, 4, 0.25, 0.25, 0},
                                       {0, 1, -1, 8, -8, 0.125, -0.125, 0},
                                       {0, 1, 1, 16, 16, 0.0625, 0.0625, 1}};
  static constexpr double kRowGScale[8] = {1, -2.0 / 9, -2.0 / 9, 1.0 / 90, 1.0 / 90, 32.0 / 45, 32.0 / 45, 1};
  for (std::size_t o = o0; o < std::min(o0 + kDkOut, O); ++o)
    for (std::size_t c = 0; c < C; ++c)
      for (std::size_t p = 0; p < 5; ++p)
        for (std::size_t q = 0; q < 5; ++q) {
          double v = 0;
          for (std::size_t xi = 0; xi < 8; ++xi) v += kAT[q][xi] * kRowGScale[xi] * M[((c * 5 + p) * 8 + xi) * Opad + o];
          dk[((o * C + c) * 5 + p) * 5 + q] += static_cast<T>(v);
        }
}

template <class T>
void wino_dk_output(const double* M, std::size_t C, std::size_t O, std::size_t Opad, std::size_t o0, T* dk) {
  typedef double D __attribute__((vector_size(kDkOut * sizeof(double))));
  // out[k] = sum_a G[a][k] in[a*s], k < 5: G^T's rows, by sums and differences
  auto gt = [](const D* in, std::size_t s, D* out, std::size_t so) {
    const D s12 = in[s] + in[2 * s], d12 = in[s] - in[2 * s], s34 = in[3 * s] + in[4 * s], d34 = in[3 * s] - in[4 * s];
    out[0] = in[0] * (1.0 / 4) + s12 * (1.0 / 6) + s34 * (1.0 / 24);
    out[so] = d12 * (1.0 / 6) + d34 * (1.0 / 12);
    out[2 * so] = (s12 + s34) * (1.0 / 6);
    out[3 * so] = d12 * (1.0 / 6) + d34 * (1.0 / 3);
    out[4 * so] = s12 * (1.0 / 6) + s34 * (2.0 / 3) + in[5 * s];
  };
  const std::size_t n = std::min(kDkOut, O - o0);
  for (std::size_t c = 0; c < C; ++c) {
    D m[36];
    for (std::size_t xi = 0; xi < 36; ++xi) {
      const double* row = M + (xi * C + c) * Opad + o0;
      if (n == kDkOut) {
        std::memcpy(&m[xi], row, sizeof(D));
      } else {
        m[xi] = D{};
        for (std::size_t l = 0; l < n; ++l) m[xi][l] = row[l];
      }
    }
    D t[5][6], r[5][5];
    for (std::size_t b = 0; b < 6; ++b) gt(m + b, 6, &t[0][b], 6);   // G^T M (5x6), down the columns
    for (std::size_t p = 0; p < 5; ++p) gt(&t[p][0], 1, &r[p][0], 1);  // (G^T M) G, along the rows
    for (std::size_t l = 0; l < n; ++l) {
      T* d = dk + ((o0 + l) * C + c) * 25;
      for (std::size_t e = 0; e < 25; ++e) d[e] += static_cast<T>(r[e / 5][e % 5][l]);
    }
  }
}

// The DirectPlan of these arguments, built once per calling thread and kept with the
// last few: building its tap lists (conv2's: ~7,500 taps) took tens of microseconds on
// the calling thread before every forward and VJP, serial time that more threads do
// not shorten (bench/README.md, "Serial time"). Shared pointers, so that a plan
// stays alive while in use even when a later lookup evicts it.
std::shared_ptr<const DirectPlan> direct_plan(std::size_t C, std::size_t H, std::size_t W, std::size_t O,
                                              std::size_t KH, std::size_t KW, std::size_t sh, std::size_t sw,
                                              std::size_t ph, std::size_t pw, std::size_t chan) {
  using Key = std::array<std::size_t, 11>;
  const Key key{C, H, W, O, KH, KW, sh, sw, ph, pw, chan};
  thread_local std::vector<std::pair<Key, std::shared_ptr<const DirectPlan>>> cache;  // the most recent last
  for (std::size_t i = 0; i < cache.size(); ++i)
    if (cache[i].first == key) {
      std::rotate(cache.begin() + static_cast<std::ptrdiff_t>(i), cache.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                  cache.end());
      return cache.back().second;
    }
  constexpr std::size_t kPlans = 8;  // a network's distinct convolutions, forward and VJP
  if (cache.size() == kPlans) cache.erase(cache.begin());
  cache.emplace_back(key, std::make_shared<const DirectPlan>(C, H, W, O, KH, KW, sh, sw, ph, pw, chan));
  return cache.back().second;
}

std::shared_ptr<const DirectPlan> direct_plan(const ConvGeom& g, std::size_t chan) {
  return direct_plan(g.C, g.H, g.W, g.O, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, chan);
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

// The plain path's Winograd forward over its work items (float; the caller has checked
// winograd_for): the team transforms the kernel into U, then item(pl, U, in, n, oa, ob)
// runs for each item, `in` image n's input and [oa, ob) the item's output channels.
// conv2d_forward, conv2d_forward_pixels and conv2d_relu_pool_pixels differ only in item.
template <class F>
void winograd_forward_items(const ConvGeom& g, const float* x, const float* k, F item) {
  const conv::Kernels<float>& kn = conv::kernels<float>();
  const WorkItems it = work_items(kn, g, g.O);
  const WinogradPlan pl = winograd_plan(kn, g.C, g.H, g.W, g.O, g.ph, g.pw, it.chan(kn, g.O));
  float* U = scratch<float>(36 * g.C * pl.Opad, 4);
#pragma omp parallel if (it.parallel)
  {
    winograd_kernels_in_team(kn, pl, k, U);
#pragma omp for schedule(static)
    for (std::size_t i = 0; i < g.N * it.parts; ++i) {
      const std::size_t n = i / it.parts;
      const auto [oa, ob] = it.channels(i, pl.Opad, pl.chan);
      item(pl, U, x + n * g.C * g.H * g.W, n, oa, ob);
    }
  }
}

}  // namespace

WinogradMode conv2d_winograd() {
  int v = g_winograd.load(std::memory_order_acquire);
  if (v < 0) {
    const char* env = std::getenv("AD_WINOGRAD");
    const std::string e = env ? env : "";
    v = static_cast<int>(e == "0" ? WinogradMode::Off : e == "1" ? WinogradMode::On : WinogradMode::Auto);
    g_winograd.store(v, std::memory_order_release);
  }
  return static_cast<WinogradMode>(v);
}

void set_conv2d_winograd(WinogradMode m) { g_winograd.store(static_cast<int>(m), std::memory_order_release); }

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
  const conv::Kernels<T>& kn = conv::kernels<T>();
  const WorkItems it = work_items(kn, g, g.O);
  const std::size_t items = g.N * it.parts;
  if constexpr (std::is_same_v<T, float>) {
    if (winograd_for(kn, g.C, g.KH, g.KW, g.sh, g.sw)) {
      winograd_forward_items(g, x.data(), kp, [&](const WinogradPlan& pl, const float* U, const float* in,
                                                   std::size_t n, std::size_t oa, std::size_t ob) {
        kn.wino_image(pl, in, U, bp, false, y.data() + n * g.O * P, scratch<float>(pl.grid_size(), 0),
                      scratch<float>(pl.block_scratch(), 5), scratch<float>(P * pl.Opad, 1), oa, ob);
      });
      return;
    }
  }
  const std::shared_ptr<const DirectPlan> plan = direct_plan(g, it.chan(kn, g.O));
  const DirectPlan& pl = *plan;
  // by Winograd along the rows where it applies (w then holds its U)
  std::optional<WinoRowPlan> plr;
  if constexpr (std::is_same_v<T, float>)
    if (winograd_rows_for(kn, g.C, g.KH, g.KW, g.sh, g.sw)) plr.emplace(g.C, g.H, g.W, g.O, g.ph, g.pw, kn.lanes, pl.Opad);
  T* w = scratch<T>(plr ? g.C * 40 * pl.Opad : CKK * pl.Opad, 4);
#pragma omp parallel if (it.parallel)
  {
    if constexpr (std::is_same_v<T, float>)
      if (plr) wino_row_kernels_in_team(kp, g.O, g.C, pl.Opad, kn.lanes, w);
    if (!plr) direct_weights_in_team(kp, CKK, g.O, pl.Opad, w);
#pragma omp for schedule(static)
    for (std::size_t i = 0; i < items; ++i) {
      const std::size_t n = i / it.parts;
      const auto [oa, ob] = it.channels(i, pl.Opad, pl.chan);
      T* yt = scratch<T>(P * pl.Opad, 1);
      if (plr) {
        kn.wino_row_pixels(*plr, x.data() + n * g.C * g.H * g.W, w,
                           scratch<T>(plr->scratch() + plr->live_scratch(), 5), yt, oa, ob);
        kn.pixels_to_planes(yt + oa, P, pl.Opad, std::min(ob, g.O) - std::min(oa, g.O), bp ? bp + oa : bp, false,
                            y.data() + n * g.O * P + oa * P);
      } else {
        T* xp = scratch<T>(pl.padded_size(), 0);
        kn.conv_image(pl, x.data() + n * g.C * g.H * g.W, w, bp, false, y.data() + n * g.O * P, xp, yt, oa, ob);
      }
    }
  }
}

namespace detail {

bool conv2d_pixels_path(const Shape& k, const Conv2dOptions& a) {
  return is_plain(a) && !(k[2] == 1 && k[3] == 1 && a.stride[0] == 1 && a.stride[1] == 1 && a.padding[0] == 0 &&
                          a.padding[1] == 0);  // not ConvGeom::one_by_one
}

template <class T>
bool conv2d_forward_pixels(const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a,
                           const std::function<void(std::size_t n, const T* yt, std::size_t Opad, std::size_t oa,
                                                    std::size_t ob)>& out,
                           const PixelCopy<T>& xpx) {
  if (!conv2d_pixels_path(Shape(k.shape().begin(), k.shape().end()), a)) return false;
  const ConvGeom g = geom(x, k, a);
  const std::size_t CKK = g.ckk(), P = g.p();
  const T* kp = k.data();
  const conv::Kernels<T>& kn = conv::kernels<T>();
  const WorkItems it = work_items(kn, g, g.O);  // as conv2d_forward
  const std::size_t items = g.N * it.parts;
  if constexpr (std::is_same_v<T, float>) {
    if (winograd_for(kn, g.C, g.KH, g.KW, g.sh, g.sw)) {  // as conv2d_forward
      winograd_forward_items(g, x.data(), kp, [&](const WinogradPlan& pl, const float* U, const float* in,
                                                   std::size_t n, std::size_t oa, std::size_t ob) {
        float* yt = scratch<float>(P * pl.Opad, 1);
        const float* px = xpx.image(n, g.H * g.W);
        if (px && n + 1 < g.N) prefetch_l2(xpx.image(n + 1, g.H * g.W), g.H * g.W * xpx.stride);  // the next image's
        kn.wino_pixels(pl, px ? px : in, px ? xpx.stride : 0, U, scratch<float>(pl.grid_size(), 0),
                       scratch<float>(pl.block_scratch(), 5), yt, oa, ob);
        out(n, yt, pl.Opad, oa, ob);
      });
      return true;
    }
  }
  const std::shared_ptr<const DirectPlan> plan = direct_plan(g, it.chan(kn, g.O));
  const DirectPlan& pl = *plan;
  std::optional<WinoRowPlan> plr;  // as conv2d_forward
  if constexpr (std::is_same_v<T, float>)
    if (winograd_rows_for(kn, g.C, g.KH, g.KW, g.sh, g.sw)) plr.emplace(g.C, g.H, g.W, g.O, g.ph, g.pw, kn.lanes, pl.Opad);
  T* w = scratch<T>(plr ? g.C * 40 * pl.Opad : CKK * pl.Opad, 4);
#pragma omp parallel if (it.parallel)
  {
    if constexpr (std::is_same_v<T, float>)
      if (plr) wino_row_kernels_in_team(kp, g.O, g.C, pl.Opad, kn.lanes, w);
    if (!plr) direct_weights_in_team(kp, CKK, g.O, pl.Opad, w);
#pragma omp for schedule(static)
    for (std::size_t i = 0; i < items; ++i) {
      const auto [oa, ob] = it.channels(i, pl.Opad, pl.chan);
      const T* xn = x.data() + i / it.parts * g.C * g.H * g.W;
      T* yt = scratch<T>(P * pl.Opad, 1);
      if (plr) kn.wino_row_pixels(*plr, xn, w, scratch<T>(plr->scratch() + plr->live_scratch(), 5), yt, oa, ob);
      else kn.conv_pixels(pl, xn, w, scratch<T>(pl.padded_size(), 0), yt, oa, ob);
      out(i / it.parts, yt, pl.Opad, oa, ob);
    }
  }
  return true;
}

template <class T>
bool conv2d_relu_pool_pixels(const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a, const T* bias,
                             const std::function<void(std::size_t n, const T* pt, std::size_t Opad, std::size_t oa,
                                                      std::size_t ob)>& out) {
  if constexpr (std::is_same_v<T, float>) {
    if (!is_plain(a)) return false;
    const ConvGeom g = geom(x, k, a);
    const conv::Kernels<T>& kn = conv::kernels<T>();
    if (g.one_by_one() || !winograd_for(kn, g.C, g.KH, g.KW, g.sh, g.sw)) return false;
    const std::size_t PP = (g.OH / 2) * (g.OW / 2);
    winograd_forward_items(g, x.data(), k.data(), [&](const WinogradPlan& pl, const float* U, const float* in,
                                                      std::size_t n, std::size_t oa, std::size_t ob) {
      float* pt = scratch<float>(PP * pl.Opad, 1);
      kn.wino_relu_pool_pixels(pl, in, U, bias, scratch<float>(pl.grid_size(), 0),
                               scratch<float>(pl.block_scratch(), 5), pt, oa, ob);
      out(n, pt, pl.Opad, oa, ob);
    });
    return true;
  } else {
    (void)x, (void)k, (void)a, (void)bias, (void)out;
    return false;
  }
}

}  // namespace detail

namespace {

// conv2d_vjp on the plain path (is_plain): dJ/dy is grad_out's data gp (N, C_out, OH, OW)
// or, where grad_image is set, written image by image into a buffer of the calling
// thread by (*grad_image)(n, buffer) (detail::conv2d_vjp_images), or where grad_pixels
// is set, pixel-major by (*grad_pixels)(n, gt, Opad) (detail::conv2d_vjp_pixels).
// overwrite_x: grad_x is written, not added to (Tape::grad_buffer_for_overwrite).
template <class T>
using GradPixels = std::function<void(std::size_t n, T* gt, std::size_t Opad)>;

template <class T>
void conv2d_vjp_plain(const T* gp, const std::function<void(std::size_t n, T* gn)>* grad_image,
                      const GradPixels<T>* grad_pixels, const Tensor<T>& x, const Tensor<T>& k,
                      const Conv2dOptions& a, Tensor<T>* grad_x, Tensor<T>* grad_k, Tensor<T>* grad_b,
                      bool overwrite_x = false, const detail::PixelCopy<T>& xpx = {}) {
  if (!grad_x && !grad_k && !grad_b) return;
  const ConvGeom g = geom(x, k, a);
  const std::size_t CKK = g.ckk(), P = g.p(), HW = g.H * g.W;
  const T* kp = k.data();
  const bool one = g.one_by_one();

  const conv::Kernels<T>& kn = conv::kernels<T>();
  // dJ/dx as the direct convolution of grad_out with the flipped kernel (stride 1,
  // padding < kernel): input (C_out, OH, OW), output (C_in, H, W), padding KH-1-ph.
  const bool dx_direct = grad_x && !one && g.sh == 1 && g.sw == 1 && g.ph < g.KH && g.pw < g.KW;
  // Work items (WorkItems): images split by channel ranges (of C_out for dJ/dK and dJ/db,
  // of C_in for dJ/dx) where the batch has fewer images than threads, unless a 1x1 GEMM
  // or dJ/dx's GEMM-and-col2im path takes part.
  const bool splittable = !one && (!grad_x || dx_direct);
  const WorkItems it = work_items(kn, g, splittable ? std::max(grad_k || grad_b ? g.O : 0, grad_x ? g.C : 0) : 0);
  const std::size_t items = g.N * it.parts;
  // dJ/dK through the direct plan of the forward (its padded input and taps).
  const std::shared_ptr<const DirectPlan> plan = direct_plan(g, it.chan(kn, g.O));
  const DirectPlan& pl = *plan;
  std::shared_ptr<const DirectPlan> plx;
  T* wflip = nullptr;
  // ... by Winograd where it applies: the flipped kernel kflip[c, o, p, q] = k[o, c, KH-1-p, KW-1-q]
  // (C_in, C_out, 5, 5), flipped and transformed in the parallel region below.
  std::optional<WinogradPlan> plw;
  T* kflip = nullptr;
  if (dx_direct && winograd_for(kn, g.O, g.KH, g.KW, 1, 1)) {
    if constexpr (std::is_same_v<T, float>)
      plw.emplace(winograd_plan(kn, g.O, g.OH, g.OW, g.C, g.KH - 1 - g.ph, g.KW - 1 - g.pw, it.chan(kn, g.C)));
    kflip = scratch<T>(g.C * g.O * 25, 6);
    wflip = scratch<T>(36 * g.O * plw->Opad, 4);  // U of kflip
  } else if (dx_direct) {
    plx = direct_plan(g.O, g.OH, g.OW, g.C, g.KH, g.KW, 1, 1, g.KH - 1 - g.ph, g.KW - 1 - g.pw, it.chan(kn, g.C));
    wflip = scratch<T>(g.O * g.KH * g.KW * plx->Opad, 4);  // filled in the region below
  }

  // dJ/dK by Winograd where the forward would use it (float) and the batch is small
  // enough (kWinogradDkMaxTiles): the 36 x (C_in, Opad) sums M of ops/conv2d_simd.inc,
  // dK = G^T M G at the end. Opad is the direct plan's (the same chan_block(O)), which
  // the bias's partials and gt use too.
  std::optional<WinogradPlan> plk;
  if constexpr (std::is_same_v<T, float>)
    if (grad_k && !one && winograd_for(kn, g.C, g.KH, g.KW, g.sh, g.sw) && kn.wino_dk_image)
      if (const WinogradPlan p = winograd_plan(kn, g.C, g.H, g.W, g.O, g.ph, g.pw, pl.chan);
          g.N * p.tiles() <= kWinogradDkMaxTiles)
        plk.emplace(p);

  // ... or by Winograd along the rows where that does not apply for want of channels
  // (WinoRowPlan, float: the M partials below are then (C_in, 5, 8, Opad))
  std::optional<WinoRowPlan> plr;
  if constexpr (std::is_same_v<T, float>)
    if (grad_k && !one && !plk && winograd_rows_for(kn, g.C, g.KH, g.KW, g.sh, g.sw))
      if (const WinoRowPlan p(g.C, g.H, g.W, g.O, g.ph, g.pw, kn.lanes, pl.Opad);
          g.N * p.OH * p.T <= kWinogradRowDkMaxTiles)
        plr.emplace(p);

  // dJ/dx from dJ/dK's blocks (wino_dk_dx_image) where both are by Winograd: the
  // forward's VJP tile by tile, on dJ/dK's transformed dJ/dy, instead of the convolution
  // of dJ/dy with the flipped kernel (whose 6x6 transform of dJ/dy's C_out channels it
  // saves); wflip then holds U^T, (36, C_out, plw->Opad). Where images are split by
  // channels, each item transforms all of dJ/dy and takes its own channels of dJ/dx,
  // summed in the same order: dJ/dx does not depend on the thread count.
  const bool dx_in_dk = plk && plw && kn.wino_dk_dx_image;

  // Each thread sums dJ/dK and dJ/db over its images into its own partials; the
  // partials are added in thread order at the end of the same parallel region, so the
  // result does not depend on timing. dJ/dK partials are (C*KH*KW, Opad) on the direct
  // path, (36, C_in, Opad) by Winograd, (C_out, C_in) for a 1x1 kernel; dJ/db partials
  // have Opad entries.
  const std::size_t kpart = one ? g.O * CKK : plk || plr ? 0 : CKK * pl.Opad;
  const std::size_t part = kpart + pl.Opad;
  const int nt = omp_get_max_threads();
  T* partial = scratch<T>(static_cast<std::size_t>(nt) * part, 3);
  // Winograd's dJ/dK partials M, (36, C_in, Opad) each, in double (ops/conv2d_simd.inc),
  // or the row Winograd's
  const std::size_t mpart = plk ? 36 * g.C * pl.Opad : plr ? plr->m_elems() : 0;
  double* mpartial = mpart ? scratch<double>(static_cast<std::size_t>(nt) * mpart, 0) : nullptr;
#pragma omp parallel num_threads(nt) if (it.parallel)
  {
    const std::size_t team = static_cast<std::size_t>(omp_get_num_threads());
    T* gk = partial + static_cast<std::size_t>(omp_get_thread_num()) * part;
    T* gb = gk + kpart;
    std::fill(gk, gk + part, T(0));  // each thread its own partials
    double* gm = mpartial + static_cast<std::size_t>(omp_get_thread_num()) * mpart;
    std::fill(gm, gm + mpart, 0.0);
    if constexpr (std::is_same_v<T, float>)
      if (plw) winograd_flipped_kernels_in_team(kn, *plw, kp, kflip, wflip, !dx_in_dk);
    if (plx) direct_flipped_weights_in_team(kp, g.O, g.C, g.KH, g.KW, plx->Opad, wflip);
#pragma omp for schedule(static)
    for (std::size_t i = 0; i < items; ++i) {
      const std::size_t n = i / it.parts;
      // this item's output channels (dJ/dK, dJ/db) and input channels (dJ/dx): all of
      // them unless the images are split (WorkItems)
      const auto [oa, ob] = it.channels(i, pl.Opad, pl.chan);
      const auto [ca, cb] = plw ? it.channels(i, plw->Opad, plw->chan)
                            : plx ? it.channels(i, plx->Opad, plx->chan)
                                  : std::pair<std::size_t, std::size_t>{0, 0};
      const bool want_k = (grad_k || grad_b) && oa < ob;
      bool want_x = grad_x && (one || !dx_direct || ca < cb);
      if (!want_k && !want_x) continue;
      const T* xn = x.data() + n * g.C * HW;
      // ... or pixel-major, for Winograd's dJ/dK (S = 0: planar)
      const T* xw = xpx.data ? xpx.image(n, HW) : xn;
      const std::size_t S = xpx.data ? xpx.stride : 0;
      if (S && n + 1 < g.N) prefetch_l2(xpx.image(n + 1, HW), HW * S);  // the next image's, while this one runs
      const T* gn = nullptr;  // image n's dJ/dy, planar (C_out, OH*OW), where a path reads it so
      T* gt = nullptr;        // ... and pixel-major (OH*OW, Opad)
      if (grad_pixels) {
        gt = scratch<T>(P * pl.Opad, 2);
        (*grad_pixels)(n, gt, pl.Opad);
        if (one || (want_x && !plw)) {
          T* buf = scratch<T>(g.O * P, 7);
          kn.pixels_to_planes(gt, P, pl.Opad, g.O, nullptr, false, buf);
          gn = buf;
        }
      } else if (grad_image) {
        T* buf = scratch<T>(g.O * P, 7);
        (*grad_image)(n, buf);
        gn = buf;
      } else {
        gn = gp + n * g.O * P;
      }
      // dK[o,c,p,q] += sum_{i,j} g[n,o,i,j] * x[n,c,i*sh+p-ph,j*sw+q-pw]
      // dJ/db_o += sum_{i,j} g[n,o,i,j]  (section 3.1.5: dJ/dvZ_j times the ones vector)
      if (one) {
        if (grad_b)
          for (std::size_t o = 0; o < g.O; ++o)
            for (std::size_t s = 0; s < P; ++s) gb[o] += gn[o * P + s];
        if (grad_k) gemm<T>(false, true, g.O, CKK, P, T(1), gn, xn, T(1), gk);  // (C_out, C_in) += g_n x_n^T
      } else if (want_k || (dx_in_dk && want_x)) {
        if (!gt) {
          gt = scratch<T>(P * pl.Opad, 2);
          kn.planes_to_pixels(gn, g.O, P, pl.Opad, gt);
        }
        if (grad_b && want_k) kn.bias_sum(gt, P, pl.Opad, gb, oa, ob);
        if (dx_in_dk && want_x) {
          if constexpr (std::is_same_v<T, float>)
            kn.wino_dk_dx_image(*plk, xw, S, gt, wflip, plw->chan, scratch<float>(plk->grid_size(), 0),
                                scratch<float>(plk->dk_scratch(), 5), scratch<float>(plk->dx_scratch(plw->Opad), 1),
                                gm, oa, ob, ca, cb, !overwrite_x,
                                grad_x->data() + n * g.C * HW);
          want_x = false;  // done
        } else if (plk) {
          if constexpr (std::is_same_v<T, float>)
            kn.wino_dk_image(*plk, xw, S, gt, scratch<float>(plk->grid_size(), 0), scratch<float>(plk->dk_scratch(), 5),
                             gm, oa, ob);
        } else if (plr) {
          if constexpr (std::is_same_v<T, float>)
            kn.wino_row_dk_image(*plr, xn, gt, scratch<float>(plr->scratch(), 5), gm, oa, ob);
        } else if (grad_k) {
          T* xp = scratch<T>(pl.padded_size(), 0);
          kn.pad_columns(xn, pl, xp);
          kn.dk_image(pl, xp, gt, gk, oa, ob);
        }
      }
      if (want_x) {
        // dx[n,c,i*sh+p-ph,j*sw+q-pw] += sum_o k[o,c,p,q] * g[n,o,i,j]
        T* gxn = grad_x->data() + n * g.C * HW;
        if (one) {
          gemm<T>(true, false, CKK, P, g.O, T(1), kp, gn, overwrite_x ? T(0) : T(1), gxn);
        } else if (plw) {
          if constexpr (std::is_same_v<T, float>) {
            float* grid = scratch<float>(plw->grid_size(), 0);
            float* blk = scratch<float>(plw->block_scratch(), 5);
            float* yt = scratch<float>(HW * plw->Opad, 1);
            if (gt) kn.wino_image_px(*plw, gt, pl.Opad, wflip, nullptr, !overwrite_x, gxn, grid, blk, yt, ca, cb);
            else kn.wino_image(*plw, gn, wflip, nullptr, !overwrite_x, gxn, grid, blk, yt, ca, cb);
          }
        } else if (dx_direct) {
          T* gpad = scratch<T>(plx->padded_size(), 0);
          T* yt = scratch<T>(HW * plx->Opad, 1);
          kn.conv_image(*plx, gn, wflip, static_cast<const T*>(nullptr), !overwrite_x, gxn, gpad, yt, ca, cb);
        } else {
          // dcol (CKK, P) = K^T (CKK, C_out) x g_n (C_out, P), then col2im adds it up.
          T* dcol = scratch<T>(CKK * P, 1);
          gemm<T>(true, false, CKK, P, g.O, T(1), kp, gn, T(0), dcol);
          if (overwrite_x) std::fill(gxn, gxn + g.C * HW, T(0));
          col2im_add(dcol, g, gxn);
        }
      }
    }
    // The partials summed in thread order (deterministic for a given thread count,
    // after the loop's barrier), each thread for a contiguous share of the partials'
    // elements, so that each element of each partial is read once. (Split by output
    // channel instead, every thread read a cache line of every partial for each of its
    // channels, which lie across the lines: at 16 threads 16 times conv2's 0.8 MB of
    // direct partials, or its 2.4 MB of Winograd's.) dK is (C_out, C_in, KH, KW); the
    // direct path's partials are (C*KH*KW, Opad), Winograd's (36, C_in, Opad).
    if ((plk || plr) && team > 1) {
      // M = M_0 + M_1 + ... in thread order, into M_0; then dK = G^T M G below
#pragma omp for schedule(static)
      for (std::size_t e = 0; e < mpart; ++e) {
        double m = mpartial[e];
        for (std::size_t t = 1; t < team; ++t) m += mpartial[t * mpart + e];
        mpartial[e] = m;
      }
    }
    if (grad_k && !plk && !plr && !one) {
#pragma omp for schedule(static)
      for (std::size_t e = 0; e < CKK * pl.Opad; ++e) {
        const std::size_t tap = e / pl.Opad, o = e % pl.Opad;
        if (o >= g.O) continue;
        T& dst = grad_k->data()[o * CKK + tap];
        for (std::size_t t = 0; t < team; ++t) dst += partial[t * part + e];
      }
    }
    if (plk) {  // (then no 1x1 kernel: the loop below does not write grad_k)
#pragma omp for schedule(static) nowait
      for (std::size_t ob = 0; ob < (g.O + kDkOut - 1) / kDkOut; ++ob)
        wino_dk_output(mpartial, g.C, g.O, pl.Opad, ob * kDkOut, grad_k->data());
    } else if (plr) {
#pragma omp for schedule(static) nowait
      for (std::size_t ob = 0; ob < (g.O + kDkOut - 1) / kDkOut; ++ob)
        wino_row_dk_output(mpartial, g.C, g.O, pl.Opad, ob * kDkOut, grad_k->data());
    }
#pragma omp for schedule(static)
    for (std::size_t o = 0; o < g.O; ++o) {
      for (std::size_t t = 0; t < team; ++t) {
        const T* pk = partial + t * part;
        if (grad_k && one) {
          T* dst = grad_k->data() + o * CKK;
          for (std::size_t i = 0; i < CKK; ++i) dst[i] += pk[o * CKK + i];
        }
        if (grad_b) grad_b->data()[o] += pk[kpart + o];
      }
    }
  }
}

}  // namespace

template <class T>
void conv2d_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a,
                Tensor<T>* grad_x, Tensor<T>* grad_k, Tensor<T>* grad_b) {
  if (!is_plain(a)) return conv2d_general_vjp(grad_out, x, k, a, grad_x, grad_k, grad_b);  // conv2d_general.cpp
  conv2d_vjp_plain<T>(grad_out.data(), nullptr, nullptr, x, k, a, grad_x, grad_k, grad_b);
}

namespace detail {

template <class T>
bool conv2d_vjp_images(const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a,
                       const std::function<void(std::size_t n, T* gn)>& grad_image, Tensor<T>* grad_x,
                       Tensor<T>* grad_k, Tensor<T>* grad_b) {
  if (!is_plain(a)) return false;
  conv2d_vjp_plain<T>(nullptr, &grad_image, nullptr, x, k, a, grad_x, grad_k, grad_b);
  return true;
}

template <class T>
bool conv2d_vjp_pixels(const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a,
                       const GradPixels<T>& grad_pixels, Tensor<T>* grad_x, Tensor<T>* grad_k, Tensor<T>* grad_b,
                       bool overwrite_x, const PixelCopy<T>& xpx) {
  if (!is_plain(a)) return false;
  conv2d_vjp_plain<T>(nullptr, nullptr, &grad_pixels, x, k, a, grad_x, grad_k, grad_b, overwrite_x, xpx);
  return true;
}

}  // namespace detail

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

namespace conv {
template <class T>
const Kernels<T>& kernels() {
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::Avx512: return kernels_avx512<T>();
    case Isa::Avx2: return kernels_avx2<T>();
    case Isa::Avx512Emulated: return kernels_avx512_emulated<T>();
#endif
    default: return kernels_baseline<T>();
  }
}
template const Kernels<float>& kernels<float>();
template const Kernels<double>& kernels<double>();
}  // namespace conv

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
  template bool detail::conv2d_forward_pixels<T>(const Tensor<T>&, const Tensor<T>&, const Conv2dOptions&,   \
                                                 const std::function<void(std::size_t, const T*, std::size_t,      \
                                                                          std::size_t, std::size_t)>&,             \
                                                 const detail::PixelCopy<T>&);                             \
  template bool detail::conv2d_relu_pool_pixels<T>(                                                         \
      const Tensor<T>&, const Tensor<T>&, const Conv2dOptions&, const T*,                                   \
      const std::function<void(std::size_t, const T*, std::size_t, std::size_t, std::size_t)>&);            \
  template bool detail::conv2d_vjp_images<T>(const Tensor<T>&, const Tensor<T>&, const Conv2dOptions&,       \
                                             const std::function<void(std::size_t, T*)>&, Tensor<T>*, Tensor<T>*, \
                                             Tensor<T>*);                                                   \
  template bool detail::conv2d_vjp_pixels<T>(const Tensor<T>&, const Tensor<T>&, const Conv2dOptions&,       \
                                             const std::function<void(std::size_t, T*, std::size_t)>&,      \
                                             Tensor<T>*, Tensor<T>*, Tensor<T>*, bool,                      \
                                             const detail::PixelCopy<T>&);                                  \
  template Value conv2d_backward_kernel<T>(Tape<T>&, Value, Value, std::size_t, std::size_t, const Conv2dOptions&, \
                                           std::source_location);                                          \
  template Value conv2d_backward_input<T>(Tape<T>&, Value, Value, const Shape&, const Conv2dOptions&,     \
                                          std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
