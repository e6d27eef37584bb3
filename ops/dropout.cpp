// Inverted dropout, forward and VJP. Not in the design document; PyTorch's semantics.
//
// With m_i = [u_i >= p] / (1 - p) (u_i the element's uniform number; m = 0 for p = 1),
//   y_i = x_i m_i,   so the Jacobian dy/dx = diag(m)   and   dJ/dx_i = dJ/dy_i m_i.
// The mask is fixed once drawn: the op is linear in x, and a replay with the saved mask
// is the same function.
//
// The node saves the mask in saved_index, packed (element i is bit i % 32 of word
// i / 32), ceil(n/32) int32 for n elements: 1/32 of a float copy of x.
#include "ops/dropout.hpp"

#include <cmath>

#include "autodiff/higher_order.hpp"
#include "ops/shape_check.hpp"

namespace ad {

namespace {

// splitmix64's output function (Steele, Lea and Flood 2014): a bijective 64-bit mix.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

inline bool kept(std::span<const int32_t> mask, std::size_t i) {
  return (static_cast<uint32_t>(mask[i / 32]) >> (i % 32)) & 1u;
}

// m for a kept element: 1/(1 - p); 0 when p = 1 (nothing is kept).
template <class T>
T keep_scale(double p) {
  return p < 1 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
}

}  // namespace

void dropout_mask(uint64_t seed, double p, std::size_t n, std::vector<int32_t>& mask) {
  const std::size_t words = (n + 31) / 32;
  mask.resize(words);
  // The seed's stream: element i draws mix64(key + (i + 1) * golden), splitmix64's i-th
  // output from state `key`; u_i = its top 53 bits / 2^53.
  const uint64_t key = mix64(seed + kGolden);
  int32_t* out = mask.data();
  const auto count = static_cast<std::ptrdiff_t>(words);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::ptrdiff_t w = 0; w < count; ++w) {
    uint32_t bits = 0;
    const std::size_t i0 = static_cast<std::size_t>(w) * 32, i1 = std::min(n, i0 + 32);
    for (std::size_t i = i0; i < i1; ++i) {
      const double u = static_cast<double>(mix64(key + (i + 1) * kGolden) >> 11) * 0x1p-53;
      if (u >= p) bits |= 1u << (i - i0);
    }
    out[w] = static_cast<int32_t>(bits);
  }
}

template <class T>
void dropout_forward(const Tensor<T>& x, double p, std::span<const int32_t> mask, Tensor<T>& y) {
  const T scale = keep_scale<T>(p);
  const T* xp = x.data();
  T* yp = y.data();
  const std::size_t n = x.size();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) yp[i] = xp[i] * (kept(mask, i) ? scale : T(0));  // y_i = x_i m_i
}

template <class T>
void dropout_vjp(const Tensor<T>& grad_out, double p, std::span<const int32_t> mask, Tensor<T>* grad_x) {
  if (!grad_x) return;
  const T scale = keep_scale<T>(p);
  const T* gp = grad_out.data();
  T* gx = grad_x->data();
  const std::size_t n = grad_out.size();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) gx[i] += gp[i] * (kept(mask, i) ? scale : T(0));  // dx_i += g_i m_i
}

namespace {

void check_probability(double p) {
  if (!(p >= 0 && p <= 1))
    shape_error("dropout", "dropout probability has to be between 0 and 1, but got {}", p);
}

// Records dropout with the given mask (the drawn one, or a node's saved one in a replay).
template <class T>
Value record_dropout(Tape<T>& tape, Value x, const DropoutAttrs& a, std::span<const int32_t> mask,
                     std::source_location loc) {
  Value y = tape.new_value(tape.shape(x), tape.any_requires_grad({x}));
  dropout_forward(tape.value(x), a.p, mask, tape.mutable_value(y));
  if (Node<T>* node = tape.record(OpKind::Dropout, {x}, y, Attrs::of(a), loc))
    node->saved_index.assign(mask.begin(), mask.end());
  return y;
}

}  // namespace

template <class T>
Value dropout(Tape<T>& tape, Value x, double p, bool training, uint64_t seed, std::source_location loc) {
  check_probability(p);
  const std::size_t n = tape.value(x).size();  // also checks the handle
  if (!training) return x;
  thread_local std::vector<int32_t> mask;
  dropout_mask(seed, p, n, mask);
  return record_dropout(tape, x, DropoutAttrs{p, seed}, mask, loc);
}

// ---- the registry entry (autodiff/op.hpp) ----

namespace {

template <class T>
void dropout_node_vjp(Tape<T>* tape, const Node<T>& node) {
  dropout_vjp(tape->grad_out(node), attrs_as<DropoutAttrs>(node.attrs).p, node.saved_index, tape->input_grad(node, 0));
}

// Recorded VJP (higher-order gradients): y = x .* m / (1 - p) is diagonal in x, so its
// VJP is the same op with the same mask applied to g: gx = dropout_m(g).
template <class T> void dropout_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const Node<T>& node = t.nodes()[static_cast<std::size_t>(n)];
  const std::vector<int32_t> mask = node.saved_index;  // a copy: nodes grow
  gi[0] = record_dropout(t, g, attrs_as<DropoutAttrs>(node.attrs), std::span<const int32_t>(mask),
                         std::source_location::current());
}

// The saved mask, not a new draw: the replay is the recorded function bit for bit.
Value dropout_replay(Tape<double>& t, const ReplayArgs& r) {
  return record_dropout(t, r.inputs[0], r.attrs.get<DropoutAttrs>(), r.saved_index, std::source_location::current());
}

std::string dropout_format(const Attrs& attrs, std::span<const int32_t>) {
  const auto a = attrs.get<DropoutAttrs>();
  return fmt::format("p={:g} seed={}", a.p, a.seed);
}

}  // namespace

constinit const OpDef dropout_op{.name = "dropout",
                                 .vjp_float = dropout_node_vjp<float>,
                                 .vjp_double = dropout_node_vjp<double>,
                                 .replay = dropout_replay,
                                 .format_attrs = dropout_format,
                                 .record_vjp_float = dropout_record_vjp<float>,
                                 .record_vjp_double = dropout_record_vjp<double>};
AD_REGISTER_OP(dropout_op);

#define AD_INSTANTIATE(T)                                                                                  \
  template void dropout_forward<T>(const Tensor<T>&, double, std::span<const int32_t>, Tensor<T>&);      \
  template void dropout_vjp<T>(const Tensor<T>&, double, std::span<const int32_t>, Tensor<T>*);          \
  template Value dropout<T>(Tape<T>&, Value, double, bool, uint64_t, std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
