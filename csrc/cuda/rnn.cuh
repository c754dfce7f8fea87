// CUDA C++ persistent kernels for the recurrent family: a whole LSTM or GRU layer (one
// direction), forward and backward, each in ONE launch (docs/rnn.md; the math is the one in
// csrc/cpu/rnn.cpp, which documents it step by step). The torch binding is rnn.cu.
//
// Torch-free on purpose: this header needs only the CUDA toolkit, so nvcc can compile-check it
// on a machine without a GPU or a CUDA build of torch.
//
// Why persistent: the recurrence is latency-bound. Step t needs all of h_{t-1}, and one step
// at B = 16, H = 256 is ~4 M multiply-adds -- microseconds of work. A kernel launch per step
// costs about as much as the step, and it re-reads W_hh (2-8 MiB) from L2 every step. Here one
// cooperative launch runs the whole time loop:
//
//   * grid = up to one block per SM (cudaLaunchCooperativeKernel guarantees they are all
//     resident, which a grid-wide barrier needs); block k owns the hidden units
//     [k*S, (k+1)*S) -- all four (LSTM) or three (GRU) gates of each -- for every step;
//   * the block's slice of W_hh lives in shared memory for the whole sequence, in the input
//     dtype (fp16/bf16 halve it: H = 1024 is 8 MiB in fp16, 64 KiB per block on 128 SMs);
//   * per step: h_{t-1} (fp32, from L2) times the slice -> the slice's gate pre-activations for
//     all B rows, the gate math fused into the product's epilogue, h_t / c_t / activated gates
//     written; then cooperative_groups::this_grid().sync(), because step t + 1 reads every
//     unit of h_t.
//
// The backward runs the same grid backwards in time. Per step:
//   phase A (the block's units):   dG_t for the slice (pre-activation gradients, fp32) from
//                                  dh = dy_t + dh_next, dc_next and the saved gates/cells;
//   grid.sync                      (phase B reads every gate's dG_t)
//   phase B (the block's units):   dh_next[:, slice] = dG_t W_hh[:, slice]    (K = 4H or 3H)
// so the backward keeps the COLUMNS of W_hh that feed its units (4H x S, the same size as the
// forward's rows) in shared memory. dW_hh = sum_t dG_t^T h_{t-1} needs no time loop: the host
// does it afterwards as one GEMM over all steps, from the dG the kernel writes for every step.
// Phase A of step t - 1 reads only the block's own units of dh_next, so one grid barrier per
// step suffices.
//
// State that crosses blocks (h, dG) is fp32 and read with ld.global.cg (L2, not the SM's
// non-coherent L1: the forward's h ping-pongs between two buffers, so an L1 line of step t - 2
// would be stale). The gate math is fp32 for every dtype, as the CPU kernels do.
//
// The product (block_product): C[b][r] = sum_k A[b][k] W_slice[r][k], r over the slice's rows
// (R = 4S, 3S or S), k over K (H forward, 4H / 3H backward), b over the batch in tiles. It is
// a small tiled GEMM with split K on CUDA cores, fp32 FMAs:
//   * A (the step's h_{t-1} or dG_t) is staged through shared memory, kBatchTile (8) rows x
//     a K-chunk of <= 1024 floats at a time, zero-padded past the batch and past K;
//   * each thread owns one weight row r, a contiguous range of K (ksplit threads share a row)
//     and 8 batch rows: per 4 k it loads 4 weights (one 8/16-byte LDS) and 8 x 4 staged h
//     values (broadcast LDS.128: all threads of a K range read the same address) and does 32
//     FMAs. When R * ksplit < the block, `groups` batch tiles run side by side;
//   * the ksplit partial sums meet in shared memory, and the epilogue threads (one per (batch
//     row, unit)) add them up and run the gate math.
// Weight rows in shared memory are padded (row stride = K rounded up to 128 bytes, plus one
// 4-element pack) so that the 8 or 16 lanes of one LDS phase reading the same k of
// consecutive rows hit distinct banks.
//
// Fit (plan_rnn / the launchers): S = ceil(H / #SMs) units per block; the slice (rows x K
// elements), the staging buffer and the partial sums must fit the opt-in shared memory per
// block, and the grid must be co-resident (occupancy x #SMs >= blocks). Otherwise the launcher
// returns kDoesNotFit and launches nothing, and the caller falls back to the per-step path
// (kernels/rnn.py). On H100 (132 SMs, 227 KiB): fp16/bf16 fit up to H ~ 1500, fp32 up to
// H ~ 1100; H = 2048 never fits.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common.cuh"

