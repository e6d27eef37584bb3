// Finite-difference gradient check, in double precision, for any function built
// from recorded ops: a single op, a user's custom composition, or a whole model.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "autodiff/tape.hpp"

namespace ad {

// Defaults follow torch.autograd.gradcheck.
struct GradcheckOptions {
  double eps = 1e-6;   // central-difference step
  double atol = 1e-5;  // pass if |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-3;
  uint64_t seed = 0;   // for the random cotangent and the random direction
  bool per_element = true;        // perturb every element of every input
  bool directional = true;        // one random direction through all inputs at once
  bool check_accumulation = true; // a second backward must add exactly the same gradient again
};

struct GradcheckResult {
  bool ok = true;
  std::string input;       // name of the input holding the worst element ("" if none)
  std::size_t index = 0;   // flat (row-major) index of the worst element in that input
  std::string position;    // the same as a multi-index, e.g. "[1,0,2,1]"
  double analytic = 0, numeric = 0;
  std::string report;      // one readable paragraph: what was checked and the worst element
};

// The function under test: records ops on `tape` from the given input values and
// returns the output (any shape). It must be deterministic.
using GradcheckFn = std::function<Value(Tape<double>& tape, const std::vector<Value>& inputs)>;

// Compares the tape's gradients of J = <v, f(inputs)> (v a fixed random cotangent of
// f's output shape) with central differences, per element and along a random
// direction. `names` label the inputs in the report (default "input0", ...).
GradcheckResult gradcheck(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs,
                          const std::vector<std::string>& names = {}, const GradcheckOptions& opt = {});

}  // namespace ad
