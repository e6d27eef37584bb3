// conv2d -> ReLU -> max pooling as one op (ops/conv2d_relu_pool.hpp).
//
// Forward. With z = conv2d(x, k, b) (section 2), r = relu(z) and y = max_pool2d(r) with
// switches s_i (the first winner of window W_i, appendix B), ReLU is monotone, so
//   y_i = max_{w in W_i} relu(z_w) = relu(max_{w in W_i} z_w),
// and the max may be taken on z, before ReLU: ReLU then runs on the pooled values only.
// The winners agree wherever y_i > 0 (the elements of r equal to y_i > 0 are exactly
// those of z equal to it) and where y_i is NaN (a NaN of z is a NaN of r, and the first
// NaN wins in both); where y_i = 0 they may differ, and there the gradient is zero
// (below). With a 2x2 window at stride 2 and no padding the max and ReLU are the
// convolution kernels' output pass (relu_pool_planes in ops/conv2d_simd.inc), image by
// image on the pixel-major result while it is in cache, so z and r are never stored;
// for inference on the Winograd path, whose 2x2 output tiles are the pool's windows,
// inside its output transform (wino_relu_pool_pixels), so z is not even written
// pixel-major.
// Any other pool (or a convolution off the direct and Winograd paths) runs the three
// ops' own forwards one after the other.
//
// VJP (dJ/dy = g). Max pooling's (eq. b-1): dJ/dr_w = sum_i g_i [s_i = w]; ReLU's:
// dJ/dz_w = dJ/dr_w [!(z_w <= 0)]. At w = s_i, !(z_w <= 0) equals !(y_i <= 0): if
// y_i > 0 then z_w = y_i; if y_i = 0 then r_w = 0, so z_w <= 0; if y_i is NaN, so is
// z_w. Hence
//   dJ/dz = M^T (g .* [!(y <= 0)])     (the mask read at the output, one per window)
// and the switches of either forward serve (where they may differ, the mask is 0).
// On the tape, with the pool in the output pass, the forward folds the mask into the
// switches (switch codes, below): each window's code names its winner's place in the
// window, or none where y <= 0, so the VJP reads neither y nor the indices.
// Then conv2d's VJP of section 3.1.5 on dJ/dz: dJ/dx, dJ/dK, dJ/db.
//   Recorded (higher order): gz = max_pool2d_backward(relu_backward(g, y)), then
// conv2d's recorded VJP on gz (conv2d_backward_input, conv2d_backward_kernel, sum_to).
// The mask and the switches are constant where the op is differentiable, so the second
// derivative flows through g only, as for the three ops recorded apart.
#include "ops/conv2d_relu_pool.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>

#include "autodiff/higher_order.hpp"
#include "ops/activation.hpp"
#include "ops/conv2d_direct.hpp"
#include "ops/elementwise.hpp"
#include "ops/scratch.hpp"
#include "ops/shape.hpp"