namespace leedl_fast {
namespace cuda_rnn {

using cuda::from_float;
using cuda::load_pack;
using cuda::to_float;

constexpr int kThreads = 256;        // threads per block (8 warps)
constexpr int kBatchTile = 8;        // batch rows per thread in the product (register tile)
constexpr int kMaxChunk = 1024;      // K columns of A staged at a time (floats)
constexpr int kMinPacksPerThread = 4;  // fewer K packs per thread: fewer threads share a row
constexpr int kStageBudget = 48 * 1024;  // bytes of staged A when several batch tiles run
constexpr int kPack = 4;             // K elements per weight load (8 or 16 bytes)

// What the launchers return when the weights do not fit on chip (or the grid cannot be
// co-resident): the caller falls back to the per-step path. Every other non-success value is
// a CUDA error.
constexpr cudaError_t kDoesNotFit = cudaErrorCooperativeLaunchTooLarge;

enum class RnnKernel { kLstmFwd, kLstmBwd, kGruFwd, kGruBwd };

// ------------------------------------------------------------------------------- the plan
// Sizes every block agrees on; computed on the host (plan_rnn), passed to the kernel by value.
struct RnnPlan {
  int units;     // S: hidden units per block (the last block may own fewer)
  int blocks;    // ceil(H / S): the grid
  int rows;      // R: rows of the block's weight slice (gates per unit x S, or S backward)
  int k;         // K: the product's reduction length (H forward; 4H / 3H backward)
  int kpad;      // K rounded up to a whole pack
  int wstride;   // elements per weight row in shared memory (padded, see above)
  int chunk;     // K columns of A staged per pass (a whole number of packs)
  int ksplit;    // threads sharing one weight row, each a contiguous range of K
  int groups;    // batch tiles computed side by side (each by rows x ksplit threads)
  int wbytes;    // shared memory: weight slice (16-byte aligned size)
  int stage_floats;  // shared memory: staged A, groups * kBatchTile * chunk floats
  int part_floats;   // shared memory: partial sums, groups * ksplit * kBatchTile * rows floats
  size_t smem;   // total dynamic shared memory per block
};

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
inline int round_up(int a, int b) { return ceil_div(a, b) * b; }

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

// Pure arithmetic (no CUDA calls): the plan for `num_sms` blocks at most and `smem_limit`
// bytes of shared memory per block. Returns false when it cannot fit.
template <typename T>
bool make_plan(RnnKernel kind, int hidden, int batch, int num_sms, size_t smem_limit,
               RnnPlan* p) {
  if (hidden <= 0 || batch <= 0 || num_sms <= 0) return false;
  p->units = ceil_div(hidden, num_sms);
  p->blocks = ceil_div(hidden, p->units);
  p->units = ceil_div(hidden, p->blocks);  // same grid, the units spread evenly
  p->rows = rows_per_unit(kind) * p->units;
  if (p->rows > kThreads) return false;
  // The kernels index (batch row, unit) pairs and gate columns with int.
  if (static_cast<int64_t>(batch) * 4 * hidden > INT32_MAX) return false;
  p->k = reduction_length(kind, hidden);
  p->kpad = round_up(p->k, kPack);
  p->wstride = round_up(p->k, 128 / static_cast<int>(sizeof(T))) + kPack;
  p->chunk = p->kpad < kMaxChunk ? p->kpad : kMaxChunk;
  const int packs = p->chunk / kPack;
  int ksplit = kThreads / p->rows;
  const int wanted = ceil_div(packs, kMinPacksPerThread);
  if (ksplit > wanted) ksplit = wanted;
  p->ksplit = ksplit < 1 ? 1 : ksplit;
  int groups = kThreads / (p->rows * p->ksplit);
  const int tiles = ceil_div(batch, kBatchTile);
  if (groups > tiles) groups = tiles;
  const int by_budget = kStageBudget / (kBatchTile * p->chunk * 4);
  if (groups > by_budget) groups = by_budget;
  p->groups = groups < 1 ? 1 : groups;
  const int64_t wbytes = static_cast<int64_t>(p->rows) * p->wstride * sizeof(T);
  if (wbytes > static_cast<int64_t>(smem_limit)) return false;  // (also keeps the ints small)
  p->wbytes = round_up(static_cast<int>(wbytes), 16);
  p->stage_floats = p->groups * kBatchTile * p->chunk;
  p->part_floats = p->groups * p->ksplit * kBatchTile * p->rows;
  p->smem = static_cast<size_t>(p->wbytes) + 4u * (p->stage_floats + p->part_floats);
  return p->smem <= smem_limit;
}

// ----------------------------------------------------------------------------- arguments
// All pointers contiguous, row-major; T is the input dtype (float, __half, __nv_bfloat16).
// Steps T_ = `steps`, batch B, hidden H. None alias (the binding allocates outputs and
// workspaces).

template <typename T>
struct LstmFwdArgs {
  const T* gates_x;  // (T_, B, 4H): x W_ih^T + b_ih + b_hh, gate order i, f, g, o
  const T* w_hh;     // (4H, H)
  const float* c0;   // (B, H)
  float* hbuf;       // (2, B, H) workspace: h_t goes to hbuf[t % 2]; hbuf[1] = h0 on entry
  T* y;              // (T_, B, H) out
  float* cells;      // (T_, B, H) out: c_t
  float* gates;      // (T_, B, 4H) out: activated i, f, g, o
  int steps, batch, hidden;
};

template <typename T>
struct LstmBwdArgs {
  const T* dy;          // (T_, B, H)
  const float* gates;   // (T_, B, 4H) activated, from the forward
  const float* cells;   // (T_, B, H)
  const float* c0;      // (B, H)
  const T* w_hh;        // (4H, H)
  float* dgates;        // (T_, B, 4H) out: pre-activation gradients (dgates_x; dW_hh's input)
  float* dh;            // (B, H) in: dh_n; out: dh0
  float* dc;            // (B, H) in: dc_n; out: dc0
  int steps, batch, hidden;
};

template <typename T>
struct GruFwdArgs {
  const T* gates_x;  // (T_, B, 3H): x W_ih^T + b_ih, gate order r, z, n
  const T* w_hh;     // (3H, H)
  const T* b_hh;     // (3H,) or nullptr
  float* hbuf;       // (2, B, H) workspace, as the LSTM's; hbuf[1] = h0 on entry
  T* y;              // (T_, B, H) out
  float* saved;      // (T_, B, 4H) out: r, z, n, hn (hn = h W_hn^T + b_hn)
  int steps, batch, hidden;
};

template <typename T>
struct GruBwdArgs {
  const T* dy;          // (T_, B, H)
  const float* saved;   // (T_, B, 4H) from the forward
  const T* y;           // (T_, B, H): h_{t-1} = y[t-1] (rounded, as the CPU kernel reads it)
  const float* h0;      // (B, H)
  const T* w_hh;        // (3H, H)
  T* dgates_x;          // (T_, B, 3H) out: dr, dz, dn (input-side pre-activation gradients)
  float* dgates_h;      // (T_, B, 3H) out: dr, dz, dn * r (recurrent side; dW_hh, db_hh)
  float* dh;            // (B, H) in: dh_n; out: dh0
  int steps, batch, hidden;
};

// ------------------------------------------------------------------------- device helpers

__device__ __forceinline__ float sigmoid(float x) { return __frcp_rn(1.f + expf(-x)); }

// The block's weight slice, forward: wsm[r][k] = W[q*H + j0 + u][k] for r = q*S + u (the S
// units' rows of every gate); zero past H (the last block's missing units) and past K.
template <typename T>
__device__ void load_weight_rows(const T* __restrict__ w, int hidden, int j0,
                                 const RnnPlan& p, T* wsm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int r = warp; r < p.rows; r += warps) {
    const int q = r / p.units, j = j0 + r - q * p.units;
    const T* src = w + (static_cast<int64_t>(q) * hidden + j) * p.k;
    for (int k = lane; k < p.wstride; k += 32)
      wsm[r * p.wstride + k] = (j < hidden && k < p.k) ? src[k] : from_float<T>(0.f);
  }
}

// Backward: wsm[u][g] = W[g][j0 + u], the columns of W (rows g < K = 4H or 3H) that feed the
// block's units. Unit-fastest order, so a warp reads S consecutive elements of each W row.
template <typename T>
__device__ void load_weight_cols(const T* __restrict__ w, int hidden, int j0, const RnnPlan& p,
                                 T* wsm) {
  const int total = p.units * p.wstride;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int g = idx / p.units, u = idx - g * p.units, j = j0 + u;
    wsm[u * p.wstride + g] = (j < hidden && g < p.k)
                                 ? w[static_cast<int64_t>(g) * hidden + j]
                                 : from_float<T>(0.f);
  }
}

