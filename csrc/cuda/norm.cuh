// CUDA C++ forward kernels for the normalization family: layer norm and RMS norm (book eq. 7.1),
// each with an optional fused residual add ("Add & Norm", §7.4). See docs/norm.md.
//
// Torch-free on purpose: this header needs only the CUDA toolkit, so `nvcc -arch=sm_90a` can
// compile-check it on a machine without a GPU or a CUDA build of torch. The torch binding lives in
// norm.cu. There is no backward here: the Triton backward (kernels/norm.py) serves both backends,
// and it only needs what these kernels save (mean, rstd, residual_out).
//
// The math, per row x of width N (fp32 accumulation for every element type):
//   s      = round_T(x + residual)                      (HAS_RES only; stored as residual_out)
//   mean   = sum(s) / N                                  (layer norm; RMS norm uses mean = 0)
//   var    = sum((s - mean)^2) / N                       (centred: a second pass over the row,
//                                                        not E[s^2] - E[s]^2, which cancels
//                                                        catastrophically when |mean| >> std)
//   rstd   = 1 / sqrt(var + eps)                        (rsqrtf; the means use __fdividef: both
//                                                        <= 2 ulp, like torch's CUDA kernels; the
//                                                        IEEE ops call a slow-path subroutine
//                                                        whose calling convention spills registers)
//   out    = round_T((s - mean) * rstd * weight + bias)  (weight / bias optional)
// The sum is rounded to the element type before it is normalized, so `out` normalizes exactly the
// tensor stored in residual_out -- what eager `s = x + r; norm(s)` does, what the CPU and Triton
// kernels do, and what the backward reads back.
//
// Why these kernels look the way they do: normalization does ~8 FLOPs per element and is bound
// by memory traffic. The least traffic a forward can move is
//   bytes = M*N*sizeof(T) * (2 + 2*HAS_RES)    (read x [+ residual], write out [+ residual_out])
//         + 4*M * (1 + !IS_RMS)                (rstd [+ mean])  + N*sizeof(T) per weight/bias,
// so every kernel reads the row from HBM once and keeps it in registers between the reduction
// and the normalize pass; only the widest rows are re-read (from L2).
//
// Three kernels, picked by the row width N (launch_norm_fwd at the bottom):
//   N <= 1024          norm_fwd_warp_kernel   one warp per row, 4 rows per 128-thread block,
//                                             reductions are warp shuffles only
//   1024 < N <= 16384  norm_fwd_block_kernel  one block (256..1024 threads) per row, row in
//                                             registers (8 or 16 elements per thread;
//                                             unaligned rows: 8, so N <= 8192)
//   wider              norm_fwd_block_kernel  1024 threads per row, ELEMS = 0: the row is
//                                             streamed three times (sum, centred sum of squares,
//                                             normalize); the re-reads hit L2
// Each kernel loads 16 bytes per instruction (4 fp32 or 8 fp16/bf16) when N is a multiple of the
// pack size and every pointer is 16-byte aligned, else one element at a time (VEC = 1).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"

