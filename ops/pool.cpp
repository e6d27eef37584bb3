// Pooling, forward and VJP. Design document (shared/design/cnn_backprop_derivation.md):
//   average pooling: section 3.1.3, A_j = I_j * P with P the (h_l, w_l) matrix of
//                    1/(h_l w_l): a convolution, so padding zeros count in the mean
//                    and the VJP spreads g/(h_l w_l) over each window's taps.
//   max pooling:     section 3.1.3 ("switches") and appendix B: the forward stores
//                    the argmax i_pq of every window; the VJP is the mask of eq. b-1,
//                    one 1 per row at the winner, i.e. grad_x[winner] += g.
// Padding: see MaxPoolPadding in autodiff/tape.hpp.
#include "ops/pool.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "ops/shape_check.hpp"

namespace ad {

namespace {

struct PoolGeom {
  std::size_t planes, H, W, OH, OW, KH, KW;
  std::ptrdiff_t sh, sw, ph, pw;
};

// Worth a parallel region (see ops/conv2d.cpp): enough window taps in the whole call.
inline bool worth_threads(std::size_t planes, std::size_t outputs_per_plane, std::size_t taps) {
  return planes > 1 && planes * outputs_per_plane * taps >= (1u << 16);
}

PoolGeom geom(const Shape& xs, const Shape& ys, const Attrs& a) {
  return {xs[0] * xs[1], xs[2], xs[3], ys[2], ys[3],
          static_cast<std::size_t>(a.window[0]), static_cast<std::size_t>(a.window[1]),
          a.stride[0], a.stride[1], a.padding[0], a.padding[1]};
}

}  // namespace

Shape pool2d_output_shape(const char* op, const Shape& x, const Attrs& a) {
  check_rank(op, "input", x, 4, "(N, C, H, W)");
  check_nonempty(op, "input", x);
  if (a.window[0] < 1 || a.window[1] < 1)
    shape_error(op, "window ({},{}) must be >= 1 on both axes", a.window[0], a.window[1]);
  auto [oh, ow] = check_window(op, "window", x,
                               {static_cast<std::size_t>(a.window[0]), static_cast<std::size_t>(a.window[1])},
                               a.stride, a.padding);
  const Shape out{x[0], x[1], oh, ow};
  check_output_size(op, x, out, a.stride, a.padding);
  return out;
}

template <class T>
void avg_pool2d_forward(const Tensor<T>& x, const Attrs& a, Tensor<T>& y) {
  const PoolGeom g = geom(to_shape(x.shape()), to_shape(y.shape()), a);
  const T inv = T(1) / static_cast<T>(g.KH * g.KW);
#pragma omp parallel for schedule(static) if (worth_threads(g.planes, g.OH * g.OW, g.KH * g.KW))
  for (std::size_t pl = 0; pl < g.planes; ++pl) {
    const T* xp = x.data() + pl * g.H * g.W;
    T* yp = y.data() + pl * g.OH * g.OW;
    for (std::size_t i = 0; i < g.OH; ++i)
      for (std::size_t j = 0; j < g.OW; ++j) {
        // y[i,j] = sum_{p,q} P[p,q] x[i*sh+p-ph, j*sw+q-pw], P = 1/(h_l w_l)
        T s = 0;
        for (std::size_t p = 0; p < g.KH; ++p) {
          const std::ptrdiff_t ih = static_cast<std::ptrdiff_t>(i) * g.sh + static_cast<std::ptrdiff_t>(p) - g.ph;
          if (ih < 0 || ih >= static_cast<std::ptrdiff_t>(g.H)) continue;
          for (std::size_t q = 0; q < g.KW; ++q) {
            const std::ptrdiff_t iw = static_cast<std::ptrdiff_t>(j) * g.sw + static_cast<std::ptrdiff_t>(q) - g.pw;
            if (iw >= 0 && iw < static_cast<std::ptrdiff_t>(g.W)) s += xp[ih * static_cast<std::ptrdiff_t>(g.W) + iw];
          }
        }
        yp[i * g.OW + j] = s * inv;
      }
  }
}

template <class T>
void avg_pool2d_vjp(const Tensor<T>& grad_out, const Attrs& a, Tensor<T>* grad_x) {
  if (!grad_x) return;
  const PoolGeom g = geom(to_shape(grad_x->shape()), to_shape(grad_out.shape()), a);
  const T inv = T(1) / static_cast<T>(g.KH * g.KW);
#pragma omp parallel for schedule(static) if (worth_threads(g.planes, g.OH * g.OW, g.KH * g.KW))
  for (std::size_t pl = 0; pl < g.planes; ++pl) {
    const T* gp = grad_out.data() + pl * g.OH * g.OW;
    T* gx = grad_x->data() + pl * g.H * g.W;
    for (std::size_t i = 0; i < g.OH; ++i)
      for (std::size_t j = 0; j < g.OW; ++j) {
        // dx[i*sh+p-ph, j*sw+q-pw] += g[i,j] / (h_l w_l)   (padding taps dropped)
        const T v = gp[i * g.OW + j] * inv;
        for (std::size_t p = 0; p < g.KH; ++p) {
          const std::ptrdiff_t ih = static_cast<std::ptrdiff_t>(i) * g.sh + static_cast<std::ptrdiff_t>(p) - g.ph;
          if (ih < 0 || ih >= static_cast<std::ptrdiff_t>(g.H)) continue;
          for (std::size_t q = 0; q < g.KW; ++q) {
            const std::ptrdiff_t iw = static_cast<std::ptrdiff_t>(j) * g.sw + static_cast<std::ptrdiff_t>(q) - g.pw;
            if (iw >= 0 && iw < static_cast<std::ptrdiff_t>(g.W)) gx[ih * static_cast<std::ptrdiff_t>(g.W) + iw] += v;
          }
        }
      }
  }
}

namespace {

// b replaces the running max a when a is not NaN and b is larger or NaN: the first
// winner in row-major window order wins ties, the first NaN wins and stays.
template <class T>
inline bool takes_over(T b, T a) {
  return a == a && !(b <= a);
}

// One output row of the common 2x2 window at stride 2 without padding:
// y[j] = max(r0[2j], r0[2j+1], r1[2j], r1[2j+1]) with the same winner (and switch) as
// the general loop below. For float, 8 outputs at a time with selects instead of
// branches (random signs would mispredict every other branch).
// x_end: the end of the input tensor; a short row's last 8 outputs may read up to 16
// columns past the row (into the next rows, lanes that are dropped) while they stay
// inside the tensor.
// room: outputs from y to the end of its plane. A short last group of 8 outputs is
// stored whole when the extra lanes land in the plane's next rows (which the same
// thread writes afterwards, correctly), instead of lane by lane.
template <class T>
void max_pool2x2_row(const T* r0, const T* r1, std::size_t OW, int32_t top, int32_t w, T* y, int32_t* am,
                     const T* x_end, std::size_t room) {
  std::size_t j = 0;
  if constexpr (std::is_same_v<T, float>) {
    typedef float V __attribute__((vector_size(32)));
    typedef int32_t I __attribute__((vector_size(32)));
    const I even = {0, 2, 4, 6, 8, 10, 12, 14}, odd = even + 1;
    auto load = [](V& v, const float* p) { std::memcpy(&v, p, sizeof v); };  // no by-value AVX vectors (-Wpsabi)
    // 8 outputs from 16 columns of each row, of which the first n are stored; a short
    // row or the tail at the very end of the tensor goes through a zero-padded copy.
    auto eight = [&](const float* p0, const float* p1, std::size_t j0, std::size_t n) {
      V a0, a1, b0, b1;
      load(a0, p0), load(a1, p0 + 8), load(b0, p1), load(b1, p1 + 8);
      const V x[4] = {__builtin_shuffle(a0, a1, even), __builtin_shuffle(a0, a1, odd), __builtin_shuffle(b0, b1, even),
                      __builtin_shuffle(b0, b1, odd)};
      const I base = top + 2 * static_cast<int32_t>(j0) + even;
      const I offset[4] = {base, base + 1, base + w, base + w + 1};
      V best = x[0];
      I where = offset[0];
      for (int k = 1; k < 4; ++k) {
        const I u = (best == best) & ~(x[k] <= best);  // takes_over(x[k], best), lane by lane
        best = u ? x[k] : best;
        where = u ? offset[k] : where;
      }
      if (n == 8 || j0 + 8 <= room) {
        std::memcpy(y + j0, &best, sizeof best);
        if (am) std::memcpy(am + j0, &where, sizeof where);
        return;
      }
      float yb[8];
      int32_t ab[8];
      std::memcpy(yb, &best, sizeof best);
      std::memcpy(ab, &where, sizeof where);
      for (std::size_t k = 0; k < n; ++k) y[j0 + k] = yb[k];
      if (am)
        for (std::size_t k = 0; k < n; ++k) am[j0 + k] = ab[k];
    };
    for (; j + 8 <= OW; j += 8) eight(r0 + 2 * j, r1 + 2 * j, j, 8);
    if (j < OW) {
      if (r1 + 2 * j + 16 <= x_end) {
        eight(r0 + 2 * j, r1 + 2 * j, j, OW - j);
      } else {
        float t0[16] = {}, t1[16] = {};
        std::memcpy(t0, r0 + 2 * j, 2 * (OW - j) * sizeof(float));
        std::memcpy(t1, r1 + 2 * j, 2 * (OW - j) * sizeof(float));
        eight(t0, t1, j, OW - j);
      }
      j = OW;
    }
  }
  for (; j < OW; ++j) {
    const int32_t base = top + 2 * static_cast<int32_t>(j);
    const T x[4] = {r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]};
    const int32_t offset[4] = {base, base + 1, base + w, base + w + 1};
    int k_best = 0;
    for (int k = 1; k < 4; ++k)
      if (takes_over(x[k], x[k_best])) k_best = k;
    y[j] = x[k_best];
    if (am) am[j] = offset[k_best];
  }
}

template <class T>
void max_pool2x2_forward(const T* x, const PoolGeom& g, T* y, int32_t* argmax) {
  const std::size_t in_plane = g.H * g.W, out_plane = g.OH * g.OW;
  const T* x_end = x + g.planes * in_plane;
#pragma omp parallel for schedule(static) if (worth_threads(g.planes, out_plane, 4))
  for (std::size_t pl = 0; pl < g.planes; ++pl)
    for (std::size_t i = 0; i < g.OH; ++i) {
      const T* r0 = x + pl * in_plane + 2 * i * g.W;
      max_pool2x2_row(r0, r0 + g.W, g.OW, static_cast<int32_t>(2 * i * g.W), static_cast<int32_t>(g.W),
                      y + pl * out_plane + i * g.OW, argmax ? argmax + pl * out_plane + i * g.OW : nullptr, x_end,
                      out_plane - i * g.OW);
    }
}

}  // namespace

