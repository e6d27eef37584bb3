// conv_transpose2d, forward and VJP, on conv2d's kernels. Not in the design document;
// PyTorch's F.conv_transpose2d. Derivation (index form; s stride, d dilation, pad
// padding, per axis; G groups, Cg = C_out/G channels of y per group, g = o / (C_in/G)):
//
// Let C be the conv2d with the same (padding, stride, dilation, groups) and kernel k,
// read as a conv2d kernel (C_in, C_out/G, KH, KW): C maps an image X (N, C_out, OH, OW)
// to (N, C_in, H', W'),
//   (C X)[n,o,i,j] = sum_{c',p,q} k[o,c',p,q] X[n, g Cg + c', i s + p d - pad, j s + q d - pad].
// conv_transpose2d is its adjoint in X, y = C^T x + b: the unique linear map with
// <C X, x> = <X, C^T x> for every X, which scatters each x[n,o,i,j] through the kernel:
//   y[n, g Cg + c', i s + p d - pad, j s + q d - pad] += k[o,c',p,q] x[n,o,i,j],   y[n,c,.,.] += b[c].
// The output size OH = (H - 1) s - 2 pad + d (KH - 1) + output_padding + 1 is the X for
// which C X has H' = H + floor(output_padding / s) rows (H' = H when output_padding < s).
//
//   forward:  y = C^T x                 = conv2d_vjp's dJ/dX with dJ/dY := x  (X := y, only its shape read)
//   dJ/dx:    y is linear in x with matrix C^T, so dJ/dx = (C^T)^T g = C g  = conv2d_forward(g, k)
//   dJ/dk:    dJ/dk[o,c',p,q] = sum_{n,i,j} x[n,o,i,j] g[n, g Cg + c', i s + p d - pad, j s + q d - pad]
//             = conv2d's dJ/dK with the roles of input and output swapped: conv2d_vjp with
//             input X := g (the gradient of y) and output gradient dJ/dY := x
//   dJ/db:    dJ/db[c] = sum_{n,h,w} g[n,c,h,w]
//
// When output_padding >= s (allowed when it is < d), H' > H: x is then extended with
// zero rows/columns to (H', W') for the two conv2d_vjp calls (zeros scatter nothing and
// their dK terms are zero), and dJ/dx is the top-left (H, W) of C g.
#include "ops/conv_transpose2d.hpp"

#include <algorithm>

#include "autodiff/higher_order.hpp"
#include "ops/conv2d_general.hpp"
#include "ops/elementwise.hpp"
#include "ops/shape.hpp"
#include "ops/shape_check.hpp"

