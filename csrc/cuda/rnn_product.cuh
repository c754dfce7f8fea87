// The persistent RNN kernels' building blocks (csrc/cuda/rnn.cuh has the design): tuning
// constants, the launch plan (how many blocks, which product path, shared memory), and the
// per-step block product on CUDA cores or tensor cores with its epilogue hook. Torch-free,
// like rnn.cuh, so nvcc compile-checks it alone.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstddef>
#include <cstdint>

#include "common.cuh"


namespace leedl_fast {
namespace cuda_rnn {

using cuda::from_float;
using cuda::load_pack;
using cuda::to_float;

constexpr int kThreads = 256;        // threads per block (8 warps)
constexpr int kWarps = kThreads / 32;
// CUDA-core product (fp32; fp16/bf16 where tensor cores are off or do not fit):
constexpr int kBatchTile = 8;        // batch rows per thread in the product (register tile)
constexpr int kMaxChunk = 1024;      // K columns of A staged at a time (floats)
constexpr int kMinPacksPerThread = 4;  // fewer K packs per thread: fewer threads share a row
constexpr int kStageBudget = 48 * 1024;  // bytes of staged A when several batch tiles run
constexpr int kPack = 4;             // K elements per weight load (8 or 16 bytes)
constexpr int kStageLoads = 8;       // independent loads in flight per thread when staging A
// Tensor-core product (fp16/bf16 on sm_80+), wmma 16 x 16 x 16 tiles:
constexpr int kTile = 16;
constexpr int kMmaBatchTiles = 4;    // 16-row batch tiles per pass (64 rows)
constexpr int kMmaMaxItems = 2;      // (row tile, K range) work items per warp: rows <= 256
constexpr int kMmaChunk = 512;       // K columns of A staged at a time (16-bit elements)

// What the launchers return when the weights do not fit on chip (or the grid cannot be
// co-resident): the caller falls back to the per-step path. Every other non-success value is
// a CUDA error.
constexpr cudaError_t kDoesNotFit = cudaErrorCooperativeLaunchTooLarge;

enum class RnnKernel { kLstmFwd, kLstmBwd, kGruFwd, kGruBwd };

// ------------------------------------------------------------------------------- the plan
// Sizes every block agrees on; computed on the host (plan_rnn), passed to the kernel by value.
struct RnnPlan {
  bool mma;      // tensor-core product (block_product_mma) or CUDA cores (block_product)
  int units;     // S: hidden units per block (the last block may own fewer)
  int blocks;    // ceil(H / S): the grid
  int rows;      // R: rows of the block's weight slice (gates per unit x S, or S backward)
  int wrows;     // rows kept in shared memory: R, or R rounded up to whole 16-row tiles (mma)
  int k;         // K: the product's reduction length (H forward; 4H / 3H backward)
  int kpad;      // K rounded up to a whole pack (4) or tile (16, mma)
  int wstride;   // elements per weight row in shared memory (padded, see above)
  int chunk;     // K columns of A staged per pass (a whole number of packs / tiles)
  int ksplit;    // threads (warps, mma) sharing one weight row (row tile), each a K range
  int groups;    // batch tiles per pass: of kBatchTile rows (each computed by rows x ksplit
                 // threads side by side), or of 16 rows (mma)
  int sld;       // mma: elements per staged row (chunk padded like wstride)
  int wbytes;    // shared memory: the weight slice (128-byte aligned size)
  int stage_bytes;  // shared memory: staged A (fp32 for CUDA cores, T for mma)
  int part_floats;  // shared memory: partial sums of the K ranges
  size_t smem;   // total dynamic shared memory per block
};

__host__ __device__ inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ inline int round_up(int a, int b) { return ceil_div(a, b) * b; }
__host__ __device__ inline int min_int(int a, int b) { return a < b ? a : b; }

inline int rows_per_unit(RnnKernel kind) {
  switch (kind) {
    case RnnKernel::kLstmFwd: return 4;
    case RnnKernel::kGruFwd: return 3;
    default: return 1;  // the backward's slice is the unit's column of W_hh
  }
}

inline int reduction_length(RnnKernel kind, int hidden) {
  switch (kind) {
    case RnnKernel::kLstmBwd: return 4 * hidden;
    case RnnKernel::kGruBwd: return 3 * hidden;
    default: return hidden;
  }
}

// CUDA cores: ksplit threads per weight row (each >= kMinPacksPerThread packs of a chunk),
// `groups` batch tiles of kBatchTile rows side by side with the threads left over.
inline void plan_cuda_cores(int batch, RnnPlan* p) {
  p->kpad = round_up(p->k, kPack);
  p->chunk = min_int(p->kpad, kMaxChunk);
  p->ksplit = min_int(kThreads / p->rows, ceil_div(p->chunk / kPack, kMinPacksPerThread));
  if (p->ksplit < 1) p->ksplit = 1;
  int groups = min_int(kThreads / (p->rows * p->ksplit), ceil_div(batch, kBatchTile));
  groups = min_int(groups, kStageBudget / (kBatchTile * p->chunk * 4));
  p->groups = groups < 1 ? 1 : groups;
  p->sld = p->chunk;
  p->stage_bytes = round_up(p->groups * kBatchTile * p->chunk * 4, 128);
  p->part_floats = p->groups * p->ksplit * kBatchTile * p->rows;
}

// Tensor cores: row tiles of 16 weight rows, ksplit warps per row tile (each a K range of
// whole 16-column tiles), up to kMmaBatchTiles 16-row batch tiles per pass -- fewer where the
// staged rows and partial sums would not fit next to the weights.
inline void plan_tensor_cores(int batch, int elem_bytes, size_t smem_limit, RnnPlan* p) {
  const int row_tiles = p->wrows / kTile;
  p->kpad = round_up(p->k, kTile);
  p->chunk = min_int(p->kpad, kMmaChunk);
  p->ksplit = min_int(row_tiles < kWarps ? kWarps / row_tiles : 1, p->chunk / kTile);
  p->sld = round_up(p->chunk, 64) + 8;  // rows 16 bytes apart mod 128: no bank conflicts
  for (p->groups = min_int(ceil_div(batch, kTile), kMmaBatchTiles);; --p->groups) {
    p->stage_bytes = round_up(p->groups * kTile * p->sld * elem_bytes, 128);
    p->part_floats = p->ksplit * p->wrows * p->groups * kTile;
    const size_t need = static_cast<size_t>(p->wbytes) + p->stage_bytes + 4u * p->part_floats;
    if (p->groups == 1 || need <= smem_limit) break;
  }
}

// Pure arithmetic (no CUDA calls): the plan for `num_sms` blocks at most and `smem_limit`
// bytes of shared memory per block, on tensor cores if `mma` (16-bit T only). Returns false
// when it cannot fit.
template <typename T>
bool make_plan(RnnKernel kind, int hidden, int batch, int num_sms, size_t smem_limit, bool mma,
               RnnPlan* p) {
  if (hidden <= 0 || batch <= 0 || num_sms <= 0) return false;
  if (mma && sizeof(T) != 2) return false;
  // The kernels index (batch row, unit) pairs and gate columns with int.
  if (static_cast<int64_t>(batch) * 4 * hidden > INT32_MAX) return false;
  p->mma = mma;
  p->units = ceil_div(hidden, num_sms);
  p->blocks = ceil_div(hidden, p->units);
  p->units = ceil_div(hidden, p->blocks);  // same grid, the units spread evenly
  p->rows = rows_per_unit(kind) * p->units;
  if (p->rows > kThreads) return false;
  p->wrows = mma ? round_up(p->rows, kTile) : p->rows;
  p->k = reduction_length(kind, hidden);
  // Weight rows: K rounded up to 128 bytes plus one 8-byte (16-bit) or 16-byte (fp32) pack,
  // so consecutive rows start 8 / 16 bytes apart modulo the 32 banks; mma pads 16 bytes.
  const int elem = static_cast<int>(sizeof(T));
  p->wstride = round_up(p->k, 128 / elem) + (mma ? 8 : kPack);
  const int64_t wbytes = static_cast<int64_t>(p->wrows) * p->wstride * elem;
  if (wbytes > static_cast<int64_t>(smem_limit)) return false;  // (also keeps the ints small)
  p->wbytes = round_up(static_cast<int>(wbytes), 128);
  if (mma) {
    plan_tensor_cores(batch, elem, smem_limit, p);
  } else {
    plan_cuda_cores(batch, p);
  }
  p->smem = static_cast<size_t>(p->wbytes) + p->stage_bytes + 4u * p->part_floats;
  return p->smem <= smem_limit;
}

// ------------------------------------------------------------------------- device helpers

__device__ __forceinline__ float sigmoid(float x) { return __frcp_rn(1.f + expf(-x)); }

// The block's weight slice, forward: wsm[r][k] = W[q*H + j0 + u][k] for r = q*S + u (the S
// units' rows of every gate); zero past H (the last block's missing units), past K and in the
// padding rows (r >= R, mma).
template <typename T>
__device__ void load_weight_rows(const T* __restrict__ w, int hidden, int j0,
                                 const RnnPlan& p, T* wsm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int r = warp; r < p.wrows; r += kWarps) {
    const int q = r / p.units, j = j0 + r - q * p.units;
    const bool valid = r < p.rows && j < hidden;
    const T* src = w + (static_cast<int64_t>(q) * hidden + j) * p.k;
    for (int k = lane; k < p.wstride; k += 32)
      wsm[r * p.wstride + k] = (valid && k < p.k) ? src[k] : from_float<T>(0.f);
  }
}

// Backward: wsm[u][g] = W[g][j0 + u], the columns of W (rows g < K = 4H or 3H) that feed the
// block's units. Unit-fastest order, so a warp reads S consecutive elements of each W row.
template <typename T>
__device__ void load_weight_cols(const T* __restrict__ w, int hidden, int j0, const RnnPlan& p,
                                 T* wsm) {
  const int total = p.wrows * p.wstride;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int g = idx / p.wrows, u = idx - g * p.wrows, j = j0 + u;
    wsm[u * p.wstride + g] = (u < p.units && j < hidden && g < p.k)
                                 ? w[static_cast<int64_t>(g) * hidden + j]
                                 : from_float<T>(0.f);
  }
}