namespace ad {

namespace {

constexpr const char* kOp = "conv2d_relu_max_pool2d";

// The pool runs inside the convolution's output pass for this pool.
bool fused_pool(const Pool2dOptions& p) {
  return p.window[0] == 2 && p.window[1] == 2 && p.stride[0] == 2 && p.stride[1] == 2 && p.padding[0] == 0 &&
         p.padding[1] == 0;
}

// Buffer `slot` of this thread, grown and kept (no allocation per call), at its offset
// within a page in the second family of ops/scratch.hpp (beside conv2d's buffers, which
// the output passes and the unpool run with).
struct PassScratch {};
template <class T>
T* grow(std::size_t slot, std::size_t n) {
  return ThreadScratch<T, PassScratch, 2, 1>::get(n, slot);
}

// dJ/dz buffers, one per conv output shape of the last calls (two layers of a CNN: two
// buffers, reused every step instead of 3 MB allocated and freed per layer and step).
template <class T>
Tensor<T>& grad_z_buffer(const Shape& zs) {
  thread_local std::vector<Tensor<T>> buffers;
  for (Tensor<T>& b : buffers)
    if (std::equal(b.shape().begin(), b.shape().end(), zs.begin(), zs.end())) return b;
  if (buffers.size() == 4) buffers.erase(buffers.begin());  // the oldest shape goes
  buffers.emplace_back(zs);
  return buffers.back();
}

// dst[s_i] += g_i wherever y_i passed ReLU (!(y_i <= 0)), over one plane's windows.
// Without a branch on the data: the mask is about half zeros, and mispredicting it made
// the branchy loop 8% of a training step. A window that passes nothing adds +0 (to its
// winner, or to dst[0] where it has none): x + 0 is x for every x but -0, and dst holds
// no -0 (it starts at +0 and only gains sums). Not vectorised: GCC would use AVX-512
// scatters, which made it 3x slower on an AMD Zen 5.
template <class T>
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-vectorize")))
#endif
void scatter_live(const T* g, const T* y, const int32_t* am, std::size_t n, T* dst) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
#if defined(__clang__)
#pragma clang loop vectorize(disable)
#endif
  for (std::size_t o = 0; o < n; ++o) {
    const int32_t a = am[o];
    // masks and bit operations: GCC compiles `live ? g : 0` to a branch
    const Bits live = Bits(0) - Bits((a >= 0) & !(y[o] <= T(0)));
    dst[a & ~(a >> 31)] += std::bit_cast<T>(std::bit_cast<Bits>(g[o]) & live);
  }
}

}  // namespace

Shape conv2d_relu_max_pool2d_output_shape(const Shape& x, const Shape& k, const Shape* b, const Conv2dOptions& conv,
                                          const Pool2dOptions& pool) {
  try {
    const Shape zs = conv2d_output_shape(x, k, b, conv);
    if (pool.max_padding == MaxPoolPadding::NegInf &&
        (pool.padding[0] >= pool.window[0] || pool.padding[1] >= pool.window[1]))
      shape_error("max_pool2d", "padding ({},{}) must be smaller than the window ({},{}) with -inf padding",
                  pool.padding[0], pool.padding[1], pool.window[0], pool.window[1]);
    return pool2d_output_shape("max_pool2d", zs, pool);
  } catch (const ShapeError& e) {  // the message names the part (conv2d or max_pool2d) that refused
    throw ShapeError(fmt::format("{}: {}", kOp, e.what()));
  }
}

namespace {

// The switches on the tape. Where the pool runs in the convolution's output pass
// (fused_pool on conv2d's pixel path), the node keeps them as codes, one byte each,
// pixel-major, packed four to an element of saved_index (codes_of): for the window s
// of channel o of image n, byte (n * PH*PW + s) * C_out + o holds the winner's place in
// the window (0-3, row-major) plus conv::kSwitchDead where the window's output did not
// pass ReLU. That is what the VJP's unpool_codes reads as it stands, with neither the
// indices' transposes (forward and VJP) nor their per-window decoding against y;
// recorded VJPs turn them into indices (switch_indices). Elsewhere the switches are
// max_pool2d's indices h*OW + w, planar.
bool switch_codes(const Shape& ks, const Conv2dOptions& conv, const Pool2dOptions& pool) {
  return fused_pool(pool) && detail::conv2d_pixels_path(ks, conv);
}

// `count` codes take ceil(count / 4) elements of saved_index; their bytes.
std::size_t codes_elements(std::size_t count) { return (count + 3) / 4; }
const int8_t* codes_of(const std::vector<int32_t>& saved) { return reinterpret_cast<const int8_t*>(saved.data()); }

// The codes (N, PH*PW, C) as max_pool2d's switches (N, C, PH*PW), zs the conv's output shape.
std::vector<int32_t> switch_indices(const std::vector<int32_t>& saved, const Shape& zs) {
  const std::size_t N = zs[0], C = zs[1], OW = zs[3], PW = zs[3] / 2, PP = (zs[2] / 2) * PW;
  const int8_t* codes = codes_of(saved);
  std::vector<int32_t> idx(N * C * PP);
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t s = 0; s < PP; ++s) {
      const std::size_t top = 2 * (s / PW) * OW + 2 * (s % PW);
      for (std::size_t o = 0; o < C; ++o) {
        const int32_t c = codes[(n * PP + s) * C + o];
        idx[(n * C + o) * PP + s] = static_cast<int32_t>(top + (c & 1) + ((c >> 1) & 1) * OW);
      }
    }
  return idx;
}

