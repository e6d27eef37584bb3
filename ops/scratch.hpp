// Per-thread scratch buffers for the ops' kernels: grown on demand and kept across
// calls, so that a training step allocates nothing once its shapes have been seen.
#pragma once

#include <array>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>

namespace ad {

// A growing buffer that starts at a fixed offset past a 4 KB boundary, whatever the
// heap. A kernel's buffers are given offsets staggered by slot (scratch_offset), so that
// their starts, and the same rows of equally laid out tiles in them, fall in different
// sets of the L1 cache on every thread. (As std::vectors they started wherever each
// thread's heap put them, the large ones, mmapped, 16 bytes into a page every one: in a
// 2-thread ref-CNN inference profile the main thread spent 39-45% longer than the other
// in Winograd's input and output transforms, the same work, and 2-thread training took
// 8% more samples than with the offsets; bench/README.md, "dJ/dx from dJ/dK's blocks".)
class PageOffsetBuffer {
 public:
  PageOffsetBuffer() = default;
  PageOffsetBuffer(const PageOffsetBuffer&) = delete;
  PageOffsetBuffer& operator=(const PageOffsetBuffer&) = delete;
  ~PageOffsetBuffer() { std::free(base_); }

  // At least `bytes` bytes, starting `offset` (< 4096, the same every call) past a page
  // boundary. As a std::vector's resize: what it held is kept when it grows, and the new
  // bytes are zero.
  std::byte* get(std::size_t bytes, std::size_t offset) {
    if (bytes > size_) {
      const std::size_t total = (offset + bytes + kPage - 1) / kPage * kPage;
      auto* base = static_cast<std::byte*>(std::aligned_alloc(kPage, total));
      if (!base) throw std::bad_alloc();
      std::byte* data = base + offset;
      if (size_ > 0) std::memcpy(data, base_ + offset, size_);
      std::memset(data + size_, 0, total - offset - size_);
      std::free(base_);
      base_ = base;
      size_ = total - offset;
    }
    return base_ + offset;
  }

 private:
  static constexpr std::size_t kPage = 4096;
  std::byte* base_ = nullptr;
  std::size_t size_ = 0;  // usable bytes from base_ + offset
};

// The offset of buffer `slot` of elements of `elem_size` bytes: slots 7 cache lines
// apart, buffers of doubles 56 lines on from those of floats, a second family of buffers
// that kernels use beside the first (`family` 1) 3 lines on (mod the 64 lines of a page).
constexpr std::size_t scratch_offset(std::size_t slot, std::size_t elem_size, std::size_t family = 0) {
  return (slot * 7 + family * 3 + (elem_size == 8 ? 56 : 0)) % 64 * 64;
}

// ThreadScratch<T, Tag>::get(n, slot): at least n elements of the calling thread's
// buffer `slot` (contents unspecified). `Tag` (an empty struct of the kernel's file)
// gives each kernel family buffers of its own; `slot` tells apart the buffers one kernel
// holds at the same time; `Family` picks the offsets (scratch_offset) of buffers used
// beside another family's.
template <class T, class Tag, std::size_t Slots = 2, std::size_t Family = 0>
struct ThreadScratch {
  static T* get(std::size_t n, std::size_t slot) {
    thread_local std::array<PageOffsetBuffer, Slots> buffers;
    return reinterpret_cast<T*>(buffers.at(slot).get(n * sizeof(T), scratch_offset(slot, sizeof(T), Family)));
  }
};

}  // namespace ad
