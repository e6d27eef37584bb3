// Shape ops, forward and VJP. Each output element is one input element (y[i] = x[m(i)]
// for a map m fixed by the shapes), so dy/dx is a 0/1 matrix with one 1 per row and the
// VJP is the reverse move, gx[m(i)] += g[i]:
//   reshape:   m(i) = i                     (row-major order is kept; design document
//                                            section 3.1.2 is the case (N,C,H,W) -> (N,CHW))
//   permute:   m(i) = sum_k i_k stride_x[dims[k]]   for y's multi-index (i_0, ..., i_{r-1})
//   concat:    y's block [off_k, off_k + d_k) along the axis is input k
//   narrow:    y is x's block [start, start + length) along the axis
// m is one-to-one for every op but narrow (whose m misses the rest of x), so no two
// output elements add into the same input element.
#include "ops/shape.hpp"

#include <algorithm>
#include <numeric>

#include "autodiff/higher_order.hpp"
#include "autodiff/parallel.hpp"
#include "ops/shape_check.hpp"

namespace ad {

namespace {

std::size_t product(const Shape& s) {
  return std::accumulate(s.begin(), s.end(), std::size_t{1}, std::multiplies<>());
}

// y = x permuted by dims, walked in y's row-major order: f(i, j) for y[i] = x[j].
template <class F>
void permute_walk(const Shape& x_shape, std::span<const std::size_t> dims, F f) {
  const std::size_t rank = x_shape.size();
  if (rank == 0) return f(0, 0);
  std::vector<std::size_t> x_stride(rank), y_dims(rank), stride(rank), idx(rank, 0);
  for (std::size_t k = rank, s = 1; k-- > 0; s *= x_shape[k]) x_stride[k] = s;
  for (std::size_t k = 0; k < rank; ++k) {
    y_dims[k] = x_shape[dims[k]];
    stride[k] = x_stride[dims[k]];  // x's step for one step along y's axis k
  }
  const std::size_t total = product(x_shape), inner = y_dims[rank - 1], step = stride[rank - 1];
  std::size_t j = 0;  // x's offset of y's element i
  for (std::size_t i = 0; i < total; i += inner) {
    for (std::size_t k = 0; k < inner; ++k) f(i + k, j + k * step);
    for (std::size_t a = rank - 1; a-- > 0;) {  // the next row: odometer over y's outer axes
      j += stride[a];
      if (++idx[a] < y_dims[a]) break;
      j -= stride[a] * y_dims[a];
      idx[a] = 0;
    }
  }
}

// The block [offset, offset + len) along `axis` of a tensor of shape `whole`, and that
// block as a tensor of its own (shape `whole` with len on the axis), both row-major, as
// contiguous runs: f(offset in whole, offset in block, run length).
template <class F>
void for_each_run(const Shape& whole, std::size_t axis, std::size_t offset, std::size_t len, F f) {
  std::size_t outer = 1, inner = 1;
  for (std::size_t k = 0; k < axis; ++k) outer *= whole[k];
  for (std::size_t k = axis + 1; k < whole.size(); ++k) inner *= whole[k];
  if (len * inner == 0) return;
  for (std::size_t o = 0; o < outer; ++o) f((o * whole[axis] + offset) * inner, o * len * inner, len * inner);
}

}  // namespace

// ---- reshape ----

template <class T> void reshape_forward(const Tensor<T>& x, Tensor<T>& y) {
  parallel_copy(x.data(), x.size(), y.data());
}

// dx[i] += g[i]: the same row-major element in x's shape.
template <class T> void reshape_vjp(const Tensor<T>& grad_out, Tensor<T>* grad_x, bool overwrite) {
  if (!grad_x) return;
  const T* g = grad_out.data();
  T* gx = grad_x->data();
  if (overwrite) return parallel_copy(g, grad_out.size(), gx);
  for_each_index(grad_out.size(), [=](std::size_t i) { gx[i] += g[i]; });
}

namespace {
// The result shape of reshaping x to `shape` (-1 inferred), with the rules checked.
Shape reshape_output_shape(const Shape& x, const std::vector<int64_t>& shape) {
  if (shape.size() > kMaxShapeRank)
    shape_error("reshape", "shape {} has rank {}; at most {} axes", shape_str(shape), shape.size(), kMaxShapeRank);
  const std::size_t n = product(x);
  std::size_t known = 1, inferred = shape.size();
  for (std::size_t k = 0; k < shape.size(); ++k) {
    if (shape[k] == -1) {
      if (inferred != shape.size())
        shape_error("reshape", "shape {} has more than one -1; at most one size is inferred", shape_str(shape));
      inferred = k;
    } else if (shape[k] < 0) {
      shape_error("reshape", "shape {} has size {} at axis {}; sizes are >= 0, or -1 for the one inferred",
                  shape_str(shape), shape[k], k);
    } else {
      const auto d = static_cast<std::size_t>(shape[k]);
      // Sizes that fit the node's attributes, and a product that cannot wrap around.
      if (d > UINT32_MAX || (d != 0 && known > kMaxOutputElements / d))
        shape_error("reshape", "shape {} is too large (a size over 2^32 - 1, or more than 2^60 elements)",
                    shape_str(shape));
      known *= d;
    }
  }
  Shape out(shape.begin(), shape.end());
  if (inferred < shape.size()) {
    if (known == 0)
      shape_error("reshape", "input {} cannot be reshaped to {}: with another size 0 the -1 could be any size",
                  shape_str(x), shape_str(shape));
    if (n % known != 0)
      shape_error("reshape", "input {} of {} elements cannot be reshaped to {}: {} is not a multiple of {}",
                  shape_str(x), n, shape_str(shape), n, known);
    out[inferred] = n / known;
  } else if (known != n) {
    shape_error("reshape", "input {} of {} elements cannot be reshaped to {} of {}; the sizes must hold every element",
                shape_str(x), n, shape_str(shape), known);
  }
  if (inferred < out.size() && out[inferred] > UINT32_MAX)  // the other sizes were checked above
    shape_error("reshape", "result {} has a size over 2^32 - 1", shape_str(out));
  return out;
}
}  // namespace

template <class T> Value reshape(Tape<T>& tape, Value x, const std::vector<int64_t>& shape, std::source_location loc) {
  const Shape out = reshape_output_shape(tape.shape(x), shape);
  ReshapeAttrs a;
  a.rank = static_cast<uint32_t>(out.size());
  for (std::size_t k = 0; k < out.size(); ++k) a.shape[k] = static_cast<uint32_t>(out[k]);
  Value y = tape.new_value(out, tape.any_requires_grad({x}));
  reshape_forward(tape.value(x), tape.mutable_value(y));
  tape.record(OpKind::Reshape, {x}, y, Attrs::of(a), loc);
  return y;
}

// ---- permute and transpose ----

template <class T> void permute_forward(const Tensor<T>& x, std::span<const std::size_t> dims, Tensor<T>& y) {
  const T* xp = x.data();
  T* yp = y.data();
  permute_walk(to_shape(x.shape()), dims, [=](std::size_t i, std::size_t j) { yp[i] = xp[j]; });
}

// dx[j] += g[i] for y[i] = x[j]
template <class T>
void permute_vjp(const Tensor<T>& grad_out, std::span<const std::size_t> dims, Tensor<T>* grad_x) {
  if (!grad_x) return;
  const T* g = grad_out.data();
  T* gx = grad_x->data();
  permute_walk(to_shape(grad_x->shape()), dims, [=](std::size_t i, std::size_t j) { gx[j] += g[i]; });
}

namespace {
// x's shape permuted: y.shape[k] = x.shape[dims[k]].
Shape permuted(const Shape& x, std::span<const std::size_t> dims) {
  Shape y(x.size());
  for (std::size_t k = 0; k < x.size(); ++k) y[k] = x[dims[k]];
  return y;
}

// Records y = x permuted by dims (checked) as `op` with `attrs`.
template <class T>
Value record_permute(Tape<T>& tape, OpId op, Value x, std::span<const std::size_t> dims, const Attrs& attrs,
                     std::source_location loc) {
  Value y = tape.new_value(permuted(tape.shape(x), dims), tape.any_requires_grad({x}));
  permute_forward(tape.value(x), dims, tape.mutable_value(y));
  tape.record(op, {x}, y, attrs, loc);
  return y;
}
}  // namespace

template <class T> Value permute(Tape<T>& tape, Value x, const std::vector<int>& dims, std::source_location loc) {
  const Shape xs = tape.shape(x);
  if (xs.size() > kMaxShapeRank)
    shape_error("permute", "input {} has rank {}; at most {} axes", shape_str(xs), xs.size(), kMaxShapeRank);
  if (dims.size() != xs.size())
    shape_error("permute", "dims {} must list each of input {}'s {} axes once, not {} axes", shape_str(dims),
                shape_str(xs), xs.size(), dims.size());
  std::vector<std::size_t> d(dims.size());
  std::vector<bool> seen(dims.size(), false);
  PermuteAttrs a;
  a.rank = static_cast<uint32_t>(dims.size());
  for (std::size_t k = 0; k < dims.size(); ++k) {
    d[k] = normalize_axis("permute", "dim", dims[k], "input", xs);
    if (seen[d[k]]) shape_error("permute", "dims {} name axis {} of input {} twice", shape_str(dims), d[k], shape_str(xs));
    seen[d[k]] = true;
    a.dims[k] = static_cast<int32_t>(d[k]);
  }
  return record_permute(tape, OpKind::Permute, x, d, Attrs::of(a), loc);
}

namespace {
// The permutation of `rank` axes that swaps dim0 and dim1.
std::vector<std::size_t> swap_permutation(std::size_t rank, std::size_t dim0, std::size_t dim1) {
  std::vector<std::size_t> d(rank);
  std::iota(d.begin(), d.end(), std::size_t{0});
  std::swap(d[dim0], d[dim1]);
  return d;
}
}  // namespace

template <class T> Value transpose(Tape<T>& tape, Value x, int dim0, int dim1, std::source_location loc) {
  const Shape xs = tape.shape(x);
  const std::size_t d0 = normalize_axis("transpose", "dim0", dim0, "input", xs);
  const std::size_t d1 = normalize_axis("transpose", "dim1", dim1, "input", xs);
  const TransposeAttrs a{static_cast<int32_t>(d0), static_cast<int32_t>(d1)};
  return record_permute(tape, OpKind::Transpose, x, swap_permutation(xs.size(), d0, d1), Attrs::of(a), loc);
}

// ---- concat ----

template <class T> void concat_forward(std::span<const Tensor<T>* const> xs, std::size_t axis, Tensor<T>& y) {
  const Shape ys = to_shape(y.shape());
  std::size_t offset = 0;
  for (const Tensor<T>* x : xs) {
    const std::size_t len = x->shape()[axis];
    const T* xp = x->data();
    T* yp = y.data();
    // y[.., offset + k, ..] = x[.., k, ..]
    for_each_run(ys, axis, offset, len, [=](std::size_t iy, std::size_t ix, std::size_t n) {
      std::copy(xp + ix, xp + ix + n, yp + iy);
    });
    offset += len;
  }
}

// dx_k[.., k', ..] += g[.., off_k + k', ..]
template <class T>
void concat_vjp(const Tensor<T>& grad_out, std::size_t axis, std::span<const std::size_t> sizes,
                std::span<Tensor<T>* const> grad_xs) {
  const Shape gs = to_shape(grad_out.shape());
  std::size_t offset = 0;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    if (Tensor<T>* gx = grad_xs[k]) {
      const T* g = grad_out.data();
      T* gxp = gx->data();
      for_each_run(gs, axis, offset, sizes[k], [=](std::size_t ig, std::size_t ix, std::size_t n) {
        for (std::size_t e = 0; e < n; ++e) gxp[ix + e] += g[ig + e];
      });
    }
    offset += sizes[k];
  }
}

