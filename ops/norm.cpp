// batch_norm2d, forward and VJP. Not in the design document (it has no normalisation
// layer); the semantics are PyTorch's F.batch_norm on (N, C, H, W).
//
// Per channel c, over its M = N*H*W values x_m (m = (n, h, w)), in training mode:
//   mu = 1/M sum_m x_m,   var = 1/M sum_m (x_m - mu)^2   (biased: it normalises),
//   s = 1/sqrt(var + eps),   xhat_m = (x_m - mu) s,   y_m = w xhat_m + b,
// and the running statistics (when given) move towards the batch's with momentum, the
// variance unbiased: running_var = (1 - momentum) running_var + momentum var M/(M-1).
// In eval mode mu and var are the running statistics, constants.
//
// VJP, with g_m = dJ/dy_m (index form per channel; every sum over m = (n,h,w)):
//   dJ/db = sum_m g_m,   dJ/dw = sum_m g_m xhat_m.
//   Eval mode: mu, s constant, dJ/dx_k = w s g_k.
//   Training mode: mu and s depend on every x_k of the channel:
//     dmu/dx_k = 1/M;  dvar/dx_k = 2/M (x_k - mu) (the term 2/M sum_m (x_m - mu) dmu/dx_k
//     vanishes, sum_m (x_m - mu) = 0);  ds/dx_k = -1/2 (var + eps)^(-3/2) dvar/dx_k
//     = -s^2 xhat_k / M;
//     dxhat_m/dx_k = s (delta_mk - 1/M) + (x_m - mu) ds/dx_k = s (delta_mk - 1/M - xhat_m xhat_k / M).
//   With d_m = dJ/dxhat_m = w g_m:
//     dJ/dx_k = sum_m d_m dxhat_m/dx_k = s (d_k - 1/M sum_m d_m - xhat_k/M sum_m d_m xhat_m)
//             = (w s / M) (M g_k - sum_m g_m - xhat_k sum_m g_m xhat_m).
//
// The node saves `stats` (2, C): row 0 the mean, row 1 inv_std = s, as used by the
// forward (batch or running). The VJP recomputes xhat from x and them. In eval mode the
// node's saved_index also holds the running mean and variance the forward read, so that
// a replay (gradcheck_nodes) can normalise by the same constants after the caller's
// buffers have changed: 4*C int32, channel c's mean as an IEEE double at [2c, 2c+1] and
// its variance at [2C+2c, 2C+2c+1] (each double's two 32-bit halves in memory order, by
// std::bit_cast). In training mode saved_index is empty: the replay recomputes the batch
// statistics from its input and passes no running buffers, so it updates nothing.
//
// Sums run in double for float tensors too (M is in the tens of thousands for a batch
// of images); channels in parallel (OpenMP) above 65,536 elements.
#include "ops/norm.hpp"

#include <array>
#include <bit>
#include <cmath>
#include <cstring>

#include "ops/shape_check.hpp"

