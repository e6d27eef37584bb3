// Pooling, forward and VJP. Design document (shared/design/cnn_backprop_derivation.md):
//   average pooling: section 3.1.3, A_j = I_j * P with P the (h_l, w_l) matrix of
//                    1/(h_l w_l): a convolution, so padding zeros count in the mean
//                    and the VJP spreads g/(h_l w_l) over each window's taps.
//   max pooling:     section 3.1.3 ("switches") and appendix B: the forward stores
//                    the argmax i_pq of every window; the VJP is the mask of eq. b-1,
//                    one 1 per row at the winner, i.e. grad_x[winner] += g.
// Padding: see MaxPoolPadding in autodiff/tape.hpp.
#include "ops/pool.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "autodiff/parallel.hpp"  // global_avg_pool2d (the end of the file)
#include "autodiff/higher_order.hpp"
#include "ops/elementwise.hpp"
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

PoolGeom geom(const Shape& xs, const Shape& ys, const Pool2dOptions& a) {
  return {xs[0] * xs[1], xs[2], xs[3], ys[2], ys[3],
          static_cast<std::size_t>(a.window[0]), static_cast<std::size_t>(a.window[1]),
          a.stride[0], a.stride[1], a.padding[0], a.padding[1]};
}

}  // namespace

Shape pool2d_output_shape(const char* op, const Shape& x, const Pool2dOptions& a) {
  check_rank(op, "input", x, 4, "(N, C, H, W)");
  check_nonempty_but_batch(op, "input", x);  // N = 0: an empty output
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
void avg_pool2d_forward(const Tensor<T>& x, const Pool2dOptions& a, Tensor<T>& y) {
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
void avg_pool2d_vjp(const Tensor<T>& grad_out, const Pool2dOptions& a, Tensor<T>* grad_x) {
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
void max_pool2d_forward(const Tensor<T>& x, const Pool2dOptions& a, Tensor<T>& y, int32_t* argmax) {
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
  Pool2dOptions a = opt;
  a.max_padding = MaxPoolPadding::NegInf;  // not used by average pooling: recorded as the default
  const Shape ys = pool2d_output_shape("avg_pool2d", tape.shape(x), a);
  Value y = tape.new_value(ys, tape.any_requires_grad({x}));
  avg_pool2d_forward(tape.value(x), a, tape.mutable_value(y));
  tape.record(OpKind::AvgPool2d, {x}, y, Attrs::of(a), loc);
  return y;
}

template <class T>
Value max_pool2d(Tape<T>& tape, Value x, const Pool2dOptions& opt, std::source_location loc) {
  const Pool2dOptions& a = opt;
  const Shape ys = pool2d_output_shape("max_pool2d", tape.shape(x), a);
  if (a.max_padding == MaxPoolPadding::NegInf && (a.padding[0] >= a.window[0] || a.padding[1] >= a.window[1]))
    shape_error("max_pool2d",
                "padding ({},{}) must be smaller than the window ({},{}) with -inf padding, or a window "
                "could hold only padding; use MaxPoolPadding::Zero for the document's semantics",
                a.padding[0], a.padding[1], a.window[0], a.window[1]);
  Value y = tape.new_value(ys, tape.any_requires_grad({x}));
  Node<T>* node = tape.record(OpKind::MaxPool2d, {x}, y, Attrs::of(a), loc);
  int32_t* switches = nullptr;
  if (node && tape.requires_grad(y)) {
    switches = tape.saved_index_for_overwrite(*node, xt::compute_size(ys));
  }
  max_pool2d_forward(tape.value(x), a, tape.mutable_value(y), switches);
  return y;
}

// ---- the registry entries (autodiff/op.hpp) ----

namespace {

template <class T>
void avg_pool2d_node_vjp(Tape<T>* tape, const Node<T>& node) {
  avg_pool2d_vjp(tape->grad_out(node), attrs_as<Pool2dOptions>(node.attrs), tape->input_grad(node, 0));
}

template <class T>
void max_pool2d_node_vjp(Tape<T>* tape, const Node<T>& node) {
  max_pool2d_vjp(tape->grad_out(node), node.saved_index, tape->input_grad(node, 0));
}

// ---- recorded VJPs (higher-order gradients) ----
// max_pool2d: gx = max_pool2d_backward(g, the node's switches), the scatter of appendix B's
//   mask (eq. b-1) transposed: dJ/dx = M^T dJ/dy. The switches are constant where x has no
//   ties, so the second derivative through them is zero: the scatter is linear in g.
// avg_pool2d: gx = avg_pool2d_backward(g) = P^T g (section 3.1.3).
template <class T> void max_pool2d_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const std::vector<int32_t> switches = t.nodes()[static_cast<std::size_t>(n)].saved_index;  // a copy: nodes grow
  const auto a = attrs_as<Pool2dOptions>(t.nodes()[static_cast<std::size_t>(n)].attrs);
  const Shape xs = t.shape(node_input(t, n, 0));
  gi[0] = max_pool2d_backward(t, g, std::span<const int32_t>(switches), xs[2], xs[3], a);
}
template <class T> void avg_pool2d_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const auto a = attrs_as<Pool2dOptions>(t.nodes()[static_cast<std::size_t>(n)].attrs);
  const Shape xs = t.shape(node_input(t, n, 0));
  gi[0] = avg_pool2d_backward(t, g, xs[2], xs[3], a);
}

Value avg_pool2d_replay(Tape<double>& t, const ReplayArgs& r) {
  return avg_pool2d(t, r.inputs[0], r.attrs.get<Pool2dOptions>());
}
Value max_pool2d_replay(Tape<double>& t, const ReplayArgs& r) {
  return max_pool2d(t, r.inputs[0], r.attrs.get<Pool2dOptions>());
}

std::string pool2d_format(const Attrs& attrs, std::span<const int32_t>) {
  const auto a = attrs.get<Pool2dOptions>();
  return fmt::format("window={}x{} stride={}x{} pad={}x{}{}", a.window[0], a.window[1], a.stride[0], a.stride[1],
                     a.padding[0], a.padding[1], a.max_padding == MaxPoolPadding::Zero ? " pad_value=0" : "");
}

// Max pooling is not differentiable where a window's best two candidates are within
// `margin`: marks those near-winners (a padding zero is a candidate with
// MaxPoolPadding::Zero, but is not an element of x).
void max_pool2d_kinks(const Attrs& attrs, std::size_t, const Tensor<double>& x, double margin, std::vector<bool>& at) {
  const auto a = attrs.get<Pool2dOptions>();
  const std::ptrdiff_t H = static_cast<std::ptrdiff_t>(x.shape()[2]), W = static_cast<std::ptrdiff_t>(x.shape()[3]);
  const std::size_t planes = x.shape()[0] * x.shape()[1];
  const std::ptrdiff_t OH = (H + 2 * a.padding[0] - a.window[0]) / a.stride[0] + 1;
  const std::ptrdiff_t OW = (W + 2 * a.padding[1] - a.window[1]) / a.stride[1] + 1;
  std::vector<std::pair<double, std::ptrdiff_t>> cand;  // (value, index in plane; -1 = padding)
  for (std::size_t pl = 0; pl < planes; ++pl) {
    const double* xp = x.data() + pl * static_cast<std::size_t>(H * W);
    for (std::ptrdiff_t i = 0; i < OH; ++i)
      for (std::ptrdiff_t j = 0; j < OW; ++j) {
        detail::max_pool2d_window(xp, H, W, i, j, a, cand);
        double best = -INFINITY;
        for (const auto& c : cand) best = std::max(best, c.first);
        std::size_t near = 0;
        for (const auto& c : cand) near += c.first >= best - margin;
        if (near < 2) continue;  // a clear winner: differentiable
        for (const auto& c : cand)
          if (c.first >= best - margin && c.second >= 0)
            at[pl * static_cast<std::size_t>(H * W) + static_cast<std::size_t>(c.second)] = true;
      }
  }
}

}  // namespace

constinit const OpDef avg_pool2d_op{.name = "avg_pool2d", .vjp_float = avg_pool2d_node_vjp<float>,
                                    .vjp_double = avg_pool2d_node_vjp<double>, .replay = avg_pool2d_replay,
                                    .format_attrs = pool2d_format,
    .record_vjp_float = avg_pool2d_record_vjp<float>, .record_vjp_double = avg_pool2d_record_vjp<double>};
AD_REGISTER_OP(avg_pool2d_op);

constinit const OpDef max_pool2d_op{.name = "max_pool2d", .vjp_float = max_pool2d_node_vjp<float>,
                                    .vjp_double = max_pool2d_node_vjp<double>, .replay = max_pool2d_replay,
                                    .format_attrs = pool2d_format, .kinks = max_pool2d_kinks,
    .record_vjp_float = max_pool2d_record_vjp<float>, .record_vjp_double = max_pool2d_record_vjp<double>};
AD_REGISTER_OP(max_pool2d_op);

#define AD_INSTANTIATE(T)                                                                        \
  template void avg_pool2d_forward<T>(const Tensor<T>&, const Pool2dOptions&, Tensor<T>&);              \
  template void avg_pool2d_vjp<T>(const Tensor<T>&, const Pool2dOptions&, Tensor<T>*);                  \
  template void max_pool2d_forward<T>(const Tensor<T>&, const Pool2dOptions&, Tensor<T>&, int32_t*);    \
  template void max_pool2d_vjp<T>(const Tensor<T>&, const std::vector<int32_t>&, Tensor<T>*);   \
  template Value avg_pool2d<T>(Tape<T>&, Value, const Pool2dOptions&, std::source_location);    \
  template Value max_pool2d<T>(Tape<T>&, Value, const Pool2dOptions&, std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE


// ---- max_pool2d_backward (scatter), max_pool2d_gather, avg_pool2d_backward (unpool) ----
// The pools' VJPs as ops (higher-order gradients). With M the max-pool mask of appendix
// B (eq. b-1; one 1 per row, at the switch), y = M x is the gather and dJ/dx = M^T g the
// scatter: each is the other's transpose, hence each one's VJP is the other. With P the
// average-pool matrix, the unpool is P^T and its VJP is P, avg_pool2d itself.

namespace {
void check_switches(const char* op, std::size_t count, std::size_t expected, std::span<const int32_t> switches,
                    std::size_t plane) {
  if (switches.size() != expected)
    shape_error(op, "{} switches for {} pooled elements (one each)", switches.size(), expected);
  for (int32_t s : switches)
    if (s < -1 || (s >= 0 && static_cast<std::size_t>(s) >= plane))
      shape_error(op, "switch {} outside the input plane of {} elements", s, plane);
  (void)count;
}

// y[pl, o] = x[pl, sw[o]] (0 for -1): x (planes, in_plane), y (planes, out_plane).
template <class T>
void gather_planes(const Tensor<T>& x, std::span<const int32_t> sw, Tensor<T>& y, bool add) {
  const std::size_t planes = y.shape()[0] * y.shape()[1], out_plane = y.shape()[2] * y.shape()[3];
  const std::size_t in_plane = x.shape()[2] * x.shape()[3];
  for (std::size_t pl = 0; pl < planes; ++pl) {
    const T* xp = x.data() + pl * in_plane;
    const int32_t* s = sw.data() + pl * out_plane;
    T* yp = y.data() + pl * out_plane;
    for (std::size_t o = 0; o < out_plane; ++o) {
      const T v = s[o] >= 0 ? xp[s[o]] : T(0);
      yp[o] = add ? yp[o] + v : v;
    }
  }
}
// y[pl, sw[o]] += g[pl, o]: max_pool2d_vjp over a span.
template <class T>
void scatter_planes(const Tensor<T>& g, std::span<const int32_t> sw, Tensor<T>& y) {
  const std::size_t planes = g.shape()[0] * g.shape()[1], out_plane = g.shape()[2] * g.shape()[3];
  const std::size_t in_plane = y.shape()[2] * y.shape()[3];
  for (std::size_t pl = 0; pl < planes; ++pl) {
    const T* gp = g.data() + pl * out_plane;
    const int32_t* s = sw.data() + pl * out_plane;
    T* yp = y.data() + pl * in_plane;
    for (std::size_t o = 0; o < out_plane; ++o)
      if (s[o] >= 0) yp[s[o]] += gp[o];
  }
}
PoolBackwardAttrs pool_backward_attrs(const Pool2dOptions& a, std::size_t H, std::size_t W) {
  return {.pool = a, .H = static_cast<uint32_t>(H), .W = static_cast<uint32_t>(W)};
}
}  // namespace

template <class T>
Value max_pool2d_backward(Tape<T>& tape, Value grad_out, std::span<const int32_t> switches, std::size_t H,
                          std::size_t W, const Pool2dOptions& opt, std::source_location loc) {
  const Shape gs = tape.shape(grad_out);
  check_rank("max_pool2d_backward", "grad_out", gs, 4, "(N, C, OH, OW)");
  check_switches("max_pool2d_backward", 0, tape.value(grad_out).size(), switches, H * W);
  Value y = tape.new_value({gs[0], gs[1], H, W}, tape.any_requires_grad({grad_out}));
  Tensor<T>& yv = tape.mutable_value(y);
  zero_fill(yv);
  scatter_planes(tape.value(grad_out), switches, yv);
  if (Node<T>* node = tape.record(OpKind::MaxPool2dBackward, {grad_out}, y, Attrs::of(pool_backward_attrs(opt, H, W)), loc))
    node->saved_index.assign(switches.begin(), switches.end());
  return y;
}

template <class T>
Value max_pool2d_gather(Tape<T>& tape, Value x, std::span<const int32_t> switches, std::size_t OH, std::size_t OW,
                        const Pool2dOptions& opt, std::source_location loc) {
  const Shape xs = tape.shape(x);
  check_rank("max_pool2d_gather", "input", xs, 4, "(N, C, H, W)");
  check_switches("max_pool2d_gather", 0, xs[0] * xs[1] * OH * OW, switches, xs[2] * xs[3]);
  Value y = tape.new_value({xs[0], xs[1], OH, OW}, tape.any_requires_grad({x}));
  gather_planes(tape.value(x), switches, tape.mutable_value(y), false);
  if (Node<T>* node = tape.record(OpKind::MaxPool2dGather, {x}, y, Attrs::of(pool_backward_attrs(opt, xs[2], xs[3])), loc))
    node->saved_index.assign(switches.begin(), switches.end());
  return y;
}

template <class T>
Value avg_pool2d_backward(Tape<T>& tape, Value grad_out, std::size_t H, std::size_t W, const Pool2dOptions& opt,
                          std::source_location loc) {
  Pool2dOptions a = opt;
  a.max_padding = MaxPoolPadding::NegInf;
  const Shape gs = tape.shape(grad_out);
  check_rank("avg_pool2d_backward", "grad_out", gs, 4, "(N, C, OH, OW)");
  const Shape pooled = pool2d_output_shape("avg_pool2d_backward", {gs[0], gs[1], H, W}, a);
  if (pooled != gs)
    shape_error("avg_pool2d_backward", "grad_out {} is not the pooled shape {} of the input plane {}x{}",
                shape_str(gs), shape_str(pooled), H, W);
  Value y = tape.new_value({gs[0], gs[1], H, W}, tape.any_requires_grad({grad_out}));
  Tensor<T>& yv = tape.mutable_value(y);
  zero_fill(yv);
  avg_pool2d_vjp(tape.value(grad_out), a, &yv);
  tape.record(OpKind::AvgPool2dBackward, {grad_out}, y, Attrs::of(pool_backward_attrs(a, H, W)), loc);
  return y;
}

namespace {
// scatter's VJP: gg += gather(u);  gather's VJP: gx += scatter(u);  unpool's VJP: gg += pool(u).
template <class T> void max_pool2d_backward_node_vjp(Tape<T>* tape, const Node<T>& node) {
  if (Tensor<T>* gg = tape->input_grad(node, 0)) gather_planes(tape->grad_out(node), std::span<const int32_t>(node.saved_index), *gg, true);
}
template <class T> void max_pool2d_gather_node_vjp(Tape<T>* tape, const Node<T>& node) {
  if (Tensor<T>* gx = tape->input_grad(node, 0)) scatter_planes(tape->grad_out(node), std::span<const int32_t>(node.saved_index), *gx);
}
template <class T> void avg_pool2d_backward_node_vjp(Tape<T>* tape, const Node<T>& node) {
  Tensor<T>* gg = tape->input_grad(node, 0);
  if (!gg) return;
  Tensor<T> pooled(gg->shape());
  avg_pool2d_forward(tape->grad_out(node), attrs_as<PoolBackwardAttrs>(node.attrs).pool, pooled);
  *gg += pooled;
}
template <class T> void max_pool2d_backward_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const std::vector<int32_t> switches = t.nodes()[static_cast<std::size_t>(n)].saved_index;
  const auto a = attrs_as<PoolBackwardAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs);
  const Shape gs = t.shape(node_input(t, n, 0));
  gi[0] = max_pool2d_gather(t, g, std::span<const int32_t>(switches), gs[2], gs[3], a.pool);
}
template <class T> void max_pool2d_gather_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const std::vector<int32_t> switches = t.nodes()[static_cast<std::size_t>(n)].saved_index;
  const auto a = attrs_as<PoolBackwardAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs);
  gi[0] = max_pool2d_backward(t, g, std::span<const int32_t>(switches), a.H, a.W, a.pool);
}
template <class T> void avg_pool2d_backward_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (wants(want, 0)) gi[0] = avg_pool2d(t, g, attrs_as<PoolBackwardAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs).pool);
}
Value max_pool2d_backward_replay(Tape<double>& t, const ReplayArgs& r) {
  const auto a = r.attrs.get<PoolBackwardAttrs>();
  return max_pool2d_backward(t, r.inputs[0], r.saved_index, a.H, a.W, a.pool);
}
Value max_pool2d_gather_replay(Tape<double>& t, const ReplayArgs& r) {
  const auto a = r.attrs.get<PoolBackwardAttrs>();
  const Shape xs = t.shape(r.inputs[0]);
  const Shape ys = pool2d_output_shape("max_pool2d_gather", xs, a.pool);
  return max_pool2d_gather(t, r.inputs[0], r.saved_index, ys[2], ys[3], a.pool);
}
Value avg_pool2d_backward_replay(Tape<double>& t, const ReplayArgs& r) {
  const auto a = r.attrs.get<PoolBackwardAttrs>();
  return avg_pool2d_backward(t, r.inputs[0], a.H, a.W, a.pool);
}
std::string pool_backward_format(const Attrs& attrs, std::span<const int32_t>) {
  const auto a = attrs.get<PoolBackwardAttrs>();
  return fmt::format("window={}x{} stride={}x{} pad={}x{} plane={}x{}", a.pool.window[0], a.pool.window[1],
                     a.pool.stride[0], a.pool.stride[1], a.pool.padding[0], a.pool.padding[1], a.H, a.W);
}
}  // namespace