template <class T> Value concat(Tape<T>& tape, std::span<const Value> xs, int axis, std::source_location loc) {
  if (xs.empty()) shape_error("concat", "no inputs; concat needs at least one");
  const Shape first = tape.shape(xs[0]);
  const std::size_t ax = normalize_axis("concat", "axis", axis, "input 0", first);
  Shape out = first;
  out[ax] = 0;
  bool requires_grad = false;
  std::vector<const Tensor<T>*> values;
  for (std::size_t k = 0; k < xs.size(); ++k) {
    const Shape s = tape.shape(xs[k]);
    if (s.size() != first.size())
      shape_error("concat", "input 0 {} and input {} {} differ in rank ({} vs {}); all inputs must have the same rank",
                  shape_str(first), k, shape_str(s), first.size(), s.size());
    for (std::size_t d = 0; d < s.size(); ++d)
      if (d != ax && s[d] != first[d])
        shape_error("concat",
                    "input 0 {} and input {} {} disagree on axis {} ({} vs {}); all inputs must have the same sizes "
                    "except along the concat axis {}",
                    shape_str(first), k, shape_str(s), d, first[d], s[d], ax);
    out[ax] += s[ax];
    requires_grad = requires_grad || tape.requires_grad(xs[k]);
    values.push_back(&tape.value(xs[k]));
  }
  Value y = tape.new_value(out, requires_grad);
  concat_forward<T>(values, ax, tape.mutable_value(y));
  tape.record(OpKind::Concat, xs, y, Attrs::of(ConcatAttrs{static_cast<int32_t>(ax)}), loc);
  return y;
}