namespace ad {

namespace {

// Geometry: x is N blocks of C planes of HW values; channel c's values are the
// planes (n, c) for every n.
struct NormGeom {
  std::size_t N, C, HW;
  std::size_t m() const { return N * HW; }
  std::size_t plane(std::size_t n, std::size_t c) const { return (n * C + c) * HW; }
};

template <class T>
NormGeom geom(const Tensor<T>& x) {
  return {x.shape()[0], x.shape()[1], x.shape()[2] * x.shape()[3]};
}

inline bool worth_threads(const NormGeom& g) { return g.C > 1 && g.N * g.C * g.HW > 65536; }

}  // namespace

void batch_norm2d_check(const Shape& x, const Shape* weight, const Shape* bias, const Shape* running_mean,
                        const Shape* running_var, const BatchNorm2dOptions& opt) {
  const char* op = "batch_norm2d";
  check_rank(op, "input", x, 4, "(N, C, H, W)");
  const std::size_t C = x[1];
  const std::pair<const char*, const Shape*> per_channel[] = {
      {"weight", weight}, {"bias", bias}, {"running_mean", running_mean}, {"running_var", running_var}};
  for (const auto& [what, s] : per_channel) {
    if (!s) continue;
    check_rank(op, what, *s, 1, "(C)");
    if ((*s)[0] != C)
      shape_error(op, "{} {} and input {} disagree on C ({} vs {})", what, shape_str(*s), shape_str(x), (*s)[0], C);
  }
  if (!running_mean != !running_var)
    shape_error(op, "running_mean and running_var must be given together (got only {})",
                running_mean ? "running_mean" : "running_var");
  if (!opt.training && !running_mean)
    shape_error(op, "eval mode (training = false) normalises by the running statistics: running_mean and "
                    "running_var must be given");
  if (opt.training && x[0] * x[2] * x[3] == 1)
    shape_error(op, "Expected more than 1 value per channel when training, got input {}: N*H*W = 1, and the "
                    "variance of one value is 0",
                shape_str(x));
}

template <class T>
void batch_norm2d_forward(const Tensor<T>& x, const Tensor<T>* weight, const Tensor<T>* bias,
                          Tensor<T>* running_mean, Tensor<T>* running_var, const BatchNorm2dOptions& opt,
                          Tensor<T>& y, Tensor<T>& stats) {
  const NormGeom g = geom(x);
  const std::size_t C = g.C, HW = g.HW, M = g.m();
  stats.resize(Shape{2, C});
  T* mean_out = stats.data();
  T* inv_std_out = stats.data() + C;
  const T* xp = x.data();
  T* yp = y.data();
  const T* wp = weight ? weight->data() : nullptr;
  const T* bp = bias ? bias->data() : nullptr;
  T* rm = running_mean ? running_mean->data() : nullptr;
  T* rv = running_var ? running_var->data() : nullptr;
  if (M == 0) {  // an empty batch: nothing to normalise, the running statistics unchanged
    std::fill(stats.begin(), stats.end(), T(0));
    return;
  }
  const auto c_count = static_cast<std::ptrdiff_t>(C);
#pragma omp parallel for schedule(static) if (worth_threads(g))
  for (std::ptrdiff_t ci = 0; ci < c_count; ++ci) {
    const auto c = static_cast<std::size_t>(ci);
    double mu, var;
    if (opt.training) {
      // mu = 1/M sum_m x_m; var = 1/M sum_m (x_m - mu)^2 (two passes: no cancellation)
      // (The sums are in double, each plane's in vector lanes: `omp simd reduction`
      // lets the compiler keep several partial sums, a 10x faster loop than one chain
      // of dependent additions, and the same on every thread count.)
      double s = 0;
      for (std::size_t n = 0; n < g.N; ++n) {
        const T* p = xp + g.plane(n, c);
#pragma omp simd reduction(+ : s)
        for (std::size_t i = 0; i < HW; ++i) s += static_cast<double>(p[i]);
      }
      mu = s / static_cast<double>(M);
      double ss = 0;
      for (std::size_t n = 0; n < g.N; ++n) {
        const T* p = xp + g.plane(n, c);
#pragma omp simd reduction(+ : ss)
        for (std::size_t i = 0; i < HW; ++i) {
          const double d = static_cast<double>(p[i]) - mu;
          ss += d * d;
        }
      }
      var = ss / static_cast<double>(M);
      if (rm) {
        const double mom = opt.momentum;
        rm[c] = static_cast<T>((1 - mom) * static_cast<double>(rm[c]) + mom * mu);
        rv[c] = static_cast<T>((1 - mom) * static_cast<double>(rv[c]) +
                               mom * var * static_cast<double>(M) / static_cast<double>(M - 1));
      }
    } else {
      mu = static_cast<double>(rm[c]);
      var = static_cast<double>(rv[c]);
    }
    const double inv_std = 1 / std::sqrt(var + opt.eps);
    mean_out[c] = static_cast<T>(mu);
    inv_std_out[c] = static_cast<T>(inv_std);
    // y = a (x - mu) + b with a = w s (x - mu first: no cancellation when |mu| >> the spread)
    const T a = static_cast<T>((wp ? static_cast<double>(wp[c]) : 1.0) * inv_std);
    const T b = bp ? bp[c] : T(0), m = static_cast<T>(mu);
    for (std::size_t n = 0; n < g.N; ++n) {
      const T* xs = xp + g.plane(n, c);
      T* ys = yp + g.plane(n, c);
      for (std::size_t i = 0; i < HW; ++i) ys[i] = a * (xs[i] - m) + b;
    }
  }
}

template <class T>
void batch_norm2d_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const Tensor<T>* weight,
                      const Tensor<T>& stats, const BatchNorm2dOptions& opt, Tensor<T>* grad_x,
                      Tensor<T>* grad_weight, Tensor<T>* grad_bias) {
  if (!grad_x && !grad_weight && !grad_bias) return;
  const NormGeom g = geom(x);
  const std::size_t C = g.C, HW = g.HW, M = g.m();
  if (M == 0) return;
  const T* xp = x.data();
  const T* gp = grad_out.data();
  const T* wp = weight ? weight->data() : nullptr;
  const T* mean = stats.data();
  const T* inv_std = stats.data() + C;
  const auto c_count = static_cast<std::ptrdiff_t>(C);
#pragma omp parallel for schedule(static) if (worth_threads(g))
  for (std::ptrdiff_t ci = 0; ci < c_count; ++ci) {
    const auto c = static_cast<std::size_t>(ci);
    const double mu = static_cast<double>(mean[c]), s = static_cast<double>(inv_std[c]);
    // sum_m g_m and sum_m g_m xhat_m, xhat_m = (x_m - mu) s
    double sum_g = 0, sum_gx = 0;
    for (std::size_t n = 0; n < g.N; ++n) {
      const T* xs = xp + g.plane(n, c);
      const T* gs = gp + g.plane(n, c);
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (std::size_t i = 0; i < HW; ++i) {
        sum_g += static_cast<double>(gs[i]);
        sum_gx += static_cast<double>(gs[i]) * ((static_cast<double>(xs[i]) - mu) * s);
      }
    }
    if (grad_bias) grad_bias->data()[c] += static_cast<T>(sum_g);        // dJ/db = sum_m g_m
    if (grad_weight) grad_weight->data()[c] += static_cast<T>(sum_gx);   // dJ/dw = sum_m g_m xhat_m
    if (!grad_x) continue;
    const double w = wp ? static_cast<double>(wp[c]) : 1.0;
    T* dx = grad_x->data();
    if (!opt.training) {
      // dx_k = w s g_k
      const T a = static_cast<T>(w * s);
      for (std::size_t n = 0; n < g.N; ++n) {
        const T* gs = gp + g.plane(n, c);
        T* ds = dx + g.plane(n, c);
        for (std::size_t i = 0; i < HW; ++i) ds[i] += a * gs[i];
      }
      continue;
    }
    // dx_k = (w s / M) (M g_k - sum g - xhat_k sum(g xhat))
    //      = a g_k + u (x_k - mu) + v,   a = w s,  u = -a s sum(g xhat) / M,  v = -a sum g / M
    const double a = w * s, Md = static_cast<double>(M);
    const T at = static_cast<T>(a), ut = static_cast<T>(-a * s * sum_gx / Md), vt = static_cast<T>(-a * sum_g / Md);
    const T m = static_cast<T>(mu);
    for (std::size_t n = 0; n < g.N; ++n) {
      const T* xs = xp + g.plane(n, c);
      const T* gs = gp + g.plane(n, c);
      T* ds = dx + g.plane(n, c);
      for (std::size_t i = 0; i < HW; ++i) ds[i] += at * gs[i] + ut * (xs[i] - m) + vt;
    }
  }
}