template <class T>
void max_pool2d_forward(const Tensor<T>& x, const Attrs& a, Tensor<T>& y, int32_t* argmax) {
  const PoolGeom g = geom(to_shape(x.shape()), to_shape(y.shape()), a);
  if (g.KH == 2 && g.KW == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0)
    return max_pool2x2_forward(x.data(), g, y.data(), argmax);
  const bool zero_pad = a.max_padding == MaxPoolPadding::Zero;
#pragma omp parallel for schedule(static) if (worth_threads(g.planes, g.OH * g.OW, g.KH * g.KW))
  for (std::size_t pl = 0; pl < g.planes; ++pl) {
    const T* xp = x.data() + pl * g.H * g.W;
    T* yp = y.data() + pl * g.OH * g.OW;
    int32_t* am = argmax ? argmax + pl * g.OH * g.OW : nullptr;
    for (std::size_t i = 0; i < g.OH; ++i)
      for (std::size_t j = 0; j < g.OW; ++j) {
        // A[i,j] = max_{p,q} I[i*sh+p-ph, j*sw+q-pw]; i_pq = the first winner in
        // row-major window order; NaN wins and propagates (as in PyTorch).
        T best = -std::numeric_limits<T>::infinity();
        int32_t where = -1;
        bool have = false;
        for (std::size_t p = 0; p < g.KH; ++p) {
          const std::ptrdiff_t ih = static_cast<std::ptrdiff_t>(i) * g.sh + static_cast<std::ptrdiff_t>(p) - g.ph;
          const bool row_in = ih >= 0 && ih < static_cast<std::ptrdiff_t>(g.H);
          for (std::size_t q = 0; q < g.KW; ++q) {
            const std::ptrdiff_t iw = static_cast<std::ptrdiff_t>(j) * g.sw + static_cast<std::ptrdiff_t>(q) - g.pw;
            const bool in = row_in && iw >= 0 && iw < static_cast<std::ptrdiff_t>(g.W);
            if (!in && !zero_pad) continue;
            const T v = in ? xp[ih * static_cast<std::ptrdiff_t>(g.W) + iw] : T(0);
            if (!have || v > best || std::isnan(v)) {
              best = v;
              where = in ? static_cast<int32_t>(ih * static_cast<std::ptrdiff_t>(g.W) + iw) : -1;
              have = true;
              if (std::isnan(v)) break;
            }
          }
          if (std::isnan(best)) break;
        }
        yp[i * g.OW + j] = best;
        if (am) am[i * g.OW + j] = where;
      }
  }
}

