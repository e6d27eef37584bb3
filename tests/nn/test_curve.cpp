// The progress bar and the training curve (nn/progress, nn/curve), for any loop.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "nn/curve.hpp"
#include "nn/progress.hpp"
#include "tests/nn/nn_test_util.hpp"

namespace nn::test_curve {
namespace {

using nn::test::expect_error;
using nn::test::TempDir;

std::size_t count(const std::string& s, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(NiceAxis, TicksAreRoundStepsCoveringTheRange) {
  const NiceAxis loss = nice_axis(0, 2.31);
  EXPECT_EQ(loss.step, 0.5);
  EXPECT_EQ(loss.ticks, (std::vector<double>{0, 0.5, 1, 1.5, 2, 2.5}));
  EXPECT_EQ(loss.decimals, 1);
  const NiceAxis acc = nice_axis(0.853, 0.921);
  EXPECT_DOUBLE_EQ(acc.step, 0.02);
  EXPECT_DOUBLE_EQ(acc.lo, 0.84);
  EXPECT_DOUBLE_EQ(acc.hi, 0.94);
  EXPECT_EQ(acc.ticks.size(), 6u);
  EXPECT_EQ(acc.decimals, 2);
  EXPECT_EQ(fmt::format("{:.{}f}", acc.ticks[1], acc.decimals), "0.86");
  const NiceAxis epochs = nice_axis(0, 3, 8, /*integers=*/true);
  EXPECT_EQ(epochs.ticks, (std::vector<double>{0, 1, 2, 3}));
  EXPECT_EQ(epochs.decimals, 0);
  EXPECT_EQ(nice_axis(0, 40, 8, true).step, 10);
  EXPECT_EQ(nice_axis(3, 3).ticks.size() >= 2, true);  // an empty range still gets an axis
}

TEST(CurvePath, OnlyAnSvgNameIsAccepted) {
  EXPECT_EQ(svg_path_problem("out/curve.svg"), "");
  EXPECT_EQ(svg_path_problem("CURVE.SVG"), "");
  for (const char* bad : {"curve.png", "curve", "svg", "out/.svg", "curve.svg.txt"})
    EXPECT_NE(svg_path_problem(bad).find("ending in .svg"), std::string::npos) << bad;
}

TEST(TrainingCurve, RecoversEachBatchsLossFromTheRunningMean) {
  TrainingCurve c;
  // Epoch 0: batches of 32 with losses 2 and 1, the running means 2 and 1.5; epoch 1
  // starts again from its own first batch, 0.5, then 0.25 over 16 images.
  ProgressFn rec = c.recorder(0, 64);
  rec(32, 2.0);
  rec(64, 1.5);
  c.add_batch(1, 32, 48, 0.5);
  c.add_batch(1, 48, 48, (0.5 * 32 + 0.25 * 16) / 48);
  ASSERT_EQ(c.batches().size(), 4u);
  const double expected_x[] = {0.5, 1.0, 1 + 32.0 / 48, 2.0}, expected_loss[] = {2.0, 1.0, 0.5, 0.25};
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_DOUBLE_EQ(c.batches()[i].x, expected_x[i]) << i;
    EXPECT_NEAR(c.batches()[i].loss, expected_loss[i], 1e-12) << i;
  }
  // A recorder passes every batch on.
  std::size_t seen = 0;
  ProgressFn chained = c.recorder(2, 10, [&](std::size_t done, double) { seen = done; });
  chained(10, 0.1);
  EXPECT_EQ(seen, 10u);
}

TrainingCurve two_epochs() {
  TrainingCurve c;
  for (int e = 0; e < 2; ++e)
    for (std::size_t b = 1; b <= 10; ++b) c.add_batch(e, b * 10, 100, 2.0 / static_cast<double>(b + 10 * e));
  c.add_epoch({1, 0.9, 0.7, 0.8, 0.75});
  c.add_epoch({2, 0.5, 0.86, 0.6, 0.853});
  return c;
}

TEST(TrainingCurve, TheSvgHasAxisTitlesRoundTicksALegendAndTheSettings) {
  const std::string svg = two_epochs().svg({"model <tiny> & friends", "adam lr 0.003"});
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  for (const char* text : {">epoch<", ">cross-entropy loss<", ">accuracy<", ">loss of each batch<",
                           ">running average (per batch)<", ">training loss (per epoch)<", ">test loss (per epoch)<",
                           ">test (per epoch)<", ">last test accuracy 0.8530<", ">adam lr 0.003<",
                           ">model &lt;tiny&gt; &amp; friends<"})
    EXPECT_NE(svg.find(text), std::string::npos) << text;
  // Round tick labels: the loss axis in steps of 0.5 (the running average starts at 2),
  // accuracy in 0.02 or 0.05 steps, epochs 0, 1, 2.
  for (const char* tick : {">0.0<", ">0.5<", ">2.0<", ">0.70<", ">0.80<", ">0<", ">1<", ">2<"})
    EXPECT_NE(svg.find(tick), std::string::npos) << tick;
  EXPECT_EQ(svg.find("0.000000"), std::string::npos);
  // Polylines: batch losses, their running average, test loss; training and test accuracy.
  EXPECT_EQ(count(svg, "<polyline"), 5u);
  // Every batch is a point of the first polyline (20 batches, fewer than the thinning limit).
  const std::size_t first = svg.find("<polyline points=\"");
  const std::string pts = svg.substr(first, svg.find('"', first + 18) - first);
  EXPECT_EQ(count(pts, ","), 20u);
}

TEST(TrainingCurve, WriteSvgRefusesOtherNamesAndWritesAtomically) {
  TempDir dir;
  const TrainingCurve c = two_epochs();
  expect_error<std::invalid_argument>([&] { c.write_svg(dir.file("curve.png")); }, {"curve.png", "ending in .svg"});
  expect_error<WriteError>([&] { c.write_svg(dir.file("no/such/dir/curve.svg")); }, {"training curve", "cannot create"});
  c.write_svg(dir.file("curve.svg"), {"settings"});
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"curve.svg"}));  // no temp file left behind
  std::ifstream f(dir.file("curve.svg"));
  std::stringstream text;
  text << f.rdbuf();
  EXPECT_EQ(text.str(), c.svg({"settings"}));
}

