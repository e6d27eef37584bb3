// NumPy broadcasting for the binary elementwise ops (ops/elementwise.cpp): the shape of
// the result, and where each element of the result finds its two operands.
//
// The rule (NumPy's, PyTorch's): align the two shapes from the right; a missing axis
// counts as size 1; each pair of sizes must be equal, or one of them 1, which is then
// stretched to the other. So (N,C,H,W) op (1,C,1,1), (N,C,H,W) op (C,1,1), x op () and
// x op (1) all work; (2,3) op (3,2) does not.
//
// The iteration: the result is walked in row-major order as blocks of consecutive
// elements along which each operand either advances by one element or stays put
// (stride 1 or 0). Axes of size 1 in the result are dropped and neighbouring axes that
// both operands walk the same way are merged first, so (N,C,H,W) + (1,C,1,1) is N*C rows
// of H*W elements with b fixed along each row, and x + () is one row with b fixed.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "autodiff/tensor.hpp"
#include "autodiff/parallel.hpp"

namespace ad {

struct Broadcast {
  Shape out;          // the result's shape
  bool same = false;  // a, b and out are one shape: element i of a and b makes element i
  // The result as rows() rows of `inner` elements; along a row, operand a advances by
  // inner_a elements (1, or 0 where a is stretched), b by inner_b.
  std::size_t inner = 1, inner_a = 1, inner_b = 1;
  // The merged outer axes, outermost first, and each operand's stride along them (0
  // where the operand is stretched).
  std::vector<std::size_t> outer_dims, outer_a, outer_b;

  std::size_t size() const {
    std::size_t n = 1;
    for (std::size_t d : out) n *= d;
    return n;
  }
  std::size_t rows() const { return inner == 0 ? 0 : size() / inner; }
  // The offsets in a and in b of the first element of row r.
  void row_start(std::size_t r, std::size_t& ia, std::size_t& ib) const {
    ia = ib = 0;
    for (std::size_t k = outer_dims.size(); k-- > 0;) {
      const std::size_t i = r % outer_dims[k];
      r /= outer_dims[k];
      ia += i * outer_a[k];
      ib += i * outer_b[k];
    }
  }
};

// The broadcast of operands of shapes a and b for `op` (its name, for errors); throws
// ShapeError naming the op, both shapes, the first axis that disagrees and the rule.
inline Broadcast broadcast(const char* op, const Shape& a, const Shape& b) {
  Broadcast bc;
  if (a == b) {
    bc.out = a;
    bc.same = true;
    bc.inner = bc.size();
    return bc;
  }
  const std::size_t rank = std::max(a.size(), b.size());
  // Both shapes padded on the left with 1s to the result's rank.
  Shape pa(rank, 1), pb(rank, 1);
  std::copy(a.begin(), a.end(), pa.begin() + static_cast<std::ptrdiff_t>(rank - a.size()));
  std::copy(b.begin(), b.end(), pb.begin() + static_cast<std::ptrdiff_t>(rank - b.size()));
  bc.out.resize(rank);
  for (std::size_t k = rank; k-- > 0;) {  // from the right, as the rule reads
    if (pa[k] != pb[k] && pa[k] != 1 && pb[k] != 1)
      shape_error(op,
                  "operands {} and {} cannot be broadcast together: at axis {} (counted from the right) their sizes "
                  "are {} and {} (NumPy's rule: shapes aligned from the right, each pair of sizes equal or one of "
                  "them 1)",
                  shape_str(a), shape_str(b), static_cast<std::ptrdiff_t>(k) - static_cast<std::ptrdiff_t>(rank),
                  pa[k], pb[k]);
    bc.out[k] = std::max(pa[k], pb[k]);
    if (pa[k] == 0 || pb[k] == 0) bc.out[k] = 0;  // an empty axis stays empty (1 stretches to 0)
  }
  // Row-major element strides of each operand, 0 along the axes it is stretched on;
  // result axes of size 1 are dropped.
  std::vector<std::size_t> dims, sa, sb;
  std::size_t stride_a = 1, stride_b = 1;
  for (std::size_t k = rank; k-- > 0;) {
    if (bc.out[k] != 1) {
      dims.push_back(bc.out[k]);
      sa.push_back(pa[k] == 1 ? 0 : stride_a);
      sb.push_back(pb[k] == 1 ? 0 : stride_b);
    }
    stride_a *= pa[k];
    stride_b *= pb[k];
  }
  // dims, sa, sb run innermost first. Merge axis k+1 into axis k (the one inside it)
  // where both operands continue their walk: stride[k+1] == stride[k] * dims[k].
  std::vector<std::size_t> md, ma, mb;
  for (std::size_t k = 0; k < dims.size(); ++k) {
    if (!md.empty() && sa[k] == ma.back() * md.back() && sb[k] == mb.back() * md.back()) {
      md.back() *= dims[k];
      continue;
    }
    md.push_back(dims[k]);
    ma.push_back(sa[k]);
    mb.push_back(sb[k]);
  }
  if (md.empty()) return bc;  // every axis of the result has size 1: one element
  bc.inner = md[0];
  bc.inner_a = ma[0];
  bc.inner_b = mb[0];
  bc.outer_dims.assign(md.rbegin(), md.rend() - 1);
  bc.outer_a.assign(ma.rbegin(), ma.rend() - 1);
  bc.outer_b.assign(mb.rbegin(), mb.rend() - 1);
  return bc;
}

// Calls block(i, ia, ib, len) for consecutive blocks of the result that cover it in
// order: elements i .. i+len-1 of the result take a[ia + k*inner_a] and b[ib + k*inner_b],
// k < len. Rows longer than kBlock are cut, so that a single long row (x op scalar)
// still spreads over threads. With `parallel`, blocks run on OpenMP threads above
// kParallelElements: only for a block function whose blocks write disjoint elements.
template <class F>
void for_each_block(const Broadcast& bc, bool parallel, F block) {
  constexpr std::size_t kBlock = 4096;
  const std::size_t per_row = (bc.inner + kBlock - 1) / kBlock;
  parallel_for(bc.rows() * per_row, parallel && bc.size() > kParallelElements, [&](std::size_t u) {
    const std::size_t r = u / per_row, k0 = u % per_row * kBlock;
    std::size_t ia, ib;
    bc.row_start(r, ia, ib);
    block(r * bc.inner + k0, ia + k0 * bc.inner_a, ib + k0 * bc.inner_b, std::min(kBlock, bc.inner - k0));
  });
}

}  // namespace ad