// The op's output pixel-major, as its forward leaves it in the node's `saved` for a next
// convolution (px below; pixel_copy): (N, PH, PW, S) with S = C_out rounded up to whole
// vectors, in a flat tensor of kPixelPad more elements, from its first 64-byte boundary
// (a tensor's data is 16 bytes into a page where malloc maps it: each row of S would
// straddle two cache lines).
constexpr std::size_t kPixelPad = 64;
template <class T>
std::size_t pixel_stride(std::size_t channels) {
  const std::size_t L = conv::kernels<T>().lanes;
  return (channels + L - 1) / L * L;
}
template <class P>  // P: T or const T
P* pixel_rows(P* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  return p + ((64 - a % 64) % 64) / sizeof(P);
}

// x pixel-major, where x is the output of a conv2d_relu_max_pool2d node whose forward
// made it so; none otherwise. The tape's values do not change after their op, so the
// copy is x's values for as long as the node is on the tape.
template <class T>
detail::PixelCopy<T> pixel_copy(const Tape<T>& tape, Value x) {
  const int32_t p = tape.slot(x).producer;
  if (p < 0) return {};
  const Node<T>& n = tape.nodes()[static_cast<std::size_t>(p)];
  const auto& xs = tape.value(x).shape();
  if (n.op != OpKind::Conv2dReluMaxPool2d || xs.size() != 4 || n.saved.dimension() != 1) return {};
  const std::size_t S = pixel_stride<T>(xs[1]);
  if (n.saved.size() != xs[0] * xs[2] * xs[3] * S + kPixelPad) return {};
  return {pixel_rows(n.saved.data()), S};
}

