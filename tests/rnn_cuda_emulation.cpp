// Host emulation of the persistent CUDA kernels in csrc/cuda/rnn.cuh, for machines without a
// GPU (tests/test_rnn_cuda.py compiles and runs it with g++; add -fsanitize=thread to have
// ThreadSanitizer check every barrier). rnn.cuh is included unchanged: without __CUDACC__ the
// CUDA headers make __global__/__device__/__shared__ empty, and this file supplies the rest --
// every GPU thread is an OS thread, __syncthreads() a per-block std::barrier, grid.sync() a
// grid-wide one, the dynamic shared memory a per-block buffer (filled with 0xFF bytes, NaNs,
// so reading a slot nobody wrote shows up). Small grids (a fake SM count) make several blocks,
// a partial last block, several batch tiles and K chunks. Each kernel's outputs are compared
// with a float64 evaluation of the math in csrc/cpu/rnn.cpp.
//
//   rnn_cuda_emulation                      the built-in cases; exit status 0 when all pass
//   rnn_cuda_emulation T B H SMS            one case
// What it cannot check: GPU-only behaviour (warp scheduling, the L1/L2 coherence the kernels
// handle with ld.global.cg, registers, occupancy) -- that needs a GPU (tests/test_rnn_cuda.py).
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <typeinfo>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// ------------------------------------------------------------------- the emulated device
thread_local uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
thread_local unsigned char* emu_block_smem;
thread_local std::barrier<>* emu_block_barrier;
std::barrier<>* emu_grid_barrier;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
inline float __ldcg(const float* p) { return *p; }
inline float4 __ldcg(const float4* p) { return *p; }
inline float __frcp_rn(float x) { return 1.0f / x; }

#define __launch_bounds__(...)
#define _COOPERATIVE_GROUPS_H_  // the real header is device-only: this stands in for it
namespace cooperative_groups {
struct grid_group {
  void sync() { emu_grid_barrier->arrive_and_wait(); }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups

// wmma: every lane of a warp holds the whole 16 x 16 tile (as floats) and computes the whole
// product; lane 0 alone stores (the kernels read stored tiles only after a barrier). Loads and
// stores check wmma's rules: 256-bit aligned pointers, ldm a multiple of 16 bytes.
namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the kernels use m16n16k16");
  float x[16][16];
};

inline void check_wmma(const void* p, unsigned ldm, size_t elem, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (ldm * elem) % 16 != 0) {
    std::fprintf(stderr, "wmma %s: pointer %p (needs 32-byte alignment), ldm %u\n", what, p, ldm);
    std::abort();
  }
}
inline float elem_float(float v) { return v; }
inline float elem_float(__half v) { return __half2float(v); }
inline float elem_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename F>
void fill_fragment(F& f, float v) {
  for (auto& row : f.x)
    for (auto& e : row) e = v;
}
// matrix_a row-major: A(m, k) = p[m * ldm + k]
template <typename T>
void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, row_major>& f, const T* p, unsigned ldm) {
  check_wmma(p, ldm, sizeof(T), "load matrix_a");
  for (int m = 0; m < 16; ++m)
    for (int k = 0; k < 16; ++k) f.x[m][k] = elem_float(p[m * ldm + k]);
}
// matrix_b col-major: B(k, n) = p[n * ldm + k]
template <typename T>
void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, col_major>& f, const T* p, unsigned ldm) {
  check_wmma(p, ldm, sizeof(T), "load matrix_b");
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 16; ++n) f.x[k][n] = elem_float(p[n * ldm + k]);
}
template <typename T>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, T, row_major>& a,
              const fragment<matrix_b, 16, 16, 16, T, col_major>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16][16];
  for (int m = 0; m < 16; ++m) {
    for (int n = 0; n < 16; ++n) {
      float s = c.x[m][n];
      for (int k = 0; k < 16; ++k) s += a.x[m][k] * b.x[k][n];
      out[m][n] = s;
    }
  }
  std::memcpy(d.x, out, sizeof(out));
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  check_wmma(p, ldm, sizeof(float), "store");
  if (layout != mem_row_major) std::abort();
  if (threadIdx.x % 32 != 0) return;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) p[m * ldm + n] = f.x[m][n];
}
}  // namespace nvcuda::wmma