// C[b][r] = sum_k A[b][k] * wsm[r][k] for b < batch, r < rows (A: (batch, K) fp32, written by
// other blocks -> ld.global.cg), then epi(b, u, pre) for every batch row b and unit u < S with
// pre[q] = C[b][q*S + u], q < NG. Called by the whole block (it has __syncthreads inside);
// epi runs on one thread per (b, u) and must not touch shared memory.
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
  const bool vec_a = (p.k & 3) == 0;  // rows of A start 16-byte aligned (K % 4 == 0)
  const TW* wrow = wsm + r * p.wstride;
  const float* srow = stage + g * kBatchTile * p.chunk;

  for (int b0 = 0; b0 < batch; b0 += pass_rows) {
    float acc[kBatchTile];
#pragma unroll
    for (int bb = 0; bb < kBatchTile; ++bb) acc[bb] = 0.f;

    for (int k0 = 0; k0 < p.kpad; k0 += p.chunk) {
      const int kc = p.kpad - k0 < p.chunk ? p.kpad - k0 : p.chunk;  // a multiple of kPack
      const int packs = kc / kPack;
      __syncthreads();  // the stage (and the partial sums) are free again
      for (int idx = tid; idx < pass_rows * packs; idx += blockDim.x) {
        const int gb = idx / packs, v = idx - gb * packs;
        const int b = b0 + gb, kg = k0 + v * kPack;
        float4 val = make_float4(0.f, 0.f, 0.f, 0.f);
        if (b < batch) {
          const float* src = A + static_cast<int64_t>(b) * p.k + kg;
          if (vec_a) {
            val = __ldcg(reinterpret_cast<const float4*>(src));
          } else {
            if (kg < p.k) val.x = __ldcg(src);
            if (kg + 1 < p.k) val.y = __ldcg(src + 1);
            if (kg + 2 < p.k) val.z = __ldcg(src + 2);
            if (kg + 3 < p.k) val.w = __ldcg(src + 3);
          }
        }
        *reinterpret_cast<float4*>(stage + gb * p.chunk + v * kPack) = val;
      }
      __syncthreads();
      if (active) {
        const int per = (packs + p.ksplit - 1) / p.ksplit;
        const int v0 = ks * per, v1 = v0 + per < packs ? v0 + per : packs;
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

    if (active) {
#pragma unroll
      for (int bb = 0; bb < kBatchTile; ++bb)
        part[((g * p.ksplit + ks) * kBatchTile + bb) * p.rows + r] = acc[bb];
    }
    __syncthreads();
    for (int idx = tid; idx < pass_rows * p.units; idx += blockDim.x) {
      const int gb = idx / p.units, u = idx - gb * p.units;
      const int b = b0 + gb;
      if (b >= batch) continue;
      const int tile = gb / kBatchTile, bb = gb - tile * kBatchTile;
      const float* sums = part + (tile * p.ksplit * kBatchTile + bb) * p.rows + u;
      float pre[NG];
#pragma unroll
      for (int q = 0; q < NG; ++q) {
        float s = 0.f;
        for (int kk = 0; kk < p.ksplit; ++kk) s += sums[kk * kBatchTile * p.rows + q * p.units];
        pre[q] = s;
      }
      epi(b, u, pre);
    }
  }
}

// The dynamic shared memory: weight slice | staged A | partial sums.
struct SharedLayout {
  unsigned char* base;
  template <typename T>
  __device__ T* weights() const { return reinterpret_cast<T*>(base); }
  __device__ float* stage(const RnnPlan& p) const {
    return reinterpret_cast<float*>(base + p.wbytes);
  }
  __device__ float* part(const RnnPlan& p) const { return stage(p) + p.stage_floats; }
};

// ----------------------------------------------------------------------------- the kernels
// One cooperative launch each: grid = plan.blocks, block = kThreads, plan.smem bytes of
// dynamic shared memory. No block returns early: every block must reach every grid barrier.

// LSTM forward (per step t, the block's units j, every batch row b):
//   pre = h_{t-1} W_hh[rows of j]^T + gates_x[t]     (i, f, g, o)
//   i, f, o = sigmoid, g = tanh;  c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
lstm_fwd_kernel(const LstmFwdArgs<T> a, const RnnPlan p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const SharedLayout sm{smem_raw};
  T* wsm = sm.weights<T>();
  const int H = a.hidden, B = a.batch, j0 = blockIdx.x * p.units;
  const int64_t BH = static_cast<int64_t>(B) * H;
  load_weight_rows<T>(a.w_hh, H, j0, p, wsm);  // block_product's first barrier orders this
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();

  for (int t = 0; t < a.steps; ++t) {
    const float* h_prev = a.hbuf + ((t + 1) & 1) * BH;
    float* h_next = a.hbuf + (t & 1) * BH;
    block_product<4, T>(p, h_prev, B, wsm, sm.stage(p), sm.part(p),
                        [&](int b, int u, const float* pre) {
      const int j = j0 + u;
      if (j >= H) return;
      const int64_t row = static_cast<int64_t>(t) * B + b;
      const T* gx = a.gates_x + row * 4 * H + j;
      const float i = sigmoid(pre[0] + to_float<T>(gx[0]));
      const float f = sigmoid(pre[1] + to_float<T>(gx[H]));
      const float gg = tanhf(pre[2] + to_float<T>(gx[2 * H]));
      const float o = sigmoid(pre[3] + to_float<T>(gx[3 * H]));
      const float c_prev = t == 0 ? a.c0[static_cast<int64_t>(b) * H + j]
                                  : __ldcg(a.cells + (row - B) * H + j);
      const float c = f * c_prev + i * gg;
      const float h = o * tanhf(c);
      float* gates = a.gates + row * 4 * H + j;
      gates[0] = i;
      gates[H] = f;
      gates[2 * H] = gg;
      gates[3 * H] = o;
      a.cells[row * H + j] = c;
      a.y[row * H + j] = from_float<T>(h);
      h_next[static_cast<int64_t>(b) * H + j] = h;
    });
    if (t + 1 < a.steps) grid.sync();  // step t + 1 reads every unit of h_t
  }
}

// LSTM backward, t = T_-1 .. 0 (dh, dc: the gradients flowing into step t from step t + 1):
//   phase A  dh += dy_t;  dc += dh o (1 - tanh^2 c_t)
//            dG_t = (dc g i(1-i), dc c_{t-1} f(1-f), dc i (1-g^2), dh tanh(c_t) o(1-o))
//            dc = dc f
//   sync     phase B reads all of dG_t
//   phase B  dh[:, j] = dG_t W_hh[:, j]   (K = 4H)
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
lstm_bwd_kernel(const LstmBwdArgs<T> a, const RnnPlan p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const SharedLayout sm{smem_raw};
  T* wsm = sm.weights<T>();
  const int H = a.hidden, B = a.batch, S = p.units, j0 = blockIdx.x * S;
  load_weight_cols<T>(a.w_hh, H, j0, p, wsm);
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();

  for (int t = a.steps - 1; t >= 0; --t) {
    __syncthreads();  // the previous phase B's dh writes (other threads) are visible
    for (int idx = threadIdx.x; idx < B * S; idx += blockDim.x) {
      const int b = idx / S, j = j0 + idx - b * S;
      if (j >= H) continue;
      const int64_t row = static_cast<int64_t>(t) * B + b, st = static_cast<int64_t>(b) * H + j;
      const float* gates = a.gates + row * 4 * H + j;
      const float i = gates[0], f = gates[H], gg = gates[2 * H], o = gates[3 * H];
      const float tc = tanhf(a.cells[row * H + j]);
      const float c_prev = t == 0 ? a.c0[st] : a.cells[(row - B) * H + j];
      const float dh = to_float<T>(a.dy[row * H + j]) + a.dh[st];
      const float dc = a.dc[st] + dh * o * (1.f - tc * tc);
      float* dg = a.dgates + row * 4 * H + j;
      dg[0] = dc * gg * i * (1.f - i);
      dg[H] = dc * c_prev * f * (1.f - f);
      dg[2 * H] = dc * i * (1.f - gg * gg);
      dg[3 * H] = dh * tc * o * (1.f - o);
      a.dc[st] = dc * f;
    }
    grid.sync();
    block_product<1, T>(p, a.dgates + static_cast<int64_t>(t) * B * 4 * H, B, wsm, sm.stage(p),
                        sm.part(p), [&](int b, int u, const float* pre) {
      const int j = j0 + u;
      if (j < H) a.dh[static_cast<int64_t>(b) * H + j] = pre[0];
    });
  }
}

// GRU forward (torch's r, z, n; b_hn inside the reset product):
//   pre = h_{t-1} W_hh[rows of j]^T;  r = sigmoid(gx_r + pre_r + b_r), z = sigmoid(gx_z + pre_z
//   + b_z);  hn = pre_n + b_n;  n = tanh(gx_n + r hn);  h_t = (1 - z) n + z h_{t-1}
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
gru_fwd_kernel(const GruFwdArgs<T> a, const RnnPlan p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const SharedLayout sm{smem_raw};
  T* wsm = sm.weights<T>();
  const int H = a.hidden, B = a.batch, j0 = blockIdx.x * p.units;
  const int64_t BH = static_cast<int64_t>(B) * H;
  load_weight_rows<T>(a.w_hh, H, j0, p, wsm);
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();

  for (int t = 0; t < a.steps; ++t) {
    const float* h_prev = a.hbuf + ((t + 1) & 1) * BH;
    float* h_next = a.hbuf + (t & 1) * BH;
    block_product<3, T>(p, h_prev, B, wsm, sm.stage(p), sm.part(p),
                        [&](int b, int u, const float* pre) {
      const int j = j0 + u;
      if (j >= H) return;
      const int64_t row = static_cast<int64_t>(t) * B + b, st = static_cast<int64_t>(b) * H + j;
      const T* gx = a.gates_x + row * 3 * H + j;
      float bias[3] = {0.f, 0.f, 0.f};
      if (a.b_hh != nullptr) {
#pragma unroll
        for (int q = 0; q < 3; ++q) bias[q] = to_float<T>(a.b_hh[q * H + j]);
      }
      const float r = sigmoid(to_float<T>(gx[0]) + (pre[0] + bias[0]));
      const float z = sigmoid(to_float<T>(gx[H]) + (pre[1] + bias[1]));
      const float hn = pre[2] + bias[2];
      const float n = tanhf(to_float<T>(gx[2 * H]) + r * hn);
      const float h = (1.f - z) * n + z * __ldcg(h_prev + st);
      float* saved = a.saved + row * 4 * H + j;
      saved[0] = r;
      saved[H] = z;
      saved[2 * H] = n;
      saved[3 * H] = hn;
      a.y[row * H + j] = from_float<T>(h);
      h_next[st] = h;
    });
    if (t + 1 < a.steps) grid.sync();
  }
}

// GRU backward, t = T_-1 .. 0:
//   phase A  dh += dy_t;  dn = dh (1-z)(1-n^2);  dz = dh (h_{t-1} - n) z(1-z);
//            dr = dn hn r(1-r);  dgates_x = (dr, dz, dn);  dgates_h = (dr, dz, dn r);
//            dh = dh z                               (the direct path through h_{t-1})
//   sync
//   phase B  dh[:, j] += dgates_h[t] W_hh[:, j]      (K = 3H)
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
gru_bwd_kernel(const GruBwdArgs<T> a, const RnnPlan p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const SharedLayout sm{smem_raw};
  T* wsm = sm.weights<T>();
  const int H = a.hidden, B = a.batch, S = p.units, j0 = blockIdx.x * S;
  load_weight_cols<T>(a.w_hh, H, j0, p, wsm);
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();

  for (int t = a.steps - 1; t >= 0; --t) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < B * S; idx += blockDim.x) {
      const int b = idx / S, j = j0 + idx - b * S;
      if (j >= H) continue;
      const int64_t row = static_cast<int64_t>(t) * B + b, st = static_cast<int64_t>(b) * H + j;
      const float* saved = a.saved + row * 4 * H + j;
      const float r = saved[0], z = saved[H], n = saved[2 * H], hn = saved[3 * H];
      const float h_prev = t == 0 ? a.h0[st] : to_float<T>(a.y[(row - B) * H + j]);
      const float dh = to_float<T>(a.dy[row * H + j]) + a.dh[st];
      const float dn = dh * (1.f - z) * (1.f - n * n);
      const float dz = dh * (h_prev - n) * z * (1.f - z);
      const float dr = dn * hn * r * (1.f - r);
      T* dgx = a.dgates_x + row * 3 * H + j;
      dgx[0] = from_float<T>(dr);
      dgx[H] = from_float<T>(dz);
      dgx[2 * H] = from_float<T>(dn);
      float* dgh = a.dgates_h + row * 3 * H + j;
      dgh[0] = dr;
      dgh[H] = dz;
      dgh[2 * H] = dn * r;
      a.dh[st] = dh * z;
    }
    grid.sync();
    block_product<1, T>(p, a.dgates_h + static_cast<int64_t>(t) * B * 3 * H, B, wsm,
                        sm.stage(p), sm.part(p), [&](int b, int u, const float* pre) {
      const int j = j0 + u;
      if (j < H) a.dh[static_cast<int64_t>(b) * H + j] += pre[0];
    });
  }
}