constinit const OpDef max_pool2d_backward_op{
    .name = "max_pool2d_backward", .input_names = {"grad_out"}, .vjp_float = max_pool2d_backward_node_vjp<float>,
    .vjp_double = max_pool2d_backward_node_vjp<double>, .replay = max_pool2d_backward_replay,
    .format_attrs = pool_backward_format, .record_vjp_float = max_pool2d_backward_record_vjp<float>,
    .record_vjp_double = max_pool2d_backward_record_vjp<double>};
constinit const OpDef max_pool2d_gather_op{
    .name = "max_pool2d_gather", .vjp_float = max_pool2d_gather_node_vjp<float>,
    .vjp_double = max_pool2d_gather_node_vjp<double>, .replay = max_pool2d_gather_replay,
    .format_attrs = pool_backward_format, .record_vjp_float = max_pool2d_gather_record_vjp<float>,
    .record_vjp_double = max_pool2d_gather_record_vjp<double>};
constinit const OpDef avg_pool2d_backward_op{
    .name = "avg_pool2d_backward", .input_names = {"grad_out"}, .vjp_float = avg_pool2d_backward_node_vjp<float>,
    .vjp_double = avg_pool2d_backward_node_vjp<double>, .replay = avg_pool2d_backward_replay,
    .format_attrs = pool_backward_format, .record_vjp_float = avg_pool2d_backward_record_vjp<float>,
    .record_vjp_double = avg_pool2d_backward_record_vjp<double>};