// `extern __shared__ unsigned char smem_raw[];` becomes a call returning this thread's block's
// buffer (a block-scope extern declaration of a function returning a pointer to an array).
#define smem_raw (*emu_smem_array())
namespace leedl_fast::cuda_rnn {
unsigned char (*emu_smem_array())[];
}
#include "rnn.cuh"
#undef smem_raw
namespace leedl_fast::cuda_rnn {
unsigned char (*emu_smem_array())[] {
  return reinterpret_cast<unsigned char (*)[]>(emu_block_smem);
}
}  // namespace leedl_fast::cuda_rnn

using namespace leedl_fast::cuda_rnn;

// A cooperative launch: plan.blocks x kThreads OS threads.
template <typename Args>
void run_grid(void (*kernel)(Args, RnnPlan), const Args& a, const RnnPlan& p) {
  const int blocks = p.blocks;
  std::barrier<> grid_barrier(blocks * kThreads);
  emu_grid_barrier = &grid_barrier;
  std::vector<std::unique_ptr<std::barrier<>>> barriers;
  std::vector<std::vector<unsigned char>> smem(blocks);
  for (int b = 0; b < blocks; ++b) {
    barriers.emplace_back(new std::barrier<>(kThreads));
    smem[b].assign(p.smem + 128, 0xFF);  // NaN bytes: reading an unwritten slot shows
  }
  blockDim = dim3(kThreads);
  gridDim = dim3(blocks);
  std::vector<std::thread> threads;
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, b, t] {
        threadIdx = make_uint3(t, 0, 0);
        blockIdx = make_uint3(b, 0, 0);
        const uintptr_t base = reinterpret_cast<uintptr_t>(smem[b].data());
        emu_block_smem = reinterpret_cast<unsigned char*>((base + 127) & ~uintptr_t(127));
        emu_block_barrier = barriers[b].get();
        kernel(a, p);
      });
    }
  }
  for (auto& th : threads) th.join();
}

// ------------------------------------------------------------------------------- helpers
template <typename T> T cvt(float v);
template <> float cvt<float>(float v) { return v; }
template <> __half cvt<__half>(float v) { return __float2half_rn(v); }
template <> __nv_bfloat16 cvt<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
inline double dbl(float v) { return v; }
inline double dbl(__half v) { return __half2float(v); }
inline double dbl(__nv_bfloat16 v) { return __bfloat162float(v); }

std::mt19937 rng(1234);
template <typename T>
std::vector<T> randv(size_t n, float scale) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = cvt<T>(d(rng));
  return v;
}

double sig(double x) { return 1 / (1 + std::exp(-x)); }

// The worst error |got - want| / (1 + |want|) over every output element, and where it was.
struct Err {
  double worst = 0;
  const char* what = "-";
  void check(const char* name, double got, double want) {
    const double e = std::fabs(got - want) / (1 + std::fabs(want));
    if (std::isnan(e) || e > worst) {
      worst = std::isnan(e) ? INFINITY : e;
      what = name;
    }
  }
};

template <typename T>
RnnPlan plan_for(RnnKernel kind, int H, int B, int sms, bool mma) {
  RnnPlan p;
  if (!make_plan<T>(kind, H, B, sms, 232448, mma, &p)) {
    std::printf("no plan for kind %d, H %d, B %d, %d SMs\n", static_cast<int>(kind), H, B, sms);
    std::exit(2);
  }
  return p;
}

// The product's left operand as the kernel sees it: staged as T on tensor cores (MMA).
template <typename T, bool MMA>
double operand(double v) {
  return MMA ? dbl(cvt<T>(static_cast<float>(v))) : v;
}

// sum_k a[k] * w[row][k] for `count` terms, w row-major with `ld` columns
template <typename T>
double dot(const double* a, const T* w, size_t ld, size_t row, int count) {
  double s = 0;
  for (int k = 0; k < count; ++k) s += a[k] * dbl(w[row * ld + k]);
  return s;
}

