// global_avg_pool2d: (N,C,H,W) -> (N,C,1,1) plane means; values against avg_pool2d with
// the whole plane as its window, VJP, fan-out, errors, NaN, empty batches, float path.
#include <cmath>
#include <limits>

#include "test_util.hpp"

namespace ad::test::test_global_pool {
namespace {

TEST(GlobalAvgPool2d, IsAnAveragePoolWhoseWindowIsThePlane) {
  Tape<double> t;
  const Value x = t.input(uniform({2, 3, 4, 5}, 1));
  const Value y = global_avg_pool2d(t, x);
  EXPECT_EQ(t.shape(y), (Shape{2, 3, 1, 1}));
  const Value ref = avg_pool2d(t, x, {.window = {4, 5}, .stride = {1, 1}});
  EXPECT_TRUE(all_close(t.value(y), t.value(ref), 1e-15));
}

TEST(GlobalAvgPool2d, VjpMatchesFiniteDifferencesAndFanOutAdds) {
  auto f = [](Tape<double>& t, const std::vector<Value>& v) { return global_avg_pool2d(t, v[0]); };
  EXPECT_GRADCHECK(f, std::vector<T64>{uniform({2, 3, 4, 5}, 1)}, std::vector<std::string>{"x"});
  EXPECT_GRADCHECK(f, std::vector<T64>{uniform({1, 2, 1, 1}, 2)}, std::vector<std::string>{"x"});
  // x feeds the pool and, through mul, its own broadcast scaling: x * gap(x)
  auto g = [](Tape<double>& t, const std::vector<Value>& v) { return mul(t, v[0], global_avg_pool2d(t, v[0])); };
  EXPECT_GRADCHECK(g, std::vector<T64>{uniform({2, 3, 3, 2}, 3)}, std::vector<std::string>{"x"});
}

TEST(GlobalAvgPool2d, RefusesOtherRanksAndEmptyPlanes) {
  Tape<double> t;
  EXPECT_TRUE(throws_shape_error([&] { global_avg_pool2d(t, t.input(uniform({3, 4, 5}, 1))); },
                                 {"global_avg_pool2d", "input (3,4,5)", "rank 4", "(N, C, H, W)", "not rank 3"}));
  EXPECT_TRUE(throws_shape_error([&] { global_avg_pool2d(t, t.input(T64(Shape{2, 3, 0, 4}))); },
                                 {"global_avg_pool2d: input (2,3,0,4) has an empty plane"}));
}

TEST(GlobalAvgPool2d, NaNSpoilsOnlyItsPlaneAndAnEmptyBatchIsEmpty) {
  Tape<double> t;
  T64 x = uniform({2, 2, 3, 3}, 1);
  x(1, 0, 2, 1) = std::numeric_limits<double>::quiet_NaN();
  const T64 y = t.value(global_avg_pool2d(t, t.input(x)));
  for (std::size_t n = 0; n < 2; ++n)
    for (std::size_t c = 0; c < 2; ++c) EXPECT_EQ(std::isnan(y(n, c, 0, 0)), n == 1 && c == 0);
  Parameter<double> e("e", T64(Shape{0, 3, 4, 4}));
  const Value ye = global_avg_pool2d(t, t.param(e));
  EXPECT_EQ(t.shape(ye), (Shape{0, 3, 1, 1}));
  t.backward(ye, T64(Shape{0, 3, 1, 1}));
  EXPECT_EQ(e.grad.size(), 0u);
}

TEST(GlobalAvgPool2d, FloatMatchesDoubleOnTheParallelPathAndPassesGradcheckNodes) {
  const T64 x = uniform({4, 32, 24, 24}, 1), g = uniform({4, 32, 1, 1}, 2);  // 73,728 elements
  Tape<double> td;
  Parameter<double> pd("x", x);
  const Value yd = global_avg_pool2d(td, td.param(pd));
  td.backward(yd, g);
  Tape<float> tf;
  Parameter<float> pf("x", xt::cast<float>(x));
  const Value yf = global_avg_pool2d(tf, tf.param(pf));
  tf.backward(yf, Tensor<float>(xt::cast<float>(g)));
  EXPECT_TRUE(all_close(xt::cast<double>(tf.value(yf)), td.value(yd), 1e-5, 1e-6));
  EXPECT_TRUE(all_close(xt::cast<double>(pf.grad), pd.grad, 1e-5, 1e-9));
  const NodeGradcheckResult r = gradcheck_nodes(tf);
  EXPECT_TRUE(r.ok) << r.report;
}

}  // namespace
}  // namespace ad::test::test_global_pool