// The forward, with the switches as codes where `codes` (switch_codes says where: then
// argmax holds their bytes, codes_of). xpx: x pixel-major too, or none. With `px`, y
// pixel-major as well (kPixelPad above; zero past C_out) where T is float and `codes`,
// for the next convolution to read (pixel_copy); returns whether it wrote px.
template <class T>
bool forward(const Tensor<T>& x, const Tensor<T>& k, const Tensor<T>* b, const Conv2dOptions& conv,
             const Pool2dOptions& pool, Tensor<T>& y, int32_t* argmax, bool codes,
             const detail::PixelCopy<T>& xpx = {}, Tensor<T>* px = nullptr) {
  const Shape xs(x.shape().begin(), x.shape().end()), ks(k.shape().begin(), k.shape().end());
  const Shape zs = conv2d_output_shape(xs, ks, nullptr, conv);
  const std::size_t O = zs[1], OH = zs[2], OW = zs[3], PP = (OH / 2) * (OW / 2);
  if (zs[0] == 0) codes = false;  // no switches to write
  if (fused_pool(pool) && zs[0] > 0) {
    std::vector<T> bias(O + 64, T(0));  // Opad entries (at most O + 63), zero past C_out
    if (b) std::copy(b->begin(), b->end(), bias.begin());
    const conv::Kernels<T>& kn = conv::kernels<T>();
    T* yp = y.data();
    // Inference on the Winograd path: the pool inside its output pass, no pixel-major z
    // at all (with the switches, training, it measured slower: ops/conv2d_simd.inc)
    if (!argmax && detail::conv2d_relu_pool_pixels<T>(
                       x, k, conv, bias.data(),
                       [&](std::size_t n, const T* pt, std::size_t Opad, std::size_t oa, std::size_t ob) {
                         const std::size_t off = (n * O + std::min(oa, O)) * PP;
                         kn.pooled_to_planes(pt + oa, nullptr, PP, Opad, std::min(ob, O) - std::min(oa, O),
                                             yp + off, nullptr);
                       }))
      return false;
    const std::size_t S = pixel_stride<T>(O);
    T* pxp = nullptr;
    if (px && codes && std::is_same_v<T, float>) {
      px->resize({zs[0] * PP * S + kPixelPad});  // no reallocation at last step's shape
      pxp = pixel_rows(px->data());
    }
    const bool done = detail::conv2d_forward_pixels<T>(
        x, k, conv,
        [&](std::size_t n, const T* yt, std::size_t Opad, std::size_t oa, std::size_t ob) {
          // the output channels [oa, min(ob, O)) of image n
          const std::size_t off = (n * O + std::min(oa, O)) * PP;
          if (codes) {
            // the pooled result straight into px where its rows are S long (the next
            // image's px asked for meanwhile: written with stores that miss, this pass took
            // 25% longer); copied there otherwise (Opad >= S: the channels [oa, min(ob, S)))
            const bool in_place = pxp && Opad == S;
            T* pt = in_place ? pxp + n * PP * S + oa : grow<T>(0, PP * Opad);
            if (in_place && n + 1 < zs[0])
              for (std::size_t e = 0; e < PP * S; e += 64 / sizeof(T))
                __builtin_prefetch(pxp + (n + 1) * PP * S + e, 1, 2);
            kn.relu_pool_codes(yt + oa, OH, OW, Opad, ob - oa, std::min(ob, O) - std::min(oa, O), bias.data() + oa,
                               yp + off, reinterpret_cast<int8_t*>(argmax) + n * PP * O + std::min(oa, O), O, pt,
                               grow<T>(1, PP * Opad));
            if (pxp && !in_place && oa < S)
              for (std::size_t s = 0; s < PP; ++s)
                std::copy(pt + s * Opad, pt + s * Opad + (std::min(ob, S) - oa), pxp + (n * PP + s) * S + oa);
          } else
            kn.relu_pool_planes(yt + oa, OH, OW, Opad, ob - oa, std::min(ob, O) - std::min(oa, O),
                                bias.data() + oa, yp + off, argmax ? argmax + off : nullptr, grow<T>(0, PP * Opad),
                                grow<T>(1, PP * Opad));
        },
        xpx);
    if (done) return pxp != nullptr;
  }
  if (codes) throw std::logic_error(fmt::format("{}: switch codes off the pixel path", kOp));
  // The three ops one after the other.
  Tensor<T> z(zs), r(zs);
  conv2d_forward(x, k, b, conv, z);
  relu_forward(z, r);
  max_pool2d_forward(r, pool, y, argmax);
  return false;
}

