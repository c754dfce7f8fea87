// CPU kernels for the weight-only quantized matmuls: y = x W^T + bias with W (N, K) stored as
// int8 (per-channel scale), int4 (group-wise scale and zero, two per byte) or a codebook
// (2^bits-entry table, bits-wide indices). Formats: csrc/ops.cpp; oracle:
// leedl_fast/reference/quant.py; int8 dynamic is quant_dynamic.cpp.
//
// The float weight is never materialized. Each format has a *dequantizer* that writes a slice
// of one weight row, W[n, k0:k0+kc], as fp32 into a small tile that stays in L1/L2; the
// product runs on the tiles as they are made:
//   M < 16 (decode, small batches: memory-bound, the point of quantizing): a task takes a block
//     of kRows output features; per K chunk it dequantizes the kRows x kChunk tile (16 KiB, L1)
//     and dots it with every x row, kRows independent FMA chains per x row. The weight bytes are
//     read once, in their compressed size.
//   M = 1 (int8; int4 with group_size % 16 == 0, AVX2): no tile; weights are widened into
//     registers and FMA'd against x, 4 output rows per x load (see "M = 1 paths").
//   M >= 16 (prefill: compute-bound): tasks are (block of 64 features, block of up to 192 rows);
//     the 64 x 256 dequantized tile is multiplied by the matching slice of x^T (K x M, widened
//     and transposed once) with blas.h `matmul` (brgemm), accumulating over K in a 64 x 192
//     fp32 result tile; the dequantization is then ~1/M of the arithmetic.
// fp16/bf16 x is widened to fp32 once; accumulation is fp32; the bias is added in fp32.
//
// Dequantizers (AVX2 where the build has it, scalar otherwise and for tails):
//   int8:     8 int8 -> int32 -> fp32, times the row's scale.
//   int4:     4 bytes broadcast, shifted per lane by 0, 4, ..., 28 and masked: 8 nibbles in
//             order; (q - zero) * scale per group (groups of a multiple of 8; others scalar).
//   codebook: 8 indices are exactly `bits` bytes (chunks start at multiples of 8 indices, so
//             byte-aligned); shifted per lane by 0, bits, ..., 7 bits and masked; the table
//             (<= 8 entries) is one register, looked up by a lane permute (16 entries: two
//             permutes and a blend on index bit 3).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "blas.h"
#include "quant.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <vector>

namespace leedl_fast {
namespace quant {
namespace {

using Vec = at::vec::Vectorized<float>;

constexpr int64_t kRows = 8;        // output features per small-M block (one FMA chain each)
constexpr int64_t kChunk = 512;     // K per small-M tile: 8 x 512 fp32 = 16 KiB (L1)
constexpr int64_t kLd = kChunk + 16;  // tile row stride: rows 2 KiB apart alias in L1 / 4K
constexpr int64_t kBigM = 16;       // from this many x rows on, the tiles go through brgemm
constexpr int64_t kRowsBig = 64;    // features per large-M tile
constexpr int64_t kChunkBig = 256;  // K per large-M tile: 64 x 256 fp32 = 64 KiB (L2)
constexpr int64_t kColsBig = 192;   // x rows per large-M task

// ------------------------------------------------------------------------------ dequantizers
// Each: operator()(n, k0, kc, dst) writes W[n, k0 + i] for i < kc to dst[i]; k0 is a multiple
// of 8 (chunks are multiples of 8).

struct Int8Rows {
  const int8_t* q;  // (N, K)
  const float* scales;  // (N,)
  int64_t K;
  void operator()(int64_t n, int64_t k0, int64_t kc, float* dst) const {
    const int8_t* src = q + n * K + k0;
    const float s = scales[n];
    int64_t i = 0;
#if defined(__AVX2__)
    const __m256 vs = _mm256_set1_ps(s);
    for (; i + 8 <= kc; i += 8) {
      const __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i)));
      _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_cvtepi32_ps(v), vs));
    }
#endif
    for (; i < kc; ++i) dst[i] = float(src[i]) * s;
  }
};

struct Int4Rows {
  const uint8_t* packed;  // (N, K / 2)
  const float* scales;    // (N, K / group_size)
  const float* zeros;     // (N, K / group_size)
  int64_t K, group_size;
  void operator()(int64_t n, int64_t k0, int64_t kc, float* dst) const {
    const uint8_t* row = packed + n * (K / 2);
    const int64_t groups = K / group_size;
    const int64_t end = k0 + kc;
    for (int64_t k = k0; k < end;) {
      const int64_t g = k / group_size;
      const int64_t stop = std::min(end, (g + 1) * group_size);
      const float s = scales[n * groups + g], z = zeros[n * groups + g];
#if defined(__AVX2__)
      const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
      const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
      for (; k + 8 <= stop; k += 8) {  // k is even: 8 nibbles are bytes k/2 .. k/2 + 3
        uint32_t word;
        std::memcpy(&word, row + k / 2, 4);
        const __m256i q = _mm256_and_si256(
            _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts),
            _mm256_set1_epi32(0xF));
        _mm256_storeu_ps(dst + (k - k0),
                         _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(q), vz), vs));
      }