namespace leedl_fast {
namespace cuda_norm {

// Element conversions (to_float / from_float) and packed loads/stores (Pack, load_pack,
// store_pack) are shared with the other families: common.cuh.
using cuda::from_float;
using cuda::load_pack;
using cuda::Pack;
using cuda::store_pack;
using cuda::to_float;

// ------------------------------------------------------------------------------ arguments
// Pointer arguments, all contiguous (row-major, rows of width N), element type T unless noted:
//   x, residual, out, residual_out : (M, N)
//   weight, bias                   : (N,)
//   mean, rstd                     : (M,) float32
// residual / residual_out are nullptr unless the op adds a residual; weight / bias may be
// nullptr; mean is nullptr for RMS norm. None of them alias (the binding allocates the outputs).
template <typename T>
struct NormFwdArgs {
  const T* x;
  const T* residual;
  const T* weight;
  const T* bias;
  T* out;
  T* residual_out;
  float* mean;
  float* rstd;
  int64_t M;
  int N;
  float eps;
};

// ------------------------- reductions (both return the total to every thread: no broadcast step)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

struct WarpSum {
  __device__ __forceinline__ float operator()(float v) const { return warp_sum(v); }
};

// Block-wide sum: each warp reduces with shuffles, lane 0 parks the warp's total in shared
// memory, then every warp re-reduces those (<= 32) totals itself -- all warps add them in the
// same order, so every thread gets the bit-identical result. blockDim.x must be a multiple of 32.
struct BlockSum {
  float* shared;  // >= 32 floats
  __device__ __forceinline__ float operator()(float v) const {
    v = warp_sum(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // a previous call may still be reading `shared`
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    return warp_sum(lane < static_cast<int>(blockDim.x >> 5) ? shared[lane] : 0.f);
  }
};

// --------------------------------------------------------------------- per-pack helpers
// v = round_T(x + residual), also stored to residual_out (HAS_RES). Reads x [+ residual].
template <typename T, bool HAS_RES, int VEC>
__device__ __forceinline__ void load_input(const NormFwdArgs<T>& a, int64_t idx, float* v) {
  load_pack<T, VEC>(a.x + idx, v);
  if constexpr (HAS_RES) {
    float r[VEC];
    load_pack<T, VEC>(a.residual + idx, r);
    Pack<T, VEC> s;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      s.v[i] = from_float<T>(v[i] + r[i]);
      v[i] = to_float<T>(s.v[i]);  // normalize the rounded sum, the tensor we store
    }
    *reinterpret_cast<Pack<T, VEC>*>(a.residual_out + idx) = s;
  }
}

// out[idx..idx+VEC) = (v - mean) * rstd [* weight] [+ bias]
template <typename T, int VEC>
__device__ __forceinline__ void normalize_store(const NormFwdArgs<T>& a, int64_t idx, int col,
                                                const float* v, float mean, float rstd) {
  float y[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) y[i] = (v[i] - mean) * rstd;
  if (a.weight != nullptr) {  // uniform branch: every thread takes the same side
    float w[VEC];
    load_pack<T, VEC>(a.weight + col, w);
#pragma unroll
    for (int i = 0; i < VEC; ++i) y[i] *= w[i];
  }
  if (a.bias != nullptr) {
    float b[VEC];
    load_pack<T, VEC>(a.bias + col, b);
#pragma unroll
    for (int i = 0; i < VEC; ++i) y[i] += b[i];
  }
  store_pack<T, VEC>(a.out + idx, y);
}

// rstd from the row's variance; thread 0 saves mean/rstd for the backward.
template <typename T, bool IS_RMS>
__device__ __forceinline__ float finish_stats(const NormFwdArgs<T>& a, int64_t row, int tid,
                                              float mean, float var) {
  const float rstd = rsqrtf(var + a.eps);
  if (tid == 0) {
    if constexpr (!IS_RMS) a.mean[row] = mean;
    a.rstd[row] = rstd;
  }
  return rstd;
}

// --------------------------------------------------------------- one row, cached in registers
// `nthreads` threads (a warp, or a block) share one row; thread `tid` owns packs
// tid, tid + nthreads, tid + 2*nthreads, ... so each load instruction of the group reads one
// contiguous span (coalesced). The row must fit: N <= nthreads * ELEMS.
// HBM traffic: the minimum above (each element read once, written once).
template <typename T, bool IS_RMS, bool HAS_RES, int VEC, int ELEMS, typename Reduce>
__device__ __forceinline__ void norm_row_cached(const NormFwdArgs<T>& a, int64_t row, int tid,
                                                int nthreads, Reduce reduce) {
  static_assert(ELEMS % VEC == 0, "ELEMS must be a whole number of packs");
  constexpr int PACKS = ELEMS / VEC;
  const int N = a.N;
  const int64_t base = row * static_cast<int64_t>(N);
  float v[ELEMS];  // this thread's slice of the row; indices are compile-time after unrolling

  float total = 0.f;  // pass 1 (registers): sum, or sum of squares for RMS norm
#pragma unroll
  for (int k = 0; k < PACKS; ++k) {
    const int col = (tid + k * nthreads) * VEC;
    if (col < N) {  // N % VEC == 0 when VEC > 1, so a pack is all in or all out
      load_input<T, HAS_RES, VEC>(a, base + col, v + k * VEC);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float e = v[k * VEC + i];
        total += IS_RMS ? e * e : e;
      }
    }
  }
  total = reduce(total);
  float mean = 0.f, var;
  if constexpr (IS_RMS) {
    var = __fdividef(total, N);
  } else {
    mean = __fdividef(total, N);
    float sq = 0.f;  // pass 2 (registers): centred sum of squares
#pragma unroll
    for (int k = 0; k < PACKS; ++k) {
      if ((tid + k * nthreads) * VEC < N) {  // skip slots past the row: (0 - mean)^2 != 0
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float d = v[k * VEC + i] - mean;
          sq += d * d;
        }
      }
    }
    var = __fdividef(reduce(sq), N);
  }
  const float rstd = finish_stats<T, IS_RMS>(a, row, tid, mean, var);

#pragma unroll
  for (int k = 0; k < PACKS; ++k) {  // pass 3 (registers -> HBM): normalize and store
    const int col = (tid + k * nthreads) * VEC;
    if (col < N) normalize_store<T, VEC>(a, base + col, col, v + k * VEC, mean, rstd);
  }
}