// The VJP, with the switches as codes where `codes`; xpx: x pixel-major too, or none.
template <class T>
void vjp(const Tensor<T>& grad_out, const Tensor<T>& y, const std::vector<int32_t>& argmax, const Tensor<T>& x,
         const Tensor<T>& k, const Conv2dOptions& conv, Tensor<T>* grad_x, Tensor<T>* grad_k, Tensor<T>* grad_b,
         bool overwrite_x, bool codes, const detail::PixelCopy<T>& xpx = {}) {
  if (!grad_x && !grad_k && !grad_b) return;
  const Shape xs(x.shape().begin(), x.shape().end()), ks(k.shape().begin(), k.shape().end());
  const Shape zs = conv2d_output_shape(xs, ks, nullptr, conv);
  const std::size_t planes = zs[0] * zs[1], in_plane = zs[2] * zs[3];
  const std::size_t out_plane = grad_out.shape()[2] * grad_out.shape()[3];
  const T* gp = grad_out.data();
  const T* yp = y.data();
  // gz = M^T (g .* [!(y <= 0)]) for the plane pl = n * C_out + o: zero, then each
  // window's gradient to its winner
  auto make_plane = [&](std::size_t pl, T* dst) {
    std::fill(dst, dst + in_plane, T(0));
    scatter_live(gp + pl * out_plane, yp + pl * out_plane, argmax.data() + pl * out_plane, out_plane, dst);
  };
  // Image by image inside conv2d's VJP where its plain path applies: each image's gz
  // is made in a buffer of the thread that then reads it, in cache, and the batch's gz
  // is never written in full. Pixel-major, the layout conv2d's kernels read, where each
  // window has a 2x2 block of z to itself (unpool_pixels in ops/conv2d_simd.inc);
  // planar otherwise.
  const std::size_t C = zs[1];
  const std::size_t PH = grad_out.shape()[2], PW = grad_out.shape()[3];
  const conv::Kernels<T>& kn = conv::kernels<T>();
  if (codes) {  // PH = OH/2, PW = OW/2 on the pixel path (switch_codes)
    if (out_plane == 0) {  // no window: dJ/dz is zero
      if (overwrite_x && grad_x) zero_fill(*grad_x);
      return;
    }
    const bool done = detail::conv2d_vjp_pixels<T>(
        x, k, conv,
        [&](std::size_t n, T* gt, std::size_t Opad) {
          kn.unpool_codes(gp + n * C * out_plane, codes_of(argmax) + n * C * out_plane, C, zs[2], zs[3], Opad, gt,
                          grow<T>(0, 2 * out_plane * Opad));
        },
        grad_x, grad_k, grad_b, overwrite_x, xpx);
    if (!done) throw std::logic_error(fmt::format("{}: switch codes off the pixel path", kOp));
    return;
  }
  if (2 * PH <= zs[2] && 2 * PW <= zs[3] && out_plane > 0) {
    if (detail::conv2d_vjp_pixels<T>(
            x, k, conv,
            [&](std::size_t n, T* gt, std::size_t Opad) {
              const std::size_t off = n * C * out_plane;
              kn.unpool_pixels(gp + off, yp + off, argmax.data() + off, C, zs[2], zs[3], PH, PW, Opad, gt,
                               grow<T>(0, 2 * out_plane * (C + Opad + 1)));
            },
            grad_x, grad_k, grad_b, overwrite_x, xpx))
      return;
  }
  if (overwrite_x && grad_x) zero_fill(*grad_x);  // the other paths add
  if (detail::conv2d_vjp_images<T>(
          x, k, conv,
          [&](std::size_t n, T* gzn) {
            for (std::size_t o = 0; o < C; ++o) make_plane(n * C + o, gzn + o * in_plane);
          },
          grad_x, grad_k, grad_b))
    return;
  // Otherwise (dilation, groups) the whole gz first.
  Tensor<T>& gz = grad_z_buffer<T>(zs);
  T* gzp = gz.data();
#pragma omp parallel for schedule(static) if (planes * in_plane > 65536)
  for (std::size_t pl = 0; pl < planes; ++pl) make_plane(pl, gzp + pl * in_plane);
  conv2d_vjp(gz, x, k, conv, grad_x, grad_k, grad_b);
}

}  // namespace

template <class T>
void conv2d_relu_max_pool2d_forward(const Tensor<T>& x, const Tensor<T>& k, const Tensor<T>* b,
                                    const Conv2dOptions& conv, const Pool2dOptions& pool, Tensor<T>& y,
                                    int32_t* argmax) {
  forward(x, k, b, conv, pool, y, argmax, false);
}

template <class T>
void conv2d_relu_max_pool2d_vjp(const Tensor<T>& grad_out, const Tensor<T>& y, const std::vector<int32_t>& argmax,
                                const Tensor<T>& x, const Tensor<T>& k, const Conv2dOptions& conv, Tensor<T>* grad_x,
                                Tensor<T>* grad_k, Tensor<T>* grad_b, bool overwrite_x) {
  vjp(grad_out, y, argmax, x, k, conv, grad_x, grad_k, grad_b, overwrite_x, false);
}

