// CPU kernel for int8_dynamic_linear (format: csrc/ops.cpp; oracle: leedl_fast/reference/
// quant.py `int8_dynamic_linear`):
//   sx[m] = max_k |x[m, k]| / 127 (fp32),  xq = round_half_even(x / sx) clamped to +-127,
//   acc = xq qweight^T exactly in int32,   y = acc * sx[m] * scales[n] + bias.
//
// 1. Quantize x once: each row (widened to fp32 for fp16/bf16) to int16 values in [-127, 127]
//    (int16, so the products need no per-use sign extension; rows padded to a multiple of 16
//    with zeros). The division and rounding are the reference's, bit for bit.
// 2. Integer products: tasks over (block of 16 features, block of up to 64 x rows), K in
//    chunks of 1024 so a 4-row slice of xq (8 KiB) and the 16 weight rows (16 KiB) stay in L1.
//    The micro-kernel takes 2 weight rows x 4 x rows: per 16 k it sign-extends 16 int8 weights
//    to int16 once per weight row and runs _mm256_madd_epi16 (16 products, pairwise summed into
//    8 int32 lanes) into 8 int32 vector accumulators. Exact: |w| <= 128 and |xq| <= 127, so a
//    sum over K stays below 2^31 for K <= 132104 (checked).
// 3. Epilogue in float64, in the reference's order: (acc * sx) * scale + bias, rounded once to
//    x's dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "quant.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <vector>

namespace leedl_fast {
namespace quant {
namespace {

constexpr int64_t kFeatures = 16;  // features per task
constexpr int64_t kRowsX = 64;     // x rows per task
constexpr int64_t kChunk = 1024;   // K per pass (a multiple of 16)
constexpr int64_t kMaxK = (int64_t(1) << 31) / (128 * 127) - 1;

// xq (M, ld) int16 and sx (M,) from x (M, K) fp32, as quantize_rows_int8 computes them.
void quantize_rows(const float* x, int64_t M, int64_t K, int64_t ld, int16_t* xq, float* sx) {
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)),
                   [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* row = x + m * K;
      float amax = 0.f;
      for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(row[k]));
      const float s = amax / 127.f;
      const float safe = s > 0.f ? s : 1.f;
      sx[m] = s;
      int16_t* q = xq + m * ld;
      // x / safe (a true division, as the reference), ties to even (the default rounding mode)
      for (int64_t k = 0; k < K; ++k)
        q[k] = static_cast<int16_t>(std::clamp(std::nearbyint(row[k] / safe), -127.f, 127.f));
      std::fill(q + K, q + ld, int16_t(0));
    }
  });
}

#if defined(__AVX2__)
inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}
#endif

// acc[m * ldacc + r] += sum_{k < kc} w[r * ldw + k] * xq[m * ldx + k] for r < NR, m < MR.
template <int NR, int MR>
inline void dot_i8(const int8_t* w, int64_t ldw, const int16_t* xq, int64_t ldx, int64_t kc,
                   int32_t* acc, int64_t ldacc) {
  int64_t k = 0;
  int32_t sums[MR][NR] = {};
#if defined(__AVX2__)
  __m256i vacc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) vacc[m][r] = _mm256_setzero_si256();
  for (; k + 16 <= kc; k += 16) {
    __m256i wv[NR];
    for (int r = 0; r < NR; ++r)
      wv[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + r * ldw + k)));
    for (int m = 0; m < MR; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * ldx + k));
      for (int r = 0; r < NR; ++r)
        vacc[m][r] = _mm256_add_epi32(vacc[m][r], _mm256_madd_epi16(wv[r], xv));
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) sums[m][r] = hsum(vacc[m][r]);
#endif
  for (; k < kc; ++k)  // the tail (or everything, without AVX2)
    for (int m = 0; m < MR; ++m)
      for (int r = 0; r < NR; ++r) sums[m][r] += int32_t(w[r * ldw + k]) * xq[m * ldx + k];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m * ldacc + r] += sums[m][r];
}