// ---- narrow, split, chunk ----

template <class T> void narrow_forward(const Tensor<T>& x, std::size_t axis, std::size_t start, Tensor<T>& y) {
  const T* xp = x.data();
  T* yp = y.data();
  // y[.., k, ..] = x[.., start + k, ..]
  for_each_run(to_shape(x.shape()), axis, start, y.shape()[axis], [=](std::size_t ix, std::size_t iy, std::size_t n) {
    std::copy(xp + ix, xp + ix + n, yp + iy);
  });
}

// dx[.., start + k, ..] += g[.., k, ..]
template <class T>
void narrow_vjp(const Tensor<T>& grad_out, std::size_t axis, std::size_t start, Tensor<T>* grad_x) {
  if (!grad_x) return;
  const T* g = grad_out.data();
  T* gx = grad_x->data();
  for_each_run(to_shape(grad_x->shape()), axis, start, grad_out.shape()[axis],
               [=](std::size_t ix, std::size_t ig, std::size_t n) {
                 for (std::size_t e = 0; e < n; ++e) gx[ix + e] += g[ig + e];
               });
}

template <class T>
Value narrow(Tape<T>& tape, Value x, int axis, std::size_t start, std::size_t length, std::source_location loc) {
  const Shape xs = tape.shape(x);
  const std::size_t ax = normalize_axis("narrow", "axis", axis, "input", xs);
  if (start > xs[ax] || length > xs[ax] - start)
    shape_error("narrow", "elements [{}, {} + {}) are not within axis {} of input {} (size {})", start, start, length,
                ax, shape_str(xs), xs[ax]);
  Shape out = xs;
  out[ax] = length;
  Value y = tape.new_value(out, tape.any_requires_grad({x}));
  narrow_forward(tape.value(x), ax, start, tape.mutable_value(y));
  tape.record(OpKind::Narrow, {x}, y, Attrs::of(NarrowAttrs{static_cast<int32_t>(ax), start, length}), loc);
  return y;
}