std::size_t conv2d_relu_max_pool2d_switch_bytes(const Shape& k, const Conv2dOptions& conv, const Pool2dOptions& pool) {
  return switch_codes(k, conv, pool) ? 1 : sizeof(int32_t);
}

std::size_t conv2d_relu_max_pool2d_pixel_copy_elements(const Shape& y, const Shape& k, const Conv2dOptions& conv,
                                                       const Pool2dOptions& pool, std::size_t element_bytes) {
  if (element_bytes != sizeof(float) || !switch_codes(k, conv, pool) || y[0] == 0) return 0;
  return y[0] * y[2] * y[3] * pixel_stride<float>(y[1]) + kPixelPad;
}

template <class T>
Value conv2d_relu_max_pool2d(Tape<T>& tape, Value x, Value k, Value b, const Conv2dOptions& conv,
                             const Pool2dOptions& pool, std::source_location loc) {
  const Shape bs = b.valid() ? tape.shape(b) : Shape{};
  const Shape ys =
      conv2d_relu_max_pool2d_output_shape(tape.shape(x), tape.shape(k), b.valid() ? &bs : nullptr, conv, pool);
  Value y = tape.new_value(ys, tape.any_requires_grad({x, k, b}));
  Node<T>* node =
      tape.record(OpKind::Conv2dReluMaxPool2d, {x, k, b}, y, Attrs::of(Conv2dReluMaxPool2dAttrs{conv, pool}), loc);
  int32_t* switches = nullptr;
  const bool saves = node && tape.requires_grad(y);
  const bool codes = saves && switch_codes(tape.shape(k), conv, pool);
  if (saves) {
    const std::size_t n = std::accumulate(ys.begin(), ys.end(), std::size_t{1}, std::multiplies<>());
    switches = tape.saved_index_for_overwrite(*node, codes ? codes_elements(n) : n);
    if (codes && n % 4) switches[n / 4] = 0;  // the last element's unused bytes: zero, not stale
  }
  // y pixel-major as well, in the node's `saved`, for a next convolution (pixel_copy);
  // emptied where not made, so that no step's copy outlives it
  const bool px = forward(tape.value(x), tape.value(k), b.valid() ? &tape.value(b) : nullptr, conv, pool,
                          tape.mutable_value(y), switches, codes, pixel_copy(tape, x), node ? &node->saved : nullptr);
  if (node && !px && node->saved.size()) node->saved = Tensor<T>();
  return y;
}

// ---- the registry entry (autodiff/op.hpp) ----

namespace {

template <class T>
void conv2d_relu_max_pool2d_node_vjp(Tape<T>* tape, const Node<T>& node) {
  bool overwrite = false;  // x's first gradient: written by the VJP, not added to a zeroed buffer
  Tensor<T>* gx = tape->input_grad_for_overwrite(node, 0, &overwrite);
  const auto& a = attrs_as<Conv2dReluMaxPool2dAttrs>(node.attrs);
  const Tensor<T>& k = tape->input_value(node, 1);
  vjp(tape->grad_out(node), tape->value(Value{node.output}), node.saved_index, tape->input_value(node, 0), k, a.conv,
      gx, tape->input_grad(node, 1), tape->input_grad(node, 2), overwrite,
      switch_codes(Shape(k.shape().begin(), k.shape().end()), a.conv, a.pool),
      pixel_copy(*tape, Value{node.inputs[0]}));
}

// Recorded VJP (derivation at the top).
template <class T>
void conv2d_relu_max_pool2d_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0) && !wants(want, 1) && !wants(want, 2)) return;
  const auto a = attrs_as<Conv2dReluMaxPool2dAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs);
  std::vector<int32_t> switches = t.nodes()[static_cast<std::size_t>(n)].saved_index;  // a copy: nodes grow
  const Value x = node_input(t, n, 0), k = node_input(t, n, 1), y = node_output(t, n);
  const Shape xs = t.shape(x), ks = t.shape(k);
  const Shape zs = conv2d_output_shape(xs, ks, nullptr, a.conv);
  if (switch_codes(ks, a.conv, a.pool)) switches = switch_indices(switches, zs);
  const Value gz = max_pool2d_backward(t, relu_backward(t, g, y), std::span<const int32_t>(switches), zs[2], zs[3], a.pool);
  if (wants(want, 0)) gi[0] = conv2d_backward_input(t, gz, k, xs, a.conv);
  if (wants(want, 1)) gi[1] = conv2d_backward_kernel(t, x, gz, ks[2], ks[3], a.conv);
  if (wants(want, 2)) gi[2] = reshape(t, sum_to(t, gz, Shape{1, ks[0], 1, 1}), {static_cast<int64_t>(ks[0])});
}

