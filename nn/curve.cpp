// The training curve as SVG: two panels (loss, accuracy), round ticks, legends, settings.
#include "nn/curve.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <stdexcept>

#include <fmt/format.h>

#include "nn/checkpoint.hpp"

namespace nn {

NiceAxis nice_axis(double lo, double hi, int max_ticks, bool integers) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;
  if (hi < lo) std::swap(lo, hi);
  if (hi - lo < 1e-12) hi = lo + (lo == 0 ? 1 : std::abs(lo) * 0.1);
  max_ticks = std::max(max_ticks, 2);
  // The smallest step of 1, 2 or 5 x 10^k that needs at most max_ticks - 1 intervals.
  const double raw = (hi - lo) / (max_ticks - 1);
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = 0;
  for (const double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw * (1 - 1e-9)) {
      step = m * mag;
      break;
    }
  if (integers) step = std::max(step, 1.0), mag = std::max(mag, 1.0);
  NiceAxis a;
  a.step = step;
  a.lo = std::floor(lo / step + 1e-9) * step;
  a.hi = std::ceil(hi / step - 1e-9) * step;
  const long n = std::lround((a.hi - a.lo) / step);
  for (long i = 0; i <= n; ++i) {
    const double v = a.lo + static_cast<double>(i) * step;
    a.ticks.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  }
  a.decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
  return a;
}

std::string svg_path_problem(const std::string& path) {
  std::string ext = path.size() >= 4 ? path.substr(path.size() - 4) : std::string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (ext == ".svg" && path.size() > 4 && path[path.size() - 5] != '/') return {};
  return fmt::format("{}: the training curve is an SVG picture; give a file name ending in .svg", path);
}

void TrainingCurve::add_batch(int epoch, std::size_t done, std::size_t total, double running_loss) {
  if (epoch != last_epoch_ || done <= last_done_) last_epoch_ = epoch, last_done_ = 0, last_sum_ = 0;
  const double sum = running_loss * static_cast<double>(done);
  const double loss = (sum - last_sum_) / static_cast<double>(done - last_done_);
  last_done_ = done, last_sum_ = sum;
  const double frac = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  batches_.push_back({epoch + frac, loss});
}

ProgressFn TrainingCurve::recorder(int epoch, std::size_t total, ProgressFn then) {
  return [this, epoch, total, then = std::move(then)](std::size_t done, double running_loss) {
    add_batch(epoch, done, total, running_loss);
    if (then) then(done, running_loss);
  };
}

void TrainingCurve::add_epoch(const EpochPoint& p) { epochs_.push_back(p); }

namespace {

constexpr const char* kBatchColor = "#9ecae1";   // every batch, faint
constexpr const char* kRunningColor = "#1f77b4"; // running average, and training per epoch
constexpr const char* kTestColor = "#d62728";

// One panel: a plot area with axes, ticks, titles, series and a legend.
class Panel {
 public:
  Panel(double x, double y, double w, double h, NiceAxis xa, NiceAxis ya)
      : x_(x), y_(y), w_(w), h_(h), xa_(std::move(xa)), ya_(std::move(ya)) {}
  double px(double v) const { return x_ + w_ * (v - xa_.lo) / (xa_.hi - xa_.lo); }
  double py(double v) const { return y_ + h_ * (1 - (std::clamp(v, ya_.lo, ya_.hi) - ya_.lo) / (ya_.hi - ya_.lo)); }

