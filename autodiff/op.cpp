// The op registry's list, and the engine's own ops: the two leaves (input, param).
// The custom op's entry is in autodiff/custom.cpp, every built-in op's in its ops/ file.
#include "autodiff/op.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>

#include "autodiff/tape.hpp"

namespace ad {

namespace {
std::vector<OpId>& registry() {
  static std::vector<OpId> ops;
  return ops;
}
}  // namespace

OpRegistration::OpRegistration(const OpDef& def) {
  // A malformed entry is a programming error in an op file, found at start-up by every
  // program that links it: say which and stop, rather than fail in some later backward.
  const std::string_view name(def.name ? def.name : "");
  const char* missing = name.empty()                           ? "a name"
                        : !def.leaf && !def.vjp_float          ? "vjp_float"
                        : !def.leaf && !def.vjp_double         ? "vjp_double"
                        : !def.leaf && !def.replay             ? "replay"
                                                               : nullptr;
  if (missing) {
    std::fprintf(stderr, "tape-autodiff: op \"%s\" is registered without %s\n", def.name ? def.name : "", missing);
    std::abort();
  }
  if (find_op(name)) {
    std::fprintf(stderr, "tape-autodiff: two ops are registered as \"%s\"\n", def.name);
    std::abort();
  }
  registry().push_back(&def);
}

void Attrs::wrong_type(const char* wanted) const {
  throw std::logic_error(fmt::format("node attributes hold {}, not {}", type ? type : "nothing", wanted));
}

const std::vector<OpId>& registered_ops() { return registry(); }

OpId find_op(std::string_view name) {
  for (OpId op : registry())
    if (name == op->name) return op;
  return nullptr;
}

constinit const OpDef input_op{.name = "input", .leaf = true};
constinit const OpDef param_op{.name = "param", .leaf = true};
AD_REGISTER_OP(input_op);
AD_REGISTER_OP(param_op);

}  // namespace ad
