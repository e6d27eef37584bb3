// Dataset loading (two IDX files -> Dataset) and deterministic mini-batching.
#include "nn/data.hpp"

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <optional>
#include <random>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace nn {
namespace {

constexpr const char* kInstallHint =
    "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass "
    "--data DIR";

// SplitMix64 finaliser: spreads (seed, epoch) over the whole 64-bit seed space.
std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Unbiased integer in [0, bound), bound >= 1. std::uniform_int_distribution is
// implementation-defined, so rejection sampling keeps the order portable:
// accept r in [2^64 mod bound, 2^64), a range whose size is a multiple of bound.
std::uint64_t uniform_below(std::mt19937_64& rng, std::uint64_t bound) {
  const std::uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    const std::uint64_t r = rng();
    if (r >= threshold) return r % bound;
  }
}

// `dir/base.gz` if it exists, else `dir/base` if it exists, else nothing.
std::optional<std::string> find_idx_file(const std::filesystem::path& dir, const std::string& base) {
  std::error_code ec;
  for (const std::string& name : {base + ".gz", base}) {
    const std::filesystem::path candidate = dir / name;
    if (std::filesystem::exists(candidate, ec)) return candidate.string();
  }
  return std::nullopt;
}

}  // namespace

Dataset load_idx_pair(const std::string& images_path, const std::string& labels_path, std::size_t num_classes) {
  IdxArray images = read_idx(images_path);
  if (images.dims.size() != 3) {
    throw DataError(fmt::format("load_idx_pair: {}: images must have rank 3 (count, rows, cols) "
                                "but dims are {}", images_path, format_dims(images.dims)));
  }
  IdxArray labels = read_idx(labels_path);
  if (labels.dims.size() != 1) {
    throw DataError(fmt::format("load_idx_pair: {}: labels must have rank 1 (count) but dims "
                                "are {}", labels_path, format_dims(labels.dims)));
  }
  if (images.dims[0] != labels.dims[0]) {
    throw DataError(fmt::format("load_idx_pair: count mismatch: {} holds {} images but {} holds "
                                "{} labels", images_path, images.dims[0], labels_path,
                                labels.dims[0]));
  }
  Dataset out;
  out.count = images.dims[0];
  out.rows = images.dims[1];
  out.cols = images.dims[2];
  out.images = std::move(images.data);
  out.labels = std::move(labels.data);
  if (num_classes == 0) {
    // Classes unknown: read_idx guarantees dims > 0, so there is at least one label.
    out.num_classes = std::size_t{*std::max_element(out.labels.begin(), out.labels.end())} + 1;
    return out;
  }
  // A label past the classes would silently widen the model (255 -> 256 classes).
  const auto bad = std::find_if(out.labels.begin(), out.labels.end(),
                                [&](std::uint8_t l) { return l >= num_classes; });
  if (bad != out.labels.end()) {
    const auto n_bad = std::count_if(out.labels.begin(), out.labels.end(),
                                     [&](std::uint8_t l) { return l >= num_classes; });
    throw DataError(fmt::format("load_idx_pair: {}: label {} at position {} is out of range: this data set "
                                "has {} classes, so labels must be in [0, {}] ({} such labels in the file)",
                                labels_path, *bad, bad - out.labels.begin(), num_classes, num_classes - 1, n_bad));
  }
  out.num_classes = num_classes;
  return out;
}

DatasetShape read_idx_pair_shape(const std::string& images_path, const std::string& labels_path) {
  const std::vector<std::uint32_t> images = read_idx_header(images_path);
  if (images.size() != 3) {
    throw DataError(fmt::format("load_idx_pair: {}: images must have rank 3 (count, rows, cols) "
                                "but dims are {}", images_path, format_dims(images)));
  }
  const std::vector<std::uint32_t> labels = read_idx_header(labels_path);
  if (labels.size() != 1) {
    throw DataError(fmt::format("load_idx_pair: {}: labels must have rank 1 (count) but dims "
                                "are {}", labels_path, format_dims(labels)));
  }
  if (images[0] != labels[0]) {
    throw DataError(fmt::format("load_idx_pair: count mismatch: {} holds {} images but {} holds "
                                "{} labels", images_path, images[0], labels_path, labels[0]));
  }
  return {images[0], images[1], images[2]};
}

