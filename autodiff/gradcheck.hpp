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
  // Per input, compare at most this many elements one by one (a seeded random sample;
  // the random direction still moves every element). 0 = every element.
  std::size_t max_elements = 0;
  // Elements for which skip(input, flat index) is true are neither compared nor moved
  // by the random direction: points where f is not differentiable (a ReLU kink, a
  // max-pool tie) at which central differences would disagree with any one-sided
  // derivative. They are counted in GradcheckResult::skipped.
  std::function<bool(std::size_t input, std::size_t index)> skip = nullptr;
};

struct GradcheckResult {
  bool ok = true;
  std::string input;       // name of the input holding the worst element ("" if none)
  std::size_t index = 0;   // flat (row-major) index of the worst element in that input
  std::string position;    // the same as a multi-index, e.g. "[1,0,2,1]"
  double analytic = 0, numeric = 0;
  std::string report;      // one readable paragraph: what was checked and the worst element
  std::size_t checked = 0; // comparisons made
  std::size_t skipped = 0; // elements left out by GradcheckOptions::skip
  bool values_ok = true;       // every comparison within tolerance
  bool accumulation_ok = true; // a second backward added the same gradient again
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