namespace {
// One narrow node per piece, consecutive along the axis.
template <class T>
std::vector<Value> narrow_pieces(Tape<T>& tape, Value x, int axis, const std::vector<std::size_t>& sizes,
                                 std::source_location loc) {
  std::vector<Value> pieces;
  std::size_t start = 0;
  for (std::size_t len : sizes) {
    pieces.push_back(narrow(tape, x, axis, start, len, loc));
    start += len;
  }
  return pieces;
}
}  // namespace

template <class T>
std::vector<Value> split(Tape<T>& tape, Value x, const std::vector<std::size_t>& sizes, int axis,
                         std::source_location loc) {
  const Shape xs = tape.shape(x);
  const std::size_t ax = normalize_axis("split", "axis", axis, "input", xs);
  const std::size_t total = std::accumulate(sizes.begin(), sizes.end(), std::size_t{0});
  if (total != xs[ax])
    shape_error("split", "sizes {} sum to {}, not to input {}'s size {} along axis {}; they must cover it exactly",
                shape_str(sizes), total, shape_str(xs), xs[ax], ax);
  return narrow_pieces(tape, x, axis, sizes, loc);
}

template <class T>
std::vector<Value> chunk(Tape<T>& tape, Value x, std::size_t chunks, int axis, std::source_location loc) {
  const Shape xs = tape.shape(x);
  const std::size_t ax = normalize_axis("chunk", "axis", axis, "input", xs);
  if (chunks == 0) shape_error("chunk", "chunks must be >= 1, not 0");
  const std::size_t d = xs[ax];
  // torch.chunk: pieces of ceil(d / chunks); an empty axis gives `chunks` empty pieces.
  std::vector<std::size_t> sizes(d == 0 ? chunks : 0, 0);
  for (std::size_t start = 0, step = d / chunks + (d % chunks != 0); start < d; start += step)
    sizes.push_back(std::min(step, d - start));
  return narrow_pieces(tape, x, axis, sizes, loc);
}