// Runs dot_i8 on an (nr <= 2) x (mr <= 4) block with compile-time sizes.
template <int NR>
inline void dot_block(int64_t mr, const int8_t* w, int64_t ldw, const int16_t* xq, int64_t ldx,
                      int64_t kc, int32_t* acc, int64_t ldacc) {
  switch (mr) {
    case 4: dot_i8<NR, 4>(w, ldw, xq, ldx, kc, acc, ldacc); break;
    case 3: dot_i8<NR, 3>(w, ldw, xq, ldx, kc, acc, ldacc); break;
    case 2: dot_i8<NR, 2>(w, ldw, xq, ldx, kc, acc, ldacc); break;
    default: dot_i8<NR, 1>(w, ldw, xq, ldx, kc, acc, ldacc); break;
  }
}

at::Tensor int8_dynamic_linear_cpu(const at::Tensor& x, const at::Tensor& qweight,
                                   const at::Tensor& scales,
                                   const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "int8_dynamic_linear";
  check_x(op, x);
  TORCH_CHECK(qweight.dim() == 2, op, ": qweight must be 2-D (N, K), got shape ",
              qweight.sizes());
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(0);
  check_param(op, "qweight", qweight, at::kChar, {N, K});
  check_param(op, "scales", scales, at::kFloat, {N});
  TORCH_CHECK(K <= kMaxK, op, ": K = ", K, " is too large for exact int32 accumulation (max ",
              kMaxK, ")");
  const at::Tensor b = bias_as(op, bias, x, N, at::kDouble);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;

  const at::Tensor xf = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
  const int64_t ldx = (K + 15) / 16 * 16;
  std::vector<int16_t> xq(M * ldx);
  std::vector<float> sx(M);
  quantize_rows(xf.data_ptr<float>(), M, K, ldx, xq.data(), sx.data());

  const at::Tensor q = qweight.contiguous(), s = scales.contiguous();
  const int8_t* w = q.data_ptr<int8_t>();
  const float* sp = s.data_ptr<float>();
  const double* bp = b.defined() ? b.data_ptr<double>() : nullptr;
  const int64_t nblocks = (N + kFeatures - 1) / kFeatures;
  const int64_t mblocks = (M + kRowsX - 1) / kRowsX;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quant_linear", [&] {
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, nblocks * mblocks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<int32_t> acc(kRowsX * kFeatures);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n0 = (t / mblocks) * kFeatures, rows = std::min(kFeatures, N - n0);
        const int64_t m0 = (t % mblocks) * kRowsX, cols = std::min(kRowsX, M - m0);
        std::fill(acc.begin(), acc.end(), 0);
        for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
          const int64_t kc = std::min(kChunk, K - k0);
          for (int64_t m = 0; m < cols; m += 4) {
            const int64_t mr = std::min<int64_t>(4, cols - m);
            const int16_t* xr = xq.data() + (m0 + m) * ldx + k0;
            int64_t r = 0;
            for (; r + 2 <= rows; r += 2)
              dot_block<2>(mr, w + (n0 + r) * K + k0, K, xr, ldx, kc,
                           acc.data() + m * kFeatures + r, kFeatures);
            if (r < rows)
              dot_block<1>(mr, w + (n0 + r) * K + k0, K, xr, ldx, kc,
                           acc.data() + m * kFeatures + r, kFeatures);
          }
        }
        for (int64_t m = 0; m < cols; ++m)
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t n = n0 + r;
            double v = double(acc[m * kFeatures + r]) * double(sx[m0 + m]) * double(sp[n]);
            if (bp) v += bp[n];
            yp[(m0 + m) * N + n] = static_cast<scalar_t>(v);
          }
      }
    });
  });
  return y;
}

}  // namespace
}  // namespace quant

TORCH_LIBRARY_IMPL(leedl_fast, CPU, m) {
  m.impl("int8_dynamic_linear", &quant::int8_dynamic_linear_cpu);
}

}  // namespace leedl_fast
