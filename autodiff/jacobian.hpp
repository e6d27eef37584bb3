// Full Jacobians, one VJP per output element, and the design document's layout for
// them: numerator layout (one row per output element, section 3.2) with the
// column-stacking vec (appendix A: vA = [a11; a21; a31; a12; ...]).
#pragma once

#include <functional>
#include <vector>

#include "autodiff/gradcheck.hpp"
#include "autodiff/tape.hpp"

namespace ad {

// d f(x) / d x_k for every input k, as matrices (f(x).size(), x_k.size()) in row-major
// flat order on both sides: entry [i, j] = d f(x)[flat i] / d x_k[flat j]. Row i comes
// from one backward seeded with the unit cotangent e_i, so every row is a VJP.
std::vector<Tensor<double>> jacobians(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs);
// The same for a function of one input.
Tensor<double> jacobian(const std::function<Value(Tape<double>&, Value)>& f, const Tensor<double>& x);

// The position of row-major flat element `flat` of a tensor of shape `shape` in the
// document's vec: each trailing (rows, cols) plane is stacked column by column
// (element (r, c) of an (H, W) plane goes to c*H + r) and the planes follow each other
// in row-major order of the leading axes, as B = [vec(A_1); vec(A_2); ...] in section
// 3.1.2. Rank 0 and 1 are already vectors: the position is `flat`.
std::size_t vec_position(const Shape& shape, std::size_t flat);

// A row-major Jacobian (as from jacobians) of an output of shape `out` w.r.t. an input
// of shape `in`, with rows and columns permuted into the document's d_vY/d_vX:
// row vec_position(out, i), column vec_position(in, j).
Tensor<double> to_vec_layout(const Tensor<double>& jacobian, const Shape& out, const Shape& in);

// jacobians() in the document's layout: d_vY/d_vX_k for every input k.
std::vector<Tensor<double>> vec_jacobians(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs);

}  // namespace ad
