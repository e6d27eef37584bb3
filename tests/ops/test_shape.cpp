// Shape ops (reshape, permute, transpose, concat, narrow, split, chunk): where each
// element goes, VJPs against finite differences, fan-out, errors, NaN, empty batches,
// the per-node check and printing.
#include <xtensor/xbuilder.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xview.hpp>

#include <cmath>
#include <limits>
#include <set>

#include "test_util.hpp"

namespace ad::test::test_shape {
namespace {

// 0, 1, 2, ... in row-major order: every element says where it came from.
T64 iota(const Shape& s) {
  T64 t(s);
  for (std::size_t i = 0; i < t.size(); ++i) t.data()[i] = static_cast<double>(i);
  return t;
}

void expect_gradcheck_1(const std::function<Value(Tape<double>&, Value)>& op, const T64& x) {
  auto f = [&](Tape<double>& t, const std::vector<Value>& v) { return op(t, v[0]); };
  EXPECT_GRADCHECK(f, std::vector<T64>{x}, std::vector<std::string>{"x"});
  // fan-out: the op's input used twice, by the op and by a second path through it
  auto g = [&](Tape<double>& t, const std::vector<Value>& v) {
    const Value y = op(t, v[0]);
    return add(t, y, op(t, scale(t, v[0], 3.0)));
  };
  EXPECT_GRADCHECK(g, std::vector<T64>{x}, std::vector<std::string>{"x"});
}

// ---------------------------------------------------------------- reshape

TEST(Reshape, KeepsRowMajorOrderAndInfersOneSize) {
  Tape<double> t;
  const T64 x = iota({2, 3, 4});
  const Value y = reshape(t, t.input(x), {4, -1});
  EXPECT_EQ(t.shape(y), (Shape{4, 6}));
  EXPECT_EQ(t.value(y), T64(xt::reshape_view(x, {4, 6})));
  EXPECT_EQ(t.shape(reshape(t, y, {-1})), (Shape{24}));
  EXPECT_EQ(t.shape(reshape(t, t.input(T64(5.0)), {1, 1})), (Shape{1, 1}));
  EXPECT_EQ(t.shape(reshape(t, t.input(T64(Shape{1, 1})), {})), (Shape{}));
  EXPECT_EQ(t.shape(reshape(t, t.input(T64(Shape{0, 3, 4})), {-1, 12})), (Shape{0, 12}));  // an empty batch
}

TEST(Reshape, VjpMatchesFiniteDifferences) {
  expect_gradcheck_1([](Tape<double>& t, Value x) { return reshape(t, x, {3, -1, 2}); }, uniform({2, 3, 4}, 1));
}

TEST(Reshape, RefusesSizesThatDoNotHoldTheElements) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 3}, 1));
  EXPECT_TRUE(throws_shape_error([&] { reshape(t, x, {4, -1}); },
                                 {"reshape: input (2,3) of 6 elements cannot be reshaped to (4,-1)", "not a multiple of 4"}));
  EXPECT_TRUE(throws_shape_error([&] { reshape(t, x, {4, 2}); },
                                 {"reshape: input (2,3) of 6 elements cannot be reshaped to (4,2) of 8"}));
  EXPECT_TRUE(throws_shape_error([&] { reshape(t, x, {-1, -1}); }, {"reshape: shape (-1,-1) has more than one -1"}));
  EXPECT_TRUE(throws_shape_error([&] { reshape(t, x, {-2, -3}); }, {"reshape: shape (-2,-3) has size -2 at axis 0"}));
  EXPECT_TRUE(throws_shape_error([&] { reshape(t, t.input(T64(Shape{0, 3})), {0, -1}); },
                                 {"reshape: input (0,3) cannot be reshaped to (0,-1)", "the -1 could be any size"}));
  EXPECT_TRUE(throws_shape_error([&] { reshape(t, x, {1, 1, 1, 1, 2, 3, 1}); }, {"reshape", "rank 7", "at most 6"}));
  // 65536^4 = 2^64 wraps to 0 in 64 bits: refused, not taken for an empty tensor's shape.
  EXPECT_TRUE(throws_shape_error([&] { reshape(t, t.input(T64(Shape{0})), {65536, 65536, 65536, 65536}); },
                                 {"reshape", "too large"}));
}