// ---- the registry entries (autodiff/op.hpp) ----

namespace {

std::vector<std::size_t> permute_dims(const PermuteAttrs& a) { return {a.dims.begin(), a.dims.begin() + a.rank}; }

template <class T> void reshape_node_vjp(Tape<T>* tape, const Node<T>& node) {
  bool overwrite = false;
  Tensor<T>* gx = tape->input_grad_for_overwrite(node, 0, &overwrite);
  reshape_vjp(tape->grad_out(node), gx, overwrite);
}
template <class T> void permute_node_vjp(Tape<T>* tape, const Node<T>& node) {
  permute_vjp(tape->grad_out(node), permute_dims(attrs_as<PermuteAttrs>(node.attrs)), tape->input_grad(node, 0));
}
template <class T> void transpose_node_vjp(Tape<T>* tape, const Node<T>& node) {
  const auto a = attrs_as<TransposeAttrs>(node.attrs);
  const std::size_t rank = tape->input_value(node, 0).dimension();
  permute_vjp(tape->grad_out(node), swap_permutation(rank, a.dim0, a.dim1), tape->input_grad(node, 0));
}
template <class T> void concat_node_vjp(Tape<T>* tape, const Node<T>& node) {
  const std::size_t axis = static_cast<std::size_t>(attrs_as<ConcatAttrs>(node.attrs).axis);
  std::vector<std::size_t> sizes;
  std::vector<Tensor<T>*> grads;
  for (std::size_t k = 0; k < node.inputs.size(); ++k) {
    sizes.push_back(tape->input_value(node, k).shape()[axis]);
    grads.push_back(tape->input_grad(node, k));
  }
  concat_vjp(tape->grad_out(node), axis, std::span<const std::size_t>(sizes), std::span<Tensor<T>* const>(grads));
}
template <class T> void narrow_node_vjp(Tape<T>* tape, const Node<T>& node) {
  const auto a = attrs_as<NarrowAttrs>(node.attrs);
  narrow_vjp(tape->grad_out(node), static_cast<std::size_t>(a.axis), a.start, tape->input_grad(node, 0));
}

// ---- recorded VJPs (higher-order gradients): the moves above, undone by the same ops ----
// reshape: gx = reshape(g, x's shape).  permute: gx = permute(g, inverse dims).
// transpose: gx = transpose(g, same axes).  concat: gx_k = narrow(g, axis, offset_k, size_k).
// narrow: gx = concat(zeros (start), g, zeros (rest)) along the axis (zeros: constants).
template <class T> void reshape_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const Shape xs = t.shape(node_input(t, n, 0));
  gi[0] = reshape(t, g, std::vector<int64_t>(xs.begin(), xs.end()));
}
template <class T> void permute_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const auto a = attrs_as<PermuteAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs);
  std::vector<int> inverse(a.rank);
  for (uint32_t k = 0; k < a.rank; ++k) inverse[static_cast<std::size_t>(a.dims[k])] = static_cast<int>(k);
  gi[0] = permute(t, g, inverse);
}
template <class T> void transpose_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const auto a = attrs_as<TransposeAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs);
  gi[0] = transpose(t, g, a.dim0, a.dim1);
}
template <class T> void concat_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  const int axis = attrs_as<ConcatAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs).axis;
  const std::size_t count = t.nodes()[static_cast<std::size_t>(n)].inputs.size();
  std::size_t offset = 0;
  for (std::size_t k = 0; k < count; ++k) {
    const std::size_t size = t.shape(node_input(t, n, k))[static_cast<std::size_t>(axis)];
    if (k >= 32 || wants(want, k)) gi[k] = narrow(t, g, axis, offset, size);
    offset += size;
  }
}
template <class T> void narrow_record_vjp(Tape<T>& t, int32_t n, Value g, uint32_t want, std::span<Value> gi) {
  if (!wants(want, 0)) return;
  const auto a = attrs_as<NarrowAttrs>(t.nodes()[static_cast<std::size_t>(n)].attrs);
  const Shape xs = t.shape(node_input(t, n, 0));
  const auto axis = static_cast<std::size_t>(a.axis);
  std::vector<Value> parts;
  Shape before = xs, after = xs;
  before[axis] = a.start;
  after[axis] = xs[axis] - a.start - a.length;
  if (before[axis] > 0) parts.push_back(t.input(Tensor<T>(xt::zeros<T>(before)), "narrow grad zeros"));
  parts.push_back(g);
  if (after[axis] > 0) parts.push_back(t.input(Tensor<T>(xt::zeros<T>(after)), "narrow grad zeros"));
  gi[0] = parts.size() == 1 ? g : concat(t, std::span<const Value>(parts), a.axis);
}

