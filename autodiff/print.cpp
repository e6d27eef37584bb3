// Tape lines, summaries and the DOT picture (see autodiff/print.hpp for the formats).
#include "autodiff/print.hpp"

#include <cmath>
#include <limits>

namespace ad {

namespace {

// " \"conv1.pool\" @ model.cpp:42" (no label: just the call site).
template <class T>
std::string label_and_site(const Node<T>& node) {
  std::string s;
  if (!node.label.empty()) s += fmt::format(" \"{}\"", node.label);
  if (node.where.line != 0) s += fmt::format(" @ {}:{}", node.where.basename(), node.where.line);
  return s;
}

// The op's own attribute text (OpDef::format_attrs), e.g. "stride=1x1 pad=2x2".
template <class T>
std::string node_attrs(const Node<T>& node) {
  return node.op->format_attrs ? node.op->format_attrs(node.attrs, node.saved_index) : std::string();
}

template <class T>
std::string extra_attrs(const Node<T>& node) {
  const std::string a = node_attrs(node);
  return a.empty() ? a : " " + a;
}

// "#6", or "%6" for a value no node produced.
template <class T>
std::string value_ref(const Tape<T>& tape, int32_t id) {
  const int32_t producer = tape.slot(Value{id}).producer;
  return producer >= 0 ? fmt::format("#{}", producer) : fmt::format("%{}", id);
}

template <class T>
const Tensor<T>* grad_of(const Tape<T>& tape, Value v) {
  const Slot<T>& s = tape.slot(v);
  if (!s.requires_grad) return nullptr;
  if (s.param) return &s.param->grad;
  return s.grad_ready ? &s.grad : nullptr;
}

// DOT string literal contents: quotes and backslashes escaped.
std::string dot_escape(std::string_view s) {
  std::string r;
  for (char c : s) {
    if (c == '"' || c == '\\') r += '\\';
    r += c;
  }
  return r;
}

}  // namespace

template <class T>
TensorSummary summarize(const Tensor<T>& t) {
  TensorSummary s;
  s.size = t.size();
  double lo = std::numeric_limits<double>::infinity(), hi = -lo, sum = 0;
  std::size_t finite = 0;
  for (std::size_t i = 0; i < t.size(); ++i) {
    const double v = static_cast<double>(t.data()[i]);
    if (std::isnan(v)) ++s.nan;
    else if (std::isinf(v)) ++s.inf;
    else {
      lo = std::min(lo, v), hi = std::max(hi, v), sum += v;
      ++finite;
    }
  }
  if (finite) s.min = lo, s.max = hi, s.mean = sum / static_cast<double>(finite);
  return s;
}

std::string format_summary(const TensorSummary& s) {
  return fmt::format("min {:.6g} max {:.6g} mean {:.6g} nan {} inf {}", s.min, s.max, s.mean, s.nan, s.inf);
}

std::string format_attrs(OpId op, const Attrs& a) {
  return op && op->format_attrs ? op->format_attrs(a, {}) : std::string();
}

// " (d/d#7)": the node was recorded by a backward with create_graph, as part of the VJP
// of forward node #7 (Node::grad_of; autodiff/higher_order.hpp).
template <class T>
std::string grad_of_mark(const Node<T>& node) {
  return node.grad_of >= 0 ? fmt::format(" (d/d#{})", node.grad_of) : std::string();
}

template <class T>
std::string format_node(const Node<T>& node) {
  std::vector<std::string> in;
  for (int32_t id : node.inputs)
    if (id >= 0) in.push_back(fmt::format("%{}", id));
  const std::string args = in.empty() ? std::string() : fmt::format("({})", fmt::join(in, ", "));
  return fmt::format("{}{} -> %{}{}{}{}", op_name(node.op), args, node.output, extra_attrs(node), grad_of_mark(node),
                     label_and_site(node));
}

template <class T>
std::string format_node(const Tape<T>& tape, std::size_t index) {
  const Node<T>& node = tape.nodes().at(index);
  std::vector<std::string> in;
  for (int32_t id : node.inputs)
    if (id >= 0) in.push_back(value_ref(tape, id));
  const std::string args = in.empty() ? std::string() : fmt::format("({})", fmt::join(in, ", "));
  return fmt::format("#{} {}{} -> {}{}{}{}", index, node_op_name(tape, node), args,
                     shape_str(tape.value(Value{node.output}).shape()), extra_attrs(node), grad_of_mark(node),
                     label_and_site(node));
}

template <class T>
std::string format_tape(const Tape<T>& tape, const TapePrintOptions& opt) {
  std::string s;
  for (std::size_t i = 0; i < tape.nodes().size(); ++i) {
    s += format_node(tape, i);
    s += '\n';
    const Value out{tape.nodes()[i].output};
    if (opt.values) s += fmt::format("    value  {}\n", format_summary(summarize(tape.value(out))));
    if (opt.grads) {
      const Tensor<T>* g = grad_of(tape, out);
      s += g ? fmt::format("    grad   {}\n", format_summary(summarize(*g)))
             : std::string(tape.requires_grad(out) ? "    grad   (not reached by backward yet)\n"
                                                   : "    grad   (none: no parameter upstream)\n");
    }
  }
  return s;
}

template <class T>
void print_tape(const Tape<T>& tape, const TapePrintOptions& opt, std::FILE* out) {
  fmt::print(out, "{}", format_tape(tape, opt));
}

template <class T>
std::string to_dot(const Tape<T>& tape) {
  std::string s =
      "digraph tape {\n"
      "  rankdir=TB;\n"
      "  node [fontname=\"Helvetica\", fontsize=10, shape=box, style=\"rounded\"];\n"
      "  edge [color=\"#555555\", arrowsize=0.7];\n";
  // Values no node produced (recorded under NoGradGuard) still feed nodes: draw them plainly.
  std::vector<bool> drawn(tape.num_values(), false);
  for (std::size_t i = 0; i < tape.nodes().size(); ++i) {
    const Node<T>& node = tape.nodes()[i];
    const Value out{node.output};
    std::string text = fmt::format("#{} {}\\n{}", i, node_op_name(tape, node), shape_str(tape.value(out).shape()));
    if (const std::string a = node_attrs(node); !a.empty()) text += "\\n" + a;
    if (!node.label.empty()) text += "\\n" + dot_escape(node.label);
    if (node.grad_of >= 0) text += fmt::format("\\nd/d#{}", node.grad_of);
    std::string style;
    if (node.op == OpKind::Input)
      style = "shape=ellipse, style=filled, fillcolor=\"#cfe2f3\"";
    else if (node.op == OpKind::Parameter)
      style = "shape=box, style=\"filled\", fillcolor=\"#fce5cd\", penwidth=1.5";
    else if (node.op == OpKind::Custom)
      style = "style=\"rounded,dashed\"";
    else if (node.grad_of >= 0)  // recorded by a backward (create_graph): drawn in green
      style = "color=\"#38761d\", fontcolor=\"#38761d\"";
    if (!tape.requires_grad(out)) style += std::string(style.empty() ? "" : ", ") + "fontcolor=\"#888888\", color=\"#aaaaaa\"";
    s += fmt::format("  n{} [label=\"{}\"{}{}];\n", i, text, style.empty() ? "" : ", ", style);
    drawn[static_cast<std::size_t>(node.output)] = true;
  }
  for (std::size_t i = 0; i < tape.nodes().size(); ++i)
    for (int32_t id : tape.nodes()[i].inputs) {
      if (id < 0) continue;
      const int32_t producer = tape.slot(Value{id}).producer;
      if (producer >= 0) {
        s += fmt::format("  n{} -> n{};\n", producer, i);
        continue;
      }
      if (!drawn[static_cast<std::size_t>(id)]) {
        s += fmt::format("  v{} [shape=plaintext, label=\"%{}\\n{}\"];\n", id, id, shape_str(tape.value(Value{id}).shape()));
        drawn[static_cast<std::size_t>(id)] = true;
      }
      s += fmt::format("  v{} -> n{};\n", id, i);
    }
  s += "}\n";
  return s;
}

#define AD_INSTANTIATE(T)                                                                     \
  template TensorSummary summarize<T>(const Tensor<T>&);                                     \
  template std::string format_node<T>(const Node<T>&);                                       \
  template std::string format_node<T>(const Tape<T>&, std::size_t);                          \
  template std::string format_tape<T>(const Tape<T>&, const TapePrintOptions&);              \
  template void print_tape<T>(const Tape<T>&, const TapePrintOptions&, std::FILE*);          \
  template std::string to_dot<T>(const Tape<T>&);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