// ----------------------------------------------------------------------------- launchers

template <typename Args>
using RnnKernelFn = void (*)(Args, RnnPlan);

// The plan for `kind` on the current device, checked against its opt-in shared memory per
// block and, with `kernel` given, against the kernel's co-residency (this also raises the
// kernel's dynamic shared memory limit to the plan's need). Returns cudaSuccess, kDoesNotFit,
// or the CUDA error of a failed query.
template <typename T, typename Args = LstmFwdArgs<T>>
cudaError_t plan_rnn(RnnKernel kind, int hidden, int batch, RnnPlan* plan,
                     RnnKernelFn<Args> kernel = nullptr) {
  int device = 0, num_sms = 0, smem_optin = 0, coop = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (err != cudaSuccess) return err;
  if (!coop) return kDoesNotFit;
  if (!make_plan<T>(kind, hidden, batch, num_sms, static_cast<size_t>(smem_optin), plan))
    return kDoesNotFit;
  if (kernel == nullptr) return cudaSuccess;
  const void* fn = reinterpret_cast<const void*>(kernel);
  err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(plan->smem));
  int per_sm = 0;
  if (err == cudaSuccess)
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, kThreads, plan->smem);
  if (err != cudaSuccess) return err;
  return per_sm * num_sms >= plan->blocks ? cudaSuccess : kDoesNotFit;
}