// ---------------------------------------------------------------- one row, streamed (wide rows)
// Rows too wide for registers: walk the row three times with the same thread -> element mapping.
// HBM traffic is still about the minimum, as a row of <= a few MiB stays in L2 between passes;
// the extra passes cost L2 bandwidth. For HAS_RES the later passes re-read residual_out (one
// array instead of x and residual); each thread only re-reads elements it wrote itself, so no
// barrier is needed, and residual_out is read with plain (coherent) loads.
template <typename T, bool IS_RMS, bool HAS_RES, int VEC, typename Reduce>
__device__ __forceinline__ void norm_row_streamed(const NormFwdArgs<T>& a, int64_t row, int tid,
                                                  int nthreads, Reduce reduce) {
  const int64_t N = a.N;
  const int64_t base = row * N;
  const int64_t step = static_cast<int64_t>(nthreads) * VEC;
  const T* src = HAS_RES ? a.residual_out : a.x;  // what passes 2 and 3 read back
  float v[VEC];

  float total = 0.f;  // pass 1: sum (or sum of squares), storing residual_out on the way
  for (int64_t col = static_cast<int64_t>(tid) * VEC; col < N; col += step) {
    load_input<T, HAS_RES, VEC>(a, base + col, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) total += IS_RMS ? v[i] * v[i] : v[i];
  }
  total = reduce(total);
  float mean = 0.f, var;
  if constexpr (IS_RMS) {
    var = __fdividef(total, N);
  } else {
    mean = __fdividef(total, N);
    float sq = 0.f;  // pass 2: centred sum of squares
    for (int64_t col = static_cast<int64_t>(tid) * VEC; col < N; col += step) {
      load_pack<T, VEC>(src + base + col, v);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float d = v[i] - mean;
        sq += d * d;
      }
    }
    var = __fdividef(reduce(sq), N);
  }
  const float rstd = finish_stats<T, IS_RMS>(a, row, tid, mean, var);

  for (int64_t col = static_cast<int64_t>(tid) * VEC; col < N; col += step) {  // pass 3
    load_pack<T, VEC>(src + base + col, v);
    normalize_store<T, VEC>(a, base + col, static_cast<int>(col), v, mean, rstd);
  }
}

// ------------------------------------------------------------------------------- kernels

constexpr int kWarpRowsPerBlock = 4;   // warp kernel: 128-thread blocks, one row per warp
constexpr int kMaxWarpWidth = 1024;    // warp kernel up to 32 elements per lane
constexpr int kMaxCachedWidth = 16384; // block kernel keeps <= 16 elements per thread in regs
constexpr int kMaxBlockThreads = 1024;

// One warp per row (N <= 1024, N <= 32 * ELEMS). Grid: ceil(M / 4) blocks of 128 threads.
// No shared memory and no __syncthreads: a warp whose row is past M leaves at once.
// The launch bounds' second argument (at least 1 block per SM) stops ptxas (sm_80) trading a
// few bytes of register spill for occupancy at 32 registers; it then uses ~40, no spills.
template <typename T, bool IS_RMS, bool HAS_RES, int VEC, int ELEMS>
__global__ void __launch_bounds__(kWarpRowsPerBlock * 32, 1)
norm_fwd_warp_kernel(NormFwdArgs<T> a) {
  const int64_t row =
      static_cast<int64_t>(blockIdx.x) * kWarpRowsPerBlock + (threadIdx.x >> 5);
  if (row >= a.M) return;  // the whole warp leaves together, so the shuffles stay full-warp
  norm_row_cached<T, IS_RMS, HAS_RES, VEC, ELEMS>(a, row, threadIdx.x & 31, 32, WarpSum{});
}

// One block per row. ELEMS > 0: the row is cached in registers (N <= blockDim.x * ELEMS);
// ELEMS == 0: the row is streamed. Grid: M blocks of 256..1024 threads (a multiple of 32).
// __launch_bounds__(1024) caps registers at 64 per thread, which fits 16 cached floats.
template <typename T, bool IS_RMS, bool HAS_RES, int VEC, int ELEMS>
__global__ void __launch_bounds__(kMaxBlockThreads, 1)
norm_fwd_block_kernel(NormFwdArgs<T> a) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const BlockSum reduce{shared};
  if constexpr (ELEMS > 0) {
    norm_row_cached<T, IS_RMS, HAS_RES, VEC, ELEMS>(a, row, threadIdx.x, blockDim.x, reduce);
  } else {
    norm_row_streamed<T, IS_RMS, HAS_RES, VEC>(a, row, threadIdx.x, blockDim.x, reduce);
  }
}

