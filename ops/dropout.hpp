// Inverted dropout (Srivastava et al. 2014; PyTorch's F.dropout): in training mode each
// element is kept with probability 1 - p and scaled by 1/(1 - p), so the expected
// output is the input; in eval mode the identity. Not in the design document.
#pragma once

#include <cstdint>
#include <source_location>
#include <span>
#include <vector>

#include "autodiff/tape.hpp"

namespace ad {

// dropout's node attributes.
struct DropoutAttrs {
  static constexpr const char* kType = "ad::DropoutAttrs";
  double p = 0.5;     // probability of dropping an element
  uint64_t seed = 0;  // the mask's seed
};

extern const OpDef dropout_op;
namespace OpKind {
inline constexpr OpId Dropout = &dropout_op;
}

// The mask of `n` elements for (seed, p), packed 32 elements to an int32: element i is
// kept iff bit i % 32 of word i / 32 is set. Element i is kept iff u_i >= p, with u_i
// uniform in [0, 1) from a counter-based generator (splitmix64 of the hashed seed plus
// i), so the mask is a pure function of (seed, p, n): the same on any thread count, and
// unrelated for different seeds, consecutive ones included.
void dropout_mask(uint64_t seed, double p, std::size_t n, std::vector<int32_t>& mask);

// y = x .* m with m_i = 1/(1 - p) where the mask keeps element i, else 0 (0 everywhere
// for p = 1). A multiplication, as PyTorch: a dropped NaN or infinity gives NaN.
template <class T>
void dropout_forward(const Tensor<T>& x, double p, std::span<const int32_t> mask, Tensor<T>& y);
// grad_x += grad_out .* m, m as in the forward.
template <class T>
void dropout_vjp(const Tensor<T>& grad_out, double p, std::span<const int32_t> mask, Tensor<T>* grad_x);

// Records dropout of x (any shape) with drop probability p in [0, 1] (ShapeError
// otherwise, also in eval mode). In training mode the node saves the mask for backward
// (and for a replay, which reproduces it bit for bit). In eval mode it records nothing
// and returns x itself. The mask depends only on (seed, p, x's size): use a new seed for
// every step and every dropout layer, e.g. seed = run_seed + step * layers + layer (the
// seed is hashed, so consecutive seeds give unrelated masks); the same seed again gives
// the same mask (reproducible runs, or a recomputed forward).
template <class T>
Value dropout(Tape<T>& tape, Value x, double p, bool training, uint64_t seed,
              std::source_location loc = std::source_location::current());

}  // namespace ad