Value reshape_replay(Tape<double>& t, const ReplayArgs& r) {
  const auto a = r.attrs.get<ReshapeAttrs>();
  return reshape(t, r.inputs[0], std::vector<int64_t>(a.shape.begin(), a.shape.begin() + a.rank));
}
Value permute_replay(Tape<double>& t, const ReplayArgs& r) {
  const auto a = r.attrs.get<PermuteAttrs>();
  return permute(t, r.inputs[0], std::vector<int>(a.dims.begin(), a.dims.begin() + a.rank));
}
Value transpose_replay(Tape<double>& t, const ReplayArgs& r) {
  const auto a = r.attrs.get<TransposeAttrs>();
  return transpose(t, r.inputs[0], a.dim0, a.dim1);
}
Value concat_replay(Tape<double>& t, const ReplayArgs& r) {
  return concat(t, r.inputs, r.attrs.get<ConcatAttrs>().axis);
}
Value narrow_replay(Tape<double>& t, const ReplayArgs& r) {
  const auto a = r.attrs.get<NarrowAttrs>();
  return narrow(t, r.inputs[0], a.axis, a.start, a.length);
}

std::string reshape_format(const Attrs& attrs, std::span<const int32_t>) {
  const auto a = attrs.get<ReshapeAttrs>();
  return fmt::format("shape={}", shape_str(std::span<const uint32_t>(a.shape.data(), a.rank)));
}
std::string permute_format(const Attrs& attrs, std::span<const int32_t>) {
  const auto a = attrs.get<PermuteAttrs>();
  return fmt::format("dims={}", shape_str(std::span<const int32_t>(a.dims.data(), a.rank)));
}
std::string transpose_format(const Attrs& attrs, std::span<const int32_t>) {
  const auto a = attrs.get<TransposeAttrs>();
  return fmt::format("dims={},{}", a.dim0, a.dim1);
}
std::string concat_format(const Attrs& attrs, std::span<const int32_t>) {
  return fmt::format("axis={}", attrs.get<ConcatAttrs>().axis);
}
std::string narrow_format(const Attrs& attrs, std::span<const int32_t>) {
  const auto a = attrs.get<NarrowAttrs>();
  return fmt::format("axis={} start={} length={}", a.axis, a.start, a.length);
}

}  // namespace

