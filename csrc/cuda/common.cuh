// Device helpers shared by the CUDA C++ families (norm.cuh, rnn.cuh): element conversions and
// packed loads/stores. Torch-free, like every .cuh here (nvcc compile-checks it alone).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace leedl_fast {
namespace cuda {

// ------------------------------------------------------------------------ element conversions
// Explicit intrinsics only: torch builds .cu files with __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__, which remove the implicit float <-> half conversions.

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// ------------------------------------------------------------------------ packed loads/stores
// A pack is VEC consecutive elements, aligned to its own size, so the compiler emits one
// load/store of VEC * sizeof(T) bytes per pack (16 bytes: VEC = 16 / sizeof(T)).

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack { T v[VEC]; };

template <typename T, int VEC>  // dst[0..VEC) = float(p[0..VEC))
__device__ __forceinline__ void load_pack(const T* p, float* dst) {
  const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int i = 0; i < VEC; ++i) dst[i] = to_float<T>(pk.v[i]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T* p, const float* src) {
  Pack<T, VEC> pk;
#pragma unroll
  for (int i = 0; i < VEC; ++i) pk.v[i] = from_float<T>(src[i]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = pk;
}

}  // namespace cuda
}  // namespace leedl_fast
