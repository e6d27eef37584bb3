// Printing and drawing the tape: one line per node with index, op, inputs, shape,
// attributes, label and call site; summaries; the DOT picture, parsed by Graphviz.
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "test_util.hpp"

namespace ad::test::test_print {
namespace {

// Splits printed text into lines (without the trailing empty one).
std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

TEST(PrintTape, OneLinePerNodeWithIndexOpInputsShapeAttributesLabelAndCallSite) {
  Tape<double> t;
  Parameter<double> k("k1", uniform({2, 1, 3, 3}, 1));
  const Value x = t.input(uniform({4, 1, 6, 6}, 2), "images");
  const int line_x = __LINE__ - 1;
  const Value kv = t.param(k);
  const int line_k = __LINE__ - 1;
  const Value z = t.set_label(conv2d(t, x, kv, Value{}, {.padding = {1, 0}, .stride = {1, 2}}), "conv1");
  const int line_z = __LINE__ - 1;
  const Value a = t.set_label(max_pool2d(t, relu(t, z)), "conv1.pool");
  const int line_a = __LINE__ - 1;
  const std::vector<std::string> got = lines(fmt::format("{}", t));
  ASSERT_EQ(got.size(), 5u) << fmt::format("{}", t);
  EXPECT_EQ(got[0], fmt::format("#0 input -> (4,1,6,6) \"images\" @ test_print.cpp:{}", line_x));
  EXPECT_EQ(got[1], fmt::format("#1 param -> (2,1,3,3) \"k1\" @ test_print.cpp:{}", line_k));
  EXPECT_EQ(got[2], fmt::format("#2 conv2d(#0, #1) -> (4,2,6,2) stride=1x2 pad=1x0 \"conv1\" @ test_print.cpp:{}", line_z));
  EXPECT_EQ(got[3], fmt::format("#3 relu(#2) -> (4,2,6,2) @ test_print.cpp:{}", line_a));
  EXPECT_EQ(got[4], fmt::format("#4 max_pool2d(#3) -> (4,2,3,1) window=2x2 stride=2x2 pad=0x0 \"conv1.pool\" @ "
                                "test_print.cpp:{}",
                                line_a));
  EXPECT_EQ(format_node(t, 4), got[4]);
  // A node alone has no shapes to look up: values by id.
  EXPECT_EQ(format_node(t.nodes()[4]),
            fmt::format("max_pool2d(%3) -> %4 window=2x2 stride=2x2 pad=0x0 \"conv1.pool\" @ test_print.cpp:{}", line_a));
  EXPECT_EQ(fmt::format("{}", t.nodes()[4]), format_node(t.nodes()[4]));
  std::ostringstream os, on;
  os << t;
  on << t.nodes()[4];
  EXPECT_EQ(os.str(), format_tape(t));
  EXPECT_EQ(on.str(), format_node(t.nodes()[4]));
  (void)a;
}

TEST(PrintTape, EveryOpPrintsTheAttributesItReads) {
  Tape<double> t;
  Parameter<double> p("x", uniform({2, 3, 4, 4}, 1));
  const Value x = t.param(p);
  avg_pool2d(t, x, {.window = {3, 2}, .stride = {1, 2}, .padding = {1, 1}});
  max_pool2d(t, x, {.window = {3, 2}, .stride = {1, 2}, .padding = {1, 1}, .max_padding = MaxPoolPadding::Zero});
  leaky_relu(t, x, 0.2);
  scale(t, x, -1.5);
  softmax_cross_entropy(t, flatten(t, x), {0, 5});
  const std::string s = format_tape(t);
  EXPECT_NE(s.find("avg_pool2d(#0) -> (2,3,4,3) window=3x2 stride=1x2 pad=1x1 @"), std::string::npos) << s;
  EXPECT_NE(s.find("max_pool2d(#0) -> (2,3,4,3) window=3x2 stride=1x2 pad=1x1 pad_value=0 @"), std::string::npos) << s;
  EXPECT_NE(s.find("leaky_relu(#0) -> (2,3,4,4) slope=0.2 @"), std::string::npos) << s;
  EXPECT_NE(s.find("scale(#0) -> (2,3,4,4) factor=-1.5 @"), std::string::npos) << s;
  EXPECT_NE(s.find("softmax_cross_entropy(#5) -> () labels=2 @"), std::string::npos) << s;
}

TEST(PrintTape, AValueWithoutANodeIsNamedById) {
  Tape<double> t;
  Parameter<double> p("w", T64{1.0, 2.0});
  Value c;
  {
    NoGradGuard guard(t);
    c = t.input(T64{3.0, 4.0});  // value #0, no node
  }
  mul(t, c, t.param(p));
  const std::vector<std::string> got = lines(format_tape(t));
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].substr(0, 27), "#1 mul(%0, #0) -> (2) @ tes");
}

TEST(PrintTape, SummariesGiveMinMaxMeanOfFiniteElementsAndCountNanAndInf) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  const TensorSummary s = summarize(T64{1.0, nan, -2.0, inf, 4.0});
  EXPECT_EQ(s.size, 5u);
  EXPECT_EQ(s.nan, 1u);
  EXPECT_EQ(s.inf, 1u);
  EXPECT_EQ(s.min, -2.0);
  EXPECT_EQ(s.max, 4.0);
  EXPECT_EQ(s.mean, 1.0);
  EXPECT_EQ(format_summary(s), "min -2 max 4 mean 1 nan 1 inf 1");
}