Value conv2d_relu_max_pool2d_replay(Tape<double>& t, const ReplayArgs& r) {
  const auto a = r.attrs.get<Conv2dReluMaxPool2dAttrs>();
  return conv2d_relu_max_pool2d(t, r.inputs[0], r.inputs[1], r.inputs[2], a.conv, a.pool);
}

std::string conv2d_relu_max_pool2d_format(const Attrs& attrs, std::span<const int32_t>) {
  const auto a = attrs.get<Conv2dReluMaxPool2dAttrs>();
  std::string s = fmt::format("stride={}x{} pad={}x{}", a.conv.stride[0], a.conv.stride[1], a.conv.padding[0],
                              a.conv.padding[1]);
  if (a.conv.dilation[0] != 1 || a.conv.dilation[1] != 1)
    s += fmt::format(" dilation={}x{}", a.conv.dilation[0], a.conv.dilation[1]);
  if (a.conv.groups != 1) s += fmt::format(" groups={}", a.conv.groups);
  s += fmt::format(" pool={}x{}/{}x{} pool_pad={}x{}", a.pool.window[0], a.pool.window[1], a.pool.stride[0],
                   a.pool.stride[1], a.pool.padding[0], a.pool.padding[1]);
  if (a.pool.max_padding == MaxPoolPadding::Zero) s += " pad_value=0";
  return s;
}

