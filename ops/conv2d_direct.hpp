// The direct convolution behind conv2d (ops/conv2d.cpp): the plan of one geometry, which
// every instruction set shares, and the table of per-image kernels that each instruction
// set compiles for itself (ops/conv2d_simd.inc, built by ops/isa/conv2d_*.cpp).
//
// Layouts (one image): input (C, H, W); a zero-padded copy xp (C, H, Wp); the kernel
// repacked as w[(c,p,q)][o], (C*KH*KW, Opad); the pixel-major result yt (OH*OW, Opad),
// transposed into the output (O, OH*OW). Opad is O rounded up to the register tile's
// channel block, which depends on the vector width: `chan` below.
#pragma once

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include "ops/isa.hpp"

namespace ad::conv {

inline std::size_t round_up(std::size_t n, std::size_t m) { return (n + m - 1) / m * m; }

// A switch code's flag for a pooling window whose output did not pass ReLU (Kernels::
// relu_pool_codes); the code's low two bits are the winner's place in the 2x2 window.
inline constexpr int32_t kSwitchDead = 4;

// out[o, i, j] = sum_{c,p,q} w[(c*KH+p)*KW+q][o] * in[c, i*sh+p-ph, j*sw+q-pw] over the
// taps inside the image. Input rows in the padding are skipped by grouping output rows
// into classes with the same valid window rows; input columns in the padding by
// grouping, inside a class of at least kMinRowsForColumns rows, the output columns with
// the same valid window columns. Each group lists its taps, so a register tile runs one
// flat loop over them. Taps are read from the zero-padded copy xp, (C, H, Wp) with input
// column w at column w + L (L = pw), so a group may also keep a padding column (as a zero).
//   A padding of at least the kernel width (pw >= KW) would make that copy grow with
// the padding, not with the input (pw = 2^26 is 512 MB a row): there every row class is
// grouped by columns, no group reads a padding column, and the copy has no padding
// (L = 0, Wp = W), so the memory stays that of the input and the output.
struct DirectPlan {
  std::size_t C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw;
  bool unpadded;     // pw >= KW: columns always grouped, the copy holds no padding
  std::size_t L;     // the copy's left zero margin: input column w is at w + L
  std::size_t Wp;    // the copy's row width
  std::size_t chan;  // output channels per register tile (a multiple of the vector lanes)
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

