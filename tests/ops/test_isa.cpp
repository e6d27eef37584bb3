// The run-time choice of instruction set (ops/isa.hpp): every variant of the vector
// kernels that this processor can run is checked, in double against the convolution's
// definition and its VJP written as plain loops (to 1e-12), and in float against double
// at ref-CNN's shapes (the float path's 1e-4). Where AVX2 runs, that includes
// avx512-emulated, the AVX-512 variant's code compiled for AVX2 (ops/isa.hpp). A
// variant compiled in but not runnable here is reported in the test log (and fails the
// suite when AD_TEST_REQUIRE_ISAS names it, for a CI machine that is meant to have it).
#include <algorithm>
#include <cstdlib>
#include <sstream>

#include "ops/conv2d_direct.hpp"
#include "ops/isa.hpp"
#include "test_util.hpp"

namespace ad::test {
namespace {

const Isa kAll[] = {Isa::Baseline, Isa::Avx2, Isa::Avx512, Isa::Avx512Emulated};

// Restores the instruction set in use when a test ends.
struct IsaGuard {
  Isa before = active_isa();
  ~IsaGuard() { set_isa(before); }
};

struct Geometry {
  const char* name;
  Shape x, k;
  std::array<int, 2> padding, stride;
};

// ref-CNN's convolutions, channel counts that leave partial register tiles (and 8x8
// transpose blocks), strides, and a kernel wider than the padded input.
const Geometry kGeometries[] = {
    {"conv1", {2, 1, 28, 28}, {16, 1, 5, 5}, {2, 2}, {1, 1}},
    {"conv2", {2, 16, 14, 14}, {32, 16, 5, 5}, {2, 2}, {1, 1}},
    {"odd_channels", {2, 3, 13, 11}, {17, 3, 5, 5}, {2, 2}, {1, 1}},
    {"twenty_channels", {1, 16, 9, 10}, {20, 16, 3, 3}, {1, 1}, {1, 1}},
    {"strided", {2, 5, 9, 8}, {7, 5, 3, 2}, {1, 0}, {2, 3}},
    {"kernel_covers_padded_input", {2, 2, 3, 4}, {3, 2, 5, 6}, {1, 1}, {1, 1}},
    // padding at least the kernel (the copy without padding columns, every row class
    // grouped by columns): whole rows and columns of outputs in the padding
    {"padding_wider_than_kernel", {2, 3, 4, 5}, {5, 3, 2, 3}, {3, 4}, {1, 1}},
    {"padding_wider_than_kernel_strided", {2, 3, 6, 7}, {4, 3, 3, 2}, {4, 3}, {2, 3}},
    // Winograd F(2x2, 5x5) in float (5x5, stride 1, 4..32 input channels): odd output
    // sizes (a partial last tile row and column), padding 0 and 1, 32 input channels
    {"winograd_odd", {2, 8, 13, 11}, {7, 8, 5, 5}, {2, 2}, {1, 1}},
    {"winograd_pad0_pad1", {1, 5, 12, 9}, {9, 5, 5, 5}, {0, 1}, {1, 1}},
    {"winograd_32_in", {1, 32, 10, 10}, {12, 32, 5, 5}, {2, 2}, {1, 1}},
    // 20 input channels: dJ/dx's register tiles (from dJ/dK's blocks) over two vectors,
    // the second partly padding
    {"winograd_20_in", {2, 20, 9, 10}, {6, 20, 5, 5}, {2, 2}, {1, 1}},
    // 90 tiles an image: dJ/dK by Winograd in two blocks (WinogradPlan::kDkBlock)
    {"winograd_two_blocks", {2, 4, 20, 18}, {5, 4, 5, 5}, {2, 2}, {1, 1}},
    // dJ/dK by Winograd along the rows (fewer than 4 input channels): rows in three
    // float blocks (16 tiles a row: 16 rows a block), and an image narrower than the
    // 8x8 transposes with one partial tile a row
    {"row_winograd_blocks", {1, 2, 40, 64}, {5, 2, 5, 5}, {2, 2}, {1, 1}},
    {"row_winograd_small", {2, 3, 6, 7}, {4, 3, 5, 5}, {1, 0}, {1, 1}},
};

// y, dJ/dx, dJ/dk, dJ/db by the definitions (design document, section 3.1.5), for the
// cotangent g: y[n,o,i,j] = b[o] + sum_{c,p,q} k[o,c,p,q] x[n,c,i*sh+p-ph,j*sw+q-pw];
// dx and dk collect g[n,o,i,j] times the other factor of each product; db[o] = sum g[n,o,..].
struct Reference {
  T64 y, dx, dk, db;
};
Reference reference(const T64& x, const T64& k, const T64& b, const T64& g, std::array<int, 2> pad,
                    std::array<int, 2> st) {
  const long N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  const long O = k.shape()[0], KH = k.shape()[2], KW = k.shape()[3];
  const long OH = g.shape()[2], OW = g.shape()[3];
  Reference r{xt::zeros<double>({N, O, OH, OW}), xt::zeros<double>(x.shape()), xt::zeros<double>(k.shape()),
              xt::zeros<double>({static_cast<std::size_t>(O)})};
  // Row-major (N, C, H, W) etc. by hand: xtensor's checked element access (a Debug
  // build's) made this loop most of the test's time under the sanitizers.
  const double *xp = x.data(), *kp = k.data(), *bp = b.data(), *gp = g.data();
  double *yp = r.y.data(), *dxp = r.dx.data(), *dkp = r.dk.data(), *dbp = r.db.data();
  for (long n = 0; n < N; ++n)
    for (long o = 0; o < O; ++o)
      for (long i = 0; i < OH; ++i)
        for (long j = 0; j < OW; ++j) {
          double s = bp[o];
          const double go = gp[((n * O + o) * OH + i) * OW + j];
          dbp[o] += go;
          for (long c = 0; c < C; ++c)
            for (long p = 0; p < KH; ++p)
              for (long q = 0; q < KW; ++q) {
                const long ih = i * st[0] + p - pad[0], iw = j * st[1] + q - pad[1];
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                const long xi = ((n * C + c) * H + ih) * W + iw, ki = ((o * C + c) * KH + p) * KW + q;
                s += kp[ki] * xp[xi];
                dxp[xi] += go * kp[ki];
                dkp[ki] += go * xp[xi];
              }
          yp[((n * O + o) * OH + i) * OW + j] = s;
        }
  return r;
}

template <class T>
Reference run_conv(const T64& x, const T64& k, const T64& b, const T64& g, const Conv2dOptions& opt) {
  Tape<T> t;
  Parameter<T> xp("x", xt::cast<T>(x)), kp("k", xt::cast<T>(k)), bp("b", xt::cast<T>(b));
  const Value y = conv2d(t, t.param(xp), t.param(kp), t.param(bp), opt);
  t.backward(y, xt::cast<T>(g));
  return {xt::cast<double>(t.value(y)), xt::cast<double>(xp.grad), xt::cast<double>(kp.grad),
          xt::cast<double>(bp.grad)};
}

void expect_close(const Reference& got, const Reference& want, double rtol, double atol_y, double atol_g) {
  EXPECT_TRUE(all_close(got.y, want.y, rtol, atol_y)) << "y";
  EXPECT_TRUE(all_close(got.dx, want.dx, rtol, atol_g)) << "dJ/dx";
  EXPECT_TRUE(all_close(got.dk, want.dk, rtol, atol_g)) << "dJ/dk";
  EXPECT_TRUE(all_close(got.db, want.db, rtol, atol_g)) << "dJ/db";
}

TEST(Isa, EveryRunnableVariantMatchesTheDefinitionInDoubleAndDoubleInFloat) {
  const IsaGuard guard;
  ASSERT_FALSE(kernel_variants().empty());
  for (Isa isa : kernel_variants()) {
    set_isa(isa);
    SCOPED_TRACE(isa_name(isa));
    uint64_t seed = 500;
    for (const Geometry& geo : kGeometries) {
      SCOPED_TRACE(geo.name);
      const Conv2dOptions opt{.padding = geo.padding, .stride = geo.stride};
      const T64 x = uniform(geo.x, seed++), k = uniform(geo.k, seed++), b = uniform({geo.k[0]}, seed++);
      const Shape ys = conv2d_output_shape(geo.x, geo.k, nullptr, opt);
      const T64 g = uniform(ys, seed++);
      const Reference want = reference(x, k, b, g, geo.padding, geo.stride);
      expect_close(run_conv<double>(x, k, b, g, opt), want, 1e-12, 1e-12, 1e-12);
      // float, direct and (where it applies) Winograd: the float path's 1e-4
      for (const bool winograd : {true, false}) {
        SCOPED_TRACE(winograd ? "winograd on" : "winograd off");
        set_conv2d_winograd(winograd ? WinogradMode::On : WinogradMode::Off);
        expect_close(run_conv<float>(x, k, b, g, opt), want, 1e-4, 1e-4, 1e-3);
      }
      set_conv2d_winograd(WinogradMode::Auto);
    }
  }
}

// x feeding two convolutions: the one recorded last runs its VJP first and writes
// dJ/dx (the tape gives a value's first contribution a fresh buffer to overwrite), the
// other must add to it. Every variant, Winograd (dJ/dx from dJ/dK's blocks, and split
// by channels where the batch has fewer images than threads) and direct.
TEST(Isa, AConvolutionsInputGradientAddsToAnotherConsumers) {
  const IsaGuard guard;
  struct ModeGuard {
    ~ModeGuard() { set_conv2d_winograd(WinogradMode::Auto); }
  } mode;
  const std::array<int, 2> pad{2, 2}, stride{1, 1};
  const Conv2dOptions opt{.padding = pad, .stride = stride};
  for (const std::size_t N : {std::size_t{1}, std::size_t{2}}) {
    SCOPED_TRACE(fmt::format("batch {}", N));
    const Shape xs{N, 8, 13, 11}, ks{7, 8, 5, 5};
    const T64 x = uniform(xs, 900 + N), k1 = uniform(ks, 910 + N), k2 = uniform(ks, 920 + N);
    const T64 b1 = uniform({7}, 930 + N), b2 = uniform({7}, 940 + N);
    const T64 g = uniform(conv2d_output_shape(xs, ks, nullptr, opt), 950 + N);
    const Reference r1 = reference(x, k1, b1, g, pad, stride), r2 = reference(x, k2, b2, g, pad, stride);
    const T64 want_dx = r1.dx + r2.dx;
    for (Isa isa : kernel_variants()) {
      set_isa(isa);
      for (const bool winograd : {true, false}) {
        SCOPED_TRACE(fmt::format("{}, winograd {}", isa_name(isa), winograd ? "on" : "off"));
        set_conv2d_winograd(winograd ? WinogradMode::On : WinogradMode::Off);
        Tape<float> t;
        Parameter<float> px("x", xt::cast<float>(x)), pk1("k1", xt::cast<float>(k1)), pk2("k2", xt::cast<float>(k2));
        Parameter<float> pb1("b1", xt::cast<float>(b1)), pb2("b2", xt::cast<float>(b2));
        const Value xv = t.param(px);
        const Value y = add(t, conv2d(t, xv, t.param(pk1), t.param(pb1), opt), conv2d(t, xv, t.param(pk2), t.param(pb2), opt));
        t.backward(y, Tensor<float>(xt::cast<float>(g)));
        EXPECT_TRUE(all_close(xt::cast<double>(px.grad), want_dx, 1e-4, 1e-4)) << "dJ/dx";
        EXPECT_TRUE(all_close(xt::cast<double>(pk1.grad), r1.dk, 1e-4, 1e-3)) << "dJ/dk1";
        EXPECT_TRUE(all_close(xt::cast<double>(pk2.grad), r2.dk, 1e-4, 1e-3)) << "dJ/dk2";
      }
    }
  }
}

// Avx512Emulated is the AVX-512 variant's code at its own width (16 float lanes), run
// wherever AVX2 runs; it is a variant the tests check, never an instruction set chosen
// by itself.
TEST(Isa, TheEmulatedAvx512VariantIsTheAvx512CodeAndNeverTheFirstChoice) {
  const IsaGuard guard;
  const std::vector<Isa> isas = supported_isas(), variants = kernel_variants();
  EXPECT_EQ(std::count(isas.begin(), isas.end(), Isa::Avx512Emulated), 0);
  EXPECT_EQ(std::count(variants.begin(), variants.end(), Isa::Avx512Emulated), isa_supported(Isa::Avx2) ? 1 : 0);
  EXPECT_EQ(isa_supported(Isa::Avx512Emulated), isa_supported(Isa::Avx2));
  if (!isa_supported(Isa::Avx512Emulated)) GTEST_SKIP() << "no AVX2 here: nothing to emulate on";
  set_isa(Isa::Avx512Emulated);
  EXPECT_EQ(conv::kernels<float>().isa, Isa::Avx512Emulated);
  EXPECT_EQ(conv::kernels<float>().lanes, 16u);
  EXPECT_EQ(conv::kernels<double>().lanes, 8u);
  EXPECT_EQ(std::string(isa_name(Isa::Avx512Emulated)), "avx512-emulated");
}

TEST(Isa, SetIsaRefusesWhatThisProcessorCannotRun) {
  const IsaGuard guard;
  for (Isa isa : kAll) {
    if (isa_supported(isa)) {
      set_isa(isa);
      EXPECT_EQ(active_isa(), isa);
    } else {
      EXPECT_THROW(set_isa(isa), std::runtime_error) << isa_name(isa);
    }
  }
  EXPECT_TRUE(isa_supported(Isa::Baseline));
}

// dJ/dK at the largest batch a Winograd path is used for (`largest` images of `image`'s
// (C, H, W), `k` the kernel's shape, seeds from `seed`): within the float path's
// tolerance against double on every variant, and not the direct sum's; one image more
// and it is the direct sum's, bit for bit.
void expect_winograd_dk_up_to(std::size_t largest, const Shape& image, const Shape& ks, uint64_t seed,
                              const char* path) {
  const IsaGuard guard;
  struct ModeGuard {
    ~ModeGuard() { set_conv2d_winograd(WinogradMode::Auto); }
  } mode_guard;
  const Conv2dOptions opt{.padding = {2, 2}};
  for (const std::size_t n : {largest, largest + 1}) {
    SCOPED_TRACE(fmt::format("batch {}", n));
    const T64 x = uniform({n, image[0], image[1], image[2]}, seed + n), k = uniform(ks, seed + 1),
              g = uniform({n, ks[0], image[1], image[2]}, seed + 2);
    T64 want = xt::zeros<double>(k.shape());
    conv2d_vjp<double>(g, x, k, opt, nullptr, &want, nullptr);
    const Tensor<float> xf = xt::cast<float>(x), kf = xt::cast<float>(k), gf = xt::cast<float>(g);
    for (Isa isa : kernel_variants()) {
      set_isa(isa);
      SCOPED_TRACE(isa_name(isa));
      Tensor<float> wino = xt::zeros<float>(k.shape()), direct = xt::zeros<float>(k.shape());
      set_conv2d_winograd(WinogradMode::On);
      conv2d_vjp<float>(gf, xf, kf, opt, nullptr, &wino, nullptr);
      set_conv2d_winograd(WinogradMode::Off);
      conv2d_vjp<float>(gf, xf, kf, opt, nullptr, &direct, nullptr);
      EXPECT_TRUE(all_close(xt::cast<double>(wino), want, 1e-4, 1e-3));
      if (n == largest)
        EXPECT_FALSE(all_close(xt::cast<double>(wino), xt::cast<double>(direct), 0, 0))
            << "dJ/dK by " << path << " was not used at batch " << n;
      else
        EXPECT_TRUE(all_close(xt::cast<double>(wino), xt::cast<double>(direct), 0, 0)) << "batch " << n << " is direct";
    }
  }
}

// dJ/dK by Winograd sums the products of every tile of every image in its transformed
// space, where they are about 100 times the result: its float error grows with the
// batch (ops/conv2d.cpp, kWinogradDkMaxTiles). At ref-CNN's conv2 and training batch,
// the largest batch it is used for, it stays within the float path's tolerance.
TEST(Isa, WinogradKernelGradientAtTheLargestBatchItIsUsedFor) {
  expect_winograd_dk_up_to(64, {16, 14, 14}, {32, 16, 5, 5}, 900, "Winograd");
}

// The same for dJ/dK by Winograd along the rows (fewer than 4 input channels: ref-CNN's
// conv1), whose float sums grow with the batch too (kWinogradRowDkMaxTiles), at the
// largest batch of 28x28 images it is used for.
TEST(Isa, RowWinogradKernelGradientAtTheLargestBatchItIsUsedFor) {
  expect_winograd_dk_up_to(1024, {1, 28, 28}, {4, 1, 5, 5}, 700, "Winograd along the rows");
}

// linear with few outputs (D_out <= 16) runs on the dense kernels (ops/dense_simd.inc) in
// float: every D_out from 1 to 16 (OpenBLAS past 12 with AVX2 and the baseline, and at
// 17), batches with a row left over from the kernels' row pairs, D_in below one vector,
// with a partial vector, and over two of dJ/dx's column blocks; x feeds three layers and
// W2 two, so later VJPs add to the first's dJ/dx and dJ/dW2. Against the definitions in
// double (design document, section 3.1.1).
TEST(Isa, DenseKernelsMatchTheDefinitionForEveryNarrowLayer) {
  const IsaGuard guard;
  uint64_t seed = 1200;
  for (Isa isa : kernel_variants()) {
    set_isa(isa);
    for (const std::size_t M : {std::size_t{1}, std::size_t{5}})
      for (const std::size_t K : {std::size_t{3}, std::size_t{37}, std::size_t{600}})
        for (std::size_t N = 1; N <= 17; ++N) {
          SCOPED_TRACE(fmt::format("{}, x ({}, {}), W ({}, {})", isa_name(isa), M, K, K, N));
          const T64 x = uniform({M, K}, seed++), w1 = uniform({K, N}, seed++), w2 = uniform({K, N}, seed++);
          const T64 b = uniform({N}, seed++), g1 = uniform({M, N}, seed++), g2 = uniform({M, N}, seed++);
          // y1 = x W1 + b, y2 = y3 = x W2, cotangents g1, g2, g2: dJ/dx = g1 W1^T + 2 g2 W2^T,
          // dJ/dW1 = x^T g1, dJ/dW2 = 2 x^T g2, dJ/db = sum_m g1
          T64 y1 = xt::zeros<double>({M, N}), y2 = xt::zeros<double>({M, N}), dx = xt::zeros<double>({M, K});
          T64 dw1 = xt::zeros<double>({K, N}), dw2 = xt::zeros<double>({K, N}), db = xt::zeros<double>({N});
          for (std::size_t m = 0; m < M; ++m)
            for (std::size_t n = 0; n < N; ++n) {
              y1(m, n) = b(n);
              db(n) += g1(m, n);
              for (std::size_t k = 0; k < K; ++k) {
                y1(m, n) += x(m, k) * w1(k, n), y2(m, n) += x(m, k) * w2(k, n);
                dx(m, k) += g1(m, n) * w1(k, n) + 2 * g2(m, n) * w2(k, n);
                dw1(k, n) += x(m, k) * g1(m, n), dw2(k, n) += 2 * x(m, k) * g2(m, n);
              }
            }
          Parameter<float> px("x", xt::cast<float>(x)), pw1("w1", xt::cast<float>(w1)), pw2("w2", xt::cast<float>(w2));
          Parameter<float> pb("b", xt::cast<float>(b));
          Tape<float> t;
          const Value xv = t.param(px), w2v = t.param(pw2), g2v = t.input(xt::cast<float>(g2));
          const Value v1 = linear(t, xv, t.param(pw1), t.param(pb)), v2 = matmul(t, xv, w2v), v3 = matmul(t, xv, w2v);
          EXPECT_TRUE(all_close(xt::cast<double>(t.value(v1)), y1, 1e-4, 1e-4)) << "y1";
          EXPECT_TRUE(all_close(xt::cast<double>(t.value(v2)), y2, 1e-4, 1e-4)) << "y2";
          const Value j1 = mul(t, v1, t.input(xt::cast<float>(g1)));
          t.backward(sum(t, add(t, j1, add(t, mul(t, v2, g2v), mul(t, v3, g2v)))));
          EXPECT_TRUE(all_close(xt::cast<double>(px.grad), dx, 1e-4, 1e-4)) << "dJ/dx";
          EXPECT_TRUE(all_close(xt::cast<double>(pw1.grad), dw1, 1e-4, 1e-4)) << "dJ/dW1";
          EXPECT_TRUE(all_close(xt::cast<double>(pw2.grad), dw2, 1e-4, 1e-4)) << "dJ/dW2";
          EXPECT_TRUE(all_close(xt::cast<double>(pb.grad), db, 1e-4, 1e-4)) << "dJ/db";
        }
  }
}

// Which variants this run checked. A variant this processor cannot run is shipped
// untested by this run: say so, and fail where AD_TEST_REQUIRE_ISAS (e.g. "avx2,avx512")
// says this machine must check it.
TEST(Isa, ReportsWhichVariantsThisMachineChecks) {
  std::ostringstream tested, untested;
  for (Isa isa : kAll) (isa_supported(isa) ? tested : untested) << isa_name(isa) << " ";
  std::printf("[ isa      ] checked here: %s; NOT checked here (this processor cannot run them): %s\n",
              tested.str().c_str(), untested.str().empty() ? "none" : untested.str().c_str());
  if (!isa_supported(Isa::Avx512) && isa_supported(Isa::Avx512Emulated))
    std::printf("[ isa      ] avx512's code, at its width, is checked here as avx512-emulated (compiled for AVX2)\n");
  RecordProperty("isa_checked", tested.str());
  RecordProperty("isa_not_checked", untested.str());
  if (const char* req = std::getenv("AD_TEST_REQUIRE_ISAS"); req && *req) {
    std::stringstream ss(req);
    for (std::string name; std::getline(ss, name, ',');) {
      bool found = false;
      for (Isa isa : kAll)
        if (name == isa_name(isa)) {
          found = true;
          EXPECT_TRUE(isa_supported(isa)) << "AD_TEST_REQUIRE_ISAS names " << name << ", which this processor cannot run";
        }
      EXPECT_TRUE(found) << "AD_TEST_REQUIRE_ISAS: unknown variant " << name;
    }
  }
}

}  // namespace
}  // namespace ad::test
