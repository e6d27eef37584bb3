// Flatten: the channel-major row-major order, VJP, errors.
#include "test_util.hpp"

namespace ad::test::test_flatten {
namespace {

TEST(Flatten, OrdersChannelBlocksThenRowsThenColumns) {
  Tape<double> t;
  T64 x = xt::zeros<double>({2, 3, 2, 4});
  for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = static_cast<double>(i);
  const Value y = flatten(t, t.input(x));
  ASSERT_EQ(t.shape(y), (Shape{2, 24}));
  // y[n, (c*H + h)*W + w] = x[n,c,h,w]: channel c's block starts at c*H*W
  EXPECT_EQ(t.value(y)(1, (2 * 2 + 1) * 4 + 3), x(1, 2, 1, 3));
  EXPECT_EQ(t.value(y)(0, 8), x(0, 1, 0, 0));
}

TEST(Flatten, VjpMatchesFiniteDifferences) {
  auto f = [](Tape<double>& t, const std::vector<Value>& v) { return flatten(t, v[0]); };
  EXPECT_GRADCHECK(f, std::vector<T64>{uniform({2, 3, 4, 5}, 1)}, std::vector<std::string>{"x"});
  auto g = [](Tape<double>& t, const std::vector<Value>& v) { return add(t, flatten(t, v[0]), flatten(t, v[0])); };
  EXPECT_GRADCHECK(g, std::vector<T64>{uniform({3, 2, 2}, 2)}, std::vector<std::string>{"x"});
}

TEST(Flatten, RejectsRankOne) {
  Tape<double> t;
  EXPECT_TRUE(throws_shape_error([&] { flatten(t, t.input(uniform({5}, 1))); }, {"flatten", "input (5)", "rank >= 2"}));
}

}  // namespace
}  // namespace ad::test::test_flatten