// Stages rows [b0, b0 + rows) x columns [k0, k0 + kc) of A (batch, K) fp32 -- written by other
// blocks, so read with ld.global.cg -- into stage[row * ld + col] as TS (float, or the 16-bit T
// the tensor cores take), zero past the batch and past K. kc and ld are multiples of 4.
//
// Each thread issues kStageLoads independent 16-byte loads before it stores any of them: the
// loads come from L2 (another block wrote A this step), about 600 cycles each, and a loop
// with one load per iteration (what nvcc emitted before, PTX checked) pays that latency once
// per pack -- 32 round trips per step at batch 64, hidden 512, most of the step's time on the
// H100 (bench/results: 0.39-0.79x cuDNN at batch 64). Batched, it is rows*packs/(256*8).
template <typename TS>
__device__ __forceinline__ void stage_chunk(const float* A, int K, int batch, int b0, int rows,
                                            int k0, int kc, TS* stage, int ld) {
  const int packs = kc / kPack, total = rows * packs;
  const bool vec = (K & 3) == 0;  // rows of A start 16-byte aligned
  const int stride = static_cast<int>(blockDim.x);
  for (int first = threadIdx.x; first < total; first += stride * kStageLoads) {
    float val[kStageLoads][kPack];
#pragma unroll
    for (int i = 0; i < kStageLoads; ++i) {
      const int idx = first + i * stride;
      const int r = idx / packs, v = idx - r * packs;
      const int b = b0 + r, kg = k0 + v * kPack;
#pragma unroll
      for (int e = 0; e < kPack; ++e) val[i][e] = 0.f;
      if (idx < total && b < batch) {
        const float* src = A + static_cast<int64_t>(b) * K + kg;
        if (vec) {
          if (kg < K) {
            const float4 q = __ldcg(reinterpret_cast<const float4*>(src));
            val[i][0] = q.x, val[i][1] = q.y, val[i][2] = q.z, val[i][3] = q.w;
          }
        } else {
#pragma unroll
          for (int e = 0; e < kPack; ++e)
            if (kg + e < K) val[i][e] = __ldcg(src + e);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kStageLoads; ++i) {
      const int idx = first + i * stride;
      if (idx >= total) break;
      const int r = idx / packs, v = idx - r * packs;
      cuda::store_pack<TS, kPack>(stage + r * ld + v * kPack, val[i]);
    }
  }
}

// Epilogue of both products: pre[q] = sum over the ksplit partial sums of output row q*S + u
// (part[(ks * row_stride + row) * col_stride + col], col = the batch row within the pass),
// then epi(b, u, pre) for every batch row b < batch of the pass and unit u < S.
template <int NG, typename Epilogue>
__device__ __forceinline__ void reduce_partials(const RnnPlan& p, const float* part,
                                                int row_stride, int col_stride, int b0,
                                                int pass_rows, int batch, Epilogue& epi) {
  const int split_stride = row_stride * col_stride;
  for (int idx = threadIdx.x; idx < pass_rows * p.units; idx += blockDim.x) {
    const int col = idx / p.units, u = idx - col * p.units;
    const int b = b0 + col;
    if (b >= batch) continue;
    float pre[NG];
#pragma unroll
    for (int q = 0; q < NG; ++q) {
      const float* sums = part + (q * p.units + u) * col_stride + col;
      float s = 0.f;
      for (int ks = 0; ks < p.ksplit; ++ks) s += sums[ks * split_stride];
      pre[q] = s;
    }
    epi(b, u, pre);
  }
}

// C[b][r] = sum_k A[b][k] * wsm[r][k] for b < batch, r < R (A: (batch, K) fp32), then
// epi(b, u, pre) for every batch row b and unit u < S with pre[q] = C[b][q*S + u], q < NG.
// Called by the whole block (it has __syncthreads inside); epi runs on one thread per (b, u)
// and must not touch shared memory. CUDA cores, fp32 FMAs (see the top of the file).
template <int NG, typename TW, typename Epilogue>
__device__ __forceinline__ void block_product(const RnnPlan& p, const float* A, int batch,
                                              const TW* wsm, float* stage, float* part,
                                              Epilogue&& epi) {
  const int tid = threadIdx.x;
  const int group_threads = p.rows * p.ksplit;
  const int g = tid / group_threads;  // which batch tile of the pass this thread computes
  const int rem = tid - g * group_threads;
  const int ks = rem / p.rows, r = rem - ks * p.rows;
  const bool active = g < p.groups;
  const int pass_rows = p.groups * kBatchTile;
  const TW* wrow = wsm + r * p.wstride;
  const float* srow = stage + g * kBatchTile * p.chunk;

  for (int b0 = 0; b0 < batch; b0 += pass_rows) {
    float acc[kBatchTile];
#pragma unroll
    for (int bb = 0; bb < kBatchTile; ++bb) acc[bb] = 0.f;

    for (int k0 = 0; k0 < p.kpad; k0 += p.chunk) {
      const int kc = min_int(p.chunk, p.kpad - k0);  // a multiple of kPack
      __syncthreads();  // the stage (and the partial sums) are free again
      stage_chunk<float>(A, p.k, batch, b0, pass_rows, k0, kc, stage, p.chunk);
      __syncthreads();
      if (active) {
        const int packs = kc / kPack;
        const int per = ceil_div(packs, p.ksplit);
        const int v0 = ks * per, v1 = min_int(v0 + per, packs);
#pragma unroll 2
        for (int v = v0; v < v1; ++v) {
          float w[kPack];
          load_pack<TW, kPack>(wrow + k0 + v * kPack, w);
#pragma unroll
          for (int bb = 0; bb < kBatchTile; ++bb) {
            const float4 h = *reinterpret_cast<const float4*>(srow + bb * p.chunk + v * kPack);
            acc[bb] = fmaf(w[0], h.x, acc[bb]);
            acc[bb] = fmaf(w[1], h.y, acc[bb]);
            acc[bb] = fmaf(w[2], h.z, acc[bb]);
            acc[bb] = fmaf(w[3], h.w, acc[bb]);
          }
        }
      }
    }

    // part[(ks * R + r) * pass_rows + g * kBatchTile + bb]: the layout reduce_partials reads
    if (active) {
#pragma unroll
      for (int bb = 0; bb < kBatchTile; ++bb)
        part[(ks * p.rows + r) * pass_rows + g * kBatchTile + bb] = acc[bb];
    }
    __syncthreads();
    reduce_partials<NG>(p, part, p.rows, pass_rows, b0, pass_rows, batch, epi);
  }
}

// The same product on tensor cores (wmma m16n16k16, 16-bit inputs, fp32 accumulators), for
// T = __half / __nv_bfloat16 on sm_80+. A is rounded to T when staged -- the precision of the
// GEMMs torch runs in these dtypes; the gate math stays fp32. Layout:
//   wsm: wrows x wstride (row r = output row; rows past R are zero): the matrix_a tiles,
//        row-major, 16 rows x 16 k;
//   stage: groups*16 batch rows x sld, row-major: read as matrix_b col-major (k x batch);
//   each warp owns up to kMmaMaxItems (row tile, K range) items and, per item, one 16 x 16
//   accumulator per batch tile; the accumulators go to `part` (ksplit x wrows x groups*16,
//   row-major) and reduce_partials adds up the K ranges.
template <int NG, typename T, typename Epilogue>
__device__ __forceinline__ void block_product_mma(const RnnPlan& p, const float* A, int batch,
                                                  const T* wsm, T* stage, float* part,
                                                  Epilogue&& epi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched: the launchers pick tensor cores on compute capability >= 8.0
#else
  namespace wmma = nvcuda::wmma;
  const int warp = threadIdx.x >> 5;
  const int row_tiles = p.wrows / kTile, items = row_tiles * p.ksplit;
  const int pass_rows = p.groups * kTile;

  for (int b0 = 0; b0 < batch; b0 += pass_rows) {
    wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> acc[kMmaMaxItems]
                                                                     [kMmaBatchTiles];
#pragma unroll
    for (int i = 0; i < kMmaMaxItems; ++i) {
#pragma unroll
      for (int bt = 0; bt < kMmaBatchTiles; ++bt) wmma::fill_fragment(acc[i][bt], 0.f);
    }

    for (int k0 = 0; k0 < p.kpad; k0 += p.chunk) {
      const int kc = min_int(p.chunk, p.kpad - k0);  // a multiple of 16
      __syncthreads();
      stage_chunk<T>(A, p.k, batch, b0, pass_rows, k0, kc, stage, p.sld);
      __syncthreads();
      const int tiles = kc / kTile, per = ceil_div(tiles, p.ksplit);
#pragma unroll
      for (int i = 0; i < kMmaMaxItems; ++i) {
        const int item = warp + i * kWarps;
        if (item >= items) continue;
        const int rt = item % row_tiles, ks = item / row_tiles;
        const int kt1 = min_int(ks * per + per, tiles);
        for (int kt = ks * per; kt < kt1; ++kt) {
          wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, T, wmma::row_major> w;
          wmma::load_matrix_sync(w, wsm + rt * kTile * p.wstride + k0 + kt * kTile, p.wstride);
#pragma unroll
          for (int bt = 0; bt < kMmaBatchTiles; ++bt) {
            if (bt >= p.groups) continue;
            wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, T, wmma::col_major> h;
            wmma::load_matrix_sync(h, stage + bt * kTile * p.sld + kt * kTile, p.sld);
            wmma::mma_sync(acc[i][bt], w, h, acc[i][bt]);
          }
        }
      }
    }

#pragma unroll
    for (int i = 0; i < kMmaMaxItems; ++i) {
      const int item = warp + i * kWarps;
      if (item >= items) continue;
      const int rt = item % row_tiles, ks = item / row_tiles;
#pragma unroll
      for (int bt = 0; bt < kMmaBatchTiles; ++bt) {
        if (bt >= p.groups) continue;
        float* dst = part + (ks * p.wrows + rt * kTile) * pass_rows + bt * kTile;
        wmma::store_matrix_sync(dst, acc[i][bt], pass_rows, wmma::mem_row_major);
      }
    }
    __syncthreads();
    reduce_partials<NG>(p, part, p.wrows, pass_rows, b0, pass_rows, batch, epi);
  }
#endif
}

// The dynamic shared memory: weight slice | staged A | partial sums, each 128-byte aligned.
struct SharedLayout {
  unsigned char* base;
  template <typename T>
  __device__ T* weights() const { return reinterpret_cast<T*>(base); }
  template <typename TS>
  __device__ TS* stage(const RnnPlan& p) const { return reinterpret_cast<TS*>(base + p.wbytes); }
  __device__ float* part(const RnnPlan& p) const {
    return reinterpret_cast<float*>(base + p.wbytes + p.stage_bytes);
  }
};

// One step's product for the kernels: on tensor cores (MMA) or CUDA cores.
template <int NG, typename T, bool MMA, typename Epilogue>
__device__ __forceinline__ void step_product(const RnnPlan& p, const SharedLayout& sm,
                                             const float* A, int batch, Epilogue&& epi) {
  if constexpr (MMA) {
    block_product_mma<NG, T>(p, A, batch, sm.weights<T>(), sm.stage<T>(p), sm.part(p), epi);
  } else {
    block_product<NG, T>(p, A, batch, sm.weights<T>(), sm.stage<float>(p), sm.part(p), epi);
  }
}

}  // namespace cuda_rnn
}  // namespace leedl_fast