constinit const OpDef reshape_op{.name = "reshape", .vjp_float = reshape_node_vjp<float>,
                                 .vjp_double = reshape_node_vjp<double>, .replay = reshape_replay,
                                 .format_attrs = reshape_format,
    .record_vjp_float = reshape_record_vjp<float>, .record_vjp_double = reshape_record_vjp<double>};
constinit const OpDef permute_op{.name = "permute", .vjp_float = permute_node_vjp<float>,
                                 .vjp_double = permute_node_vjp<double>, .replay = permute_replay,
                                 .format_attrs = permute_format,
    .record_vjp_float = permute_record_vjp<float>, .record_vjp_double = permute_record_vjp<double>};
constinit const OpDef transpose_op{.name = "transpose", .vjp_float = transpose_node_vjp<float>,
                                   .vjp_double = transpose_node_vjp<double>, .replay = transpose_replay,
                                   .format_attrs = transpose_format,
    .record_vjp_float = transpose_record_vjp<float>, .record_vjp_double = transpose_record_vjp<double>};
constinit const OpDef concat_op{.name = "concat", .vjp_float = concat_node_vjp<float>,
                                .vjp_double = concat_node_vjp<double>, .replay = concat_replay,
                                .format_attrs = concat_format,
    .record_vjp_float = concat_record_vjp<float>, .record_vjp_double = concat_record_vjp<double>};
constinit const OpDef narrow_op{.name = "narrow", .vjp_float = narrow_node_vjp<float>,
                                .vjp_double = narrow_node_vjp<double>, .replay = narrow_replay,
                                .format_attrs = narrow_format,
    .record_vjp_float = narrow_record_vjp<float>, .record_vjp_double = narrow_record_vjp<double>};
AD_REGISTER_OP(reshape_op);
AD_REGISTER_OP(permute_op);
AD_REGISTER_OP(transpose_op);
AD_REGISTER_OP(concat_op);
AD_REGISTER_OP(narrow_op);

#define AD_INSTANTIATE(T)                                                                                         \
  template void reshape_forward<T>(const Tensor<T>&, Tensor<T>&);                                                \
  template void reshape_vjp<T>(const Tensor<T>&, Tensor<T>*, bool);                                                    \
  template void permute_forward<T>(const Tensor<T>&, std::span<const std::size_t>, Tensor<T>&);                  \
  template void permute_vjp<T>(const Tensor<T>&, std::span<const std::size_t>, Tensor<T>*);                      \
  template void concat_forward<T>(std::span<const Tensor<T>* const>, std::size_t, Tensor<T>&);                   \
  template void concat_vjp<T>(const Tensor<T>&, std::size_t, std::span<const std::size_t>,                       \
                              std::span<Tensor<T>* const>);                                                      \
  template void narrow_forward<T>(const Tensor<T>&, std::size_t, std::size_t, Tensor<T>&);                       \
  template void narrow_vjp<T>(const Tensor<T>&, std::size_t, std::size_t, Tensor<T>*);                           \
  template Value reshape<T>(Tape<T>&, Value, const std::vector<int64_t>&, std::source_location);                 \
  template Value permute<T>(Tape<T>&, Value, const std::vector<int>&, std::source_location);                     \
  template Value transpose<T>(Tape<T>&, Value, int, int, std::source_location);                                  \
  template Value concat<T>(Tape<T>&, std::span<const Value>, int, std::source_location);                         \
  template Value narrow<T>(Tape<T>&, Value, int, std::size_t, std::size_t, std::source_location);                \
  template std::vector<Value> split<T>(Tape<T>&, Value, const std::vector<std::size_t>&, int, std::source_location); \
  template std::vector<Value> chunk<T>(Tape<T>&, Value, std::size_t, int, std::source_location);
AD_INSTANTIATE(float)
AD_INSTANTIATE(double)
#undef AD_INSTANTIATE

}  // namespace ad