// Kinks (gradcheck_nodes): ReLU's at 0 and the pool's ties, both in z = conv2d(x, k, b),
// so of all three inputs. A window is at one when its best candidate is within mz of 0,
// or a second candidate within mz of the best while the best is not below -mz (below,
// the output is 0 whoever wins); mz = margin times the most a step of one input element
// moves an element of z per unit (max(1, |x|, |k|)). Marked: the elements of input
// `which` that the window's near candidates depend on: for x their receptive fields, for
// k and b their output channel.
void conv2d_relu_max_pool2d_kinks(const Attrs& attrs, std::size_t which, std::span<const Tensor<double>* const> in,
                                  double margin, std::vector<bool>& at) {
  const auto a = attrs.get<Conv2dReluMaxPool2dAttrs>();
  const Tensor<double>& x = *in[0];
  const Tensor<double>& k = *in[1];
  const Tensor<double>* b = in.size() > 2 ? in[2] : nullptr;
  const Shape xs(x.shape().begin(), x.shape().end()), ks(k.shape().begin(), k.shape().end());
  Tensor<double> z(conv2d_output_shape(xs, ks, nullptr, a.conv));
  conv2d_forward(x, k, b, a.conv, z);
  const double mz = margin * std::max({1.0, xt::amax(xt::abs(x))(), xt::amax(xt::abs(k))()});
  const std::ptrdiff_t N = z.shape()[0], O = z.shape()[1], OH = z.shape()[2], OW = z.shape()[3];
  const std::ptrdiff_t C = xs[1], H = xs[2], W = xs[3], Cg = ks[1], KH = ks[2], KW = ks[3];
  const std::ptrdiff_t Og = O / a.conv.groups;
  const Pool2dOptions& p = a.pool;
  const std::ptrdiff_t PH = (OH + 2 * p.padding[0] - p.window[0]) / p.stride[0] + 1;
  const std::ptrdiff_t PW = (OW + 2 * p.padding[1] - p.window[1]) / p.stride[1] + 1;
  auto mark = [&](std::ptrdiff_t n, std::ptrdiff_t o, std::ptrdiff_t i, std::ptrdiff_t j) {  // z[n,o,i,j] is near
    if (which == 1) {
      std::fill(at.begin() + o * Cg * KH * KW, at.begin() + (o + 1) * Cg * KH * KW, true);
    } else if (which == 2) {
      at[static_cast<std::size_t>(o)] = true;
    } else {
      const std::ptrdiff_t c0 = (o / Og) * Cg;
      for (std::ptrdiff_t c = c0; c < c0 + Cg; ++c)
        for (std::ptrdiff_t pp = 0; pp < KH; ++pp)
          for (std::ptrdiff_t q = 0; q < KW; ++q) {
            const std::ptrdiff_t h = i * a.conv.stride[0] + pp * a.conv.dilation[0] - a.conv.padding[0];
            const std::ptrdiff_t w = j * a.conv.stride[1] + q * a.conv.dilation[1] - a.conv.padding[1];
            if (h >= 0 && h < H && w >= 0 && w < W) at[static_cast<std::size_t>(((n * C + c) * H + h) * W + w)] = true;
          }
    }
  };
  std::vector<std::pair<double, std::ptrdiff_t>> cand;  // (value, index in the plane; -1 = padding zero)
  for (std::ptrdiff_t n = 0; n < N; ++n)
    for (std::ptrdiff_t o = 0; o < O; ++o) {
      const double* zp = z.data() + (n * O + o) * OH * OW;
      for (std::ptrdiff_t i = 0; i < PH; ++i)
        for (std::ptrdiff_t j = 0; j < PW; ++j) {
          detail::max_pool2d_window(zp, OH, OW, i, j, p, cand);
          double best = -INFINITY;
          for (const auto& c : cand) best = std::max(best, c.first);
          if (best < -mz) continue;  // the output is 0 and stays 0
          std::size_t near = 0;
          for (const auto& c : cand) near += c.first >= best - mz;
          if (near < 2 && std::abs(best) > mz) continue;  // a clear winner, clear of ReLU's kink
          for (const auto& c : cand)
            if (c.first >= best - mz && c.second >= 0) mark(n, o, c.second / OW, c.second % OW);
        }
    }
}

}  // namespace

constinit const OpDef conv2d_relu_max_pool2d_op{
    .name = kOp, .input_names = {"input", "kernel", "bias"},
    .vjp_float = conv2d_relu_max_pool2d_node_vjp<float>, .vjp_double = conv2d_relu_max_pool2d_node_vjp<double>,
    .replay = conv2d_relu_max_pool2d_replay, .format_attrs = conv2d_relu_max_pool2d_format,
    .kinks_of_inputs = conv2d_relu_max_pool2d_kinks, .record_vjp_float = conv2d_relu_max_pool2d_record_vjp<float>,
    .record_vjp_double = conv2d_relu_max_pool2d_record_vjp<double>};
AD_REGISTER_OP(conv2d_relu_max_pool2d_op);

#define AD_INSTANTIATE(T)                                                                                        \
  template void conv2d_relu_max_pool2d_forward<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>*,          \
                                                  const Conv2dOptions&, const Pool2dOptions&, Tensor<T>&, int32_t*); \
  template void conv2d_relu_max_pool2d_vjp<T>(const Tensor<T>&, const Tensor<T>&, const std::vector<int32_t>&,   \
                                              const Tensor<T>&, const Tensor<T>&, const Conv2dOptions&, Tensor<T>*, \
                                              Tensor<T>*, Tensor<T>*, bool);                                     \
  template Value conv2d_relu_max_pool2d<T>(Tape<T>&, Value, Value, Value, const Conv2dOptions&, const Pool2dOptions&, \
                                           std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