#endif
      for (; k < stop; ++k) {
        const int q = (row[k / 2] >> ((k & 1) * 4)) & 0xF;
        dst[k - k0] = (float(q) - z) * s;
      }
    }
  }
};

template <int BITS>
struct CodebookRows {
  static constexpr int kEntries = 1 << BITS;
  const uint8_t* packed;  // (N, ceil(K * BITS / 8))
  const float* table;     // (2^BITS,)
  int64_t K;

  // Index k of a row's bit string (least significant bit first); reads only bytes it needs.
  static int index_at(const uint8_t* row, int64_t k) {
    int v = 0;
    for (int b = 0; b < BITS; ++b) {
      const int64_t bit = k * BITS + b;
      v |= ((row[bit >> 3] >> (bit & 7)) & 1) << b;
    }
    return v;
  }

  void operator()(int64_t n, int64_t k0, int64_t kc, float* dst) const {
    const uint8_t* row = packed + n * ((K * BITS + 7) / 8);
    int64_t i = 0;
#if defined(__AVX2__)
    float padded[16] = {};
    std::memcpy(padded, table, sizeof(float) * kEntries);
    const __m256 lo = _mm256_loadu_ps(padded), hi = _mm256_loadu_ps(padded + 8);
    const __m256i shifts = _mm256_setr_epi32(0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS,
                                             6 * BITS, 7 * BITS);
    const __m256i mask = _mm256_set1_epi32(kEntries - 1);
    // Indices k0 + i .. k0 + i + 7 are the BITS bytes from byte (k0 + i) * BITS / 8 on.
    for (; i + 8 <= kc; i += 8) {
      uint32_t word = 0;
      std::memcpy(&word, row + (k0 + i) / 8 * BITS, BITS);
      const __m256i idx = _mm256_and_si256(
          _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts), mask);
      __m256 w = _mm256_permutevar8x32_ps(lo, idx);  // uses the index's low 3 bits
      if constexpr (BITS == 4)  // entries 8..15 where index bit 3 (moved to the sign) is set
        w = _mm256_blendv_ps(w, _mm256_permutevar8x32_ps(hi, idx),
                             _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
      _mm256_storeu_ps(dst + i, w);
    }
#endif
    for (; i < kc; ++i) dst[i] = table[index_at(row, k0 + i)];
  }
};

// ---------------------------------------------------------------------------------- drivers

// out[r] += dot(x[0:kc], tile[r * ld : r * ld + kc]) for r < R: one FMA chain per tile row,
// each x vector loaded once for all R rows.
template <int64_t R>
inline void dot_rows(const float* x, const float* tile, int64_t ld, int64_t kc, float* out) {
  constexpr int64_t kV = Vec::size();
  Vec acc[R];
  for (int64_t r = 0; r < R; ++r) acc[r] = Vec(0.f);
  int64_t i = 0;
  for (; i + kV <= kc; i += kV) {
    const Vec xv = Vec::loadu(x + i);
    for (int64_t r = 0; r < R; ++r) acc[r] = at::vec::fmadd(xv, Vec::loadu(tile + r * ld + i), acc[r]);
  }
  if (i < kc) {  // partial loads fill the missing lanes with zeros
    const Vec xv = Vec::loadu(x + i, kc - i);
    for (int64_t r = 0; r < R; ++r)
      acc[r] = at::vec::fmadd(xv, Vec::loadu(tile + r * ld + i, kc - i), acc[r]);
  }
  for (int64_t r = 0; r < R; ++r)
    out[r] += at::vec::vec_reduce_all<float>([](Vec a, Vec b) { return a + b; }, acc[r]);
}