template <class T>
void max_pool2d_vjp(const Tensor<T>& grad_out, const std::vector<int32_t>& argmax, Tensor<T>* grad_x) {
  if (!grad_x) return;
  const std::size_t planes = grad_out.shape()[0] * grad_out.shape()[1];
  const std::size_t out_plane = grad_out.shape()[2] * grad_out.shape()[3];
  const std::size_t in_plane = grad_x->shape()[2] * grad_x->shape()[3];
#pragma omp parallel for schedule(static) if (worth_threads(planes, out_plane, 1))
  for (std::size_t pl = 0; pl < planes; ++pl) {
    const T* gp = grad_out.data() + pl * out_plane;
    const int32_t* am = argmax.data() + pl * out_plane;
    T* gx = grad_x->data() + pl * in_plane;
    // Row (i,j) of the mask (eq. b-1) has its single 1 at the switch; a padding winner
    // (-1, zero padding only) routes the gradient nowhere.
    for (std::size_t o = 0; o < out_plane; ++o)
      if (am[o] >= 0) gx[am[o]] += gp[o];
  }
}

template <class T>
Value avg_pool2d(Tape<T>& tape, Value x, const Pool2dOptions& opt, std::source_location loc) {
  Attrs a;
  a.window = opt.window, a.stride = opt.stride, a.padding = opt.padding;
  const Shape ys = pool2d_output_shape("avg_pool2d", tape.shape(x), a);
  Value y = tape.new_value(ys, tape.any_requires_grad({x}));
  avg_pool2d_forward(tape.value(x), a, tape.mutable_value(y));
  tape.record(OpKind::AvgPool2d, {x}, y, a, loc);
  return y;
}

