// linear and matmul, forward and VJP. Design document: section 3.1.1.
// The document works on one column B^[2] (D_in x 1):
//   Z = W^T B + b,   dJ/dW = (dJ/dZ)^T B^T (numerator layout, a D_out x D_in Jacobian,
//   i.e. the gradient B (dJ/dZ) of W's shape), dJ/db = dJ/dZ, dJ/dB = dJ/dZ W^T.
// With the N samples as the rows of x (N, D_in) and g = dJ/dy (N, D_out):
//   y = x W + b,  grad_W = x^T g  (sum over samples of B (dJ/dZ)),
//   grad_b = sum_n g[n,:],  grad_x = g W^T.
#include "ops/matmul.hpp"

#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "autodiff/higher_order.hpp"
#include "ops/blas.hpp"
#include "ops/conv2d_direct.hpp"
#include "ops/elementwise.hpp"
#include "ops/shape.hpp"
#include "ops/shape_check.hpp"

namespace ad {

Shape linear_output_shape(const Shape& x, const Shape& w, const Shape* b) {
  check_rank("linear", "input", x, 2, "(N, D_in)");
  check_rank("linear", "weight", w, 2, "(D_in, D_out)");
  check_nonempty_but_batch("linear", "input", x);  // N = 0: (0, D_out)
  check_nonempty("linear", "weight", w);
  if (x[1] != w[0])
    shape_error("linear", "input {} and weight {} disagree on D_in ({} vs {})", shape_str(x), shape_str(w), x[1], w[0]);
  if (b) {
    check_rank("linear", "bias", *b, 1, "(D_out)");
    if ((*b)[0] != w[1])
      shape_error("linear", "bias {} and weight {} disagree on D_out ({} vs {})", shape_str(*b), shape_str(w), (*b)[0], w[1]);
  }
  return {x[0], w[1]};
}

Shape matmul_output_shape(const Shape& a, const Shape& b) {
  check_rank("matmul", "left operand", a, 2, "(M, K)");
  check_rank("matmul", "right operand", b, 2, "(K, N)");
  check_nonempty("matmul", "left operand", a);
  check_nonempty("matmul", "right operand", b);
  if (a[1] != b[0])
    shape_error("matmul", "left operand {} and right operand {} disagree on K ({} vs {})", shape_str(a), shape_str(b), a[1], b[0]);
  return {a[0], b[1]};
}

namespace {

// Calls f(r0, r1) for row blocks [r0, r1) of `rows`, one per OpenMP thread when the
// product is worth a parallel region (OpenBLAS itself runs on one thread, ops/blas.cpp),
// else once for all rows. Row blocks of a product are independent: each thread runs the
// same GEMM on its rows.
template <class F>
void by_row_blocks(std::size_t rows, std::size_t work, F f) {
  if (rows < 2 || work < (1u << 19)) return f(std::size_t{0}, rows);
#pragma omp parallel
  {
    const std::size_t t = static_cast<std::size_t>(omp_get_thread_num());
    const std::size_t nt = static_cast<std::size_t>(omp_get_num_threads());
    const std::size_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
    if (r1 > r0) f(r0, r1);
  }
}

// c (K, N) += a^T (K, M) g (M, N), a sum over the M rows of a and g. When it is worth a
// parallel region and the partials stay small, each thread sums its block of rows
// [m0, m1) into a partial of its own, p_t = a[m0:m1]^T g[m0:m1], and the partials are
// then added in thread order, each thread for its share of c's rows (deterministic for
// a given thread count; conv2d sums dJ/dK the same way). Else one GEMM.
template <class T>
void add_at_b(std::size_t M, std::size_t K, std::size_t N, const T* a, const T* g, T* c) {
  const std::size_t nt = static_cast<std::size_t>(omp_get_max_threads());
  constexpr std::size_t kMaxPartials = std::size_t{1} << 21;  // elements: 8 MB of float
  if (nt < 2 || M < 2 || M * K * N < (1u << 19) || nt * K * N > kMaxPartials)
    return gemm<T>(true, false, K, N, M, T(1), a, g, T(1), c);
  thread_local std::vector<T> buf;
  if (buf.size() < nt * K * N) buf.resize(nt * K * N);
  T* partial = buf.data();
#pragma omp parallel num_threads(static_cast<int>(nt))
  {
    const std::size_t t = static_cast<std::size_t>(omp_get_thread_num());
    const std::size_t team = static_cast<std::size_t>(omp_get_num_threads());
    const std::size_t m0 = M * t / team, m1 = M * (t + 1) / team;
    // p_t (K, N) = a[m0:m1]^T (K, m1-m0) g[m0:m1] (m1-m0, N); zero for an empty block
    gemm<T>(true, false, K, N, m1 - m0, T(1), a + m0 * K, g + m0 * N, T(0), partial + t * K * N);
#pragma omp barrier
#pragma omp for schedule(static)
    for (std::size_t k = 0; k < K; ++k)
      for (std::size_t s = 0; s < team; ++s) {
        const T* p = partial + (s * K + k) * N;
        for (std::size_t n = 0; n < N; ++n) c[k * N + n] += p[n];
      }
  }
}

// The dense kernels for a right operand (K, N) of N <= kDenseMaxN columns in float
// (ops/dense_simd.inc: on ref-CNN's classifier 1.2-1.3x OpenBLAS's speed at 1 thread,
// 2-2.6x at 2, split among threads without partial sums); none otherwise (OpenBLAS).
template <class T>
const conv::DenseKernels<T>* dense_for(std::size_t N) {
  if constexpr (std::is_same_v<T, float>)
    if (N >= 1 && N <= conv::kDenseMaxN)
      if (const conv::DenseKernels<T>* d = conv::kernels<T>().dense; d && d->rows[N - 1]) return d;
  return nullptr;
}

// by_row_blocks for the dense kernels: f(r0, r1, bt) with bt = b (K, N) transposed, (N,
// K), in a buffer of the calling thread's; on a team each thread transposes a share of
// bt's rows first (one thread took 10 us of a 2-thread step for ref-CNN's 1568 x 10).
template <class T, class F>
void dense_row_blocks(std::size_t rows, std::size_t work, const T* b, std::size_t K, std::size_t N, F f) {
  thread_local std::vector<T> buf;
  if (buf.size() < K * N) buf.resize(K * N);
  T* bt = buf.data();
  auto transpose = [=](std::size_t n0, std::size_t n1) {
    for (std::size_t n = n0; n < n1; ++n)  // bt's rows written in order, b's lines read in order
      for (std::size_t k = 0; k < K; ++k) bt[n * K + k] = b[k * N + n];
  };
  if (rows < 2 || work < (1u << 19)) {
    transpose(0, N);
    return f(std::size_t{0}, rows, static_cast<const T*>(bt));
  }
#pragma omp parallel
  {
    const std::size_t t = static_cast<std::size_t>(omp_get_thread_num());
    const std::size_t nt = static_cast<std::size_t>(omp_get_num_threads());
    transpose(N * t / nt, N * (t + 1) / nt);
#pragma omp barrier
    const std::size_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
    if (r1 > r0) f(r0, r1, static_cast<const T*>(bt));
  }
}

// Calls f(k0, k1) for column blocks [k0, k1) of `cols`, one per OpenMP thread in
// multiples of 64 columns when worth a parallel region (as by_row_blocks), else once.
template <class F>
void by_column_blocks(std::size_t cols, std::size_t work, F f) {
  constexpr std::size_t kUnit = 64;  // whole vectors of columns for every block but the last
  const std::size_t units = (cols + kUnit - 1) / kUnit;
  if (units < 2 || work < (1u << 19)) return f(std::size_t{0}, cols);
#pragma omp parallel
  {
    const std::size_t t = static_cast<std::size_t>(omp_get_thread_num());
    const std::size_t nt = static_cast<std::size_t>(omp_get_num_threads());
    const std::size_t k0 = std::min(cols, units * t / nt * kUnit), k1 = std::min(cols, units * (t + 1) / nt * kUnit);
    if (k1 > k0) f(k0, k1);
  }
}

}  // namespace

template <class T>
void linear_forward(const Tensor<T>& x, const Tensor<T>& w, const Tensor<T>* b, Tensor<T>& y) {
  const std::size_t N = x.shape()[0], Din = x.shape()[1], Dout = w.shape()[1];
  T* yp = y.data();
  // y (N, D_out) = x (N, D_in) W (D_in, D_out) [+ 1 b^T]
  if (b)
    for (std::size_t n = 0; n < N; ++n) std::copy(b->data(), b->data() + Dout, yp + n * Dout);
  if (const conv::DenseKernels<T>* d = dense_for<T>(Dout)) {
    dense_row_blocks(N, N * Din * Dout, w.data(), Din, Dout, [&](std::size_t n0, std::size_t n1, const T* wt) {
      d->rows[Dout - 1](x.data() + n0 * Din, Din, n1 - n0, Din, wt, yp + n0 * Dout, b != nullptr);
    });
    return;
  }
  by_row_blocks(N, N * Din * Dout, [&](std::size_t n0, std::size_t n1) {
    gemm<T>(false, false, n1 - n0, Dout, Din, T(1), x.data() + n0 * Din, w.data(), b ? T(1) : T(0), yp + n0 * Dout);
  });
}

template <class T>
void matmul_vjp(const Tensor<T>& grad_out, const Tensor<T>& a, const Tensor<T>& b, Tensor<T>* grad_a,
                Tensor<T>* grad_b, bool overwrite_a) {
  const std::size_t M = a.shape()[0], K = a.shape()[1], N = b.shape()[1];
  // grad_a (M, K) += g (M, N) b^T (N, K), rows in parallel (beta 0 when overwriting: BLAS
  // then does not read grad_a)
  const T beta = overwrite_a ? T(0) : T(1);
  if (const conv::DenseKernels<T>* d = dense_for<T>(N)) {
    if (grad_a) {
      dense_row_blocks(M, M * K * N, b.data(), K, N, [&](std::size_t m0, std::size_t m1, const T* bt) {
        d->grad_rows[N - 1](grad_out.data() + m0 * N, m1 - m0, K, bt, grad_a->data() + m0 * K, !overwrite_a);
      });
    }
    // each column of grad_b summed over all rows in order: the same bits on any team
    if (grad_b)
      by_column_blocks(K, M * K * N, [&](std::size_t k0, std::size_t k1) {
        d->grad_cols[N - 1](a.data(), K, M, grad_out.data(), k0, k1, grad_b->data());
      });
    return;
  }
  if (grad_a)
    by_row_blocks(M, M * K * N, [&](std::size_t m0, std::size_t m1) {
      gemm<T>(false, true, m1 - m0, K, N, T(1), grad_out.data() + m0 * N, b.data(), beta, grad_a->data() + m0 * K);
    });
  // grad_b (K, N) += a^T (K, M) g (M, N), summed over row blocks of a and g in parallel
  if (grad_b) add_at_b(M, K, N, a.data(), grad_out.data(), grad_b->data());
}

template <class T>
void linear_vjp(const Tensor<T>& grad_out, const Tensor<T>& x, const Tensor<T>& w, Tensor<T>* grad_x,
                Tensor<T>* grad_w, Tensor<T>* grad_b, bool overwrite_x) {
  matmul_vjp(grad_out, x, w, grad_x, grad_w, overwrite_x);
  if (grad_b) {
    // db[d] += sum_n g[n,d]   (dJ/db = dJ/dZ, summed over samples)
    const std::size_t N = grad_out.shape()[0], Dout = grad_out.shape()[1];
    for (std::size_t n = 0; n < N; ++n)
      for (std::size_t d = 0; d < Dout; ++d) grad_b->data()[d] += grad_out.data()[n * Dout + d];
  }
}

template <class T>
Value linear(Tape<T>& tape, Value x, Value w, Value b, std::source_location loc) {
  const Shape bs = b.valid() ? tape.shape(b) : Shape{};
  Value y = tape.new_value(linear_output_shape(tape.shape(x), tape.shape(w), b.valid() ? &bs : nullptr),
                           tape.any_requires_grad({x, w, b}));
  linear_forward(tape.value(x), tape.value(w), b.valid() ? &tape.value(b) : nullptr, tape.mutable_value(y));
  tape.record(OpKind::Linear, {x, w, b}, y, Attrs{}, loc);
  return y;
}

template <class T>
Value matmul(Tape<T>& tape, Value a, Value b, std::source_location loc) {
  Value y = tape.new_value(matmul_output_shape(tape.shape(a), tape.shape(b)), tape.any_requires_grad({a, b}));
  linear_forward<T>(tape.value(a), tape.value(b), nullptr, tape.mutable_value(y));
  tape.record(OpKind::Matmul, {a, b}, y, Attrs{}, loc);
  return y;
}

// ---- the registry entries (autodiff/op.hpp) ----

namespace {
template <class T> void linear_node_vjp(Tape<T>* tape, const Node<T>& node) {
  bool overwrite = false;  // x's first gradient: written by the GEMM, not added to a zeroed buffer
  Tensor<T>* gx = tape->input_grad_for_overwrite(node, 0, &overwrite);
  linear_vjp(tape->grad_out(node), tape->input_value(node, 0), tape->input_value(node, 1), gx,
             tape->input_grad(node, 1), tape->input_grad(node, 2), overwrite);
}
template <class T> void matmul_node_vjp(Tape<T>* tape, const Node<T>& node) {
  matmul_vjp(tape->grad_out(node), tape->input_value(node, 0), tape->input_value(node, 1), tape->input_grad(node, 0),
             tape->input_grad(node, 1));
}
// Recorded VJPs (higher-order gradients), the same products as ops:
//   matmul: ga = g b^T, gb = a^T g   (M,N)x(N,K), (K,M)x(M,N)
//   linear: gx = g W^T, gW = x^T g, gb = sum_to(g, (D_out)) (the sum over rows)
template <class T> void matmul_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  const Value a = node_input(t, n, 0), b = node_input(t, n, 1);
  if (wants(want, 0)) gi[0] = matmul(t, g, transpose(t, b, 0, 1));
  if (wants(want, 1)) gi[1] = matmul(t, transpose(t, a, 0, 1), g);
}
template <class T> void linear_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  const Value x = node_input(t, n, 0), w = node_input(t, n, 1);
  if (wants(want, 0)) gi[0] = matmul(t, g, transpose(t, w, 0, 1));
  if (wants(want, 1)) gi[1] = matmul(t, transpose(t, x, 0, 1), g);
  if (wants(want, 2)) gi[2] = sum_to(t, g, Shape{t.shape(g)[1]});
}
Value linear_replay(Tape<double>& t, const ReplayArgs& r) { return linear(t, r.inputs[0], r.inputs[1], r.inputs[2]); }
Value matmul_replay(Tape<double>& t, const ReplayArgs& r) { return matmul(t, r.inputs[0], r.inputs[1]); }
}  // namespace

