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
// Implementation: per image, im2col builds col[(c,p,q), (i,j)] = x[n,c,i*sh+p-ph,j*sw+q-pw]
// (0 in the padding), so the convolution is one GEMM y_n = K col with K seen as
// (C_out, C_in*KH*KW). Each image's GEMM stays in cache; images run in parallel.
#include "ops/conv2d.hpp"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "ops/blas.hpp"
#include "ops/shape_check.hpp"

namespace ad {

namespace {

// Geometry of one conv2d call, in plain integers.
struct ConvGeom {
  std::size_t N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw;
  std::size_t ckk() const { return C * KH * KW; }  // rows of col
  std::size_t p() const { return OH * OW; }        // columns of col
};

template <class T>
ConvGeom geom(const Tensor<T>& x, const Tensor<T>& k, const Attrs& a) {
  ConvGeom g{};
  g.N = x.shape()[0], g.C = x.shape()[1], g.H = x.shape()[2], g.W = x.shape()[3];
  g.O = k.shape()[0], g.KH = k.shape()[2], g.KW = k.shape()[3];
  g.sh = static_cast<std::size_t>(a.stride[0]), g.sw = static_cast<std::size_t>(a.stride[1]);
  g.ph = static_cast<std::size_t>(a.padding[0]), g.pw = static_cast<std::size_t>(a.padding[1]);
  g.OH = (g.H + 2 * g.ph - g.KH) / g.sh + 1;
  g.OW = (g.W + 2 * g.pw - g.KW) / g.sw + 1;
  return g;
}

// Output columns j in [j0, j1) read an input column iw = j*s + q - pad inside [0, W).
inline void valid_range(std::size_t q, std::size_t pad, std::size_t s, std::size_t W,
                        std::size_t OW, std::size_t& j0, std::size_t& j1) {
  j0 = q >= pad ? 0 : (pad - q + s - 1) / s;
  j1 = W + pad > q ? std::min(OW, (W - 1 + pad - q) / s + 1) : 0;
  j0 = std::min(j0, j1);
}

// col[(c*KH+p)*KW+q, i*OW+j] = x[c, i*sh+p-ph, j*sw+q-pw], 0 in the padding.
template <class T>
void im2col(const T* x, const ConvGeom& g, T* col) {
  const std::size_t P = g.p();
  for (std::size_t c = 0; c < g.C; ++c)
    for (std::size_t p = 0; p < g.KH; ++p)
      for (std::size_t q = 0; q < g.KW; ++q) {
        T* dst = col + ((c * g.KH + p) * g.KW + q) * P;
        std::size_t j0, j1;
        valid_range(q, g.pw, g.sw, g.W, g.OW, j0, j1);
        for (std::size_t i = 0; i < g.OH; ++i, dst += g.OW) {
          const std::ptrdiff_t ih = static_cast<std::ptrdiff_t>(i * g.sh + p) - static_cast<std::ptrdiff_t>(g.ph);
          if (ih < 0 || ih >= static_cast<std::ptrdiff_t>(g.H)) {
            std::fill(dst, dst + g.OW, T(0));
            continue;
          }
          const T* src = x + (c * g.H + static_cast<std::size_t>(ih)) * g.W;
          std::fill(dst, dst + j0, T(0));
          for (std::size_t j = j0; j < j1; ++j) dst[j] = src[j * g.sw + q - g.pw];
          std::fill(dst + j1, dst + g.OW, T(0));
        }
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
        std::size_t j0, j1;
        valid_range(q, g.pw, g.sw, g.W, g.OW, j0, j1);
        for (std::size_t i = 0; i < g.OH; ++i, src += g.OW) {
          const std::ptrdiff_t ih = static_cast<std::ptrdiff_t>(i * g.sh + p) - static_cast<std::ptrdiff_t>(g.ph);
          if (ih < 0 || ih >= static_cast<std::ptrdiff_t>(g.H)) continue;
          T* dst = grad_x + (c * g.H + static_cast<std::size_t>(ih)) * g.W;
          for (std::size_t j = j0; j < j1; ++j) dst[j * g.sw + q - g.pw] += src[j];
        }
      }
}

// A growing per-thread scratch buffer, kept across calls (no malloc churn per step).
template <class T>
T* scratch(std::size_t n, int which) {
  thread_local std::vector<T> buf[2];
  if (buf[which].size() < n) buf[which].resize(n);
  return buf[which].data();
}

}  // namespace

Shape conv2d_output_shape(const Shape& x, const Shape& k, const Shape* b, const Attrs& a) {
  const char* op = "conv2d";
  check_rank(op, "input", x, 4, "(N, C_in, H, W)");
  check_rank(op, "kernel", k, 4, "(C_out, C_in, KH, KW)");
  check_nonempty(op, "input", x);
  check_nonempty(op, "kernel", k);
  if (x[1] != k[1])
    shape_error(op, "input {} and kernel {} disagree on C_in ({} vs {})", shape_str(x), shape_str(k), x[1], k[1]);
  if (b) {
    check_rank(op, "bias", *b, 1, "(C_out)");
    if ((*b)[0] != k[0])
      shape_error(op, "bias {} and kernel {} disagree on C_out ({} vs {})", shape_str(*b), shape_str(k), (*b)[0], k[0]);
  }
  auto [oh, ow] = check_window(op, "kernel", x, {k[2], k[3]}, a.stride, a.padding);
  return {x[0], k[0], oh, ow};
}

template <class T>
void conv2d_forward(const Tensor<T>& x, const Tensor<T>& k, const Tensor<T>* b, const Attrs& a,
                    Tensor<T>& y) {
  const ConvGeom g = geom(x, k, a);
  const std::size_t CKK = g.ckk(), P = g.p();
  const T* xp = x.data();
  const T* kp = k.data();
  T* yp = y.data();
  const bool direct = g.KH == 1 && g.KW == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
#pragma omp parallel for schedule(static)
  for (std::size_t n = 0; n < g.N; ++n) {
    const T* xn = xp + n * g.C * g.H * g.W;
    const T* col = xn;  // a 1x1 kernel at stride 1 without padding reads x as it is
    if (!direct) {
      T* c = scratch<T>(CKK * P, 0);
      im2col(xn, g, c);
      col = c;
    }
    T* yn = yp + n * g.O * P;
    // y_n (C_out, P) = K (C_out, CKK) x col (CKK, P)
    gemm<T>(false, false, g.O, P, CKK, T(1), kp, col, T(0), yn);
    if (b)  // y[n,o,:,:] += b[o]
      for (std::size_t o = 0; o < g.O; ++o) {
        const T bo = b->data()[o];
        T* row = yn + o * P;
        for (std::size_t i = 0; i < P; ++i) row[i] += bo;
      }
  }
}

template <class T>
void conv2d_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const Tensor<T>& k, const Attrs& a,
                Tensor<T>* grad_x, Tensor<T>* grad_k, Tensor<T>* grad_b) {
  const ConvGeom g = geom(x, k, a);
  const std::size_t CKK = g.ckk(), P = g.p();
  const T* gp = grad_out.data();
  const T* kp = k.data();
  const bool direct = g.KH == 1 && g.KW == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;

  // dJ/db_o = sum_{n,i,j} g[n,o,i,j]  (section 3.1.5: dJ/dvZ_j times the ones vector)
  if (grad_b)
    for (std::size_t n = 0; n < g.N; ++n)
      for (std::size_t o = 0; o < g.O; ++o) {
        const T* row = gp + (n * g.O + o) * P;
        T s = 0;
        for (std::size_t i = 0; i < P; ++i) s += row[i];
        grad_b->data()[o] += s;
      }
  if (!grad_x && !grad_k) return;

  // Each thread sums dJ/dK over its images into its own partial; the partials are
  // added in thread order afterwards, so the result does not depend on timing.
  const int nt = omp_get_max_threads();
  std::vector<T> partial_k(grad_k ? static_cast<std::size_t>(nt) * g.O * CKK : 0, T(0));
#pragma omp parallel num_threads(nt)
  {
    T* gk = grad_k ? partial_k.data() + static_cast<std::size_t>(omp_get_thread_num()) * g.O * CKK : nullptr;
#pragma omp for schedule(static)
    for (std::size_t n = 0; n < g.N; ++n) {
      const T* xn = x.data() + n * g.C * g.H * g.W;
      const T* gn = gp + n * g.O * P;
      if (gk) {
        // dK[o,c,p,q] += sum_{i,j} g[n,o,i,j] * x[n,c,i*sh+p-ph,j*sw+q-pw]
        // (C_out, CKK) += g_n (C_out, P) x col^T (P, CKK)
        const T* col = xn;
        if (!direct) {
          T* c = scratch<T>(CKK * P, 0);
          im2col(xn, g, c);
          col = c;
        }
        gemm<T>(false, true, g.O, CKK, P, T(1), gn, col, T(1), gk);
      }
      if (grad_x) {
        // dx[n,c,i*sh+p-ph,j*sw+q-pw] += sum_o k[o,c,p,q] * g[n,o,i,j]
        // dcol (CKK, P) = K^T (CKK, C_out) x g_n (C_out, P), then col2im adds it up.
        T* gxn = grad_x->data() + n * g.C * g.H * g.W;
        if (direct) {
          gemm<T>(true, false, CKK, P, g.O, T(1), kp, gn, T(1), gxn);
        } else {
          T* dcol = scratch<T>(CKK * P, 1);
          gemm<T>(true, false, CKK, P, g.O, T(1), kp, gn, T(0), dcol);
          col2im_add(dcol, g, gxn);
        }
      }
    }
  }
  if (grad_k)
    for (int t = 0; t < nt; ++t) {
      const T* part = partial_k.data() + static_cast<std::size_t>(t) * g.O * CKK;
      T* dst = grad_k->data();
      for (std::size_t i = 0; i < g.O * CKK; ++i) dst[i] += part[i];
    }
}

template <class T>
Value conv2d(Tape<T>& tape, Value x, Value k, Value b, const Conv2dOptions& opt,
             std::source_location loc) {
  Attrs a;
  a.padding = opt.padding;
  a.stride = opt.stride;
  const Shape bs = b.valid() ? tape.shape(b) : Shape{};
  const Shape ys = conv2d_output_shape(tape.shape(x), tape.shape(k), b.valid() ? &bs : nullptr, a);
  Value y = tape.new_value(ys, tape.any_requires_grad({x, k, b}));
  conv2d_forward(tape.value(x), tape.value(k), b.valid() ? &tape.value(b) : nullptr, a,
                 tape.mutable_value(y));
  tape.record(OpKind::Conv2d, {x, k, b}, y, a, loc);
  return y;
}

#define AD_INSTANTIATE(T)                                                                        \
  template void conv2d_forward<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>*,         \
                                  const Attrs&, Tensor<T>&);                                     \
  template void conv2d_vjp<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, const Attrs&, \
                              Tensor<T>*, Tensor<T>*, Tensor<T>*);                               \
  template Value conv2d<T>(Tape<T>&, Value, Value, Value, const Conv2dOptions&, std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