// y (M, N) of T = xf (M, K, fp32) W^T + bias, M small: tasks over blocks of kRows features.
template <typename T, typename Deq>
void small_m(const float* xf, const Deq& deq, const float* bias, T* y, int64_t M, int64_t N,
             int64_t K) {
  const int64_t blocks = (N + kRows - 1) / kRows;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> tile(kRows * kLd, 0.f), acc(M * kRows);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kRows, rows = std::min(kRows, N - n0);
      // Rows past N stay zero (nothing writes them) and their sums are dropped.
      if (rows < kRows) std::fill(tile.begin(), tile.end(), 0.f);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
        const int64_t kc = std::min(kChunk, K - k0);
        for (int64_t r = 0; r < rows; ++r) deq(n0 + r, k0, kc, tile.data() + r * kLd);
        for (int64_t m = 0; m < M; ++m)
          dot_rows<kRows>(xf + m * K + k0, tile.data(), kLd, kc, acc.data() + m * kRows);
      }
      for (int64_t m = 0; m < M; ++m)
        for (int64_t r = 0; r < rows; ++r) {
          const float v = acc[m * kRows + r];
          y[m * N + n0 + r] = static_cast<T>(bias ? v + bias[n0 + r] : v);
        }
    }
  });
}

// y (M, N) of T = x W^T + bias, M large: xt is x^T (K, M) in fp32; tile products by brgemm.
template <typename T, typename Deq>
void large_m(const float* xt, const Deq& deq, const float* bias, T* y, int64_t M, int64_t N,
             int64_t K) {
  const int64_t nblocks = (N + kRowsBig - 1) / kRowsBig;
  const int64_t mblocks = (M + kColsBig - 1) / kColsBig;
  at::parallel_for(0, nblocks * mblocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> tile(kRowsBig * kChunkBig), c(kRowsBig * kColsBig);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = (t / mblocks) * kRowsBig, rows = std::min(kRowsBig, N - n0);
      const int64_t m0 = (t % mblocks) * kColsBig, cols = std::min(kColsBig, M - m0);
      for (int64_t k0 = 0; k0 < K; k0 += kChunkBig) {
        const int64_t kc = std::min(kChunkBig, K - k0);
        for (int64_t r = 0; r < rows; ++r) deq(n0 + r, k0, kc, tile.data() + r * kChunkBig);
        // c (rows x cols) (+)= tile (rows x kc) . x^T[k0:k0+kc, m0:m0+cols]
        matmul(rows, cols, kc, tile.data(), kChunkBig, xt + k0 * M + m0, M, c.data(), cols,
               /*accumulate=*/k0 > 0);
      }
      for (int64_t m = 0; m < cols; ++m)
        for (int64_t r = 0; r < rows; ++r) {
          const float v = c[r * cols + m];
          y[(m0 + m) * N + n0 + r] = static_cast<T>(bias ? v + bias[n0 + r] : v);
        }
    }
    matmul_release();
  });
}

// ------------------------------------------------------------------------------ M = 1 paths
// Decode (one x row) is compute-bound on the dequantization, so the tile above is skipped: the
// weights are widened straight into registers and FMA'd against x, R = 4 output rows at a
// time (each x vector loaded once for the 4), two FMA chains per row; scales are applied once
// per row (int8) or once per group on a vector partial sum (int4). Parallel over output rows.
#if defined(__AVX2__)
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// out[r] = sum_k x[k] * q[r * K + k] (unscaled) for R rows starting at q.
template <int R>
inline void int8_dot_m1(const float* x, const int8_t* q, int64_t K, float* out) {
  __m256 a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
    for (int r = 0; r < R; ++r) {
      const int8_t* p = q + r * K + k;
      const __m256 w0 = _mm256_cvtepi32_ps(
          _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
      const __m256 w1 = _mm256_cvtepi32_ps(
          _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8))));
      a0[r] = _mm256_fmadd_ps(x0, w0, a0[r]);
      a1[r] = _mm256_fmadd_ps(x1, w1, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(_mm256_add_ps(a0[r], a1[r]));
    for (int64_t i = k; i < K; ++i) s += x[i] * float(q[r * K + i]);
    out[r] = s;
  }
}

template <typename T>
void int8_m1(const float* x, const Int8Rows& w, const float* bias, T* y, int64_t N) {
  const int64_t K = w.K;
  const int64_t blocks = (N + 3) / 4;
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * 4, rows = std::min<int64_t>(4, N - n0);
      float out[4];
      if (rows == 4) {
        int8_dot_m1<4>(x, w.q + n0 * K, K, out);
      } else {
        for (int64_t r = 0; r < rows; ++r) int8_dot_m1<1>(x, w.q + (n0 + r) * K, K, out + r);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const float v = out[r] * w.scales[n0 + r];
        y[n0 + r] = static_cast<T>(bias ? v + bias[n0 + r] : v);
      }
    }
  });
}