// --------------------------------------------------------------------------------- launcher

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, bool IS_RMS, bool HAS_RES, int VEC>
void launch_norm_fwd_vec(const NormFwdArgs<T>& a, cudaStream_t stream) {
  const int N = a.N;
  if (N <= kMaxWarpWidth) {
    const dim3 grid(static_cast<unsigned>((a.M + kWarpRowsPerBlock - 1) / kWarpRowsPerBlock));
    const dim3 block(kWarpRowsPerBlock * 32);
    if (N <= 32 * 8) {
      norm_fwd_warp_kernel<T, IS_RMS, HAS_RES, VEC, 8><<<grid, block, 0, stream>>>(a);
    } else if (N <= 32 * 16) {
      norm_fwd_warp_kernel<T, IS_RMS, HAS_RES, VEC, 16><<<grid, block, 0, stream>>>(a);
    } else {
      norm_fwd_warp_kernel<T, IS_RMS, HAS_RES, VEC, 32><<<grid, block, 0, stream>>>(a);
    }
    return;
  }
  const dim3 grid(static_cast<unsigned>(a.M));
  // The scalar path (VEC = 1) caches at most 8 elements per thread: at 16, the per-element
  // addresses and bounds checks pass the 64-register cap of 1024 threads and spill.
  if (N <= (VEC == 1 ? kMaxBlockThreads * 8 : kMaxCachedWidth)) {
    // ~8 elements per thread: the smallest power-of-two block in [256, 1024] with
    // threads * 8 >= N; past 8192 the 1024 threads hold 16 elements each.
    int threads = 256;
    while (threads < kMaxBlockThreads && threads * 8 < N) threads *= 2;
    if (N <= threads * 8) {
      norm_fwd_block_kernel<T, IS_RMS, HAS_RES, VEC, 8><<<grid, threads, 0, stream>>>(a);
    } else if constexpr (VEC > 1) {
      norm_fwd_block_kernel<T, IS_RMS, HAS_RES, VEC, 16><<<grid, threads, 0, stream>>>(a);
    }
    return;
  }
  norm_fwd_block_kernel<T, IS_RMS, HAS_RES, VEC, 0><<<grid, kMaxBlockThreads, 0, stream>>>(a);
}

template <typename T, bool IS_RMS, bool HAS_RES>
void launch_norm_fwd_flags(const NormFwdArgs<T>& a, bool vectorize, cudaStream_t stream) {
  vectorize ? launch_norm_fwd_vec<T, IS_RMS, HAS_RES, 16 / sizeof(T)>(a, stream)
            : launch_norm_fwd_vec<T, IS_RMS, HAS_RES, 1>(a, stream);
}

// Runs the forward for rows of any width on `stream`. The caller guarantees: 0 < N <= INT_MAX,
// 0 <= M < 2**31 (one block per row for wide rows), contiguous (M, N) tensors, a.mean non-null
// unless is_rms, a.residual and a.residual_out both null or both set. M == 0 or N == 0 launch
// nothing (the caller fills rstd = 1/sqrt(eps), mean = 0 for empty rows).
// Returns cudaPeekAtLastError(): a failed launch is reported but not cleared, so the caller's
// own check (C10_CUDA_KERNEL_LAUNCH_CHECK) still sees it.
template <typename T>
cudaError_t launch_norm_fwd(const NormFwdArgs<T>& a, bool is_rms, cudaStream_t stream) {
  if (a.M <= 0 || a.N <= 0) return cudaSuccess;
  // 16-byte packs need every row start aligned: base pointers aligned and N a multiple of the
  // pack size (so the row stride is a multiple of 16 bytes). nullptr counts as aligned.
  const bool vectorize = a.N % (16 / sizeof(T)) == 0 && aligned16(a.x) &&
                         aligned16(a.residual) && aligned16(a.weight) && aligned16(a.bias) &&
                         aligned16(a.out) && aligned16(a.residual_out);
  // Runtime flags -> template arguments: 2 (rms) x 2 (residual) x 2 (vector width) variants.
  const bool has_res = a.residual != nullptr;
  if (is_rms) {
    has_res ? launch_norm_fwd_flags<T, true, true>(a, vectorize, stream)
            : launch_norm_fwd_flags<T, true, false>(a, vectorize, stream);
  } else {
    has_res ? launch_norm_fwd_flags<T, false, true>(a, vectorize, stream)
            : launch_norm_fwd_flags<T, false, false>(a, vectorize, stream);
  }
  return cudaPeekAtLastError();
}

}  // namespace cuda_norm
}  // namespace leedl_fast