namespace {

// Eval mode's running statistics in saved_index (see the header comment): mean at
// [2c, 2c+1], variance at [2C + 2c, 2C + 2c + 1], each a double's two 32-bit halves.
template <class T>
void save_running(const Tensor<T>& running_mean, const Tensor<T>& running_var, std::vector<int32_t>& out) {
  const std::size_t C = running_mean.size();
  out.resize(4 * C);
  for (std::size_t c = 0; c < C; ++c) {
    const auto m = std::bit_cast<std::array<int32_t, 2>>(static_cast<double>(running_mean.data()[c]));
    const auto v = std::bit_cast<std::array<int32_t, 2>>(static_cast<double>(running_var.data()[c]));
    out[2 * c] = m[0], out[2 * c + 1] = m[1];
    out[2 * C + 2 * c] = v[0], out[2 * C + 2 * c + 1] = v[1];
  }
}

double saved_double(std::span<const int32_t> s, std::size_t at) {
  return std::bit_cast<double>(std::array<int32_t, 2>{s[at], s[at + 1]});
}

}  // namespace

template <class T>
Value batch_norm2d(Tape<T>& tape, Value x, Value weight, Value bias, std::type_identity_t<Tensor<T>>* running_mean,
                   std::type_identity_t<Tensor<T>>* running_var, const BatchNorm2dOptions& opt, std::source_location loc) {
  const Shape xs = tape.shape(x);
  const Shape ws = weight.valid() ? tape.shape(weight) : Shape{}, bs = bias.valid() ? tape.shape(bias) : Shape{};
  const Shape rms = running_mean ? to_shape(running_mean->shape()) : Shape{};
  const Shape rvs = running_var ? to_shape(running_var->shape()) : Shape{};
  batch_norm2d_check(xs, weight.valid() ? &ws : nullptr, bias.valid() ? &bs : nullptr,
                     running_mean ? &rms : nullptr, running_var ? &rvs : nullptr, opt);
  Value y = tape.new_value(xs, tape.any_requires_grad({x, weight, bias}));
  Node<T>* node = tape.record(OpKind::BatchNorm2d, {x, weight, bias}, y, Attrs::of(opt), loc);
  // Eval mode: what the replay needs, before the forward (which does not change them).
  if (node && !opt.training) save_running(*running_mean, *running_var, node->saved_index);
  Tensor<T> scratch;
  batch_norm2d_forward(tape.value(x), weight.valid() ? &tape.value(weight) : nullptr,
                       bias.valid() ? &tape.value(bias) : nullptr, running_mean, running_var, opt,
                       tape.mutable_value(y), node ? node->saved : scratch);
  return y;
}