template <class T>
Value max_pool2d(Tape<T>& tape, Value x, const Pool2dOptions& opt, std::source_location loc) {
  Attrs a;
  a.window = opt.window, a.stride = opt.stride, a.padding = opt.padding;
  a.max_padding = opt.max_padding;
  const Shape ys = pool2d_output_shape("max_pool2d", tape.shape(x), a);
  if (a.max_padding == MaxPoolPadding::NegInf && (a.padding[0] >= a.window[0] || a.padding[1] >= a.window[1]))
    shape_error("max_pool2d",
                "padding ({},{}) must be smaller than the window ({},{}) with -inf padding, or a window "
                "could hold only padding; use MaxPoolPadding::Zero for the document's semantics",
                a.padding[0], a.padding[1], a.window[0], a.window[1]);
  Value y = tape.new_value(ys, tape.any_requires_grad({x}));
  Node<T>* node = tape.record(OpKind::MaxPool2d, {x}, y, a, loc);
  int32_t* switches = nullptr;
  if (node && tape.requires_grad(y)) {
    node->saved_index.resize(xt::compute_size(ys));
    switches = node->saved_index.data();
  }
  max_pool2d_forward(tape.value(x), a, tape.mutable_value(y), switches);
  return y;
}

#define AD_INSTANTIATE(T)                                                                        \
  template void avg_pool2d_forward<T>(const Tensor<T>&, const Attrs&, Tensor<T>&);              \
  template void avg_pool2d_vjp<T>(const Tensor<T>&, const Attrs&, Tensor<T>*);                  \
  template void max_pool2d_forward<T>(const Tensor<T>&, const Attrs&, Tensor<T>&, int32_t*);    \
  template void max_pool2d_vjp<T>(const Tensor<T>&, const std::vector<int32_t>&, Tensor<T>*);   \
  template Value avg_pool2d<T>(Tape<T>&, Value, const Pool2dOptions&, std::source_location);    \
  template Value max_pool2d<T>(Tape<T>&, Value, const Pool2dOptions&, std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