namespace ad {

namespace {

// A growing per-thread buffer, kept across calls (no allocation per step).
template <class T>
Tensor<T>& buffer(int which) {
  thread_local Tensor<T> buf[2];
  return buf[which];
}

// (H', W'): the rows and columns of C applied to the output, H + floor(output_padding / s).
std::array<std::size_t, 2> conv_extent(const Shape& x, const ConvTranspose2dOptions& a) {
  return {x[2] + static_cast<std::size_t>(a.output_padding[0] / a.stride[0]),
          x[3] + static_cast<std::size_t>(a.output_padding[1] / a.stride[1])};
}

// x itself when (H', W') = (H, W); otherwise x extended with zeros to (N, C_in, H', W').
template <class T>
const Tensor<T>& extended(const Tensor<T>& x, const ConvTranspose2dOptions& a, int which) {
  const Shape s = to_shape(x.shape());
  const auto [h, w] = conv_extent(s, a);
  if (h == s[2] && w == s[3]) return x;
  Tensor<T>& e = buffer<T>(which);
  e.resize(Shape{s[0], s[1], h, w});
  std::fill(e.begin(), e.end(), T(0));
  for (std::size_t plane = 0; plane < s[0] * s[1]; ++plane)
    for (std::size_t i = 0; i < s[2]; ++i)
      std::copy(x.data() + (plane * s[2] + i) * s[3], x.data() + (plane * s[2] + i + 1) * s[3],
                e.data() + (plane * h + i) * w);
  return e;
}

}  // namespace

Shape conv_transpose2d_output_shape(const Shape& x, const Shape& k, const Shape* b, const ConvTranspose2dOptions& a) {
  const char* op = "conv_transpose2d";
  check_rank(op, "input", x, 4, "(N, C_in, H, W)");
  check_rank(op, "kernel", k, 4, "(C_in, C_out/groups, KH, KW)");
  for (std::size_t d = 1; d < 4; ++d)  // N may be 0: an empty batch gives an empty output
    if (x[d] == 0) shape_error(op, "input {} is empty along axis {}; C_in, H and W must be >= 1", shape_str(x), d);
  check_nonempty(op, "kernel", k);
  if (x[1] != k[0])
    shape_error(op, "input {} and kernel {} disagree on C_in ({} vs {}); the kernel is (C_in, C_out/groups, KH, KW)",
                shape_str(x), shape_str(k), x[1], k[0]);
  check_conv_options(op, x, a.stride, a.padding, a.dilation, a.groups);
  const auto G = static_cast<std::size_t>(a.groups);
  const std::size_t c_out = k[1] * G;
  if (b) {
    check_rank(op, "bias", *b, 1, "(C_out)");
    if ((*b)[0] != c_out)
      shape_error(op, "bias {} and kernel {} with groups = {} disagree on C_out ({} vs {} * {} = {})", shape_str(*b),
                  shape_str(k), G, (*b)[0], k[1], G, c_out);
  }
  for (int d = 0; d < 2; ++d)
    if (a.output_padding[d] < 0 || (a.output_padding[d] >= a.stride[d] && a.output_padding[d] >= a.dilation[d]))
      shape_error(op, "output_padding ({},{}) must be >= 0 and smaller than either stride ({},{}) or dilation ({},{}) "
                      "on each axis",
                  a.output_padding[0], a.output_padding[1], a.stride[0], a.stride[1], a.dilation[0], a.dilation[1]);
  long long out[2];
  for (int d = 0; d < 2; ++d) {
    // OH = (H - 1) s - 2 pad + d (KH - 1) + output_padding + 1, in 64 bits (it may be <= 0)
    out[d] = (static_cast<long long>(x[2 + d]) - 1) * a.stride[d] - 2LL * a.padding[d] +
             static_cast<long long>(a.dilation[d]) * (static_cast<long long>(k[2 + d]) - 1) + a.output_padding[d] + 1;
  }
  if (out[0] < 1 || out[1] < 1)
    shape_error(op, "input {} with kernel {}, stride ({},{}), padding ({},{}), dilation ({},{}) and output_padding "
                    "({},{}) gives an output of {} x {}: too small; OH = (H - 1) h_s - 2 h_p + h_d (KH - 1) + "
                    "output_padding + 1 must be >= 1",
                shape_str(x), shape_str(k), a.stride[0], a.stride[1], a.padding[0], a.padding[1], a.dilation[0],
                a.dilation[1], a.output_padding[0], a.output_padding[1], out[0], out[1]);
  const Shape y{x[0], c_out, static_cast<std::size_t>(out[0]), static_cast<std::size_t>(out[1])};
  check_output_size(op, x, y, a.stride, a.padding);
  return y;
}

template <class T>
void conv_transpose2d_forward(const Tensor<T>& x, const Tensor<T>& k, const Tensor<T>* b,
                              const ConvTranspose2dOptions& a, Tensor<T>& y) {
  // y = C^T x: conv2d's dJ/dX for dJ/dY = x, added into y (zeroed); y also stands for
  // conv2d's input X, of which conv2d_vjp reads only the shape when dJ/dK is not asked.
  std::fill(y.begin(), y.end(), T(0));
  if (y.size() == 0) return;  // an empty batch
  conv2d_vjp(extended(x, a, 0), y, k, transposed_conv(a), &y, static_cast<Tensor<T>*>(nullptr),
             static_cast<Tensor<T>*>(nullptr));
  if (!b) return;
  // y[n,c,h,w] += b[c]
  const std::size_t N = y.shape()[0], C = y.shape()[1], HW = y.shape()[2] * y.shape()[3];
  for (std::size_t plane = 0; plane < N * C; ++plane) {
    T* yp = y.data() + plane * HW;
    const T bc = b->data()[plane % C];
    for (std::size_t i = 0; i < HW; ++i) yp[i] += bc;
  }
}

template <class T>
void conv_transpose2d_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const Tensor<T>& k,
                          const ConvTranspose2dOptions& a, Tensor<T>* grad_x, Tensor<T>* grad_k, Tensor<T>* grad_b) {
  if (x.size() == 0) return;  // an empty batch: nothing flows
  const Conv2dOptions c = transposed_conv(a);
  if (grad_x) {
    // dJ/dx = C g: conv2d's forward of the output gradient, (N, C_in, H', W'); its
    // top-left (H, W) is x's (all of it unless output_padding >= stride).
    const Shape xs = to_shape(x.shape());
    const auto [h, w] = conv_extent(xs, a);
    Tensor<T>& cg = buffer<T>(1);
    cg.resize(Shape{xs[0], xs[1], h, w});
    conv2d_forward(grad_out, k, static_cast<const Tensor<T>*>(nullptr), c, cg);
    for (std::size_t plane = 0; plane < xs[0] * xs[1]; ++plane)
      for (std::size_t i = 0; i < xs[2]; ++i) {
        const T* src = cg.data() + (plane * h + i) * w;
        T* dst = grad_x->data() + (plane * xs[2] + i) * xs[3];
        for (std::size_t j = 0; j < xs[3]; ++j) dst[j] += src[j];
      }
  }
  // dJ/dk: conv2d's kernel VJP with input := g and output gradient := x.
  if (grad_k)
    conv2d_vjp(extended(x, a, 0), grad_out, k, c, static_cast<Tensor<T>*>(nullptr), grad_k,
               static_cast<Tensor<T>*>(nullptr));
  if (grad_b) {
    // dJ/db[c] += sum_{n,h,w} g[n,c,h,w]
    const std::size_t N = grad_out.shape()[0], C = grad_out.shape()[1];
    const std::size_t HW = grad_out.shape()[2] * grad_out.shape()[3];
    for (std::size_t plane = 0; plane < N * C; ++plane) {
      const T* gp = grad_out.data() + plane * HW;
      T s = 0;
      for (std::size_t i = 0; i < HW; ++i) s += gp[i];
      grad_b->data()[plane % C] += s;
    }
  }
}