TEST(PrintTape, ValueAndGradientSummariesOnRequest) {
  Tape<double> t;
  Parameter<double> p("w", T64{1.0, -3.0});
  const Value c = t.input(T64{2.0, 2.0}, "c");
  const Value y = sum(t, mul(t, c, t.param(p)));
  const TapePrintOptions both{.values = true, .grads = true};
  std::vector<std::string> got = lines(format_tape(t, both));
  ASSERT_EQ(got.size(), 12u) << format_tape(t, both);
  EXPECT_EQ(got[1], "    value  min 2 max 2 mean 2 nan 0 inf 0");
  EXPECT_EQ(got[2], "    grad   (none: no parameter upstream)");
  EXPECT_EQ(got[8], "    grad   (not reached by backward yet)");  // the mul before backward
  t.backward(y);
  got = lines(fmt::format("{:vg}", t));
  EXPECT_EQ(got[7], "    value  min -6 max 2 mean -2 nan 0 inf 0");  // mul: (2, -6)
  EXPECT_EQ(got[8], "    grad   min 1 max 1 mean 1 nan 0 inf 0");
  EXPECT_EQ(got[5], "    grad   min 2 max 2 mean 2 nan 0 inf 0");  // dJ/dw = c
  EXPECT_EQ(fmt::format("{:v}", t), format_tape(t, {.values = true}));
  EXPECT_EQ(fmt::format("{:g}", t), format_tape(t, {.grads = true}));
}

// A small CNN tape used by the DOT tests.
struct SmallCnn {
  Parameter<double> k{"k1", uniform({2, 1, 3, 3}, 1)}, b{"b1", uniform({2}, 2)}, w{"w3", uniform({8, 3}, 3)};
  Tape<double> t;
  Value loss;
  SmallCnn() {
    const Value x = t.input(uniform({2, 1, 4, 4}, 4), "images");
    const Value kv = t.param(k), bv = t.param(b);
    const Value a = t.set_label(max_pool2d(t, relu(t, conv2d(t, x, kv, bv, {.padding = {1, 1}}))), "pool \"1\"");
    loss = softmax_cross_entropy(t, linear(t, flatten(t, a), t.param(w), Value{}), {0, 2});
  }
};

TEST(TapeDot, OneVertexPerNodeAndOneEdgePerInputWithLeavesStyledApart) {
  SmallCnn m;
  const std::string dot = to_dot(m.t);
  EXPECT_EQ(dot.rfind("digraph tape {", 0), 0u);
  std::size_t vertices = 0, edges = 0;
  for (const std::string& l : lines(dot)) {
    if (l.find(" -> ") != std::string::npos) ++edges;
    else if (l.size() > 3 && l.rfind("  n", 0) == 0 && std::isdigit(static_cast<unsigned char>(l[3]))) ++vertices;
  }
  EXPECT_EQ(vertices, m.t.nodes().size());
  std::size_t inputs = 0;
  for (const auto& n : m.t.nodes()) inputs += static_cast<std::size_t>(n.num_inputs());
  EXPECT_EQ(edges, inputs);
  EXPECT_NE(dot.find("n0 [label=\"#0 input\\n(2,1,4,4)\\nimages\", shape=ellipse"), std::string::npos) << dot;
  EXPECT_NE(dot.find("[label=\"#1 param\\n(2,1,3,3)\\nk1\", shape=box, style=\"filled\", fillcolor=\"#fce5cd\""),
            std::string::npos)
      << dot;
  EXPECT_NE(dot.find("#3 conv2d\\n(2,2,4,4)\\nstride=1x1 pad=1x1\"];"), std::string::npos) << dot;
  EXPECT_NE(dot.find("\\npool \\\"1\\\"\"]"), std::string::npos) << "label quotes are escaped\n" << dot;
  EXPECT_NE(dot.find("n0 -> n3;"), std::string::npos) << dot;
}

TEST(TapeDot, GraphvizParsesIt) {
  if (std::system("command -v dot >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "Graphviz's `dot` is not installed (apt-get install graphviz): cannot check that the DOT parses";
  SmallCnn m;
  m.t.backward(m.loss);
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / "ad_tape_dot";
  std::filesystem::create_directories(dir);
  const std::filesystem::path dot = dir / "tape.dot", svg = dir / "tape.svg", err = dir / "dot.err";
  std::ofstream(dot) << to_dot(m.t);
  std::filesystem::remove(svg);
  const std::string cmd = fmt::format("dot -Tsvg '{}' -o '{}' 2>'{}'", dot.string(), svg.string(), err.string());
  const int rc = std::system(cmd.c_str());
  std::ifstream e(err);
  const std::string errors((std::istreambuf_iterator<char>(e)), std::istreambuf_iterator<char>());
  ASSERT_EQ(rc, 0) << cmd << " failed: " << errors;
  EXPECT_TRUE(errors.empty()) << errors;  // warnings too
  std::ifstream in(svg);
  const std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(out.find("<svg"), std::string::npos);
  EXPECT_NE(out.find("max_pool2d"), std::string::npos);
}

}  // namespace
}  // namespace ad::test::test_print