AD_REGISTER_OP(max_pool2d_backward_op);
AD_REGISTER_OP(max_pool2d_gather_op);
AD_REGISTER_OP(avg_pool2d_backward_op);

#define AD_INSTANTIATE(T)                                                                                         \
  template Value max_pool2d_backward<T>(Tape<T>&, Value, std::span<const int32_t>, std::size_t, std::size_t,     \
                                        const Pool2dOptions&, std::source_location);                             \
  template Value max_pool2d_gather<T>(Tape<T>&, Value, std::span<const int32_t>, std::size_t, std::size_t,       \
                                      const Pool2dOptions&, std::source_location);                               \
  template Value avg_pool2d_backward<T>(Tape<T>&, Value, std::size_t, std::size_t, const Pool2dOptions&,         \
                                        std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

// ---- global average pooling ----
// The mean of each (H, W) plane: an average pool whose window is the whole plane
// (section 3.1.3 with h_l = H, w_l = W, no padding), so P is the H x W matrix of 1/(HW)
// and the VJP spreads g[n,c] / (HW) over the plane.

template <class T> void global_avg_pool2d_forward(const Tensor<T>& x, Tensor<T>& y) {
  const std::size_t planes = x.shape()[0] * x.shape()[1], hw = x.shape()[2] * x.shape()[3];
  const T* xp = x.data();
  T* yp = y.data();
  // y[n,c] = 1/(HW) sum_{h,w} x[n,c,h,w]
  parallel_for(planes, planes * hw > kParallelElements, [=](std::size_t p) {
    T s = 0;
    for (std::size_t i = 0; i < hw; ++i) s += xp[p * hw + i];
    yp[p] = s / static_cast<T>(hw);
  });
}

template <class T> void global_avg_pool2d_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_x) {
  if (!grad_x) return;
  const std::size_t planes = grad_x->shape()[0] * grad_x->shape()[1], hw = grad_x->shape()[2] * grad_x->shape()[3];
  const T* g = grad_out.data();
  T* gx = grad_x->data();
  // dx[n,c,h,w] += g[n,c] / (HW)
  parallel_for(planes, planes * hw > kParallelElements, [=](std::size_t p) {
    const T share = g[p] / static_cast<T>(hw);
    for (std::size_t i = 0; i < hw; ++i) gx[p * hw + i] += share;
  });
}

