// The per-node gradient check: which op's VJP is wrong? Every recorded node is
// replayed alone on a small double tape, with the node's attributes and saved data
// (e.g. softmax cross-entropy's labels) and the input values it actually saw
// (converted to double for a float tape), and its VJP is checked against central
// differences with ad::gradcheck. Run it after a forward (and backward, if you like)
// and before an optimizer step changes the parameters the nodes read.
//
// Kinks and ties: at a ReLU input within a few eps of 0, or a max-pool window whose
// two largest candidates (padding zeros included with MaxPoolPadding::Zero) are within
// a few eps of each other, f is not differentiable and central differences average the
// two one-sided slopes, so no VJP could match them. Such elements are skipped (neither
// compared nor moved by the random direction) and counted in NodeGradcheck::skipped,
// never reported as failures. Custom ops are checked everywhere.
#pragma once

#include <string>
#include <vector>

#include "autodiff/gradcheck.hpp"
#include "autodiff/tape.hpp"

namespace ad {

struct NodeGradcheckOptions {
  GradcheckOptions check{.max_elements = 32};  // tolerances and eps as for gradcheck;
                                               // at most 32 elements per input one by one
  double kink_margin = 10;  // skip elements within kink_margin * eps of a kink or tie
  bool stop_at_first_failure = false;
};

// The check of one node.
struct NodeGradcheck {
  std::size_t index = 0;    // on the tape
  std::string op;           // "conv2d", or a custom op's name
  std::string label;        // the node's label
  std::string where;        // "model.cpp:42"
  std::vector<std::string> inputs;  // what the checked inputs are: "kernel (#1 \"k1\")"
  GradcheckResult result;   // worst element, both values; result.input names the role ("kernel")
  std::size_t skipped = 0;  // elements at kinks or ties left out
  // The replay must reproduce the node's recorded output (to 1e-4 relative for a float
  // tape, 1e-10 for double), or it would check another function: if a parameter was
  // changed since the forward (an optimizer step), the node fails with this error.
  double replay_error = 0;
};

struct NodeGradcheckResult {
  bool ok = true;
  std::vector<NodeGradcheck> nodes;  // every node checked, in tape order
  // The first failing node in tape order (the most upstream), or null.
  const NodeGradcheck* first_failure() const;
  std::size_t not_checked = 0;  // leaves, and nodes backward never differentiates
  std::string report;           // a summary line, then the first failure's details
};

// Re-checks the VJP of every node whose output needs a gradient, w.r.t. each of its
// inputs that needs one. Throws TapeError for an op it cannot replay.
template <class T>
NodeGradcheckResult gradcheck_nodes(const Tape<T>& tape, const NodeGradcheckOptions& opt = {});

}  // namespace ad