  std::string frame(const std::string& title, const std::string& x_title, const std::string& y_title) const {
    std::string s = fmt::format(R"(<text x="{:.1f}" y="{:.1f}" font-size="14" font-weight="bold">{}</text>)", x_, y_ - 10,
                                title);
    for (double t : ya_.ticks) {
      s += fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#e5e5e5"/>)", x_, py(t), x_ + w_,
                       py(t));
      s += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" font-size="11" text-anchor="end">{:.{}f}</text>)", x_ - 6,
                       py(t) + 4, t, ya_.decimals);
    }
    for (double t : xa_.ticks) {
      s += fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#999"/>)", px(t), y_ + h_, px(t),
                       y_ + h_ + 4);
      s += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" font-size="11" text-anchor="middle">{:.{}f}</text>)", px(t),
                       y_ + h_ + 17, t, xa_.decimals);
    }
    s += fmt::format(R"(<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="none" stroke="#999"/>)", x_, y_,
                     w_, h_);
    s += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" font-size="12" text-anchor="middle">{}</text>)", x_ + w_ / 2,
                     y_ + h_ + 36, x_title);
    s += fmt::format(R"svg(<text x="{:.1f}" y="{:.1f}" font-size="12" text-anchor="middle" transform="rotate(-90 {:.1f} {:.1f})">{}</text>)svg",
                     x_ - 46, y_ + h_ / 2, x_ - 46, y_ + h_ / 2, y_title);
    return s;
  }

  std::string line(const std::vector<std::pair<double, double>>& pts, const char* color, double width, bool with_dots) const {
    if (pts.empty()) return {};
    std::string p;
    for (const auto& [x, y] : pts) p += fmt::format("{:.1f},{:.1f} ", px(x), py(y));
    std::string s = fmt::format(R"(<polyline points="{}" fill="none" stroke="{}" stroke-width="{}"/>)", p, color, width);
    return with_dots ? s + dots(pts, color) : s;
  }
  std::string dots(const std::vector<std::pair<double, double>>& pts, const char* color) const {
    std::string s;
    for (const auto& [x, y] : pts)
      s += fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="3.5" fill="{}"/>)", px(x), py(y), color);
    return s;
  }

  // Entries (label, color, dots) under the panel's x-axis title, two to a row, clear
  // of the data.
  std::string legend(const std::vector<std::tuple<std::string, const char*, bool>>& entries) const {
    std::string s;
    for (std::size_t i = 0; i < entries.size(); ++i) {
      const auto& [label, color, dots] = entries[i];
      const double ex = x_ + (i % 2 ? w_ / 2 : 0), ey = y_ + h_ + 62 + 18.0 * static_cast<double>(i / 2);
      s += fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="{}" stroke-width="2"/>)", ex,
                       ey - 4, ex + 22, ey - 4, color);
      if (dots) s += fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="3.5" fill="{}"/>)", ex + 11, ey - 4, color);
      s += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" font-size="11">{}</text>)", ex + 28, ey, label);
    }
    return s;
  }

 private:
  double x_, y_, w_, h_;
  NiceAxis xa_, ya_;
};

// Escapes text for SVG: settings may hold file names with '&' or '<'.
std::string xml_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '&') out += "&amp;";
    else if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '"') out += "&quot;";
    else out += c;
  }
  return out;
}

// At most `max` points: consecutive batches averaged in equal buckets.
std::vector<std::pair<double, double>> thin(const std::vector<TrainingCurve::BatchPoint>& b, std::size_t max) {
  std::vector<std::pair<double, double>> out;
  const std::size_t k = std::max<std::size_t>(1, (b.size() + max - 1) / max);
  for (std::size_t i = 0; i < b.size(); i += k) {
    const std::size_t end = std::min(b.size(), i + k);
    double s = 0;
    for (std::size_t j = i; j < end; ++j) s += b[j].loss;
    out.emplace_back(b[end - 1].x, s / static_cast<double>(end - i));
  }
  return out;
}

}  // namespace