// ---------------------------------------------------------------------------------- LSTM
// Forward and backward, each kernel against float64 (the backward on the float64 forward's
// activations, the kernel backward on the kernel forward's).
template <typename T, bool MMA>
double test_lstm(int steps, int B, int H, int sms) {
  const size_t G = 4 * H, BH = size_t(B) * H, n = size_t(steps) * B;
  auto gx = randv<T>(n * G, 1.f);
  auto w = randv<T>(G * H, 2.f / std::sqrt(float(H)));
  auto h0 = randv<float>(BH, 1.f), c0 = randv<float>(BH, 1.f);
  auto dy = randv<T>(n * H, 1.f);
  auto dh_n = randv<float>(BH, 1.f), dc_n = randv<float>(BH, 1.f);

  std::vector<double> ry(n * H), rc(n * H), rg(n * G), hp(H);
  for (int t = 0; t < steps; ++t) {
    for (int b = 0; b < B; ++b) {
      const size_t row = size_t(t) * B + b;
      for (int k = 0; k < H; ++k)
        hp[k] = operand<T, MMA>(t == 0 ? h0[b * H + k] : ry[(row - B) * H + k]);
      for (int j = 0; j < H; ++j) {
        double pre[4];
        for (int q = 0; q < 4; ++q)
          pre[q] = dbl(gx[row * G + q * H + j]) + dot(hp.data(), w.data(), H, q * H + j, H);
        const double i = sig(pre[0]), f = sig(pre[1]), g = std::tanh(pre[2]), o = sig(pre[3]);
        const double cp = t == 0 ? c0[b * H + j] : rc[(row - B) * H + j];
        const double c = f * cp + i * g;
        rc[row * H + j] = c;
        ry[row * H + j] = o * std::tanh(c);
        double* gates = rg.data() + row * G + j;
        gates[0] = i, gates[H] = f, gates[2 * H] = g, gates[3 * H] = o;
      }
    }
  }
  std::vector<float> hbuf(2 * BH), cells(n * H), gates(n * G);
  std::vector<T> y(n * H);
  std::copy(h0.begin(), h0.end(), hbuf.begin() + BH);  // hbuf[1] = h0
  const LstmFwdArgs<T> fa{gx.data(),   w.data(),     c0.data(), hbuf.data(), y.data(),
                          cells.data(), gates.data(), steps,     B,           H};
  run_grid(&lstm_fwd_kernel<T, MMA>, fa, plan_for<T>(RnnKernel::kLstmFwd, H, B, sms, MMA));
  Err e;
  for (size_t k = 0; k < n * H; ++k) e.check("y", dbl(y[k]), ry[k]);
  for (size_t k = 0; k < n * H; ++k) e.check("cells", cells[k], rc[k]);
  for (size_t k = 0; k < n * G; ++k) e.check("gates", gates[k], rg[k]);

  std::vector<double> rdg(n * G), dh(dh_n.begin(), dh_n.end()), dc(dc_n.begin(), dc_n.end());
  for (int t = steps - 1; t >= 0; --t) {
    for (int b = 0; b < B; ++b) {
      for (int j = 0; j < H; ++j) {
        const size_t row = size_t(t) * B + b, st = size_t(b) * H + j;
        const double* g = rg.data() + row * G + j;
        const double i = g[0], f = g[H], gg = g[2 * H], o = g[3 * H];
        const double tc = std::tanh(rc[row * H + j]);
        const double cp = t == 0 ? c0[st] : rc[(row - B) * H + j];
        const double dhv = dbl(dy[row * H + j]) + dh[st];
        const double dcv = dc[st] + dhv * o * (1 - tc * tc);
        double* dg = rdg.data() + row * G + j;
        dg[0] = dcv * gg * i * (1 - i);
        dg[H] = dcv * cp * f * (1 - f);
        dg[2 * H] = dcv * i * (1 - gg * gg);
        dg[3 * H] = dhv * tc * o * (1 - o);
        dc[st] = dcv * f;
      }
    }
    for (int b = 0; b < B; ++b) {  // dh = dG_t W_hh
      for (int j = 0; j < H; ++j) {
        double s = 0;
        for (size_t g = 0; g < G; ++g)
          s += operand<T, MMA>(rdg[(size_t(t) * B + b) * G + g]) * dbl(w[g * H + j]);
        dh[size_t(b) * H + j] = s;
      }
    }
  }
  std::vector<float> dgates(n * G), dh_k(dh_n), dc_k(dc_n);
  const LstmBwdArgs<T> ba{dy.data(), gates.data(),  cells.data(), c0.data(), w.data(),
                          dgates.data(), dh_k.data(), dc_k.data(), steps,     B,
                          H};
  run_grid(&lstm_bwd_kernel<T, MMA>, ba, plan_for<T>(RnnKernel::kLstmBwd, H, B, sms, MMA));
  for (size_t k = 0; k < n * G; ++k) e.check("dgates", dgates[k], rdg[k]);
  for (size_t k = 0; k < BH; ++k) e.check("dh0", dh_k[k], dh[k]);
  for (size_t k = 0; k < BH; ++k) e.check("dc0", dc_k[k], dc[k]);
  std::printf("  lstm %-16s %s T=%d B=%d H=%d sms=%d: worst rel err %.2e (%s)\n",
              typeid(T).name(), MMA ? "mma" : "fma", steps, B, H, sms, e.worst, e.what);
  return e.worst;
}

