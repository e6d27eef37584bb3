// The op registry: what the engine knows about an op, declared once, in the op's own
// file pair, and read from there by backward, gradcheck_nodes, the printers, to_dot
// and the gdb printers.
//
// An op is one constant `OpDef` (a plain table of a name and named functions). A node
// names its op by pointer (`Node::op`), so in a debugger `p tape.nodes()[7].op` shows
// the table's symbol (`<ad::conv2d_op>`) and `p *tape.nodes()[7].op` its name and
// functions. `OpKind::Conv2d` is that pointer under its familiar name; each op
// family's header adds its own constants to the namespace `ad::OpKind`.
//
// Adding an op (see the README, "Adding an op"): in ops/<family>.hpp declare
//     extern const OpDef cube_op;
//     namespace OpKind { inline constexpr OpId Cube = &cube_op; }
// and in ops/<family>.cpp define the table next to the forward and the VJP,
//     constinit const OpDef cube_op{.name = "cube", .vjp_float = cube_node_vjp<float>, ...};
//     AD_REGISTER_OP(cube_op);
// Nothing in autodiff/ changes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "autodiff/tensor.hpp"

namespace ad {

// A light handle to a value on a tape: the index of its slot, and the recording it
// belongs to. id < 0 means "none", e.g. a conv2d without bias.
// Every handle a tape hands out carries the number of the tape's current recording
// (a fresh number per tape and per reset()), and the tape refuses a handle of another
// recording with a TapeError, rather than silently naming whatever value now sits in
// that slot. A handle made from a raw id (`Value{node.inputs[0]}`, as a debugging
// session walking `tape.nodes()` does) has recording 0 and is taken at face value.
struct Value {
  int32_t id = -1;
  uint32_t recording = 0;
  bool valid() const { return id >= 0; }
  // The same value: the same slot of the same recording (a raw id, recording 0,
  // matches any recording's handle to that slot).
  friend bool operator==(Value a, Value b) {
    return a.id == b.id && (a.recording == 0 || b.recording == 0 || a.recording == b.recording);
  }
};

template <class T>
class Tape;
template <class T>
struct Node;
class CustomOp;

// A node's attributes: a fixed-size, trivially copyable blob holding the op's own
// small attribute struct (Conv2dOptions, Pool2dOptions, ...), and that struct's type
// name. Nodes stay plain data of one size whatever the op, and a debugger (the gdb
// printers) shows the struct's fields by its name. An attribute struct is trivially
// copyable, at most kCapacity bytes, and names itself:
//     struct ScaleAttrs { static constexpr const char* kType = "ad::ScaleAttrs"; double factor; };
// Store with Attrs::of(a), read with get<A>() (attrs_as<A>(attrs) in templates).
struct Attrs {
  static constexpr std::size_t kCapacity = 64;
  const char* type = nullptr;  // A::kType of the stored struct; null: no attributes
  alignas(8) std::array<unsigned char, kCapacity> bytes{};

  template <class A>
  static Attrs of(const A& a) {
    static_assert(std::is_trivially_copyable_v<A>, "op attributes must be trivially copyable");
    static_assert(sizeof(A) <= kCapacity, "op attributes must fit in Attrs::kCapacity bytes");
    static_assert(alignof(A) <= 8, "op attributes must be at most 8-byte aligned");
    Attrs r;
    r.type = A::kType;
    std::memcpy(r.bytes.data(), &a, sizeof(A));
    return r;
  }
  // The stored struct; a node of another op (another struct) is a logic error.
  template <class A>
  A get() const {
    static_assert(std::is_trivially_copyable_v<A> && sizeof(A) <= kCapacity);
    if (!type || std::strcmp(type, A::kType) != 0) wrong_type(A::kType);
    A a;
    std::memcpy(&a, bytes.data(), sizeof(A));
    return a;
  }

 private:
  [[noreturn]] void wrong_type(const char* wanted) const;
};

// attrs.get<A>() where `attrs` is of a dependent type (in templates over T).
template <class A>
A attrs_as(const Attrs& attrs) {
  return attrs.get<A>();
}

// What a replay needs to record a node's op again on a double tape: the inputs (Value{}
// where the node had none), the attributes, the integer data saved by the forward
// (labels, for the losses) and, for custom ops, the op itself.
struct ReplayArgs {
  std::span<const Value> inputs;
  const Attrs& attrs;
  std::span<const int32_t> saved_index;
  const std::shared_ptr<const CustomOp>* custom = nullptr;
};

// The registry entry of one op. Every function is a plain named function of the op's
// file; `vjp_*` calls the op's VJP (e.g. conv2d_vjp) with the node's saved data.
struct OpDef {
  const char* name = "";         // "conv2d", as printed on the tape
  // What input k is called in reports ("input", "kernel", "bias"); inputs past the
  // list are "input<k>".
  std::array<const char*, 4> input_names{};
  bool leaf = false;  // input and param: nothing upstream, no VJP or replay

