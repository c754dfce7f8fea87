// Output allocation for the CPU kernels, shared by every family.
//
// Why: a fresh multi-megabyte output comes from mmap, and its first write takes one page fault
// per 4 KiB page, each zeroing the page. Measured on the 2-core build machine, cloning a 64 MiB
// tensor costs ~8x a copy into existing memory: for memory-bound ops at LLM sizes the faults,
// not the arithmetic, set the time. Asking the kernel for transparent huge pages on the output
// (as torch itself does under THP_MEM_ALLOC_ENABLE=1) turns 512 faults into one.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace leedl_fast {

// Advise huge pages for the 2 MiB-aligned interior of t's storage (before its first touch).
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (t.nbytes() < 2 * kHuge) return;
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