// ---- the registry entry (autodiff/op.hpp) ----

namespace {

template <class T>
void batch_norm2d_node_vjp(Tape<T>* tape, const Node<T>& node) {
  const Tensor<T>* weight = node.inputs[1] >= 0 ? &tape->input_value(node, 1) : nullptr;
  batch_norm2d_vjp(tape->grad_out(node), tape->input_value(node, 0), weight, node.saved,
                   attrs_as<BatchNorm2dOptions>(node.attrs), tape->input_grad(node, 0), tape->input_grad(node, 1),
                   tape->input_grad(node, 2));
}

// Training mode: no running buffers (the replay must not move the caller's); eval mode:
// the running statistics the node read, from its saved_index.
Value batch_norm2d_replay(Tape<double>& t, const ReplayArgs& r) {
  const auto opt = r.attrs.get<BatchNorm2dOptions>();
  if (opt.training) return batch_norm2d(t, r.inputs[0], r.inputs[1], r.inputs[2], nullptr, nullptr, opt);
  const std::size_t C = r.saved_index.size() / 4;
  Tensor<double> rm(Shape{C}), rv(Shape{C});
  for (std::size_t c = 0; c < C; ++c) {
    rm(c) = saved_double(r.saved_index, 2 * c);
    rv(c) = saved_double(r.saved_index, 2 * C + 2 * c);
  }
  return batch_norm2d(t, r.inputs[0], r.inputs[1], r.inputs[2], &rm, &rv, opt);
}

std::string batch_norm2d_format(const Attrs& attrs, std::span<const int32_t>) {
  const auto a = attrs.get<BatchNorm2dOptions>();
  if (a.training) return fmt::format("train momentum={:g} eps={:g}", a.momentum, a.eps);
  return fmt::format("eval eps={:g}", a.eps);
}

}  // namespace

constinit const OpDef batch_norm2d_op{.name = "batch_norm2d",
                                      .input_names = {"input", "weight", "bias"},
                                      .vjp_float = batch_norm2d_node_vjp<float>,
                                      .vjp_double = batch_norm2d_node_vjp<double>,
                                      .replay = batch_norm2d_replay,
                                      .format_attrs = batch_norm2d_format};
AD_REGISTER_OP(batch_norm2d_op);

#define AD_INSTANTIATE(T)                                                                                       \
  template void batch_norm2d_forward<T>(const Tensor<T>&, const Tensor<T>*, const Tensor<T>*, Tensor<T>*,      \
                                        Tensor<T>*, const BatchNorm2dOptions&, Tensor<T>&, Tensor<T>&);        \
  template void batch_norm2d_vjp<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>*, const Tensor<T>&,    \
                                    const BatchNorm2dOptions&, Tensor<T>*, Tensor<T>*, Tensor<T>*);             \
  template Value batch_norm2d<T>(Tape<T>&, Value, Value, Value, Tensor<T>*, Tensor<T>*, const BatchNorm2dOptions&,   \
                                 std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