// ---------------------------------------------------------------- permute, transpose

TEST(Permute, MovesAxesAsXtensorsTranspose) {
  Tape<double> t;
  const T64 x = iota({2, 3, 4, 5});
  const Value y = permute(t, t.input(x), {2, 0, 3, 1});
  EXPECT_EQ(t.shape(y), (Shape{4, 2, 5, 3}));
  EXPECT_EQ(t.value(y), T64(xt::transpose(x, {2, 0, 3, 1})));
  EXPECT_EQ(t.value(permute(t, t.input(x), {-1, 1, 0, -2})), T64(xt::transpose(x, {3, 1, 0, 2})));
  const T64 x6 = iota({2, 1, 3, 2, 1, 2});
  EXPECT_EQ(t.value(permute(t, t.input(x6), {5, 3, 1, 0, 4, 2})), T64(xt::transpose(x6, {5, 3, 1, 0, 4, 2})));
  EXPECT_EQ(t.value(permute(t, t.input(T64(7.0)), {})), T64(7.0));
}

TEST(Permute, VjpMatchesFiniteDifferences) {
  expect_gradcheck_1([](Tape<double>& t, Value x) { return permute(t, x, {1, 3, 0, 2}); }, uniform({2, 3, 2, 4}, 1));
  expect_gradcheck_1([](Tape<double>& t, Value x) { return permute(t, x, {1, 0}); }, uniform({3, 5}, 2));
}

TEST(Permute, RefusesAnythingButAPermutationOfTheAxes) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 3, 4}, 1));
  EXPECT_TRUE(throws_shape_error([&] { permute(t, x, {1, 0}); },
                                 {"permute: dims (1,0) must list each of input (2,3,4)'s 3 axes once, not 2 axes"}));
  EXPECT_TRUE(throws_shape_error([&] { permute(t, x, {0, 2, -1}); }, {"permute: dims (0,2,-1) name axis 2 of input (2,3,4) twice"}));
  EXPECT_TRUE(throws_shape_error([&] { permute(t, x, {0, 1, 3}); },
                                 {"permute: dim 3 is out of range for input (2,3,4) of rank 3 (allowed: -3 to 2)"}));
  EXPECT_TRUE(throws_shape_error([&] { permute(t, t.input(T64(Shape{1, 1, 1, 1, 1, 1, 1})), {0, 1, 2, 3, 4, 5, 6}); },
                                 {"permute: input (1,1,1,1,1,1,1) has rank 7; at most 6 axes"}));
}

TEST(Transpose, SwapsTwoAxesOfAnyRank) {
  Tape<double> t;
  const T64 x = iota({2, 3, 4});
  EXPECT_EQ(t.value(transpose(t, t.input(x), 0, -1)), T64(xt::transpose(x, {2, 1, 0})));
  EXPECT_EQ(t.value(transpose(t, t.input(x), 1, 1)), x);
  const T64 x7 = iota({2, 1, 1, 1, 1, 1, 3});
  EXPECT_EQ(t.value(transpose(t, t.input(x7), 0, 6)), T64(xt::transpose(x7, {6, 1, 2, 3, 4, 5, 0})));
  EXPECT_TRUE(throws_shape_error([&] { transpose(t, t.input(x), 0, 3); },
                                 {"transpose: dim1 3 is out of range for input (2,3,4) of rank 3"}));
  EXPECT_TRUE(throws_shape_error([&] { transpose(t, t.input(T64(1.0)), 0, 0); },
                                 {"transpose: input () has rank 0: it has no axis for dim0 0"}));
}

TEST(Transpose, VjpMatchesFiniteDifferences) {
  expect_gradcheck_1([](Tape<double>& t, Value x) { return transpose(t, x, -3, 2); }, uniform({2, 3, 4}, 1));
}

