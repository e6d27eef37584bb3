// conv2d with dilation and groups, forward and VJP. The design document's convolution
// (section 2, appendix A) with two of PyTorch's generalisations:
//   dilation (h_d, w_d): kernel tap (p, q) reads input row i*h_s + p*h_d - h_p, column
//     j*w_s + q*w_d - w_p (the document's convolution is h_d = w_d = 1);
//   groups G: the C_in input and C_out output channels form G blocks of C_in/G and
//     C_out/G; output channel o of block g = o / (C_out/G) reads input channels
//     g*C_in/G .. (g+1)*C_in/G - 1 only, with kernel k[o, c', p, q], c' = c - g*C_in/G.
// In index form (Cg = C_in/G, Og = C_out/G, g = o / Og):
//   y[n,o,i,j] = b[o] + sum_{c'<Cg,p,q} k[o,c',p,q] x[n, g Cg + c', i h_s + p h_d - h_p, j w_s + q w_d - w_p]
// The VJPs are those of section 3.1.5 / appendix A, block by block: y is linear in x and
// in k, and each term above is x[...] k[o,c',p,q], so
//   dJ/dk[o,c',p,q] = sum_{n,i,j} g[n,o,i,j] x[n, g Cg + c', i h_s + p h_d - h_p, j w_s + q w_d - w_p]
//   dJ/dx[n, g Cg + c', i h_s + p h_d - h_p, ...] += sum_{o in block g} k[o,c',p,q] g[n,o,i,j]
//   dJ/db[o] = sum_{n,i,j} g[n,o,i,j]
//
// Implementation: im2col and GEMM per image and group, images in parallel (OpenMP).
// For image n and group g, col (Cg KH KW, OH OW) holds col[(c',p,q), (i,j)] = the x[...]
// above (0 in the padding); then
//   y_g (Og, P) = K_g (Og, Cg KH KW) col,   dK_g += g_g col^T,   dcol = K_g^T g_g -> col2im.
// dJ/dK and dJ/db go to per-thread partials summed in thread order (deterministic for a
// given thread count), as in ops/conv2d.cpp. x is read only for dJ/dK.
#include "ops/conv2d_general.hpp"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "ops/blas.hpp"
#include "ops/scratch.hpp"
#include "ops/shape_check.hpp"

namespace ad {

namespace {

using Index = long long;

// The geometry of one call in plain integers, from x (N, C, H, W), k (O, C/G, KH, KW)
// and the options; OH = (H + 2 ph - dh (KH - 1) - 1) / sh + 1, likewise OW.
struct GeneralGeom {
  std::size_t N, C, H, W, O, KH, KW, sh, sw, ph, pw, dh, dw, G, OH, OW;

  template <class T>
  GeneralGeom(const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a)
      : N(x.shape()[0]), C(x.shape()[1]), H(x.shape()[2]), W(x.shape()[3]),
        O(k.shape()[0]), KH(k.shape()[2]), KW(k.shape()[3]),
        sh(to_size(a.stride[0])), sw(to_size(a.stride[1])), ph(to_size(a.padding[0])), pw(to_size(a.padding[1])),
        dh(to_size(a.dilation[0])), dw(to_size(a.dilation[1])), G(to_size(a.groups)),
        OH((H + 2 * ph - dh * (KH - 1) - 1) / sh + 1), OW((W + 2 * pw - dw * (KW - 1) - 1) / sw + 1) {}

