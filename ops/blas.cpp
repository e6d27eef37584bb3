// GEMM through xtensor-blas (cxxblas -> OpenBLAS) on adapted raw buffers.
// <cblas.h> is deliberately not included here: its enums clash with xtensor-blas.
#include "ops/blas.hpp"

#include <omp.h>

#include <array>
#include <xtensor-blas/xblas.hpp>
#include <xtensor/xadapt.hpp>

extern "C" void openblas_set_num_threads(int);

namespace ad {
namespace {
// OpenBLAS's own threads busy-wait and fight the ops' OpenMP threads: pin it to one.
struct PinOpenBlas {
  PinOpenBlas() { openblas_set_num_threads(1); }
} pin_openblas;
}  // namespace

template <class T>
void gemm(bool trans_a, bool trans_b, std::size_t M, std::size_t N, std::size_t K, T alpha,
          const T* A, const T* B, T beta, T* C) {
  // Empty operands (an empty batch): BLAS refuses a leading dimension of 0, and there is
  // nothing to multiply; C (M, N) = beta C when the inner dimension K is 0.
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (std::size_t i = 0; i < M * N; ++i) C[i] = beta == T(0) ? T(0) : beta * C[i];
    return;
  }
  using Sh = std::array<std::size_t, 2>;
  const Sh sa = trans_a ? Sh{K, M} : Sh{M, K};
  const Sh sb = trans_b ? Sh{N, K} : Sh{K, N};
  auto a = xt::adapt(A, M * K, xt::no_ownership(), sa);
  auto b = xt::adapt(B, K * N, xt::no_ownership(), sb);
  auto c = xt::adapt(C, M * N, xt::no_ownership(), Sh{M, N});
  xt::blas::gemm(a, b, c, trans_a, trans_b, alpha, beta);
}

template void gemm<float>(bool, bool, std::size_t, std::size_t, std::size_t, float, const float*,
                          const float*, float, float*);
template void gemm<double>(bool, bool, std::size_t, std::size_t, std::size_t, double, const double*,
                           const double*, double, double*);

void set_num_threads(int n) {
  openblas_set_num_threads(1);
  omp_set_num_threads(n > 0 ? n : omp_get_num_procs());
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace ad