// ----------------------------------------------------------------------------------- GRU
template <typename T, bool MMA>
double test_gru(int steps, int B, int H, int sms, bool bias) {
  const size_t G = 3 * H, BH = size_t(B) * H, n = size_t(steps) * B;
  auto gx = randv<T>(n * G, 1.f);
  auto w = randv<T>(G * H, 2.f / std::sqrt(float(H)));
  auto b_hh = randv<T>(G, 0.5f);
  auto h0 = randv<float>(BH, 1.f);
  auto dy = randv<T>(n * H, 1.f);
  auto dh_n = randv<float>(BH, 1.f);

  std::vector<double> ry(n * H), rs(n * 4 * H), hp(H);
  for (int t = 0; t < steps; ++t) {
    for (int b = 0; b < B; ++b) {
      const size_t row = size_t(t) * B + b;
      for (int k = 0; k < H; ++k)
        hp[k] = operand<T, MMA>(t == 0 ? h0[b * H + k] : ry[(row - B) * H + k]);
      for (int j = 0; j < H; ++j) {
        double pre[3];
        for (int q = 0; q < 3; ++q)
          pre[q] = (bias ? dbl(b_hh[q * H + j]) : 0) + dot(hp.data(), w.data(), H, q * H + j, H);
        const T* g = gx.data() + row * G + j;
        const double r = sig(dbl(g[0]) + pre[0]), z = sig(dbl(g[H]) + pre[1]), hn = pre[2];
        const double nn = std::tanh(dbl(g[2 * H]) + r * hn);
        ry[row * H + j] = (1 - z) * nn + z * (t == 0 ? h0[b * H + j] : ry[(row - B) * H + j]);
        double* s = rs.data() + row * 4 * H + j;
        s[0] = r, s[H] = z, s[2 * H] = nn, s[3 * H] = hn;
      }
    }
  }
  std::vector<float> hbuf(2 * BH), saved(n * 4 * H);
  std::vector<T> y(n * H);
  std::copy(h0.begin(), h0.end(), hbuf.begin() + BH);
  const GruFwdArgs<T> fa{gx.data(),   w.data(),     bias ? b_hh.data() : nullptr,
                         hbuf.data(), y.data(),     saved.data(),
                         steps,       B,            H};
  run_grid(&gru_fwd_kernel<T, MMA>, fa, plan_for<T>(RnnKernel::kGruFwd, H, B, sms, MMA));
  Err e;
  for (size_t k = 0; k < n * H; ++k) e.check("y", dbl(y[k]), ry[k]);
  for (size_t k = 0; k < n * 4 * H; ++k) e.check("saved", saved[k], rs[k]);

  // h_{t-1} from the kernel's y (rounded to T), as the kernel and the CPU op read it
  std::vector<double> rdgx(n * G), rdgh(n * G), dh(dh_n.begin(), dh_n.end());
  for (int t = steps - 1; t >= 0; --t) {
    for (int b = 0; b < B; ++b) {
      for (int j = 0; j < H; ++j) {
        const size_t row = size_t(t) * B + b, st = size_t(b) * H + j;
        const double* s = rs.data() + row * 4 * H + j;
        const double r = s[0], z = s[H], nn = s[2 * H], hn = s[3 * H];
        const double h_prev = t == 0 ? h0[st] : dbl(y[(row - B) * H + j]);
        const double dhv = dbl(dy[row * H + j]) + dh[st];
        const double dn = dhv * (1 - z) * (1 - nn * nn);
        const double dz = dhv * (h_prev - nn) * z * (1 - z);
        const double dr = dn * hn * r * (1 - r);
        double* dx = rdgx.data() + row * G + j;
        double* dhh = rdgh.data() + row * G + j;
        dx[0] = dr, dx[H] = dz, dx[2 * H] = dn;
        dhh[0] = dr, dhh[H] = dz, dhh[2 * H] = dn * r;
        dh[st] = dhv * z;
      }
    }
    for (int b = 0; b < B; ++b) {  // dh += dG_h W_hh
      for (int j = 0; j < H; ++j) {
        double s = 0;
        for (size_t g = 0; g < G; ++g)
          s += operand<T, MMA>(rdgh[(size_t(t) * B + b) * G + g]) * dbl(w[g * H + j]);
        dh[size_t(b) * H + j] += s;
      }
    }
  }
  std::vector<T> dgx(n * G);
  std::vector<float> dgh(n * G), dh_k(dh_n);
  const GruBwdArgs<T> ba{dy.data(),  saved.data(), y.data(),    h0.data(), w.data(),
                         dgx.data(), dgh.data(),   dh_k.data(), steps,     B,
                         H};
  run_grid(&gru_bwd_kernel<T, MMA>, ba, plan_for<T>(RnnKernel::kGruBwd, H, B, sms, MMA));
  for (size_t k = 0; k < n * G; ++k) e.check("dgates_x", dbl(dgx[k]), rdgx[k]);
  for (size_t k = 0; k < n * G; ++k) e.check("dgates_h", dgh[k], rdgh[k]);
  for (size_t k = 0; k < BH; ++k) e.check("dh0", dh_k[k], dh[k]);
  std::printf("  gru  %-16s %s T=%d B=%d H=%d sms=%d bias=%d: worst rel err %.2e (%s)\n",
              typeid(T).name(), MMA ? "mma" : "fma", steps, B, H, sms, bias, e.worst, e.what);
  return e.worst;
}