template <class T> Value global_avg_pool2d(Tape<T>& tape, Value x, std::source_location loc) {
  const Shape xs = tape.shape(x);
  check_rank("global_avg_pool2d", "input", xs, 4, "(N, C, H, W)");
  if (xs[2] == 0 || xs[3] == 0)
    shape_error("global_avg_pool2d", "input {} has an empty plane (H or W is 0): its mean is undefined", shape_str(xs));
  Value y = tape.new_value({xs[0], xs[1], 1, 1}, tape.any_requires_grad({x}));
  global_avg_pool2d_forward(tape.value(x), tape.mutable_value(y));
  tape.record(OpKind::GlobalAvgPool2d, {x}, y, Attrs{}, loc);
  return y;
}

namespace {
template <class T> void global_avg_pool2d_node_vjp(Tape<T>* tape, const Node<T>& node) {
  global_avg_pool2d_vjp(tape->grad_out(node), tape->input_grad(node, 0));
}
Value global_avg_pool2d_replay(Tape<double>& t, const ReplayArgs& r) { return global_avg_pool2d(t, r.inputs[0]); }
// Recorded VJP: gx = broadcast_to(g, x's shape) / (HW); linear.
template <class T> void global_avg_pool2d_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const Shape xs = t.shape(node_input(t, n, 0));
  gi[0] = scale(t, broadcast_to(t, g, xs), 1.0 / static_cast<double>(xs[2] * xs[3]));
}
}  // namespace