std::string read_all(std::FILE* f) {
  std::rewind(f);
  std::string s;
  char buf[4096];
  while (const std::size_t n = std::fread(buf, 1, sizeof buf, f)) s.append(buf, n);
  return s;
}

TEST(ProgressBar, APipeGetsALineEveryQuarterAndATerminalOneRedrawnLine) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    ProgressBar bar(2, 5, 100, {.out = f, .style = ProgressBarOptions::Style::Lines});
    for (std::size_t done = 10; done <= 100; done += 10) bar(done, 0.5);
  }
  const std::string lines = read_all(f);
  EXPECT_EQ(count(lines, "\n"), 3u) << lines;  // at 25%, 50% and 75%; the epoch's summary is the caller's
  EXPECT_NE(lines.find("epoch 2/5: 30/100 images"), std::string::npos) << lines;
  EXPECT_NE(lines.find("loss 0.5000"), std::string::npos);
  std::fclose(f);

  f = std::tmpfile();
  {
    ProgressBar bar(1, 1, 64, {.out = f, .style = ProgressBarOptions::Style::Terminal});
    bar(32, 1.25);
    bar(64, 1.0);  // the last batch is always drawn, then the line is cleared
  }
  const std::string term = read_all(f);
  EXPECT_NE(term.find("\repoch 1/1 [==============="), std::string::npos) << term;
  EXPECT_NE(term.find("loss 1.2500"), std::string::npos);
  EXPECT_NE(term.find("100%"), std::string::npos);
  EXPECT_NE(term.find("\r\033[K"), std::string::npos);
  EXPECT_EQ(count(term, "\n"), 0u);
  std::fclose(f);
  EXPECT_EQ(format_duration(65), "1:05");
}

}  // namespace
}  // namespace nn::test_curve