// The plans on the cards we ship to (make_plan is what the launchers run before anything else):
// the range (hidden <= 1024 in 16 bits) must fit on chip, on tensor cores too, at any
// batch; hidden 4096 never fits (it takes the per-step path).
bool check_plans() {
  struct Card { const char* name; int sms; size_t smem; };
  bool ok = true;
  for (Card card : {Card{"H100", 132, 232448}, Card{"A100", 108, 166912}}) {
    for (auto kind : {RnnKernel::kLstmFwd, RnnKernel::kLstmBwd, RnnKernel::kGruFwd,
                      RnnKernel::kGruBwd}) {
      for (int batch : {1, 64, 4096}) {
        RnnPlan p;
        auto fits = [&](auto tag, int hidden, bool mma) {
          return make_plan<decltype(tag)>(kind, hidden, batch, card.sms, card.smem, mma, &p);
        };
        const bool h1024_mma = fits(__half{}, 1024, true) && fits(__nv_bfloat16{}, 1024, true);
        const bool h1024_fma = fits(__half{}, 1024, false);
        const bool h4096 = fits(__nv_bfloat16{}, 4096, true) || fits(__half{}, 4096, false) ||
                           fits(float{}, 4096, false);
        const bool h1024_32 = fits(float{}, 1024, false);
        // fp32 H = 1024: 128 KiB of weights per block on H100; A100 fits the GRU's only.
        const bool want_32 = card.sms >= 132 || kind == RnnKernel::kGruFwd ||
                             kind == RnnKernel::kGruBwd;
        if (!h1024_mma || !h1024_fma || h4096 || h1024_32 != want_32) {
          std::printf("plan check failed on %s, kind %d, batch %d: H=1024 16-bit fits %d (mma) "
                      "%d (fma), H=4096 fits %d, fp32 H=1024 fits %d\n", card.name,
                      static_cast<int>(kind), batch, h1024_mma, h1024_fma, h4096, h1024_32);
          ok = false;
        }
      }
    }
  }
  return ok;
}

