// Reading a tape: one line per node (fmt, operator<<, print_tape), optional value and
// gradient summaries, and a Graphviz DOT picture. None of this runs unless asked for:
// recording and backward never format anything.
//
// A tape line:   #7 max_pool2d(#6) -> (64,16,14,14) window=2x2 stride=2x2 pad=0x0 "conv1.pool" @ model.cpp:42
//   #k in front is the node's index on the tape; #k among the inputs is the node that
//   produced that input (%k: a value with no node, recorded under NoGradGuard); then
//   the output shape, the op's attributes, the label and the call site (basename:line).
// A node on its own (no tape to look shapes up in) names values by id:
//                max_pool2d(%6) -> %7 window=2x2 stride=2x2 pad=0x0 "conv1.pool" @ model.cpp:42
#pragma once

#include <cstdio>
#include <ostream>
#include <string>

#include <fmt/format.h>

#include "autodiff/tape.hpp"

namespace ad {

struct TapePrintOptions {
  bool values = false;  // under each node: its value's min, max, mean, NaN and Inf counts
  bool grads = false;   // under each node: the same for its gradient (after backward)
};

// min/max/mean over the finite elements; counts of NaN and infinite ones.
struct TensorSummary {
  std::size_t size = 0, nan = 0, inf = 0;
  double min = 0, max = 0, mean = 0;  // 0 when no element is finite
};
template <class T>
TensorSummary summarize(const Tensor<T>& t);
// "min -0.5 max 1.25 mean 0.0312 nan 0 inf 0"
std::string format_summary(const TensorSummary& s);

// "window=2x2 stride=2x2 pad=0x0" for the fields `op` reads ("" when none).
std::string format_attrs(OpId op, const Attrs& a);

// One node's line without its index and shape, values named by id (see above).
template <class T>
std::string format_node(const Node<T>& node);
// Node `index` of `tape` as a tape line (see above).
template <class T>
std::string format_node(const Tape<T>& tape, std::size_t index);
// Every node, one line each, newline-terminated; with summaries on request.
template <class T>
std::string format_tape(const Tape<T>& tape, const TapePrintOptions& opt = {});
// format_tape to a stdio stream: ad::print_tape(tape, {.values = true, .grads = true}).
template <class T>
void print_tape(const Tape<T>& tape, const TapePrintOptions& opt = {}, std::FILE* out = stdout);

// The tape as a Graphviz digraph (`dot -Tsvg tape.dot -o tape.svg`): one box per op
// with its index, op, output shape, attributes and label; inputs (blue ellipses) and
// parameters (orange boxes) styled apart; values that need no gradient greyed; an
// edge from each input's producer to its consumer.
template <class T>
std::string to_dot(const Tape<T>& tape);

template <class T>
std::ostream& operator<<(std::ostream& os, const Tape<T>& tape) {
  return os << format_tape(tape);
}
template <class T>
std::ostream& operator<<(std::ostream& os, const Node<T>& node) {
  return os << format_node(node);
}

extern template TensorSummary summarize<float>(const Tensor<float>&);
extern template TensorSummary summarize<double>(const Tensor<double>&);

}  // namespace ad

// fmt::format("{}", tape): the tape lines; "{:v}" adds value summaries, "{:g}"
// gradient summaries, "{:vg}" both.
template <class T>
struct fmt::formatter<ad::Tape<T>> {
  ad::TapePrintOptions opt;
  constexpr auto parse(fmt::format_parse_context& ctx) {
    auto it = ctx.begin();
    for (; it != ctx.end() && *it != '}'; ++it) {
      if (*it == 'v') opt.values = true;
      else if (*it == 'g') opt.grads = true;
      else throw fmt::format_error("tape format: use {}, {:v}, {:g} or {:vg}");
    }
    return it;
  }
  template <class Ctx>
  auto format(const ad::Tape<T>& tape, Ctx& ctx) const {
    return fmt::format_to(ctx.out(), "{}", ad::format_tape(tape, opt));
  }
};

// fmt::format("{}", node): the node's line without a tape (values named by id).
template <class T>
struct fmt::formatter<ad::Node<T>> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class Ctx>
  auto format(const ad::Node<T>& node, Ctx& ctx) const {
    return fmt::format_to(ctx.out(), "{}", ad::format_node(node));
  }
};