template <class T>
Value conv_transpose2d(Tape<T>& tape, Value x, Value k, Value b, const ConvTranspose2dOptions& opt,
                       std::source_location loc) {
  return record_conv<T, ConvTranspose2dOptions>(tape, OpKind::ConvTranspose2d, x, k, b, opt, loc,
                                                conv_transpose2d_output_shape, conv_transpose2d_forward<T>);
}

// ---- the registry entry (autodiff/op.hpp) ----

namespace {

template <class T>
void conv_transpose2d_node_vjp(Tape<T>* tape, const Node<T>& node) {
  conv_transpose2d_vjp(tape->grad_out(node), tape->input_value(node, 0), tape->input_value(node, 1),
                       attrs_as<ConvTranspose2dOptions>(node.attrs), tape->input_grad(node, 0),
                       tape->input_grad(node, 1), tape->input_grad(node, 2));
}

// Recorded VJP (higher-order gradients). y = C^T x + b, with C the conv2d of the same
// options and kernel, so (C^T)^T = C:
//   gx = conv2d(g, k) (cut to x's H, W when output_padding >= stride made x's plane larger),
//   gk = conv2d_backward_kernel(g, x): <C^T x, g> = <x, C g>, whose kernel derivative is
//        conv2d's kernel gradient with input g and output gradient x,
//   gb = sum_to(g, (1, C_out, 1, 1)) read as (C_out).
template <class T>
void conv_transpose2d_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  const auto a = attrs_as<ConvTranspose2dOptions>(t.nodes()[static_cast<std::size_t>(n)].attrs);
  const Value x = node_input(t, n, 0), k = node_input(t, n, 1);
  const Shape xs = t.shape(x), ks = t.shape(k), gs = t.shape(g);
  const Conv2dOptions c = transposed_conv(a);
  if (wants(want, 0)) {
    Value gx = conv2d(t, g, k, Value{}, c);
    for (int d = 0; d < 2; ++d)
      if (t.shape(gx)[2 + static_cast<std::size_t>(d)] != xs[2 + static_cast<std::size_t>(d)])
        gx = narrow(t, gx, 2 + d, 0, xs[2 + static_cast<std::size_t>(d)]);
    gi[0] = gx;
  }
  if (wants(want, 1)) {
    if (a.output_padding[0] >= a.stride[0] || a.output_padding[1] >= a.stride[1])
      throw TapeError(fmt::format("grad: conv_transpose2d with output_padding ({},{}) >= stride ({},{}) has no "
                                  "recorded kernel gradient yet (higher-order gradients)",
                                  a.output_padding[0], a.output_padding[1], a.stride[0], a.stride[1]));
    gi[1] = conv2d_backward_kernel(t, g, x, ks[2], ks[3], c);
  }
  if (wants(want, 2)) gi[2] = reshape(t, sum_to(t, g, Shape{1, gs[1], 1, 1}), {static_cast<int64_t>(gs[1])});
}