int main(int argc, char** argv) {
  struct Case { int steps, B, H, sms; };
  // (T, B, H, fake SM count): one unit; a partial last block; 3 batch tiles side by side;
  // H % 4 != 0 (scalar staging); several passes over the batch; K = 4H > 1024 (two chunks);
  // mma: 5 batch tiles (two passes), 2 items per warp (16 row tiles), K chunks of 512.
  std::vector<Case> cases = {{1, 1, 1, 1},   {3, 5, 7, 3},   {4, 17, 8, 8}, {2, 3, 97, 4},
                             {3, 20, 64, 5}, {2, 2, 300, 8}, {2, 70, 128, 2}};
  if (argc == 5) cases = {{atoi(argv[1]), atoi(argv[2]), atoi(argv[3]), atoi(argv[4])}};
  double fp32 = 0, half = 0, bf16 = 0, half_mma = 0, bf16_mma = 0;
  for (auto c : cases) {
    for (auto kind : {RnnKernel::kLstmFwd, RnnKernel::kLstmBwd, RnnKernel::kGruFwd,
                      RnnKernel::kGruBwd}) {
      for (bool mma : {false, true}) {
        RnnPlan p = plan_for<__half>(kind, c.H, c.B, c.sms, mma);
        std::printf("plan kind=%d mma=%d H=%d B=%d sms=%d: S=%d blocks=%d rows=%d/%d K=%d "
                    "chunk=%d ksplit=%d groups=%d smem=%zu\n", static_cast<int>(kind), mma, c.H,
                    c.B, c.sms, p.units, p.blocks, p.rows, p.wrows, p.k, p.chunk, p.ksplit,
                    p.groups, p.smem);
      }
    }
    const int T = c.steps, B = c.B, H = c.H, n = c.sms;
    fp32 = std::max({fp32, test_lstm<float, false>(T, B, H, n),
                     test_gru<float, false>(T, B, H, n, true),
                     test_gru<float, false>(T, B, H, n, false)});
    half = std::max({half, test_lstm<__half, false>(T, B, H, n),
                     test_gru<__half, false>(T, B, H, n, false)});
    bf16 = std::max({bf16, test_lstm<__nv_bfloat16, false>(T, B, H, n),
                     test_gru<__nv_bfloat16, false>(T, B, H, n, true)});
    half_mma = std::max({half_mma, test_lstm<__half, true>(T, B, H, n),
                         test_gru<__half, true>(T, B, H, n, true)});
    bf16_mma = std::max({bf16_mma, test_lstm<__nv_bfloat16, true>(T, B, H, n),
                         test_gru<__nv_bfloat16, true>(T, B, H, n, false)});
  }
  const bool plans = check_plans();
  // fp32: summation order only. 16-bit: the outputs stored in the dtype (half an ulp: 2^-12,
  // 2^-9 relative) on top of that. (Tensor cores round the product's left operand, h or dG,
  // to the dtype; the float64 reference does the same for them, so the bounds are the same.)
  const bool ok = plans && fp32 < 1e-5 && half < 1e-3 && bf16 < 8e-3 && half_mma < 1e-3 &&
                  bf16_mma < 8e-3;
  std::printf("worst relative error: fp32 %.2e, fp16 %.2e, bf16 %.2e, fp16 mma %.2e, bf16 mma "
              "%.2e; plans %s -> %s\n", fp32, half, bf16, half_mma, bf16_mma,
              plans ? "ok" : "WRONG", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