// ---------------------------------------------------------------- concat

TEST(Concat, JoinsAlongAnyAxis) {
  Tape<double> t;
  const T64 a = iota({2, 1, 3}), b = iota({2, 4, 3}) + 100.0;
  for (int axis : {1, -2}) {
    const Value y = concat(t, {t.input(a), t.input(b)}, axis);
    EXPECT_EQ(t.value(y), T64(xt::concatenate(xt::xtuple(a, b), 1)));
  }
  const T64 c = iota({3, 1, 3}) + 200.0;
  EXPECT_EQ(t.value(concat(t, {t.input(a), t.input(c)})), T64(xt::concatenate(xt::xtuple(a, c), 0)));
  const T64 d = iota({2, 1, 2});
  EXPECT_EQ(t.value(concat(t, {t.input(a), t.input(d)}, -1)), T64(xt::concatenate(xt::xtuple(a, d), 2)));
  // A zero-size input is allowed and adds nothing.
  EXPECT_EQ(t.value(concat(t, {t.input(T64(Shape{2, 0, 3})), t.input(a)}, 1)), a);
}

TEST(Concat, TakesAnyNumberOfInputsAndTheirVjpsMatchFiniteDifferences) {
  // Five inputs (more than the four named in the op's table), one of them a constant.
  auto f = [](Tape<double>& t, const std::vector<Value>& v) {
    const std::vector<Value> parts = {v[0], v[1], t.input(uniform({2, 2, 2}, 9)), v[2], v[3]};
    return concat(t, parts, 1);
  };
  EXPECT_GRADCHECK(f, (std::vector<T64>{uniform({2, 1, 2}, 1), uniform({2, 3, 2}, 2), uniform({2, 2, 2}, 3), uniform({2, 1, 2}, 4)}),
                   (std::vector<std::string>{"a", "b", "c", "d"}));
  // The same value twice in the list: both blocks' gradients add up.
  auto g = [](Tape<double>& t, const std::vector<Value>& v) { return concat(t, {v[0], v[1], v[0]}, 0); };
  EXPECT_GRADCHECK(g, (std::vector<T64>{uniform({1, 3}, 5), uniform({2, 3}, 6)}), (std::vector<std::string>{"a", "b"}));
}

TEST(Concat, RefusesInputsThatDoNotFit) {
  Tape<double> t;
  const Value a = t.input(uniform({2, 3, 4}, 1));
  EXPECT_TRUE(throws_shape_error([&] { concat(t, std::span<const Value>{}, 0); }, {"concat: no inputs"}));
  EXPECT_TRUE(throws_shape_error([&] { concat(t, {a, t.input(uniform({2, 5, 5}, 2))}, 1); },
                                 {"concat: input 0 (2,3,4) and input 1 (2,5,5) disagree on axis 2 (4 vs 5)",
                                  "except along the concat axis 1"}));
  EXPECT_TRUE(throws_shape_error([&] { concat(t, {a, a, t.input(uniform({2, 3}, 3))}, 0); },
                                 {"concat: input 0 (2,3,4) and input 2 (2,3) differ in rank (3 vs 2)"}));
  EXPECT_TRUE(throws_shape_error([&] { concat(t, {a, a}, 3); },
                                 {"concat: axis 3 is out of range for input 0 (2,3,4) of rank 3 (allowed: -3 to 2)"}));
  EXPECT_TRUE(throws_shape_error([&] { concat(t, {t.input(T64(1.0)), t.input(T64(2.0))}, 0); },
                                 {"concat: input 0 () has rank 0"}));
}

// ---------------------------------------------------------------- narrow, split, chunk