std::string TrainingCurve::svg(const std::vector<std::string>& settings) const {
  const double W = 980, panel_w = 380, panel_h = 260, top = 60, left1 = 80, left2 = 570;
  const double legend_end = top + panel_h + 62 + 2 * 18;  // two rows of legend under each panel
  const double H = legend_end + 16 + 18.0 * static_cast<double>(settings.size());

  // Running average of the batch losses: exponential, over about a twentieth of an
  // epoch (at least 5 batches), started at the first batch.
  std::vector<std::pair<double, double>> running;
  if (!batches_.empty()) {
    const double per_epoch = batches_.back().x > 0 ? static_cast<double>(batches_.size()) / std::ceil(batches_.back().x) : 1;
    const double alpha = 2.0 / (std::max(5.0, per_epoch / 20) + 1);
    double avg = batches_.front().loss;
    std::vector<TrainingCurve::BatchPoint> smoothed;
    for (const BatchPoint& b : batches_) smoothed.push_back({b.x, avg = alpha * b.loss + (1 - alpha) * avg});
    running = thin(smoothed, 1000);
  }
  const auto raw = thin(batches_, 1000);
  std::vector<std::pair<double, double>> tr_loss, te_loss, tr_acc, te_acc;
  for (const EpochPoint& e : epochs_) {
    tr_loss.emplace_back(e.epoch, e.train_loss);
    te_loss.emplace_back(e.epoch, e.test_loss);
    tr_acc.emplace_back(e.epoch, e.train_accuracy);
    te_acc.emplace_back(e.epoch, e.test_accuracy);
  }

  // x: from the start of the first epoch recorded to the last epoch.
  double x_lo = 0, x_hi = 1;
  if (!epochs_.empty()) x_lo = epochs_.front().epoch - 1, x_hi = epochs_.back().epoch;
  if (!batches_.empty()) x_lo = std::min(x_lo, std::floor(batches_.front().x)), x_hi = std::max(x_hi, batches_.back().x);
  const NiceAxis xa = nice_axis(x_lo, x_hi, 8, /*integers=*/true);
  // Loss from 0 to the largest running average or per-epoch loss (a spiky first batch
  // may leave the panel at the top).
  double l_hi = 0;
  for (const auto& v : {running, tr_loss, te_loss})
    for (const auto& [x, y] : v)
      if (std::isfinite(y)) l_hi = std::max(l_hi, y);
  const NiceAxis la = nice_axis(0, l_hi > 0 ? l_hi : 1, 6);
  double a_lo = 1, a_hi = 0;
  for (const auto& v : {tr_acc, te_acc})
    for (const auto& [x, y] : v) a_lo = std::min(a_lo, y), a_hi = std::max(a_hi, y);
  if (a_hi < a_lo) a_lo = 0, a_hi = 1;
  NiceAxis aa = nice_axis(a_lo, a_hi, 6);
  if (aa.hi > 1) aa = nice_axis(a_lo, 1, 6);  // accuracy stops at 1

  const Panel loss(left1, top, panel_w, panel_h, xa, la), acc(left2, top, panel_w, panel_h, xa, aa);
  std::string s = fmt::format(R"(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif">)"
                              R"(<rect width="100%" height="100%" fill="white"/>)"
                              R"(<text x="{}" y="26" font-size="16" font-weight="bold">Training curve</text>)",
                              W, H, left1);
  s += loss.frame("Loss", "epoch", "cross-entropy loss");
  s += loss.line(raw, kBatchColor, 1, false) + loss.line(running, kRunningColor, 2, false) +
       loss.dots(tr_loss, kRunningColor) + loss.line(te_loss, kTestColor, 2, true);
  s += loss.legend({{"loss of each batch", kBatchColor, false},
                    {"running average (per batch)", kRunningColor, false},
                    {"training loss (per epoch)", kRunningColor, true},
                    {"test loss (per epoch)", kTestColor, true}});
  s += acc.frame("Accuracy", "epoch", "accuracy");
  s += acc.line(tr_acc, kRunningColor, 2, true) + acc.line(te_acc, kTestColor, 2, true);
  std::vector<std::tuple<std::string, const char*, bool>> acc_legend = {{"training (per epoch)", kRunningColor, true},
                                                                        {"test (per epoch)", kTestColor, true}};
  if (!epochs_.empty())
    acc_legend.emplace_back(fmt::format("last test accuracy {:.4f}", epochs_.back().test_accuracy), "none", false);
  if (!epochs_.empty())
    acc_legend.emplace_back(fmt::format("best test accuracy {:.4f}",
                                        std::max_element(epochs_.begin(), epochs_.end(),
                                                         [](const EpochPoint& a, const EpochPoint& b) {
                                                           return a.test_accuracy < b.test_accuracy;
                                                         })->test_accuracy),
                            "none", false);
  s += acc.legend(acc_legend);
  double y = legend_end + 16;
  for (const std::string& line : settings) {
    s += fmt::format(R"(<text x="{}" y="{:.1f}" font-size="12" fill="#333">{}</text>)", left1 - 50, y, xml_escape(line));
    y += 18;
  }
  s += "</svg>\n";
  return s;
}

void TrainingCurve::write_svg(const std::string& path, const std::vector<std::string>& settings,
                              std::string_view who) const {
  if (const std::string why = svg_path_problem(path); !why.empty()) throw std::invalid_argument(why);
  const std::string text = svg(settings);
  write_file_atomically(path, std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()), who);
}

}  // namespace nn