void check_test_matches_train(const DatasetShape& train, const IdxPairPaths& train_paths, const DatasetShape& test,
                              const IdxPairPaths& test_paths) {
  if (test.rows != train.rows || test.cols != train.cols) {
    throw DataError(fmt::format("the test set does not match the training set: {} holds {}x{} images but {} "
                                "holds {}x{} images; a model trained on one cannot be evaluated on the other",
                                test_paths.images, test.rows, test.cols, train_paths.images, train.rows,
                                train.cols));
  }
}

IdxPairPaths fashion_mnist_paths(const std::string& dir, const std::string& split) {
  if (split != "train" && split != "t10k") {
    throw DataError(fmt::format("load_fashion_mnist: unknown split \"{}\": use \"train\" or "
                                "\"t10k\"", split));
  }
  const std::string images_base = split + "-images-idx3-ubyte";
  const std::string labels_base = split + "-labels-idx1-ubyte";
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    if (std::filesystem::exists(dir, ec)) {
      throw DataError(fmt::format("load_fashion_mnist: {} is not a directory (pass the directory that "
                                  "holds {}[.gz] and {}[.gz], not a file)", dir, images_base,
                                  labels_base));
    }
    throw DataError(fmt::format("load_fashion_mnist: directory {} does not exist (looked for "
                                "{}[.gz] and {}[.gz] in it); {}", dir, images_base, labels_base,
                                kInstallHint));
  }
  const std::optional<std::string> images_path = find_idx_file(dir, images_base);
  const std::optional<std::string> labels_path = find_idx_file(dir, labels_base);
  if (!images_path || !labels_path) {
    std::vector<std::string> missing, looked_for;
    for (const auto& [found, base] : {std::pair{images_path.has_value(), images_base},
                                      std::pair{labels_path.has_value(), labels_base}}) {
      if (found) continue;
      missing.push_back(base);
      looked_for.push_back(base + ".gz");
      looked_for.push_back(base);
    }
    throw DataError(fmt::format("load_fashion_mnist: directory {} has no {} (looked for {}); {}",
                                dir, fmt::join(missing, " and no "), fmt::join(looked_for, ", "),
                                kInstallHint));
  }
  return {*images_path, *labels_path};
}

Dataset load_fashion_mnist(const std::string& dir, const std::string& split) {
  const IdxPairPaths paths = fashion_mnist_paths(dir, split);
  return load_idx_pair(paths.images, paths.labels, kFashionMnistClasses);
}

BatchIterator::BatchIterator(const Dataset& data, std::size_t batch_size, bool shuffle,
                             std::uint64_t seed, std::size_t limit)
    : data_(&data), batch_size_(batch_size), shuffle_(shuffle), seed_(seed) {
  if (batch_size == 0) throw std::invalid_argument("BatchIterator: batch_size must be > 0");
  // next() reads through raw pointers, so the Dataset must be self-consistent.
  if (data.images.size() != data.count * data.rows * data.cols ||
      data.labels.size() != data.count) {
    throw std::invalid_argument(fmt::format(
        "BatchIterator: inconsistent Dataset: count={} rows={} cols={} needs {} image bytes and "
        "{} labels but holds {} and {}", data.count, data.rows, data.cols,
        data.count * data.rows * data.cols, data.count, data.images.size(), data.labels.size()));
  }
  const std::size_t n = limit == 0 ? data.count : std::min(limit, data.count);
  order_.resize(n);
  start_epoch(0);
}

void BatchIterator::start_epoch(std::uint64_t epoch) {
  pos_ = 0;
  epoch_ = epoch;
  std::iota(order_.begin(), order_.end(), std::size_t{0});
  if (!shuffle_ || order_.size() < 2) return;
  std::mt19937_64 rng(splitmix64(seed_ ^ splitmix64(epoch)));
  // Fisher-Yates: order[i] swaps with a uniform pick from order[0..i].
  for (std::size_t i = order_.size() - 1; i > 0; --i) {
    const auto j = static_cast<std::size_t>(uniform_below(rng, std::uint64_t{i} + 1));
    std::swap(order_[i], order_[j]);
  }
}