TEST(Split, CutsConsecutivePiecesThatConcatJoinsBack) {
  Tape<double> t;
  const T64 x = iota({2, 7, 3});
  const Value xv = t.input(x);
  const std::vector<Value> p = split(t, xv, {2, 0, 4, 1}, 1);
  ASSERT_EQ(p.size(), 4u);
  EXPECT_EQ(t.value(p[0]), T64(xt::view(x, xt::all(), xt::range(0, 2), xt::all())));
  EXPECT_EQ(t.shape(p[1]), (Shape{2, 0, 3}));
  EXPECT_EQ(t.value(p[2]), T64(xt::view(x, xt::all(), xt::range(2, 6), xt::all())));
  EXPECT_EQ(t.value(p[3]), T64(xt::view(x, xt::all(), xt::range(6, 7), xt::all())));
  EXPECT_EQ(t.value(concat(t, p, -2)), x);
  EXPECT_EQ(t.nodes().back().op, OpKind::Concat);
  EXPECT_EQ(t.nodes()[1].op, OpKind::Narrow);  // each piece is a narrow node
  EXPECT_EQ(t.value(narrow(t, xv, -1, 1, 2)), T64(xt::view(x, xt::all(), xt::all(), xt::range(1, 3))));
}

TEST(Chunk, CutsAsTorchChunk) {
  Tape<double> t;
  const auto sizes = [&](const Shape& s, std::size_t chunks) {
    std::vector<std::size_t> r;
    for (Value v : chunk(t, t.input(T64(s)), chunks, 0)) r.push_back(t.shape(v)[0]);
    return r;
  };
  EXPECT_EQ(sizes({6, 2}, 3), (std::vector<std::size_t>{2, 2, 2}));
  EXPECT_EQ(sizes({5, 2}, 3), (std::vector<std::size_t>{2, 2, 1}));
  EXPECT_EQ(sizes({6, 2}, 4), (std::vector<std::size_t>{2, 2, 2}));  // fewer pieces than asked, as torch.chunk
  EXPECT_EQ(sizes({1, 2}, 3), (std::vector<std::size_t>{1}));
  EXPECT_EQ(sizes({0, 2}, 3), (std::vector<std::size_t>{0, 0, 0}));
  EXPECT_TRUE(throws_shape_error([&] { chunk(t, t.input(T64(Shape{4})), 0); }, {"chunk: chunks must be >= 1"}));
}

TEST(Split, VjpsMatchFiniteDifferences) {
  // Pieces used unevenly: the first twice, the last not at all (its gradient is zero).
  auto f = [](Tape<double>& t, const std::vector<Value>& v) {
    const std::vector<Value> p = split(t, v[0], {1, 2, 2}, 2);
    return concat(t, {p[1], p[0], p[0]}, 2);
  };
  EXPECT_GRADCHECK(f, std::vector<T64>{uniform({2, 3, 5}, 1)}, std::vector<std::string>{"x"});
  auto g = [](Tape<double>& t, const std::vector<Value>& v) {
    const std::vector<Value> p = chunk(t, v[0], 2, -1);
    return mul(t, p[0], p[1]);
  };
  EXPECT_GRADCHECK(g, std::vector<T64>{uniform({3, 4}, 2)}, std::vector<std::string>{"x"});
}

TEST(Split, RefusesSizesThatDoNotCoverTheAxis) {
  Tape<double> t;
  const Value x = t.input(uniform({5, 2}, 1));
  EXPECT_TRUE(throws_shape_error([&] { split(t, x, {2, 2}, 0); },
                                 {"split: sizes (2,2) sum to 4, not to input (5,2)'s size 5 along axis 0"}));
  EXPECT_TRUE(throws_shape_error([&] { split(t, x, {1, 1}, 2); }, {"split: axis 2 is out of range for input (5,2)"}));
  EXPECT_TRUE(throws_shape_error([&] { narrow(t, x, 0, 4, 2); },
                                 {"narrow: elements [4, 4 + 2) are not within axis 0 of input (5,2) (size 5)"}));
  EXPECT_TRUE(throws_shape_error([&] { narrow(t, x, 1, 3, 0); }, {"narrow: elements [3, 3 + 0)"}));
  EXPECT_EQ(t.shape(narrow(t, x, 1, 2, 0)), (Shape{5, 0}));  // an empty piece at the end is fine
}

// ---------------------------------------------------------------- all of them