constinit const OpDef global_avg_pool2d_op{.name = "global_avg_pool2d", .vjp_float = global_avg_pool2d_node_vjp<float>,
                                           .vjp_double = global_avg_pool2d_node_vjp<double>,
                                           .replay = global_avg_pool2d_replay,
                                           .record_vjp_float = global_avg_pool2d_record_vjp<float>,
                                           .record_vjp_double = global_avg_pool2d_record_vjp<double>};
AD_REGISTER_OP(global_avg_pool2d_op);

#define AD_INSTANTIATE(T)                                                                    \
  template void global_avg_pool2d_forward<T>(const Tensor<T>&, Tensor<T>&);                 \
  template void global_avg_pool2d_vjp<T>(const Tensor<T>&, Tensor<T>*);                     \
  template Value global_avg_pool2d<T>(Tape<T>&, Value, std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

namespace detail {
void max_pool2d_window(const double* plane, std::ptrdiff_t H, std::ptrdiff_t W, std::ptrdiff_t i, std::ptrdiff_t j,
                       const Pool2dOptions& p, std::vector<std::pair<double, std::ptrdiff_t>>& cand) {
  cand.clear();
  for (std::ptrdiff_t u = 0; u < p.window[0]; ++u)
    for (std::ptrdiff_t v = 0; v < p.window[1]; ++v) {
      const std::ptrdiff_t h = i * p.stride[0] + u - p.padding[0], w = j * p.stride[1] + v - p.padding[1];
      if (h >= 0 && h < H && w >= 0 && w < W) cand.emplace_back(plane[h * W + w], h * W + w);
      else if (p.max_padding == MaxPoolPadding::Zero) cand.emplace_back(0.0, -1);
    }
}
}  // namespace detail

}  // namespace ad
