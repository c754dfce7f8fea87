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

#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace leedl_fast {

// glibc serves allocations of at least 32 MiB (its largest dynamic mmap threshold) with fresh
// mmap'd pages every time; smaller ones are usually recycled heap memory that is already mapped,
// where madvise only splits the heap's mapping (measured: slower at 12 MiB outputs).
constexpr size_t kFreshBytes = size_t(32) << 20;

// Advise huge pages for the 2 MiB-aligned interior of t's storage (before its first touch).
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (t.nbytes() < kFreshBytes) return;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + t.nbytes()) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
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

// Outputs at least this large are written with non-temporal (streaming) stores: far larger
// than the per-core caches, so keeping them cached only evicts the inputs, and a normal store
// first reads the line it overwrites (read-for-ownership), a third more memory traffic.
// Measured on the build machine, add_layer_norm 4096x768 fp32: 1.4-1.5x eager with streaming
// stores issued straight from registers, 0.9-1.1x without (copying a finished row out of a
// buffer with streaming stores gained nothing: the extra pass ate the saving).
constexpr int64_t kStreamBytes = int64_t(4) << 20;

inline bool use_streaming_stores(const at::Tensor& out) {
  return static_cast<int64_t>(out.nbytes()) >= kStreamBytes;
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