TEST(ShapeOps, NaNMovesWithItsElement) {
  Tape<double> t;
  T64 x = iota({2, 3});
  x(1, 0) = std::numeric_limits<double>::quiet_NaN();
  const Value xv = t.input(x);
  EXPECT_TRUE(std::isnan(t.value(transpose(t, xv, 0, 1))(0, 1)));
  EXPECT_TRUE(std::isnan(t.value(reshape(t, xv, {-1}))(3)));
  EXPECT_TRUE(std::isnan(t.value(concat(t, {xv, xv}, 1))(1, 3)));
  const std::vector<Value> p = split(t, xv, {1, 1}, 0);
  EXPECT_FALSE(std::isnan(xt::amax(t.value(p[0]))()));
  EXPECT_TRUE(std::isnan(t.value(p[1])(0, 0)));
}

TEST(ShapeOps, AnEmptyBatchGivesEmptyResults) {
  Tape<double> t;
  Parameter<double> x("x", T64(Shape{0, 3, 4}));
  const Value xv = t.param(x);
  const Value r = reshape(t, xv, {0, 12});
  const Value p = permute(t, xv, {2, 0, 1});
  const Value c = concat(t, {xv, xv}, 1);
  const std::vector<Value> s = split(t, xv, {1, 2}, 1);
  EXPECT_EQ(t.shape(r), (Shape{0, 12}));
  EXPECT_EQ(t.shape(p), (Shape{4, 0, 3}));
  EXPECT_EQ(t.shape(c), (Shape{0, 6, 4}));
  EXPECT_EQ(t.shape(s[1]), (Shape{0, 2, 4}));
  t.backward(concat(t, {reshape(t, p, {0, 12}), r, reshape(t, c, {0, 24}), reshape(t, s[1], {0, 8})}, 1),
             T64(Shape{0, 56}));
  EXPECT_EQ(x.grad.size(), 0u);
}

TEST(ShapeOps, GradcheckNodesReplaysEveryOneOnAFloatTape) {
  Tape<float> t;
  Parameter<float> x("x", xt::cast<float>(uniform({2, 3, 4}, 1)));
  const Value xv = t.param(x);
  const Value r = reshape(t, xv, {4, -1});                // (4,6)
  const Value tr = transpose(t, r, 0, 1);                  // (6,4)
  const Value pm = permute(t, reshape(t, tr, {2, 3, 4}), {1, 2, 0});  // (3,4,2)
  const std::vector<Value> p = split(t, pm, {1, 2}, 0);    // (1,4,2), (2,4,2)
  const Value y = concat(t, {p[1], p[0], pm}, 0);          // (6,4,2)
  t.backward(sum(t, mul(t, y, y)));
  const NodeGradcheckResult res = gradcheck_nodes(t);
  EXPECT_TRUE(res.ok) << res.report;
  std::set<std::string> ops;
  for (const NodeGradcheck& n : res.nodes) ops.insert(n.op);
  for (const char* op : {"reshape", "transpose", "permute", "narrow", "concat"}) EXPECT_TRUE(ops.count(op)) << op;
}

TEST(ShapeOps, AttributesArePrintedOnTheTape) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 3, 4}, 1));
  reshape(t, x, {4, -1});
  permute(t, x, {2, -3, 1});
  transpose(t, x, 0, -1);
  concat(t, {x, x}, -2);
  split(t, x, {1, 3}, 2);
  const std::string printed = format_tape(t);
  for (const char* line : {"#1 reshape(#0) -> (4,6) shape=(4,6) @", "#2 permute(#0) -> (4,2,3) dims=(2,0,1) @",
                           "#3 transpose(#0) -> (4,3,2) dims=0,2 @", "#4 concat(#0, #0) -> (2,6,4) axis=1 @",
                           "#5 narrow(#0) -> (2,3,1) axis=2 start=0 length=1 @",
                           "#6 narrow(#0) -> (2,3,3) axis=2 start=1 length=3 @"})
    EXPECT_NE(printed.find(line), std::string::npos) << line << "\n" << printed;
}

}  // namespace
}  // namespace ad::test::test_shape
