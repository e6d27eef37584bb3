// Datasets of 2-D uint8 images with integer labels (MNIST / Fashion-MNIST), and
// deterministic shuffled mini-batches of them as float tensors (N, 1, H, W).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>

#include "nn/idx.hpp"

namespace nn {

// Where Debian's dataset-fashion-mnist package installs the four .gz files.
inline constexpr const char* kDefaultFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// Fashion-MNIST's (and MNIST's) classes: labels are 0..9.
inline constexpr std::size_t kFashionMnistClasses = 10;

// `count` images of rows x cols bytes, stored back to back (count*rows*cols
// bytes), and one label per image, each below num_classes.
struct Dataset {
  std::vector<std::uint8_t> images;
  std::vector<std::uint8_t> labels;
  std::size_t count = 0, rows = 0, cols = 0;
  std::size_t num_classes = 0;
};

// Reads an images file (rank 3: count, rows, cols) and a labels file (rank 1:
// count). Throws DataError if a file is malformed or the counts disagree. The class
// count is a property of the data set: with num_classes > 0 every label must be below
// it (a DataError names the labels file, the label and its position); with 0 (a data
// set of unknown classes) it is taken as max label + 1.
Dataset load_idx_pair(const std::string& images_path, const std::string& labels_path,
                      std::size_t num_classes = 0);

// The two files of split "train" or "t10k" in `dir` (<split>-images-idx3-ubyte[.gz],
// <split>-labels-idx1-ubyte[.gz]; .gz preferred). Throws DataError with an install hint.
struct IdxPairPaths {
  std::string images, labels;
};
IdxPairPaths fashion_mnist_paths(const std::string& dir, const std::string& split);

// Loads split "train" or "t10k" from `dir` (the files of fashion_mnist_paths), with
// kFashionMnistClasses classes: a label of 10 or more is a DataError.
Dataset load_fashion_mnist(const std::string& dir, const std::string& split);

// Random changes to training images, drawn afresh for every image in every epoch
// (a pure function of the iterator's seed, the epoch and the image's position).
struct Augmentation {
  // Shift by up to `max_shift` pixels in each direction, filling with 0: the same as
  // padding by max_shift with zeros and cropping a random H x W window.
  int max_shift = 0;
  bool horizontal_flip = false;  // mirror left-right with probability 1/2
  bool enabled() const { return max_shift > 0 || horizontal_flip; }
};
// What a data set will hold, from the IDX headers alone (nothing else is read or
// allocated): count, rows, cols. Throws DataError as load_idx_pair would for the headers.
struct DatasetShape {
  std::size_t count = 0, rows = 0, cols = 0;
};
DatasetShape read_idx_pair_shape(const std::string& images_path, const std::string& labels_path);

// A test set must fit the model trained on `train`: images of the same rows x cols,
// and (once loaded) the same classes. Throws DataError naming both files of each set.
void check_test_matches_train(const DatasetShape& train, const IdxPairPaths& train_paths, const DatasetShape& test,
                              const IdxPairPaths& test_paths);

// Walks a Dataset in mini-batches, one epoch at a time. Uses the first `limit`
// examples (0 = all); keeps a reference, so the Dataset must outlive it.
class BatchIterator {
 public:
  // Throws std::invalid_argument if batch_size is 0. Ready for epoch 0.
  BatchIterator(const Dataset& data, std::size_t batch_size, bool shuffle, std::uint64_t seed,
                std::size_t limit = 0);
  // A temporary Dataset would dangle: refused at compile time.
  BatchIterator(Dataset&&, std::size_t, bool, std::uint64_t, std::size_t = 0) = delete;

  // Rewinds; with shuffle, the order is a Fisher-Yates permutation that depends
  // only on (seed, epoch), identical on every platform.
  void start_epoch(std::uint64_t epoch);

  // Fills images (B, 1, rows, cols) with byte/255 and labels (B); B = batch_size
  // except for a smaller last batch. Returns false once the epoch is exhausted.
  // The images buffer is reallocated only when its shape changes.
  template <class T>
  bool next(xt::xarray<T>& images, std::vector<int>& labels);

  // Applies `a` to every image next() returns from now on (training batches; leave
  // evaluation unaugmented). Throws std::invalid_argument for a negative shift.
  void set_augmentation(const Augmentation& a);

  // Batches per epoch: ceil(size() / batch_size).
  std::size_t num_batches() const;
  // Examples per epoch: min(limit, count), or count when limit is 0.
  std::size_t size() const { return order_.size(); }

 private:
  const Dataset* data_;
  std::size_t batch_size_;
  bool shuffle_;
  std::uint64_t seed_;
  std::vector<std::size_t> order_;
  std::size_t pos_ = 0;
  std::uint64_t epoch_ = 0;
  Augmentation augment_;
};

extern template bool BatchIterator::next<float>(xt::xarray<float>&, std::vector<int>&);
extern template bool BatchIterator::next<double>(xt::xarray<double>&, std::vector<int>&);

}  // namespace nn