void BatchIterator::set_augmentation(const Augmentation& a) {
  if (a.max_shift < 0) throw std::invalid_argument(fmt::format("BatchIterator: max_shift is {}; it must be >= 0", a.max_shift));
  augment_ = a;
}

void BatchIterator::set_shard(std::size_t rank, std::size_t ranks) {
  if (rank >= ranks)
    throw std::invalid_argument(fmt::format("BatchIterator: shard {} of {}: the rank must be below the number of ranks", rank, ranks));
  shard_rank_ = rank;
  shard_count_ = ranks;
}

std::size_t BatchIterator::num_batches() const {
  return (order_.size() + batch_size_ - 1) / batch_size_;
}

template <class T>
bool BatchIterator::next(xt::xarray<T>& images, std::vector<int>& labels) {
  if (pos_ >= order_.size()) return false;
  const std::size_t full = std::min(batch_size_, order_.size() - pos_);
  // This rank's rows [first, first + b) of the batch (all of it when not sharded).
  const std::size_t first = shard_rank_ * full / shard_count_;
  const std::size_t b = (shard_rank_ + 1) * full / shard_count_ - first;
  last_batch_ = full;
  const std::size_t rows = data_->rows, cols = data_->cols, pixels = rows * cols;

  const auto& shape = images.shape();
  if (images.dimension() != 4 || shape[0] != b || shape[1] != 1 || shape[2] != rows ||
      shape[3] != cols) {
    images.resize(typename xt::xarray<T>::shape_type{b, 1, rows, cols});
  }
  labels.resize(b);

  // images[i, 0, r, c] = bytes[order[pos + i], r, c] / 255, the images shared among the
  // threads (each image's shift and flip depend only on its position: the same batch
  // for any number of threads). On one thread this was 2.6% of a ref-CNN training step,
  // all of it outside the parallel ops.
  T* dst = images.data();
  const std::uint8_t* bytes = data_->images.data();
#pragma omp parallel for schedule(static) if (b * pixels >= (1u << 15))
  for (std::size_t i = 0; i < b; ++i) {
    const std::size_t at = pos_ + first + i;  // position in the epoch's order
    const std::size_t example = order_[at];
    const std::uint8_t* src = bytes + example * pixels;
    T* out = dst + i * pixels;
    labels[i] = data_->labels[example];
    if (!augment_.enabled()) {
      for (std::size_t k = 0; k < pixels; ++k) out[k] = static_cast<T>(src[k]) / static_cast<T>(255);
      continue;
    }
    // out[r, c] = in[r + dy, flip(c) + dx] / 255, 0 outside the image; (dy, dx, flip)
    // drawn from (seed, epoch, position in the epoch).
    std::mt19937_64 rng(splitmix64(seed_ ^ splitmix64(epoch_ ^ splitmix64(at))));
    const auto span = static_cast<std::uint64_t>(2 * augment_.max_shift + 1);
    const auto dy = static_cast<std::ptrdiff_t>(uniform_below(rng, span)) - augment_.max_shift;
    const auto dx = static_cast<std::ptrdiff_t>(uniform_below(rng, span)) - augment_.max_shift;
    const bool flip = augment_.horizontal_flip && uniform_below(rng, 2) == 1;
    const auto R = static_cast<std::ptrdiff_t>(rows), C = static_cast<std::ptrdiff_t>(cols);
    for (std::ptrdiff_t r = 0; r < R; ++r)
      for (std::ptrdiff_t c = 0; c < C; ++c) {
        const std::ptrdiff_t sr = r + dy, sc = (flip ? C - 1 - c : c) + dx;
        out[r * C + c] = sr >= 0 && sr < R && sc >= 0 && sc < C ? static_cast<T>(src[sr * C + sc]) / static_cast<T>(255) : T(0);
      }
  }
  pos_ += full;
  return true;
}

template bool BatchIterator::next<float>(xt::xarray<float>&, std::vector<int>&);
template bool BatchIterator::next<double>(xt::xarray<double>&, std::vector<int>&);

}  // namespace nn
