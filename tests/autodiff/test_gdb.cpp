// The gdb pretty-printers (tools/gdb/ad_printers.py), end to end: gdb debugs
// examples/gdb_tape_demo (built at -O0 -g), stops in conv2d_vjp during backward, goes
// up to the reverse loop's frame, and prints the node, the tape, tensors, a parameter
// and a value handle. The printers must load by themselves, from the binary's
// .debug_gdb_scripts entry: the session only trusts the directory.
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>

#include "test_util.hpp"

#ifndef AD_GDB_DEMO
#error "AD_GDB_DEMO (the path of examples/gdb_tape_demo) must be defined by CMake"
#endif

namespace ad::test {
namespace {

// What the README shows: the commands, in order.
constexpr const char* kCommands = R"(set pagination off
set width 0
set confirm off
set trace-commands on
set environment OMP_NUM_THREADS 1
break ad::conv2d_vjp<float>
run
print grad_out
up
print node
print *tape
print node.attrs
print node.op
print *node.op
down
print k
print *grad_k
frame function main
print k1
print x
delete
break show_recorded_backward
continue
print tape
)";

std::string run(const std::string& cmd) {
  std::string out;
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(cmd.c_str(), "r"), pclose);
  if (!pipe) return out;
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), buf.size(), pipe.get())) out += buf.data();
  return out;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(GdbPrinters, BreakInConv2dVjpAndPrintTheNodeAndTheTape) {
  if (run("command -v gdb").empty()) GTEST_SKIP() << "gdb is not installed (apt-get install gdb): the pretty-printer test needs it";
  ASSERT_TRUE(std::filesystem::exists(AD_GDB_DEMO)) << AD_GDB_DEMO << " was not built";
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / "ad_gdb_test";
  std::filesystem::create_directories(dir);
  const std::filesystem::path script = dir / "commands.gdb";
  std::ofstream(script) << kCommands;
  // -nx: no user or system gdbinit; the printers come from .debug_gdb_scripts alone.
  const std::string cmd = fmt::format("gdb -batch -nx -iex 'add-auto-load-safe-path {}/tools/gdb' -x '{}' '{}' 2>&1",
                                      AD_SOURCE_DIR, script.string(), AD_GDB_DEMO);
  const std::string out = run(cmd);
  std::printf("---- %s\n%s----\n", cmd.c_str(), out.c_str());  // the transcript (ctest -V shows it)

  EXPECT_FALSE(contains(out, "auto-loading has been declined")) << "the printers were not auto-loaded";
  EXPECT_FALSE(contains(out, "Python Exception")) << "a printer failed";
  EXPECT_FALSE(contains(out, "<unreadable")) << "a tensor could not be read";
  // Stopped in conv2d's VJP, past its prologue: the arguments are readable tensors.
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(Breakpoint 1, ad::conv2d_vjp<float> \(grad_out=xt::xarray<float> \(2,3,4,4\) \{)")))
      << out;
  // The node the reverse loop is running, on its own and within the tape.
  // The node the reverse loop is running (one frame up, in the op's registry adapter
  // conv2d_node_vjp), on its own and within the tape; the attributes are the op's own
  // struct, shown by the type name the node's Attrs carries.
  EXPECT_TRUE(contains(out, "conv2d(%5, %7, %6) -> %8 padding=1x1 stride=1x1 dilation=1x1 groups=1 \"conv2\" @ gdb_tape_demo.cpp:")) << out;
  EXPECT_TRUE(contains(out, "ad::Tape<float>: 16 nodes, 16 values, backward at #8\n")) << out;
  EXPECT_TRUE(contains(out, "   #0 input -> (2,1,8,8) \"images\" @ gdb_tape_demo.cpp:")) << out;
  EXPECT_TRUE(contains(out, "=> #8 conv2d(#5, #7, #6) -> (2,3,4,4) padding=1x1 stride=1x1 dilation=1x1 groups=1 \"conv2\" @ "
                           "gdb_tape_demo.cpp:"))
      << out;
  EXPECT_TRUE(contains(out, "   #10 max_pool2d(#9) -> (2,3,2,2) window=2x2 stride=2x2 padding=0x0 max_padding=NegInf "
                            "\"conv2.pool\" @"))
      << out;
  EXPECT_TRUE(contains(out, "   #15 softmax_cross_entropy(#14) -> () \"loss\" @ gdb_tape_demo.cpp:")) << out;
  // The op names come from the program: node.op points at the op's registry entry.
  EXPECT_TRUE(contains(out, "<ad::conv2d_op>")) << out;
  EXPECT_TRUE(contains(out, "= op conv2d\n")) << out;
  // Tensors: shape, then the first elements (the demo's kernel k2 is a fixed ramp).
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(xt::xarray<float> \(2,3,4,4\) \{[-0-9.e, ]+\.\.\. 96 elements\})"))) << out;
  EXPECT_TRUE(contains(out, "= ad::Conv2dOptions {padding=1x1 stride=1x1 dilation=1x1 groups=1}")) << out;
  EXPECT_TRUE(contains(out, "= xt::xarray<float> (3,2,3,3) {-0.25, 0.1, -0.1, 0.25, 0.05, -0.15, 0.2, 0, ... 54 elements}"))
      << out;
  // A parameter and a value handle, in main's frame.
  EXPECT_TRUE(contains(out, "= Parameter \"k1\": value (2,1,3,3) {")) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(\$\d+ = %0\n)"))) << out;
  // A backward recorded with create_graph: its nodes name the forward node they differentiate.
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(#\d+ max_pool2d_backward\(#\d+\) -> \(1,1,4,4\) [^\n]*\(d/d#2\) @ )")))
      << out;
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(#\d+ relu_backward\(#\d+, #0\) -> \(1,1,4,4\) \(d/d#1\) @ )"))) << out;
}

}  // namespace
}  // namespace ad::test
