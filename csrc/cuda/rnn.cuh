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
// The product, once per step: C[b][r] = sum_k A[b][k] W_slice[r][k], r over the slice's rows
// (R = 4S, 3S or S), k over K (H forward, 4H / 3H backward), b over the batch in passes. A
// (the step's h_{t-1} or dG_t, fp32 in global memory) is staged through shared memory a
// K-chunk at a time, zero-padded past the batch and past K; split-K partial sums meet in
// shared memory, and the epilogue threads (one per (batch row, unit)) add them up and run the
// gate math (reduce_partials). Two implementations:
//   * block_product, CUDA cores, fp32 FMAs (fp32; fp16/bf16 with tensor cores off): each
//     thread owns one weight row, a contiguous K range (ksplit threads share a row) and
//     kBatchTile = 8 batch rows; per 4 k it loads 4 weights (one 8/16-byte LDS) and 8 x 4
//     staged values (broadcast LDS.128) and does 32 FMAs. `groups` batch tiles run side by
//     side when R * ksplit leaves threads over. The 16-bit weights are widened exactly, so
//     this matches the CPU kernels (fp32 products) up to summation order.
//   * block_product_mma, tensor cores (fp16/bf16 on sm_80+, the default there): wmma
//     m16n16k16 with fp32 accumulators; the weight rows (padded to whole 16-row tiles) are
//     the A operand straight from shared memory, the staged batch rows (rounded to the dtype,
//     as in torch's GEMMs in that dtype) the B operand; each warp owns (row tile, K range)
//     items and one accumulator per 16-row batch tile (up to 4 per pass).
// Weight rows in shared memory are padded (row stride = K rounded up to 128 bytes plus 8 or 16
// bytes) so that the lanes of one load phase reading the same k of consecutive rows hit
// distinct banks.
//
// Fit (make_plan / choose_kernel): S = ceil(H / #SMs) units per block; the slice (rows x K
// elements), the staging buffer and the partial sums must fit the opt-in shared memory per
// block, and the grid must be co-resident (occupancy x #SMs >= blocks). The launchers try
// tensor cores first (16-bit, sm_80+), then CUDA cores; when neither fits they return
// kDoesNotFit and launch nothing, and the caller falls back to the per-step path
// (kernels/rnn.py). Largest hidden size that fits (tests/rnn_cuda_emulation.cpp checks the
// plans): H100 (132 SMs, 227 KiB per block) LSTM fp32 ~1190, fp16/bf16 ~1600 on tensor cores
// (~1710 on CUDA cores), GRU fp32 ~1440, 16-bit ~2000; A100 (108 SMs, 163 KiB) LSTM fp32
// ~870, 16-bit ~1100-1300. Hidden <= 1024 in fp16/bf16 fits both at any batch.
//
// Cost per step beyond the product: every block stages all of A (B x K fp32) from L2, so the
// L2 traffic per step is #blocks x B x K x 4 bytes (32 MiB at H = 1024, B = 64), and one grid
// barrier (~1-2 us). Both dominate at large B x H; at small sizes the barrier does.
#pragma once

#include "rnn_product.cuh"

