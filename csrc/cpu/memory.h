// Output memory for the CPU kernels, shared by every family: allocation and streaming stores.
//
// Why: a fresh multi-megabyte output comes from mmap, and its first write takes one page fault
// per 4 KiB page, each zeroing the page. Measured on the 2-core build machine, cloning a 64 MiB
// tensor costs ~8x a copy into existing memory: for memory-bound ops at LLM sizes the faults,
// not the arithmetic, set the time. Asking the kernel for transparent huge pages on the output
// (as torch itself does under THP_MEM_ALLOC_ENABLE=1) turns 512 faults into one.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace leedl_fast {

// Advise huge pages for the 2 MiB-aligned interior of t's storage, if it is fresh memory.
// Fresh means not yet touched (mincore says the first page is not resident): large blocks that
// glibc maps anew for every allocation. Recycled heap memory is already mapped with small pages;
// advising it only splits the heap's mapping (measured: slower for 12-32 MiB outputs).
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (t.nbytes() < 4 * kHuge) return;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + t.nbytes()) & ~(kHuge - 1);
  unsigned char resident = 0;
  if (last <= first || mincore(reinterpret_cast<void*>(first), 4096, &resident) != 0 ||
      (resident & 1))
    return;
  madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

// at::empty_like for a kernel's output, with huge pages advised when it is large.
inline at::Tensor empty_output(const at::Tensor& like) {
  at::Tensor t = at::empty_like(like, at::MemoryFormat::Contiguous);
  advise_huge_pages(t);
  return t;
}

}  // namespace leedl_fast

#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <cstring>

namespace leedl_fast {

// Size of the last-level cache (Linux sysfs; 32 MiB if unknown).
inline int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int64_t kib = 0;
    if (FILE* f = std::fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r")) {
      if (std::fscanf(f, "%" SCNd64, &kib) != 1) kib = 0;
      std::fclose(f);
    }
    return kib > 0 ? kib * 1024 : int64_t(32) << 20;
  }();
  return bytes;
}

// Streaming (non-temporal) stores pay off when the op's working set (all the bytes it reads and
// writes) does not fit in the last-level cache: the outputs would only evict the inputs, and a
// normal store first reads the line it overwrites (read-for-ownership). When it fits, the next
// op (or the next iteration) finds the output in cache, and streaming it to DRAM loses.
// Measured on the build machine (32 MiB L3), fp32 4096x768: add_layer_norm (50 MiB moved)
// 1.4-1.5x eager streaming vs 0.9-1.1x not; layer_norm (25 MiB) 0.91x streaming.
inline bool use_streaming_stores(int64_t working_set_bytes) {
  return working_set_bytes > last_level_cache_bytes();
}

// Copy a finished row from a cache-resident buffer to its place in a large output, bypassing
// the caches. Callers run stream_fence() before their parallel task returns.
template <typename T>
inline void stream_row(T* dst, const T* src, int64_t n) {
  auto* d = reinterpret_cast<char*>(dst);
  const auto* s = reinterpret_cast<const char*>(src);
  size_t bytes = static_cast<size_t>(n) * sizeof(T);
#if defined(__AVX2__)
  size_t head = (32 - (reinterpret_cast<uintptr_t>(d) & 31)) & 31;  // up to 32-byte alignment
  head = head < bytes ? head : bytes;
  std::memcpy(d, s, head);
  d += head, s += head, bytes -= head;
  for (; bytes >= 32; bytes -= 32, d += 32, s += 32)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
#endif
  std::memcpy(d, s, bytes);
}

// One full vector to memory, bypassing the caches (p 32-byte aligned in AVX2 builds).
template <typename A>
inline void nt_store(A* p, const at::vec::Vectorized<A>& v) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<A, float>) {
    _mm256_stream_ps(p, v);
    return;
  }
#endif
  v.store(p);
}

inline void stream_fence() {
#if defined(__AVX2__)
  _mm_sfence();
#endif
}

}  // namespace leedl_fast