// Each launcher: kDoesNotFit (nothing launched; the caller falls back), a CUDA error, or
// cudaSuccess with the kernel queued on `stream`. steps == 0 or batch == 0 launch nothing.
// The caller fills the workspaces' inputs first (hbuf[1] = h0; dh = dh_n, dc = dc_n).
template <typename T, typename Args>
cudaError_t launch_rnn(RnnKernelFn<Args> kernel, RnnKernel kind, const Args& args,
                       cudaStream_t stream) {
  if (args.steps <= 0 || args.batch <= 0 || args.hidden <= 0) return cudaSuccess;
  RnnPlan plan;
  cudaError_t err = plan_rnn<T, Args>(kind, args.hidden, args.batch, &plan, kernel);
  if (err != cudaSuccess) return err;
  Args a = args;
  void* params[] = {&a, &plan};
  err = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(plan.blocks),
                                    dim3(kThreads), params, plan.smem, stream);
  if (err == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();  // not sticky; clear it so the caller's launch check passes
    return kDoesNotFit;
  }
  return err;
}

template <typename T>
cudaError_t launch_lstm_fwd(const LstmFwdArgs<T>& a, cudaStream_t stream) {
  return launch_rnn<T>(&lstm_fwd_kernel<T>, RnnKernel::kLstmFwd, a, stream);
}