  std::size_t cg() const { return C / G; }             // input channels per group
  std::size_t og() const { return O / G; }             // output channels per group
  std::size_t ckk() const { return cg() * KH * KW; }   // taps per output channel
  std::size_t p() const { return OH * OW; }            // output pixels per image
  // Output columns j whose tap q reads inside the image: [j0, j1); rows likewise.
  std::pair<std::size_t, std::size_t> valid_cols(std::size_t q) const {
    return valid(static_cast<Index>(q * dw) - static_cast<Index>(pw), sw, W, OW);
  }
  std::pair<std::size_t, std::size_t> valid_rows(std::size_t p) const {
    return valid(static_cast<Index>(p * dh) - static_cast<Index>(ph), sh, H, OH);
  }
  // The i in [0, n_out) with 0 <= i*s + off < n_in.
  static std::pair<std::size_t, std::size_t> valid(Index off, std::size_t s, std::size_t n_in, std::size_t n_out) {
    const auto si = static_cast<Index>(s);
    const Index lo = off >= 0 ? 0 : (-off + si - 1) / si;
    const Index last = static_cast<Index>(n_in) - 1 - off;  // i*s <= last
    const Index hi = last < 0 ? 0 : std::min(static_cast<Index>(n_out), last / si + 1);
    return {static_cast<std::size_t>(std::min(lo, hi)), static_cast<std::size_t>(hi)};
  }
  static std::size_t to_size(int v) { return static_cast<std::size_t>(v); }
};

inline bool worth_threads(const GeneralGeom& g) { return g.N > 1 && g.N * g.O * g.p() * g.ckk() >= (1u << 18); }

struct GeneralScratch {};  // the tag of this file's ThreadScratch buffers: 0 col, 1 dcol

// Visits, for every tap (c', p, q) and output row i whose input row lies inside the
// image, the output columns [j0, j1) whose input column does too:
// f(tap row of col, output row i, input row offset, j0, j1, input column of j = 0).
// Output pixel (i, j) of tap (c', p, q) reads input (c', i*sh + p*dh - ph, j*sw + q*dw - pw).
template <class F>
void for_each_tap_row(const GeneralGeom& g, F f) {
  for (std::size_t c = 0; c < g.cg(); ++c)
    for (std::size_t p = 0; p < g.KH; ++p) {
      const auto [i0, i1] = g.valid_rows(p);
      for (std::size_t q = 0; q < g.KW; ++q) {
        const std::size_t tap = (c * g.KH + p) * g.KW + q;
        const auto [j0, j1] = g.valid_cols(q);
        for (std::size_t i = i0; i < i1; ++i)
          f(tap, i, (c * g.H + i * g.sh + p * g.dh - g.ph) * g.W, j0, j1, q * g.dw - g.pw);
      }
    }
}

// col[(c',p,q), (i,j)] = x[c', i*sh + p*dh - ph, j*sw + q*dw - pw], 0 in the padding;
// x points at the group's first input plane of one image.
template <class T>
void im2col(const T* x, const GeneralGeom& g, T* col) {
  const std::size_t P = g.p();
  std::fill(col, col + g.ckk() * P, T(0));
  for_each_tap_row(g, [&](std::size_t tap, std::size_t i, std::size_t row, std::size_t j0, std::size_t j1,
                          std::size_t q0) {
    T* dst = col + tap * P + i * g.OW;
    for (std::size_t j = j0; j < j1; ++j) dst[j] = x[row + j * g.sw + q0];
  });
}

// The adjoint of im2col: dx[c', i*sh + p*dh - ph, j*sw + q*dw - pw] += dcol[(c',p,q), (i,j)].
template <class T>
void col2im_add(const T* dcol, const GeneralGeom& g, T* dx) {
  const std::size_t P = g.p();
  for_each_tap_row(g, [&](std::size_t tap, std::size_t i, std::size_t row, std::size_t j0, std::size_t j1,
                          std::size_t q0) {
    const T* src = dcol + tap * P + i * g.OW;
    for (std::size_t j = j0; j < j1; ++j) dx[row + j * g.sw + q0] += src[j];
  });
}

}  // namespace

void check_conv_options(const char* op, const Shape& x, std::array<int, 2> stride, std::array<int, 2> padding,
                        std::array<int, 2> dilation, int groups) {
  if (stride[0] < 1 || stride[1] < 1) shape_error(op, "stride ({},{}) must be >= 1 on both axes", stride[0], stride[1]);
  if (padding[0] < 0 || padding[1] < 0)
    shape_error(op, "padding ({},{}) must be >= 0 on both axes", padding[0], padding[1]);
  if (dilation[0] < 1 || dilation[1] < 1)
    shape_error(op, "dilation ({},{}) must be >= 1 on both axes", dilation[0], dilation[1]);
  if (groups < 1) shape_error(op, "groups {} must be >= 1", groups);
  if (x[1] % static_cast<std::size_t>(groups) != 0)
    shape_error(op, "input {} has C_in = {} channels, which groups = {} does not divide", shape_str(x), x[1], groups);
}

Shape conv2d_general_output_shape(const Shape& x, const Shape& k, const Shape* b, const Conv2dOptions& a) {
  const char* op = "conv2d";
  check_rank(op, "input", x, 4, "(N, C_in, H, W)");
  check_rank(op, "kernel", k, 4, "(C_out, C_in/groups, KH, KW)");
  check_nonempty_but_batch(op, "input", x);  // N = 0: an empty output, as on the plain path
  check_nonempty(op, "kernel", k);
  check_conv_options(op, x, a.stride, a.padding, a.dilation, a.groups);
  const auto G = static_cast<std::size_t>(a.groups);
  if (k[0] % G != 0)
    shape_error(op, "kernel {} has C_out = {} channels, which groups = {} does not divide", shape_str(k), k[0], G);
  if (k[1] != x[1] / G)
    shape_error(op, "input {} and kernel {} disagree on C_in / groups ({} / {} = {} vs {})", shape_str(x),
                shape_str(k), x[1], G, x[1] / G, k[1]);
  if (b) {
    check_rank(op, "bias", *b, 1, "(C_out)");
    if ((*b)[0] != k[0])
      shape_error(op, "bias {} and kernel {} disagree on C_out ({} vs {})", shape_str(*b), shape_str(k), (*b)[0], k[0]);
  }
  std::size_t out[2];
  for (int d = 0; d < 2; ++d) {
    // the dilated kernel spans h_d (KH - 1) + 1 rows of the padded input
    const std::size_t span = static_cast<std::size_t>(a.dilation[d]) * (k[2 + d] - 1) + 1;
    const std::size_t padded = x[2 + d] + 2 * static_cast<std::size_t>(a.padding[d]);
    if (span > padded)
      shape_error(op, "kernel ({},{}) with dilation ({},{}) spans {} {}, more than input {} with padding ({},{}): "
                      "{}*({}-1)+1 = {} > {} + 2*{} = {}",
                  k[2], k[3], a.dilation[0], a.dilation[1], span, d == 0 ? "rows" : "columns", shape_str(x),
                  a.padding[0], a.padding[1], a.dilation[d], k[2 + d], span, d == 0 ? "H" : "W", a.padding[d], padded);
    out[d] = (padded - span) / static_cast<std::size_t>(a.stride[d]) + 1;
  }
  const Shape y{x[0], k[0], out[0], out[1]};
  check_output_size(op, x, y, a.stride, a.padding);
  return y;
}

template <class T>
void conv2d_general_forward(const Tensor<T>& x, const Tensor<T>& k, const Tensor<T>* b, const Conv2dOptions& a,
                            Tensor<T>& y) {
  const GeneralGeom g(x, k, a);
  const std::size_t P = g.p(), CKK = g.ckk(), Og = g.og(), HW = g.H * g.W;
  const T* bp = b ? b->data() : nullptr;
  const auto N = static_cast<std::ptrdiff_t>(g.N);
#pragma omp parallel for schedule(static) if (worth_threads(g))
  for (std::ptrdiff_t ni = 0; ni < N; ++ni) {
    const auto n = static_cast<std::size_t>(ni);
    T* col = ThreadScratch<T, GeneralScratch>::get(CKK * P, 0);
    for (std::size_t gi = 0; gi < g.G; ++gi) {
      im2col(x.data() + (n * g.C + gi * g.cg()) * HW, g, col);
      // y_g (Og, P) = b_g 1^T + K_g (Og, CKK) col (CKK, P)
      T* yg = y.data() + (n * g.O + gi * Og) * P;
      for (std::size_t o = 0; o < Og; ++o) std::fill(yg + o * P, yg + (o + 1) * P, bp ? bp[gi * Og + o] : T(0));
      gemm<T>(false, false, Og, P, CKK, T(1), k.data() + gi * Og * CKK, col, T(1), yg);
    }
  }
}

template <class T>
void conv2d_general_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& a,
                        Tensor<T>* grad_x, Tensor<T>* grad_k, Tensor<T>* grad_b) {
  if (!grad_x && !grad_k && !grad_b) return;
  const GeneralGeom g(x, k, a);
  const std::size_t P = g.p(), CKK = g.ckk(), Og = g.og(), HW = g.H * g.W;
  // Per-thread partials: dJ/dK in k's layout (C_out, Cg KH KW), then dJ/db (C_out).
  const std::size_t part = g.O * CKK + g.O;
  const int nt = omp_get_max_threads();
  std::vector<T> partial(static_cast<std::size_t>(nt) * part, T(0));
  const auto N = static_cast<std::ptrdiff_t>(g.N);
#pragma omp parallel num_threads(nt) if (worth_threads(g))
  {
    T* gk = partial.data() + static_cast<std::size_t>(omp_get_thread_num()) * part;
    T* gb = gk + g.O * CKK;
#pragma omp for schedule(static)
    for (std::ptrdiff_t ni = 0; ni < N; ++ni) {
      const auto n = static_cast<std::size_t>(ni);
      const T* gn = grad_out.data() + n * g.O * P;
      if (grad_b)  // dJ/db[o] += sum_{i,j} g[n,o,i,j]
        for (std::size_t o = 0; o < g.O; ++o)
          for (std::size_t s = 0; s < P; ++s) gb[o] += gn[o * P + s];
      T* col = ThreadScratch<T, GeneralScratch>::get(CKK * P, 0);
      for (std::size_t gi = 0; gi < g.G; ++gi) {
        const T* gg = gn + gi * Og * P;            // (Og, P)
        const T* kg = k.data() + gi * Og * CKK;    // (Og, CKK)
        if (grad_k) {  // dK_g (Og, CKK) += g_g (Og, P) col^T (P, CKK)
          im2col(x.data() + (n * g.C + gi * g.cg()) * HW, g, col);
          gemm<T>(false, true, Og, CKK, P, T(1), gg, col, T(1), gk + gi * Og * CKK);
        }
        if (grad_x) {  // dcol (CKK, P) = K_g^T (CKK, Og) g_g (Og, P), then back onto the pixels
          T* dcol = ThreadScratch<T, GeneralScratch>::get(CKK * P, 1);
          gemm<T>(true, false, CKK, P, Og, T(1), kg, gg, T(0), dcol);
          col2im_add(dcol, g, grad_x->data() + (n * g.C + gi * g.cg()) * HW);
        }
      }
    }
  }
  for (int t = 0; t < nt; ++t) {
    const T* gk = partial.data() + static_cast<std::size_t>(t) * part;
    if (grad_k)
      for (std::size_t i = 0; i < g.O * CKK; ++i) grad_k->data()[i] += gk[i];
    if (grad_b)
      for (std::size_t o = 0; o < g.O; ++o) grad_b->data()[o] += gk[g.O * CKK + o];
  }
}

#define AD_INSTANTIATE(T)                                                                                    \
  template void conv2d_general_forward<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>*,             \
                                          const Conv2dOptions&, Tensor<T>&);                                 \
  template void conv2d_general_vjp<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,                 \
                                      const Conv2dOptions&, Tensor<T>*, Tensor<T>*, Tensor<T>*);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