constinit const OpDef linear_op{.name = "linear", .input_names = {"input", "weight", "bias"},
                                .vjp_float = linear_node_vjp<float>, .vjp_double = linear_node_vjp<double>,
                                .replay = linear_replay,
                                .record_vjp_float = linear_record_vjp<float>, .record_vjp_double = linear_record_vjp<double>};
constinit const OpDef matmul_op{.name = "matmul", .input_names = {"a", "b"}, .vjp_float = matmul_node_vjp<float>,
                                .vjp_double = matmul_node_vjp<double>, .replay = matmul_replay,
                                .record_vjp_float = matmul_record_vjp<float>, .record_vjp_double = matmul_record_vjp<double>};
AD_REGISTER_OP(linear_op);
AD_REGISTER_OP(matmul_op);

#define AD_INSTANTIATE(T)                                                                                 \
  template void linear_forward<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>*, Tensor<T>&);    \
  template void linear_vjp<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, Tensor<T>*,         \
                              Tensor<T>*, Tensor<T>*, bool);                                            \
  template void matmul_vjp<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, Tensor<T>*, Tensor<T>*, \
                              bool);                                                                    \
  template Value linear<T>(Tape<T>&, Value, Value, Value, std::source_location);                        \
  template Value matmul<T>(Tape<T>&, Value, Value, std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
