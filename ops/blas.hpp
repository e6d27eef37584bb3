// Dense GEMM on raw row-major buffers, and the engine's thread settings.
#pragma once

#include <cstddef>

namespace ad {

// C (M,N) = alpha * op(A) * op(B) + beta * C, all contiguous row-major.
// op(A) is (M,K): A is stored (M,K), or (K,M) when trans_a. op(B) is (K,N): B is
// stored (K,N), or (N,K) when trans_b. Goes to OpenBLAS through xtensor-blas.
template <class T>
void gemm(bool trans_a, bool trans_b, std::size_t M, std::size_t N, std::size_t K, T alpha,
          const T* A, const T* B, T beta, T* C);

// Threads used by the ops' per-image loops (OpenMP). OpenBLAS itself is pinned to
// one thread so the two never fight over the cores. n <= 0 means "all cores".
void set_num_threads(int n);
int num_threads();

}  // namespace ad
