// Per-thread scratch buffers for the ops' kernels: grown on demand and kept across
// calls, so that a training step allocates nothing once its shapes have been seen.
#pragma once

#include <array>
#include <cstddef>
#include <vector>

namespace ad {

// ThreadScratch<T, Tag>::get(n, slot): at least n elements of the calling thread's
// buffer `slot` (contents unspecified). `Tag` (an empty struct of the kernel's file)
// gives each kernel family buffers of its own; `slot` tells apart the buffers one kernel
// holds at the same time.
template <class T, class Tag, std::size_t Slots = 2>
struct ThreadScratch {
  static T* get(std::size_t n, std::size_t slot) {
    thread_local std::array<std::vector<T>, Slots> buffers;
    std::vector<T>& b = buffers.at(slot);
    if (b.size() < n) b.resize(n);
    return b.data();
  }
};

}  // namespace ad
