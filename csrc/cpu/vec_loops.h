// Loop helpers over vectors of a row, shared by the CPU kernels (at::vec::Vectorized).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

namespace leedl_fast {

// Calls f(i, count) for each vector of a row of n elements: the full vectors first, with count a
// compile-time constant so the loads and stores inside need no per-vector count check, then
// the partial tail once.
template <typename A, typename F>
inline void for_each_vec(int64_t n, F f) {
  constexpr int64_t kV = at::vec::Vectorized<A>::size();
  int64_t i = 0;
  for (; i + kV <= n; i += kV) f(i, std::integral_constant<int64_t, kV>{});
  if (i < n) f(i, n - i);
}

}  // namespace leedl_fast