Value conv_transpose2d_replay(Tape<double>& t, const ReplayArgs& r) {
  return conv_transpose2d(t, r.inputs[0], r.inputs[1], r.inputs[2], r.attrs.get<ConvTranspose2dOptions>());
}

std::string conv_transpose2d_format(const Attrs& attrs, std::span<const int32_t>) {
  const auto a = attrs.get<ConvTranspose2dOptions>();
  std::string s = fmt::format("stride={}x{} pad={}x{}", a.stride[0], a.stride[1], a.padding[0], a.padding[1]);
  if (a.output_padding[0] != 0 || a.output_padding[1] != 0)
    s += fmt::format(" out_pad={}x{}", a.output_padding[0], a.output_padding[1]);
  if (a.dilation[0] != 1 || a.dilation[1] != 1) s += fmt::format(" dilation={}x{}", a.dilation[0], a.dilation[1]);
  if (a.groups != 1) s += fmt::format(" groups={}", a.groups);
  return s;
}

}  // namespace

constinit const OpDef conv_transpose2d_op{.name = "conv_transpose2d", .input_names = {"input", "kernel", "bias"},
                                          .vjp_float = conv_transpose2d_node_vjp<float>,
                                          .vjp_double = conv_transpose2d_node_vjp<double>,
                                          .replay = conv_transpose2d_replay,
                                          .format_attrs = conv_transpose2d_format,
                                          .record_vjp_float = conv_transpose2d_record_vjp<float>,
                                          .record_vjp_double = conv_transpose2d_record_vjp<double>};
AD_REGISTER_OP(conv_transpose2d_op);

#define AD_INSTANTIATE(T)                                                                                       \
  template void conv_transpose2d_forward<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>*,              \
                                            const ConvTranspose2dOptions&, Tensor<T>&);                         \
  template void conv_transpose2d_vjp<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,                  \
                                        const ConvTranspose2dOptions&, Tensor<T>*, Tensor<T>*, Tensor<T>*);     \
  template Value conv_transpose2d<T>(Tape<T>&, Value, Value, Value, const ConvTranspose2dOptions&,             \
                                     std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