  DirectPlan(std::size_t C_, std::size_t H_, std::size_t W_, std::size_t O_, std::size_t KH_, std::size_t KW_,
             std::size_t sh_, std::size_t sw_, std::size_t ph_, std::size_t pw_, std::size_t chan_)
      : C(C_), H(H_), W(W_), O(O_), KH(KH_), KW(KW_), sh(sh_), sw(sw_), ph(ph_), pw(pw_), chan(chan_) {
    OH = (H + 2 * ph - KH) / sh + 1;
    OW = (W + 2 * pw - KW) / sw + 1;
    unpadded = pw >= KW;
    L = unpadded ? 0 : pw;
    Wp = unpadded ? W : std::max(W + pw, (OW - 1) * sw + KW);
    Opad = round_up(O, chan);
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

// Winograd F(2x2, 5x5) for a 5x5 kernel at stride 1 (float only; see ops/conv2d.cpp):
// the output in 2x2 tiles, each from a 6x6 window of the zero-padded input,
//   Y = A^T [ (G K G^T) (.) (B^T D B) ] A      ((.) elementwise, 36 products per
// channel pair for 4 outputs instead of 100). Images are done in blocks of `block`
// tiles: transform the block's input windows, 36 small GEMMs over the input channels,
// transform back.
struct WinogradPlan {
  std::size_t C, H, W, O, ph, pw, OH, OW;
  std::size_t TH, TW;  // tiles down and across: ceil(OH / 2), ceil(OW / 2)
  std::size_t GH, GW;  // the padded input the tiles read: 2*TH + 4 rows, 2*TW + 4 columns
  std::size_t Cpad;    // C rounded up to whole vectors (the input is pixel-major, (H, W, Cpad))
  std::size_t chan;    // output channels per register tile
  std::size_t Opad;    // O rounded up to chan
  std::size_t block;   // tiles per block (the register tile's pixel count)
  std::size_t dk_block;  // tiles per block of dJ/dK's GEMMs (their inner dimension)
  std::size_t dk_stride;  // dk_block + 1: the tiles of one xi in dJ/dK's block scratch

  WinogradPlan(std::size_t C_, std::size_t H_, std::size_t W_, std::size_t O_, std::size_t ph_, std::size_t pw_,
               std::size_t lanes, std::size_t chan_, std::size_t block_)
      : C(C_), H(H_), W(W_), O(O_), ph(ph_), pw(pw_), chan(chan_), block(block_) {
    OH = H + 2 * ph - 4;
    OW = W + 2 * pw - 4;
    TH = (OH + 1) / 2, TW = (OW + 1) / 2;
    GH = 2 * TH + 4, GW = 2 * TW + 4;
    Cpad = round_up(C, lanes);
    Opad = round_up(O, chan);
    dk_block = std::min<std::size_t>(tiles(), kDkBlock);
    dk_stride = dk_block + 1;
  }
  // dJ/dK's blocks: long enough that its accumulators, added to M once a block, cost
  // little against the block's FMAs (ref-CNN's conv2, 49 tiles: one block of 49 trained
  // 5% faster than two of 25); short enough that a block's transforms (36 x 50 x (16 +
  // 32) floats for conv2: 345 KB) stay in a core's L2. The block's vectors of channels
  // are dk_stride = dk_block + 1 tiles apart (when the transformed gradients were laid
  // out (36, tiles, Opad), 32 tiles apart put a tile's 36 of them 4 KB apart, into one
  // set of the L1 cache, and the transforms took longer than the block's FMAs).
  static constexpr std::size_t kDkBlock = 64;
  std::size_t tiles() const { return TH * TW; }
  // the input, pixel-major (H, W, Cpad) (the padding is not stored), then its column
  // transforms per tile row (TH, Cpad / L, GW, 6, L): B^T applied down each column of
  // the tile row's 6 rows of the padded input
  std::size_t grid_elems() const { return H * W * Cpad; }
  std::size_t grid_size() const { return grid_elems() + TH * 6 * GW * Cpad; }
  // transformed input and products of one block: 36 x block x Cpad and 36 x block x Opad
  std::size_t block_scratch() const { return 36 * block * (Cpad + Opad); }
  // dJ/dK's: transformed windows and output gradients of one block
  std::size_t dk_scratch() const { return 36 * dk_stride * (Cpad + Opad); }
  // dJ/dx from dJ/dK's blocks (wino_dk_dx_image), for its Cx channels: the products of a
  // sub-block of at most kDxTiles tiles, one tile row's column sums, dJ/dx pixel-major
  // (H, W, Cx)
  static constexpr std::size_t kDxTiles = 12;
  std::size_t dx_scratch(std::size_t Cx) const { return (36 * kDxTiles + GW * 6 + H * W) * Cx; }
};

// A 5x5 convolution at stride 1 with few input channels (conv1 of a CNN, where F(2x2,
// 5x5) does not apply) by Winograd along the rows (float only; see ops/conv2d_simd.inc):
// its forward by F(4, 5), 40 products per 4 outputs and input channel instead of 100, and
// dJ/dK by F(5, 4): for each output row i, kernel row p and tile of 4 output columns,
// the 5 taps' sums over the tile, sum_j g[i, 4t+j] x[i+p, 4t+j+q] (q < 5), are
//   A^T [ (G g_tile) (.) (B^T x_segment) ]        (8 products for 20 multiply-adds),
// and M = sum of the products over rows, tiles and images; dK[., ., p, .] = A^T M once a
// batch. Tiles: T = ceil(OW / 4) a row; Rp = OH + 4 rows of transformed input (the
// zero-padded input's), rounded up to whole vectors.
struct WinoRowPlan {
  std::size_t C, H, W, O, ph, pw, OH, OW, T, Rp, Opad;
  WinoRowPlan(std::size_t C_, std::size_t H_, std::size_t W_, std::size_t O_, std::size_t ph_, std::size_t pw_,
              std::size_t lanes, std::size_t Opad_)
      : C(C_), H(H_), W(W_), O(O_), ph(ph_), pw(pw_), Opad(Opad_) {
    OH = H + 2 * ph - 4, OW = W + 2 * pw - 4;
    T = (OW + 3) / 4;
    Rp = round_up(OH + 4, lanes);
  }
  // M's elements: (C, 5, 8, Opad), in double
  std::size_t m_elems() const { return C * 40 * Opad; }
  // one image's: a zero-padded row of the input, B^T x for every channel (C, T, Rp, 8)
  std::size_t scratch() const { return 4 * T + 4 + C * T * Rp * 8; }
  // the forward's map of the outputs whose window is all zeros (wino_row_live), after
  // that: its rows are 4T in whole vectors (of up to 16 lanes)
  std::size_t live_scratch() const {
    const std::size_t BW = round_up(4 * T, 16);
    return BW + 16 + (2 * OH + 4) * BW;
  }
};

// The GEMMs of a dense layer whose right operand b (K, N) has few columns (ops/dense_simd.inc,
// used by ops/matmul.cpp), one entry per N = 1..kDenseMaxN (index N - 1; null where an
// instruction set has too few registers for N); bt = b^T (N, K).
//   rows:      y[m, n] = (accumulate ? y : 0) + sum_k a[m, k] bt[n, k],   m < M (y: rows N apart)
//   grad_rows: ga[m, k] = (accumulate ? ga : 0) + sum_n g[m, n] bt[n, k], m < M (ga: rows K apart)
//   grad_cols: gb[k, n] += sum_m a[m, k] g[m, n],                         k0 <= k < k1
constexpr std::size_t kDenseMaxN = 16;
template <class T>
struct DenseKernels {
  void (*rows[kDenseMaxN])(const T* a, std::size_t lda, std::size_t M, std::size_t K, const T* bt, T* y,
                           bool accumulate);
  void (*grad_rows[kDenseMaxN])(const T* g, std::size_t M, std::size_t K, const T* bt, T* ga, bool accumulate);
  void (*grad_cols[kDenseMaxN])(const T* a, std::size_t lda, std::size_t M, const T* g, std::size_t k0,
                                std::size_t k1, T* gb);
};

// The per-image kernels of one instruction set (ops/conv2d_simd.inc). The caller owns
// the threads: every function works on one image and its own scratch buffers.
template <class T>
struct Kernels {
  Isa isa;
  std::size_t lanes;  // elements per vector
  // Output channels per register tile for a convolution with `O` of them (DirectPlan::chan).
  std::size_t (*chan_block)(std::size_t O);
  // out (O, OH*OW) = [accumulate ? out : bias or 0] + conv(in, w); in (C, H, W); for
  // the output channels [oa, ob) only (multiples of chan; [0, Opad) for all).
  // xp: padded_size() scratch, yt: OH*OW*Opad scratch.
  void (*conv_image)(const DirectPlan& pl, const T* in, const T* w, const T* bias, bool accumulate, T* out, T* xp,
                     T* yt, std::size_t oa, std::size_t ob);
  // xp (C, H, Wp) = the zero-padded copy of x (C, H, W): xp[c, h, w + L] = x[c, h, w].
  void (*pad_columns)(const T* x, const DirectPlan& pl, T* xp);
  // gt (P, Opad) = g (O, P) transposed, zero in the padding channels.
  void (*planes_to_pixels)(const T* g, std::size_t O, std::size_t P, std::size_t Opad, T* gt);
  // gk[(c,p,q), o] += sum_{i,j} gt[i*OW+j, o] * xp[c, i*sh+p-ph, j*sw+q] (dJ/dK of one image)
  // for the output channels oa <= o < ob (multiples of chan; [0, Opad) for all).
  void (*dk_image)(const DirectPlan& pl, const T* xp, const T* gt, T* gk, std::size_t oa, std::size_t ob);
  // gb[o] += sum_s gt[s, o] for oa <= o < ob (dJ/db of one image; multiples of the lanes).
  void (*bias_sum)(const T* gt, std::size_t P, std::size_t Opad, T* gb, std::size_t oa, std::size_t ob);

  // Winograd F(2x2, 5x5); null where not compiled (double). wino_preferred: used by
  // default (WinogradMode::Auto) with this instruction set.
  bool wino_preferred;
  // Pixels per register tile = tiles per block, for `chan` channels a tile.
  std::size_t (*wino_block)(std::size_t chan);
  // U[xi][c][o] = (G k[o,c] G^T)[xi] for input channels [c0, c1), every o < O, and 0 for
  // O <= o < Opad; k (O, C, 5, 5), U (36, C, Opad).
  void (*wino_kernel)(const T* k, std::size_t C, std::size_t O, std::size_t Opad, std::size_t c0, std::size_t c1, T* U);
  // out (O, OH*OW) = [accumulate ? out : bias or 0] + conv(in, k) by Winograd, for the
  // output channels [oa, ob) (as conv_image).
  // grid: grid_size() scratch, blk: block_scratch() scratch, yt: OH*OW*Opad scratch.
  void (*wino_image)(const WinogradPlan& pl, const T* in, const T* U, const T* bias, bool accumulate, T* out,
                     T* grid, T* blk, T* yt, std::size_t oa, std::size_t ob);

  // The two convolutions without their output pass: yt (OH*OW, Opad) = conv(in, .),
  // pixel-major, no bias, in yt's columns [oa, ob) (conv_image and wino_image are these,
  // then the transpose).
  void (*conv_pixels)(const DirectPlan& pl, const T* in, const T* w, T* xp, T* yt, std::size_t oa,
                      std::size_t ob) = nullptr;
  // (in: planar (C, H, W) where S = 0, else pixel-major with S >= C elements a pixel;
  // so for wino_dk_image and wino_dk_dx_image)
  void (*wino_pixels)(const WinogradPlan& pl, const T* in, std::size_t S, const T* U, T* grid, T* blk, T* yt,
                      std::size_t oa, std::size_t ob) = nullptr;  // float
  // dJ/dK by Winograd (float): M (36, C, Opad) += sum over in's tiles of (A U A^T) (.)
  // (B^T D B), U from gt (OH*OW, Opad) = dJ/dy pixel-major; dK = G^T M G (conv2d.cpp).
  // M in double. grid: grid_size() scratch, blk: dk_scratch() scratch.
  // For the output channels [oa, ob) (multiples of chan).
  void (*wino_dk_image)(const WinogradPlan& pl, const T* in, std::size_t S, const T* gt, T* grid, T* blk, double* M, std::size_t oa,
                        std::size_t ob) = nullptr;
  // wino_dk_image for the output channels [oa, ob) (may be empty), and with it, from the
  // same transformed gradients, gx[c] (H, W) = [accumulate ? gx[c] : 0] + dJ/dx[c] for
  // the channels [ca, cb) (multiples of chan, dJ/dx's channels per register tile). UT
  // (36, O, Cx): the kernel's U with its channels' roles swapped, Cx = C rounded up to
  // chan; dxs: dx_scratch(Cx) scratch. (float)
  void (*wino_dk_dx_image)(const WinogradPlan& pl, const T* in, std::size_t S, const T* gt, const T* UT, std::size_t chan,
                           T* grid, T* blk, T* dxs, double* M, std::size_t oa, std::size_t ob, std::size_t ca,
                           std::size_t cb, bool accumulate, T* gx) = nullptr;
  // ReLU and 2x2/2 max pooling as the output pass (ops/conv2d_relu_pool.cpp):
  // out (O, PH*PW) = relu(max_2x2(yt + bias)), argmax (null: not wanted) the winners'
  // indices h*OW + w; yt's rows are Opad apart, of which the first Oc (a multiple of the
  // lanes, >= O) are read; bias has Oc entries; pt and it are PH*PW*Opad scratch (it: of
  // integers of T's size).
  void (*relu_pool_planes)(const T* yt, std::size_t OH, std::size_t OW, std::size_t Opad, std::size_t Oc,
                           std::size_t O, const T* bias, T* out, int32_t* argmax, T* pt, void* it) = nullptr;
  // Its two halves: pt (PH*PW, Opad) the pooled values pixel-major, `it` their winners
  // (integers of T's size), then
  //   out (O, PH*PW) = pt transposed, argmax (if not null) = it transposed.
  void (*pooled_to_planes)(const T* pt, const void* it, std::size_t PP, std::size_t Opad, std::size_t O, T* out,
                           int32_t* argmax) = nullptr;
  // Winograd with the pooling as its output pass, for inference (float): pt (PH*PW, Opad)
  // = relu(max_2x2(conv(in) + bias)) in the channels [oa, ob), no switches; bias has Opad
  // entries.
  void (*wino_relu_pool_pixels)(const WinogradPlan& pl, const T* in, const T* U, const T* bias, T* grid, T* blk,
                                T* pt, std::size_t oa, std::size_t ob) = nullptr;
  // relu_pool_planes with the switches as codes (the tape's form, ops/conv2d_relu_pool.cpp):
  // codes (PH*PW, rows cs apart) gets, for the first O channels, each window's winner as
  // its place in the window (0-3, row-major) plus kSwitchDead where y did not pass ReLU,
  // one byte each.
  void (*relu_pool_codes)(const T* yt, std::size_t OH, std::size_t OW, std::size_t Opad, std::size_t Oc,
                          std::size_t O, const T* bias, T* out, int8_t* codes, std::size_t cs, T* pt,
                          void* it) = nullptr;
  // Its VJP's dJ/dz of one image from g (O, PH*PW) and the codes (PH*PW, O), PH = OH/2,
  // PW = OW/2: gt (OH*OW, Opad) as unpool_pixels makes it. scratch: 2 * PH*PW * Opad.
  void (*unpool_codes)(const T* g, const int8_t* codes, std::size_t O, std::size_t OH, std::size_t OW,
                       std::size_t Opad, T* gt, T* scratch) = nullptr;
  // Its VJP's dJ/dz of one image, pixel-major: gt (OH*OW, Opad) gets each window's
  // gradient g at its winner am where y passed ReLU, +0 elsewhere (g, y, am: (O, PH*PW);
  // 2*PH <= OH, 2*PW <= OW). scratch: 2 * PH*PW * (O + Opad + 1) elements.
  void (*unpool_pixels)(const T* g, const T* y, const int32_t* am, std::size_t O, std::size_t OH, std::size_t OW,
                        std::size_t PH, std::size_t PW, std::size_t Opad, T* gt, T* scratch) = nullptr;
  // out (O, P) = [accumulate ? out : bias or 0] + yt transposed; yt is (P, Opad).
  void (*pixels_to_planes)(const T* yt, std::size_t P, std::size_t Opad, std::size_t O, const T* bias,
                           bool accumulate, T* out) = nullptr;
  // dJ/dK by Winograd along the rows (WinoRowPlan, float): M (C, 5, 8, Opad) += image
  // in's products with gt (OH*OW, Opad) = dJ/dy pixel-major, for the output channels
  // [oa, ob) (multiples of the lanes). scratch: pl.scratch().
  void (*wino_row_dk_image)(const WinoRowPlan& pl, const T* in, const T* gt, T* scratch, double* M, std::size_t oa,
                            std::size_t ob) = nullptr;
  // The forward by Winograd along the rows (WinoRowPlan, float): yt (OH*OW, Opad) =
  // conv(in, k) pixel-major, no bias, in the columns [oa, ob) (multiples of the lanes);
  // U (C, 5, Opad / L, 8, L) the kernel's rows transformed (conv2d.cpp); an output whose
  // 5x5 window is all zeros is +0, as the direct sum gives it. scratch: pl.scratch() +
  // pl.live_scratch().
  void (*wino_row_pixels)(const WinoRowPlan& pl, const T* in, const T* U, T* scratch, T* yt, std::size_t oa,
                          std::size_t ob) = nullptr;
  // wino_image of a pixel-major input, in[(h*W + w) * S + c], S >= C (float).
  void (*wino_image_px)(const WinogradPlan& pl, const T* in, std::size_t S, const T* U, const T* bias,
                        bool accumulate, T* out, T* grid, T* blk, T* yt, std::size_t oa, std::size_t ob) = nullptr;
  // A dense layer with few outputs (DenseKernels above; float).
  const DenseKernels<T>* dense = nullptr;
};

// The kernels of the instruction set in use (ad::active_isa()).
template <class T>
const Kernels<T>& kernels();

// Each instruction set's table (defined in ops/isa/conv2d_<isa>.cpp).
template <class T>
const Kernels<T>& kernels_baseline();
template <class T>
const Kernels<T>& kernels_avx2();
template <class T>
const Kernels<T>& kernels_avx512();
// The AVX-512 code compiled for AVX2 (ops/isa/conv2d_avx512_emulated.cpp).
template <class T>
const Kernels<T>& kernels_avx512_emulated();

}  // namespace ad::conv