template <typename T>
cudaError_t launch_lstm_bwd(const LstmBwdArgs<T>& a, cudaStream_t stream) {
  return launch_rnn<T>(&lstm_bwd_kernel<T>, RnnKernel::kLstmBwd, a, stream);
}

template <typename T>
cudaError_t launch_gru_fwd(const GruFwdArgs<T>& a, cudaStream_t stream) {
  return launch_rnn<T>(&gru_fwd_kernel<T>, RnnKernel::kGruFwd, a, stream);
}

template <typename T>
cudaError_t launch_gru_bwd(const GruBwdArgs<T>& a, cudaStream_t stream) {
  return launch_rnn<T>(&gru_bwd_kernel<T>, RnnKernel::kGruBwd, a, stream);
}

// Whether `kind` fits on chip on the current device for this hidden size and batch: cudaSuccess
// or kDoesNotFit (or a CUDA error). Cheap (attribute queries only); the binding asks before it
// allocates anything, so a fallback wastes no memory.
template <typename T>
cudaError_t rnn_fits(RnnKernel kind, int hidden, int batch) {
  RnnPlan plan;
  switch (kind) {
    case RnnKernel::kLstmFwd:
      return plan_rnn<T, LstmFwdArgs<T>>(kind, hidden, batch, &plan, &lstm_fwd_kernel<T>);
    case RnnKernel::kLstmBwd:
      return plan_rnn<T, LstmBwdArgs<T>>(kind, hidden, batch, &plan, &lstm_bwd_kernel<T>);
    case RnnKernel::kGruFwd:
      return plan_rnn<T, GruFwdArgs<T>>(kind, hidden, batch, &plan, &gru_fwd_kernel<T>);
    default:
      return plan_rnn<T, GruBwdArgs<T>>(kind, hidden, batch, &plan, &gru_bwd_kernel<T>);
  }
}

}  // namespace cuda_rnn
}  // namespace leedl_fast