namespace leedl_fast {
namespace cuda_rnn {

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

// ----------------------------------------------------------------------------- the kernels
// One cooperative launch each: grid = plan.blocks, block = kThreads, plan.smem bytes of
// dynamic shared memory. No block returns early: every block must reach every grid barrier.

// LSTM forward (per step t, the block's units j, every batch row b):
//   pre = h_{t-1} W_hh[rows of j]^T + gates_x[t]     (i, f, g, o)
//   i, f, o = sigmoid, g = tanh;  c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)
template <typename T, bool MMA>
__global__ void __launch_bounds__(kThreads, 1)
lstm_fwd_kernel(const LstmFwdArgs<T> a, const RnnPlan p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const SharedLayout sm{smem_raw};
  T* wsm = sm.weights<T>();
  const int H = a.hidden, B = a.batch, j0 = blockIdx.x * p.units;
  const int64_t BH = static_cast<int64_t>(B) * H;
  load_weight_rows<T>(a.w_hh, H, j0, p, wsm);  // block_product's first barrier orders this
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();

  for (int t = 0; t < a.steps; ++t) {
    const float* h_prev = a.hbuf + ((t + 1) & 1) * BH;
    float* h_next = a.hbuf + (t & 1) * BH;
    step_product<4, T, MMA>(p, sm, h_prev, B, [&](int b, int u, const float* pre) {
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
template <typename T, bool MMA>
__global__ void __launch_bounds__(kThreads, 1)
lstm_bwd_kernel(const LstmBwdArgs<T> a, const RnnPlan p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
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
    const float* dgates = a.dgates + static_cast<int64_t>(t) * B * 4 * H;
    step_product<1, T, MMA>(p, sm, dgates, B, [&](int b, int u, const float* pre) {
      const int j = j0 + u;
      if (j < H) a.dh[static_cast<int64_t>(b) * H + j] = pre[0];
    });
  }
}

// GRU forward (torch's r, z, n; b_hn inside the reset product):
//   pre = h_{t-1} W_hh[rows of j]^T;  r = sigmoid(gx_r + pre_r + b_r), z = sigmoid(gx_z + pre_z
//   + b_z);  hn = pre_n + b_n;  n = tanh(gx_n + r hn);  h_t = (1 - z) n + z h_{t-1}
template <typename T, bool MMA>
__global__ void __launch_bounds__(kThreads, 1)
gru_fwd_kernel(const GruFwdArgs<T> a, const RnnPlan p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const SharedLayout sm{smem_raw};
  T* wsm = sm.weights<T>();
  const int H = a.hidden, B = a.batch, j0 = blockIdx.x * p.units;
  const int64_t BH = static_cast<int64_t>(B) * H;
  load_weight_rows<T>(a.w_hh, H, j0, p, wsm);
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();

  for (int t = 0; t < a.steps; ++t) {
    const float* h_prev = a.hbuf + ((t + 1) & 1) * BH;
    float* h_next = a.hbuf + (t & 1) * BH;
    step_product<3, T, MMA>(p, sm, h_prev, B, [&](int b, int u, const float* pre) {
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
template <typename T, bool MMA>
__global__ void __launch_bounds__(kThreads, 1)
gru_bwd_kernel(const GruBwdArgs<T> a, const RnnPlan p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
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
    const float* dgates_h = a.dgates_h + static_cast<int64_t>(t) * B * 3 * H;
    step_product<1, T, MMA>(p, sm, dgates_h, B, [&](int b, int u, const float* pre) {
      const int j = j0 + u;
      if (j < H) a.dh[static_cast<int64_t>(b) * H + j] += pre[0];
    });
  }
}

// ----------------------------------------------------------------------------- launchers

template <typename Args>
using RnnKernelFn = void (*)(Args, RnnPlan);

struct RnnOptions {
  bool tensor_cores = true;  // fp16/bf16 on sm_80+: the wmma product where it fits
  bool plan_only = false;    // check the fit (and set the kernel's attributes), launch nothing
};

// Picks the kernel and its plan on the current device: the tensor-core kernel when given, on
// compute capability >= 8.0 and where it fits; else the CUDA-core kernel where that fits.
// "Fits": the plan's shared memory within the opt-in limit per block and the whole grid
// co-resident (occupancy x #SMs >= blocks; this also raises the kernel's dynamic shared
// memory limit to the plan's need). Returns cudaSuccess, kDoesNotFit, or a CUDA error.
template <typename T, typename Args>
cudaError_t choose_kernel(RnnKernel kind, int hidden, int batch, RnnKernelFn<Args> cuda_cores,
                          RnnKernelFn<Args> tensor_cores, RnnPlan* plan,
                          RnnKernelFn<Args>* kernel) {
  int device = 0, num_sms = 0, smem_optin = 0, coop = 0, major = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err != cudaSuccess) return err;
  if (!coop) return kDoesNotFit;
  for (const bool mma : {true, false}) {
    const RnnKernelFn<Args> fn = mma ? tensor_cores : cuda_cores;
    if (fn == nullptr || (mma && major < 8)) continue;
    if (!make_plan<T>(kind, hidden, batch, num_sms, static_cast<size_t>(smem_optin), mma, plan))
      continue;
    const void* fn_ptr = reinterpret_cast<const void*>(fn);
    err = cudaFuncSetAttribute(fn_ptr, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(plan->smem));
    int per_sm = 0;
    if (err == cudaSuccess)
      err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn_ptr, kThreads, plan->smem);
    if (err != cudaSuccess) return err;
    if (per_sm * num_sms < plan->blocks) continue;
    *kernel = fn;
    return cudaSuccess;
  }
  return kDoesNotFit;
}

// One cooperative launch of the chosen kernel: kDoesNotFit (nothing launched; the caller falls
// back), a CUDA error, or cudaSuccess with the kernel queued on `stream`. steps == 0 or
// batch == 0 launch nothing. The caller fills the workspaces' inputs first (hbuf[1] = h0;
// dh = dh_n, dc = dc_n).
template <typename T, typename Args>
cudaError_t launch_rnn(RnnKernel kind, RnnKernelFn<Args> cuda_cores,
                       RnnKernelFn<Args> tensor_cores, const Args& args, cudaStream_t stream,
                       RnnOptions opt) {
  if (args.steps <= 0 || args.batch <= 0 || args.hidden <= 0) return cudaSuccess;
  RnnPlan plan;
  RnnKernelFn<Args> kernel = nullptr;
  cudaError_t err = choose_kernel<T, Args>(kind, args.hidden, args.batch, cuda_cores,
                                           opt.tensor_cores ? tensor_cores : nullptr, &plan,
                                           &kernel);
  if (err != cudaSuccess || opt.plan_only) return err;
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

// The launchers, one per op (the tensor-core kernels exist for 16-bit T only).
template <typename T>
constexpr bool kHasTensorCoreKernels = sizeof(T) == 2;

template <typename T>
cudaError_t launch_lstm_fwd(const LstmFwdArgs<T>& a, cudaStream_t stream, RnnOptions opt = {}) {
  RnnKernelFn<LstmFwdArgs<T>> mma = nullptr;
  if constexpr (kHasTensorCoreKernels<T>) mma = &lstm_fwd_kernel<T, true>;
  return launch_rnn<T>(RnnKernel::kLstmFwd, &lstm_fwd_kernel<T, false>, mma, a, stream, opt);
}

template <typename T>
cudaError_t launch_lstm_bwd(const LstmBwdArgs<T>& a, cudaStream_t stream, RnnOptions opt = {}) {
  RnnKernelFn<LstmBwdArgs<T>> mma = nullptr;
  if constexpr (kHasTensorCoreKernels<T>) mma = &lstm_bwd_kernel<T, true>;
  return launch_rnn<T>(RnnKernel::kLstmBwd, &lstm_bwd_kernel<T, false>, mma, a, stream, opt);
}

template <typename T>
cudaError_t launch_gru_fwd(const GruFwdArgs<T>& a, cudaStream_t stream, RnnOptions opt = {}) {
  RnnKernelFn<GruFwdArgs<T>> mma = nullptr;
  if constexpr (kHasTensorCoreKernels<T>) mma = &gru_fwd_kernel<T, true>;
  return launch_rnn<T>(RnnKernel::kGruFwd, &gru_fwd_kernel<T, false>, mma, a, stream, opt);
}

template <typename T>
cudaError_t launch_gru_bwd(const GruBwdArgs<T>& a, cudaStream_t stream, RnnOptions opt = {}) {
  RnnKernelFn<GruBwdArgs<T>> mma = nullptr;
  if constexpr (kHasTensorCoreKernels<T>) mma = &gru_bwd_kernel<T, true>;
  return launch_rnn<T>(RnnKernel::kGruBwd, &gru_bwd_kernel<T, false>, mma, a, stream, opt);
}

// Whether `kind` fits on chip on the current device for this hidden size and batch: cudaSuccess
// or kDoesNotFit (or a CUDA error). Cheap (attribute queries only); the binding asks before it
// allocates anything, so a fallback wastes no memory.
template <typename T>
cudaError_t rnn_fits(RnnKernel kind, int hidden, int batch, bool tensor_cores = true) {
  const RnnOptions opt{tensor_cores, /*plan_only=*/true};
  const cudaStream_t none = nullptr;
  switch (kind) {
    case RnnKernel::kLstmFwd: {
      LstmFwdArgs<T> a{};
      a.steps = 1, a.batch = batch, a.hidden = hidden;
      return launch_lstm_fwd<T>(a, none, opt);
    }
    case RnnKernel::kLstmBwd: {
      LstmBwdArgs<T> a{};
      a.steps = 1, a.batch = batch, a.hidden = hidden;
      return launch_lstm_bwd<T>(a, none, opt);
    }
    case RnnKernel::kGruFwd: {
      GruFwdArgs<T> a{};
      a.steps = 1, a.batch = batch, a.hidden = hidden;
      return launch_gru_fwd<T>(a, none, opt);
    }
    default: {
      GruBwdArgs<T> a{};
      a.steps = 1, a.batch = batch, a.hidden = hidden;
      return launch_gru_bwd<T>(a, none, opt);
    }
  }
}

}  // namespace cuda_rnn
}  // namespace leedl_fast
