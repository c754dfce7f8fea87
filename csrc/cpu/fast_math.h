// Fast transcendental functions for the CPU kernels' inner loops (AVX2 + FMA, fp32), shared by
// the attention and recurrent families. Each is a few FMAs on vector registers where ATen's
// Sleef versions take 2-3x the instructions; accuracy is stated per function and tested through
// the kernels against float64. Without AVX2 the kernels use ATen's Vectorized functions instead.
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LEEDL_FAST_FAST_MATH 1

namespace leedl_fast {

// 2^x for x <= 0 (a score minus its row max, in log2 units), 0 below 2^-126 and for -inf.
// Split x = n + f with n = round(x), |f| <= 1/2: 2^n goes straight into the exponent bits and
// 2^f is a degree-5 polynomial (least-squares fit on [-1/2, 1/2], relative error 1.1e-7, about
// fp32's epsilon). 13 vector ops against exp_u20's 18: the exponentials are a fifth of the
// forward's time at D = 64, and every score takes one.
inline __m256 exp2_nonpositive(__m256 x) {
  const __m256 lowest = _mm256_set1_ps(-126.0f);
  const __m256 underflow = _mm256_cmp_ps(x, lowest, _CMP_LT_OQ);
  x = _mm256_max_ps(lowest, x);  // NaN stays NaN (max returns its second operand)
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);
  __m256 p = _mm256_set1_ps(1.3218714e-03f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6716965e-03f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5508930e-02f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022238e-01f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314694e-01f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  const __m256 r = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), bits));
  return _mm256_andnot_ps(underflow, r);
}


// sigmoid(x) = 1 / (1 + e^-x), from e = e^-|x| <= 1 so nothing overflows:
// 1 / (1 + e) for x >= 0, e / (1 + e) below. Relative error ~2e-7.
inline __m256 sigmoid_ps(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 neg_abs = _mm256_or_ps(x, sign);  // -|x|
  const __m256 e = exp2_nonpositive(_mm256_mul_ps(neg_abs, _mm256_set1_ps(1.4426950408889634f)));
  const __m256 r = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
  return _mm256_blendv_ps(r, _mm256_mul_ps(e, r), x);  // blendv picks by x's sign bit
}

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = e^-2|x|; below |x| = 1/4, where 1 - e would
// cancel, the Taylor series to x^11 (truncation < 1e-10 relative). Relative error ~3e-7.
inline __m256 tanh_ps(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 a = _mm256_andnot_ps(sign, x);
  const __m256 e = exp2_nonpositive(_mm256_mul_ps(a, _mm256_set1_ps(-2.8853900817779268f)));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 big = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
  const __m256 x2 = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(-8.8632355299021966e-3f);  // -1382 / 155925
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(2.1869488536155203e-2f));  // 62 / 2835
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-5.3968253968253971e-2f));  // -17 / 315
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(1.3333333333333333e-1f));  // 2 / 15
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-3.3333333333333333e-1f));  // -1 / 3
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, x2), x, x);
  const __m256 small = _mm256_cmp_ps(a, _mm256_set1_ps(0.25f), _CMP_LT_OQ);
  return _mm256_blendv_ps(_mm256_or_ps(big, _mm256_and_ps(x, sign)), p, small);
}

}  // namespace leedl_fast

#endif  // AVX2 + FMA