// xp: x with each 16-block reordered as its 8 even then its 8 odd entries, so that the low
// nibbles of 8 bytes pair with xp[0:8] and the high nibbles with xp[8:16]. xs[g]: sum of the
// group's x. out[r] = sum_g s[r, g] * (sum_{k in g} x[k] q[r, k] - z[r, g] * xs[g]).
template <int R>
inline void int4_dot_m1(const float* xp, const float* xs, const Int4Rows& w, int64_t n,
                        float* out) {
  const int64_t K = w.K, gs = w.group_size, groups = K / gs;
  const uint8_t* rowp[R];
  const float *sp[R], *zp[R];
  __m256 acc[R];
  float corr[R];
  for (int r = 0; r < R; ++r) {
    rowp[r] = w.packed + (n + r) * (K / 2);
    sp[r] = w.scales + (n + r) * groups;
    zp[r] = w.zeros + (n + r) * groups;
    acc[r] = _mm256_setzero_ps();
    corr[r] = 0.f;
  }
  const __m256i mask = _mm256_set1_epi32(0xF);
  for (int64_t g = 0; g < groups; ++g) {
    __m256 d0[R], d1[R];
    for (int r = 0; r < R; ++r) d0[r] = d1[r] = _mm256_setzero_ps();
    const int64_t kend = (g + 1) * gs;
    for (int64_t k = g * gs; k < kend; k += 16) {
      const __m256 xe = _mm256_loadu_ps(xp + k), xo = _mm256_loadu_ps(xp + k + 8);
      for (int r = 0; r < R; ++r) {
        const __m256i v = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(rowp[r] + k / 2)));
        d0[r] = _mm256_fmadd_ps(xe, _mm256_cvtepi32_ps(_mm256_and_si256(v, mask)), d0[r]);
        d1[r] = _mm256_fmadd_ps(xo, _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), d1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const float s = sp[r][g];
      acc[r] = _mm256_fmadd_ps(_mm256_add_ps(d0[r], d1[r]), _mm256_set1_ps(s), acc[r]);
      corr[r] += s * zp[r][g] * xs[g];
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]) - corr[r];
}

template <typename T>
void int4_m1(const float* x, const Int4Rows& w, const float* bias, T* y, int64_t N) {
  const int64_t K = w.K, gs = w.group_size, groups = K / gs;
  std::vector<float> xp(K), xs(groups);
  for (int64_t k0 = 0; k0 < K; k0 += 16)
    for (int64_t i = 0; i < 8; ++i) {
      xp[k0 + i] = x[k0 + 2 * i];
      xp[k0 + 8 + i] = x[k0 + 2 * i + 1];
    }
  for (int64_t g = 0; g < groups; ++g) {
    float s = 0.f;
    for (int64_t k = g * gs; k < (g + 1) * gs; ++k) s += x[k];
    xs[g] = s;
  }
  const int64_t blocks = (N + 3) / 4;
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * 4, rows = std::min<int64_t>(4, N - n0);
      float out[4];
      if (rows == 4) {
        int4_dot_m1<4>(xp.data(), xs.data(), w, n0, out);
      } else {
        for (int64_t r = 0; r < rows; ++r) int4_dot_m1<1>(xp.data(), xs.data(), w, n0 + r, out + r);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const float v = out[r];
        y[n0 + r] = static_cast<T>(bias ? v + bias[n0 + r] : v);
      }
    }
  });
}
#endif  // __AVX2__

// Whether the M = 1 register path takes this (M, format); false sends it to small_m.
template <typename Deq>
bool m1_ok(const Deq&, int64_t) { return false; }
#if defined(__AVX2__)
template <>
bool m1_ok(const Int8Rows&, int64_t M) { return M == 1; }
template <>
bool m1_ok(const Int4Rows& w, int64_t M) { return M == 1 && w.group_size % 16 == 0; }
#endif

template <typename T, typename Deq>
void m1(const float*, const Deq&, const float*, T*, int64_t) {}
#if defined(__AVX2__)
template <typename T>
void m1(const float* x, const Int8Rows& w, const float* bias, T* y, int64_t N) {
  int8_m1(x, w, bias, y, N);
}
template <typename T>
void m1(const float* x, const Int4Rows& w, const float* bias, T* y, int64_t N) {
  int4_m1(x, w, bias, y, N);
}
#endif