  // The reverse loop's call: adds dJ/d(inputs) of `node` given its output's gradient
  // (the VJP contract of autodiff/tape.hpp).
  // (`tape` by pointer: a debugger's frame line shows its address, not the whole tape.)
  void (*vjp_float)(Tape<float>* tape, const Node<float>& node) = nullptr;
  void (*vjp_double)(Tape<double>* tape, const Node<double>& node) = nullptr;
  // Records the op again on `t` (gradcheck_nodes; higher-order gradients).
  Value (*replay)(Tape<double>& t, const ReplayArgs& args) = nullptr;
  // " stride=2x1 pad=1x0": the attributes as printed on the tape and in DOT; null = none.
  std::string (*format_attrs)(const Attrs& attrs, std::span<const int32_t> saved_index) = nullptr;
  // Where the op is not differentiable: marks at[e] for the elements e of input k (with
  // value x) within `margin` of a kink or tie, which gradcheck then skips. Null = nowhere.
  void (*kinks)(const Attrs& attrs, std::size_t k, const Tensor<double>& x, double margin,
                std::vector<bool>& at) = nullptr;
  // The same where the kinks depend on several inputs (a fused op whose ReLU and pool
  // act on a convolution of two of them): `inputs` holds every input of the node (null
  // where absent). Used instead of `kinks` when set.
  void (*kinks_of_inputs)(const Attrs& attrs, std::size_t k, std::span<const Tensor<double>* const> inputs,
                          double margin, std::vector<bool>& at) = nullptr;
  // Higher-order gradients (autodiff/higher_order.hpp): records on `tape`, as ordinary
  // differentiable ops, dJ/d(input k) of node `node` given its output's gradient
  // `grad_out` (a Value on the same tape), into grads_in[k] for each k whose bit is set
  // in `want` (inputs that are present and need a gradient); grads_in[k] stays Value{}
  // where there is no contribution (ReLU w.r.t. its input: zero almost everywhere).
  // It reads the node by index, never by reference: recording grows the node vector.
  // Null: no higher-order support yet; ad::grad refuses the node, naming the op.
  void (*record_vjp_float)(Tape<float>& tape, int32_t node, Value grad_out, uint32_t want,
                           std::span<Value> grads_in) = nullptr;
  void (*record_vjp_double)(Tape<double>& tape, int32_t node, Value grad_out, uint32_t want,
                            std::span<Value> grads_in) = nullptr;

  template <class T>
  auto vjp() const {
    if constexpr (std::is_same_v<T, float>) return vjp_float;
    else return vjp_double;
  }
  template <class T>
  auto record_vjp() const {
    if constexpr (std::is_same_v<T, float>) return record_vjp_float;
    else return record_vjp_double;
  }
  std::string input_name(std::size_t k) const {
    if (k < input_names.size() && input_names[k]) return input_names[k];
    return "input" + std::to_string(k);
  }
};

// A node's op: a pointer to its (static, constant) table.
using OpId = const OpDef*;

// Every registered op, in registration order (static initialisation of the op files
// linked into the program). AD_REGISTER_OP(def) in the op's .cpp adds one. With the
// static library, the linker takes an op's file only when the program uses something
// of it, so the list holds the ops the program can record (naming `OpKind::X` is a use).
const std::vector<OpId>& registered_ops();
// The registered op of that name, or nullptr.
OpId find_op(std::string_view name);

struct OpRegistration {
  explicit OpRegistration(const OpDef& def);
};
#define AD_REGISTER_OP(def) \
  [[maybe_unused]] static const ::ad::OpRegistration ad_op_registration_##def { def }

// The engine's own ops; each ops/ header adds the constants of its family.
extern const OpDef input_op;
extern const OpDef param_op;
extern const OpDef custom_op_def;
namespace OpKind {
inline constexpr OpId Input = &input_op;      // leaf: constant (no gradient)
inline constexpr OpId Parameter = &param_op;  // leaf: trainable, gradient into Parameter::grad
inline constexpr OpId Custom = &custom_op_def;  // a user-defined op (autodiff/custom.hpp)
}  // namespace OpKind

// "conv2d", "max_pool2d", ... ("custom" for every user-defined op; node_op_name gives a
// custom op's own name).
inline std::string_view op_name(OpId op) { return op ? op->name : "?"; }

}  // namespace ad