template <typename Deq>
at::Tensor weight_only_linear(const char* op, const at::Tensor& x, int64_t N, const Deq& deq,
                              const std::optional<at::Tensor>& bias) {
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor b = bias_as(op, bias, x, N, at::kFloat);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  const bool big = M >= kBigM && K > 0;
  at::Tensor xf;
  if (big) {  // x^T in fp32, widened and transposed in one copy
    xf = at::empty({K, M}, x.options().dtype(at::kFloat));
    xf.copy_(x.t());
  } else {
    xf = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quant_linear", [&] {
    if (big)
      large_m(xf.data_ptr<float>(), deq, bp, y.data_ptr<scalar_t>(), M, N, K);
    else if (m1_ok(deq, M))
      m1(xf.data_ptr<float>(), deq, bp, y.data_ptr<scalar_t>(), N);
    else
      small_m(xf.data_ptr<float>(), deq, bp, y.data_ptr<scalar_t>(), M, N, K);
  });
  return y;
}

// ------------------------------------------------------------------------------------- ops

at::Tensor int8_weight_linear_cpu(const at::Tensor& x, const at::Tensor& qweight,
                                  const at::Tensor& scales, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "int8_weight_linear";
  check_x(op, x);
  TORCH_CHECK(qweight.dim() == 2, op, ": qweight must be 2-D (N, K), got shape ", qweight.sizes());
  const int64_t N = qweight.size(0), K = x.size(1);
  check_param(op, "qweight", qweight, at::kChar, {N, K});
  check_param(op, "scales", scales, at::kFloat, {N});
  const at::Tensor q = qweight.contiguous(), s = scales.contiguous();
  return weight_only_linear(op, x, N, Int8Rows{q.data_ptr<int8_t>(), s.data_ptr<float>(), K},
                            bias);
}

at::Tensor int4_weight_linear_cpu(const at::Tensor& x, const at::Tensor& packed,
                                  const at::Tensor& scales, const at::Tensor& zeros,
                                  int64_t group_size, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "int4_weight_linear";
  check_x(op, x);
  const int64_t K = x.size(1);
  TORCH_CHECK(group_size >= 2 && group_size % 2 == 0, op,
              ": group_size must be an even number >= 2, got ", group_size);
  TORCH_CHECK(K % group_size == 0, op, ": x's K (", K, ") must be a multiple of group_size (",
              group_size, ")");
  TORCH_CHECK(packed.dim() == 2, op, ": packed must be 2-D (N, K / 2), got shape ",
              packed.sizes());
  const int64_t N = packed.size(0);
  check_param(op, "packed", packed, at::kByte, {N, K / 2});
  check_param(op, "scales", scales, at::kFloat, {N, K / group_size});
  check_param(op, "zeros", zeros, at::kFloat, {N, K / group_size});
  const at::Tensor p = packed.contiguous(), s = scales.contiguous(), z = zeros.contiguous();
  return weight_only_linear(
      op, x, N,
      Int4Rows{p.data_ptr<uint8_t>(), s.data_ptr<float>(), z.data_ptr<float>(), K, group_size},
      bias);
}

at::Tensor codebook_linear_cpu(const at::Tensor& x, const at::Tensor& packed,
                               const at::Tensor& table, int64_t bits, int64_t in_features,
                               const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "codebook_linear";
  check_x(op, x);
  const int64_t K = x.size(1);
  TORCH_CHECK(bits >= 1 && bits <= 4, op, ": bits must be 1, 2, 3 or 4, got ", bits);
  TORCH_CHECK(in_features == K, op, ": in_features (", in_features, ") must equal x's K (", K,
              ")");
  TORCH_CHECK(packed.dim() == 2, op, ": packed must be 2-D (N, ceil(K * bits / 8)), got shape ",
              packed.sizes());
  const int64_t N = packed.size(0);
  check_param(op, "packed", packed, at::kByte, {N, (K * bits + 7) / 8});
  check_param(op, "table", table, at::kFloat, {int64_t(1) << bits});
  const at::Tensor p = packed.contiguous(), t = table.contiguous();
  const uint8_t* pp = p.data_ptr<uint8_t>();
  const float* tp = t.data_ptr<float>();
  switch (bits) {
    case 1: return weight_only_linear(op, x, N, CodebookRows<1>{pp, tp, K}, bias);
    case 2: return weight_only_linear(op, x, N, CodebookRows<2>{pp, tp, K}, bias);
    case 3: return weight_only_linear(op, x, N, CodebookRows<3>{pp, tp, K}, bias);
    default: return weight_only_linear(op, x, N, CodebookRows<4>{pp, tp, K}, bias);
  }
}

}  // namespace
}  // namespace quant

TORCH_LIBRARY_IMPL(leedl_fast, CPU, m) {
  m.impl("int8_weight_linear", &quant::int8_weight_linear_cpu);
  m.impl("int4_weight_linear", &quant::int4_weight_linear_cpu);
  m.impl("codebook_linear", &quant::codebook_linear_cpu);
}

}  // namespace leedl_fast
