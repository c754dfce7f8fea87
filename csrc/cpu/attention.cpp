// CPU kernels for the attention family: flash attention tiled for the CPU, forward and backward.
// The math (online softmax, the backward from the saved log-sum-exp) is derived in
// docs/attention.md; the Triton kernels in kernels/attention.py run the same algorithm on a GPU.
//
// Forward, one task per (batch, query head, block of block_q queries), spread over the threads
// with at::parallel_for. A task streams the keys it may see in tiles of kBlockK:
//
//     S   = scale * Q_blk K_tile^T                      (BLAS, block_q x kBlockK, in L2)
//     per row: mask, m_new = max(m, rowmax S), P = exp(S - m_new), l = l * e^(m - m_new) + sum P,
//              acc *= e^(m - m_new)
//     acc += P V_tile                                   (BLAS)
//
// and ends with out = acc / l, lse = m + log l. The L x L matrix never exists: a thread holds one
// block_q x kBlockK score tile. Keys a query block cannot see (causal, sliding window) are never
// touched: the key loop runs over the union of the block's visible ranges, which for a window w
// is w + block_q keys instead of L. This is where the window speed comes from.
//
// Backward, one task per (batch, key/value head): for each query head sharing it (GQA) and each
// query block, recompute P = exp(S - lse) tile by tile and accumulate
//     dV += P^T dO,  dP = dO V^T,  dS = P * (dP - delta),  dQ += scale dS K,  dK += scale dS^T Q
// with delta = rowsum(dO * O). A task owns its dK/dV rows and its queries' dQ rows, so threads
// never write the same memory (no atomics, deterministic).
//
// Precision: fp32 inputs compute in fp32, fp64 in fp64 (gradcheck); fp16/bf16 are widened to
// fp32 once up front (the tile products need a BLAS type) and the outputs narrowed at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "blas.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace leedl_fast {
namespace {

// Tile sizes. A query block of 128 against a key tile of 512 keeps the fp32 score tile at
// 256 KiB and the K and V tiles at D = 64 at 128 KiB each: together they stay in a core's L2
// (1 MiB on the build machine) while the two BLAS calls reuse them, and the BLAS calls are big
// enough that their packing is amortized (measured at B=4, H=8, L=1024, D=64: 128 x 512 was as
// fast as any of 32..256 x 256..1024). A sliding window takes query blocks of 64: a block sees
// w + 64 keys, so smaller blocks waste fewer scores (at w = 256: 83 ms against 89 ms for 128).
constexpr int64_t kBlockK = 512;
inline int64_t query_block(int64_t window_left) { return window_left < 0 ? 128 : 64; }

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// Shapes and the visibility rule. Keys are aligned to the bottom-right corner: with
// o = Lk - Lq, query i sees key j iff i + o - left <= j <= i + o + right (a negative bound is
// unbounded; is_causal is folded in as right = min(right, 0)).
struct Geometry {
  int64_t B, Hq, Hk, Lq, Lk, D;
  int64_t left, right;

  int64_t group() const { return Hq / Hk; }
  int64_t first_key(int64_t i) const {
    return left < 0 ? 0 : std::max<int64_t>(0, i + (Lk - Lq) - left);
  }
  int64_t last_key(int64_t i) const {  // < first_key(i) when query i sees nothing
    return right < 0 ? Lk - 1 : std::min<int64_t>(Lk - 1, i + (Lk - Lq) + right);
  }
};

// A (B, H, L, D) operand: the last dim contiguous, row stride ld >= D (the glue makes it so).
template <typename T>
struct Operand {
  const T* data;
  int64_t sb, sh, ld;

  const T* rows(int64_t b, int64_t h, int64_t i) const { return data + b * sb + h * sh + i * ld; }
};

template <typename T>
Operand<T> operand(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), std::max<int64_t>(t.stride(2), 1)};
}

// attn_mask as a strided (B, Hq, Lq, Lk) view (stride 0 where it broadcasts): boolean (true =
// may attend) or additive in the compute type T.
template <typename T>
struct Mask {
  enum Kind { kNone, kKeep, kAdd } kind = kNone;
  const bool* keep = nullptr;
  const T* add = nullptr;
  int64_t sb = 0, sh = 0, si = 0, sj = 0;

  // Applies the mask to scores s[0..n) of query i against keys j0..j0+n; the scores are in
  // log2 units, so additive values are multiplied by log2(e).
  void apply(T* s, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n) const {
    constexpr T kLog2e = T(1.4426950408889634);
    if (kind == kNone) return;
    const int64_t base = b * sb + h * sh + i * si + j0 * sj;
    if (kind == kKeep) {
      const bool* k = keep + base;
      for (int64_t j = 0; j < n; ++j)
        if (!k[j * sj]) s[j] = kNegInf<T>;
    } else if (sj == 1) {  // the common layout: a contiguous row, vectorized by the compiler
      const T* a = add + base;
      for (int64_t j = 0; j < n; ++j) s[j] += kLog2e * a[j];
    } else {
      const T* a = add + base;
      for (int64_t j = 0; j < n; ++j) s[j] += kLog2e * a[j * sj];
    }
  }
};

template <typename T>
inline T row_max(const T* s, int64_t n) {
  return at::vec::reduce_all<T>([](Vec<T>& x, Vec<T>& y) { return at::vec::maximum(x, y); }, s,
                                n);
}

// 2^x for x <= 0 (a score minus its row max, in log2 units), 0 below 2^-126 and for -inf.
// Split x = n + f with n = round(x), |f| <= 1/2: 2^n goes straight into the exponent bits and
// 2^f is a degree-5 polynomial (least-squares fit on [-1/2, 1/2], relative error 1.1e-7, about
// fp32's epsilon). 13 vector ops against exp_u20's 18: the exponentials are a fifth of the
// forward's time at D = 64, and every score takes one.
#if defined(__AVX2__) && defined(__FMA__)
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
#endif

// s[j] = 2^(s[j] - shift) in place (every s[j] <= shift), returning the sum.
template <typename T>
inline T exp2_and_sum(T* s, int64_t n, T shift) {
  int64_t j = 0;
  T sum = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float>) {
    const __m256 vshift = _mm256_set1_ps(shift);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; j + 16 <= n; j += 16) {  // two independent chains hide the FMA latency
      const __m256 p0 = exp2_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + j), vshift));
      const __m256 p1 = exp2_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + j + 8), vshift));
      _mm256_storeu_ps(s + j, p0);
      _mm256_storeu_ps(s + j + 8, p1);
      acc0 = _mm256_add_ps(acc0, p0);
      acc1 = _mm256_add_ps(acc1, p1);
    }
    sum = at::vec::vec_reduce_all<float>([](Vec<float>& x, Vec<float>& y) { return x + y; },
                                         Vec<float>(_mm256_add_ps(acc0, acc1)));
  } else
#endif
  {
    constexpr int64_t kV = Vec<T>::size();
    const Vec<T> vshift(shift), ln2(T(0.6931471805599453));
    Vec<T> acc(T(0));
    for (; j + kV <= n; j += kV) {
      const Vec<T> p = ((Vec<T>::loadu(s + j) - vshift) * ln2).exp();
      p.store(s + j);
      acc = acc + p;
    }
    sum = at::vec::vec_reduce_all<T>([](Vec<T>& x, Vec<T>& y) { return x + y; }, acc);
  }
  for (; j < n; ++j) sum += (s[j] = std::exp2(s[j] - shift));
  return sum;
}

template <typename T>
inline void scale_row(T* x, int64_t n, T factor) {
  at::vec::map([factor](Vec<T> v) { return v * Vec<T>(factor); }, x, x, n);
}

template <typename T>
inline void fill(T* x, int64_t n, T value) {
  std::fill(x, x + n, value);
}

// The visible keys of query i inside the tile [j0, j0 + cols), as offsets [a, e) into the tile.
inline std::pair<int64_t, int64_t> visible_in_tile(const Geometry& g, int64_t i, int64_t j0,
                                                   int64_t cols) {
  const int64_t a = std::max(g.first_key(i), j0) - j0;
  const int64_t e = std::min(g.last_key(i) + 1, j0 + cols) - j0;
  return {a, std::max(a, e)};
}

// ---------------------------------------------------------------------------------- forward

template <typename T>
void attention_fwd_kernel(const Geometry& g, Operand<T> q, Operand<T> k, Operand<T> v,
                          const Mask<T>& mask, T scale, T* out, T* lse) {
  const int64_t D = g.D, block_q = query_block(g.left);
  const int64_t n_blocks = (g.Lq + block_q - 1) / block_q;
  const T scale_log2 = scale * T(1.4426950408889634);  // scores in log2 units: exp -> exp2
  at::parallel_for(0, g.B * g.Hq * n_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scores(block_q * kBlockK), acc(block_q * D), m(block_q), l(block_q);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task % n_blocks, bh = task / n_blocks;
      const int64_t b = bh / g.Hq, h = bh % g.Hq, hk = h / g.group();
      const int64_t i0 = blk * block_q, rows = std::min(block_q, g.Lq - i0);
      fill(acc.data(), rows * D, T(0));
      fill(m.data(), rows, kNegInf<T>);
      fill(l.data(), rows, T(0));
      // The union of the rows' visible key ranges (both ends grow with i).
      const int64_t key_begin = g.first_key(i0), key_end = g.last_key(i0 + rows - 1) + 1;
      for (int64_t j0 = key_begin; j0 < key_end; j0 += kBlockK) {
        const int64_t cols = std::min(kBlockK, key_end - j0);
        gemm<T>(false, true, rows, cols, D, scale_log2, q.rows(b, h, i0), q.ld, k.rows(b, hk, j0),
                k.ld, T(0), scores.data(), kBlockK);
        for (int64_t r = 0; r < rows; ++r) {
          T* s = scores.data() + r * kBlockK;
          const auto [a, e] = visible_in_tile(g, i0 + r, j0, cols);
          mask.apply(s + a, b, h, i0 + r, j0 + a, e - a);
          const T tile_max = e > a ? row_max(s + a, e - a) : kNegInf<T>;
          if (tile_max == kNegInf<T>) {  // nothing visible here: P row = 0, state unchanged
            fill(s, cols, T(0));
            continue;
          }
          const T m_new = std::max(m[r], tile_max);
          const T correction = std::exp2(m[r] - m_new);  // 0 on the first visible tile
          const T sum = exp2_and_sum(s + a, e - a, m_new);
          fill(s, a, T(0));
          fill(s + e, cols - e, T(0));
          if (correction != T(1)) scale_row(acc.data() + r * D, D, correction);
          l[r] = l[r] * correction + sum;
          m[r] = m_new;
        }
        gemm<T>(false, false, rows, D, cols, T(1), scores.data(), kBlockK, v.rows(b, hk, j0),
                v.ld, T(1), acc.data(), D);
      }
      T* o = out + ((b * g.Hq + h) * g.Lq + i0) * D;
      T* o_lse = lse + (b * g.Hq + h) * g.Lq + i0;
      for (int64_t r = 0; r < rows; ++r) {
        if (l[r] > T(0)) {
          at::vec::map([inv = T(1) / l[r]](Vec<T> x) { return x * Vec<T>(inv); }, o + r * D,
                       acc.data() + r * D, D);
          o_lse[r] = (m[r] + std::log2(l[r])) * T(0.6931471805599453);  // natural log
        } else {  // a query that sees no key: 0, and lse = +inf so the backward gets P = 0
          fill(o + r * D, D, T(0));
          o_lse[r] = std::numeric_limits<T>::infinity();
        }
      }
    }
  });
}

// --------------------------------------------------------------------------------- backward

template <typename T>
void attention_bwd_kernel(const Geometry& g, Operand<T> dout, Operand<T> q, Operand<T> k,
                          Operand<T> v, Operand<T> out, const T* lse, const Mask<T>& mask,
                          T scale, T* dq, T* dk, T* dv) {
  const int64_t D = g.D, block_q = query_block(g.left);
  const int64_t n_blocks = (g.Lq + block_q - 1) / block_q;
  const T scale_log2 = scale * T(1.4426950408889634);
  at::parallel_for(0, g.B * g.Hk, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> p_tile(block_q * kBlockK), ds_tile(block_q * kBlockK), delta(block_q);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / g.Hk, hk = task % g.Hk;
      T* dk_rows = dk + (b * g.Hk + hk) * g.Lk * D;  // this task owns them: accumulate in place
      T* dv_rows = dv + (b * g.Hk + hk) * g.Lk * D;
      fill(dk_rows, g.Lk * D, T(0));
      fill(dv_rows, g.Lk * D, T(0));
      for (int64_t h = hk * g.group(); h < (hk + 1) * g.group(); ++h) {
        for (int64_t blk = 0; blk < n_blocks; ++blk) {
          const int64_t i0 = blk * block_q, rows = std::min(block_q, g.Lq - i0);
          const T* q_blk = q.rows(b, h, i0);
          const T* do_blk = dout.rows(b, h, i0);
          const T* lse_blk = lse + (b * g.Hq + h) * g.Lq + i0;
          T* dq_blk = dq + ((b * g.Hq + h) * g.Lq + i0) * D;
          fill(dq_blk, rows * D, T(0));
          for (int64_t r = 0; r < rows; ++r) {  // delta_i = dO_i . O_i
            delta[r] = at::vec::map2_reduce_all<T>(
                [](Vec<T> x, Vec<T> y) { return x * y; },
                [](Vec<T> x, Vec<T> y) { return x + y; }, do_blk + r * dout.ld,
                out.rows(b, h, i0 + r), D);
          }
          const int64_t key_begin = g.first_key(i0), key_end = g.last_key(i0 + rows - 1) + 1;
          for (int64_t j0 = key_begin; j0 < key_end; j0 += kBlockK) {
            const int64_t cols = std::min(kBlockK, key_end - j0);
            const T* k_tile = k.rows(b, hk, j0);
            const T* v_tile = v.rows(b, hk, j0);
            // P = exp(S - lse), recomputed (zero outside the visible keys and where lse = inf).
            gemm<T>(false, true, rows, cols, D, scale_log2, q_blk, q.ld, k_tile, k.ld, T(0),
                    p_tile.data(), kBlockK);
            for (int64_t r = 0; r < rows; ++r) {
              T* p = p_tile.data() + r * kBlockK;
              const auto [a, e] = visible_in_tile(g, i0 + r, j0, cols);
              mask.apply(p + a, b, h, i0 + r, j0 + a, e - a);
              const T row_lse = lse_blk[r] * T(1.4426950408889634);
              if (std::isinf(row_lse) || e == a) {
                fill(p, cols, T(0));
                continue;
              }
              exp2_and_sum(p + a, e - a, row_lse);
              fill(p, a, T(0));
              fill(p + e, cols - e, T(0));
            }
            // dV_tile += P^T dO
            gemm<T>(true, false, cols, D, rows, T(1), p_tile.data(), kBlockK, do_blk, dout.ld,
                    T(1), dv_rows + j0 * D, D);
            // dP = dO V_tile^T, then dS = P * (dP - delta) in place
            gemm<T>(false, true, rows, cols, D, T(1), do_blk, dout.ld, v_tile, v.ld, T(0),
                    ds_tile.data(), kBlockK);
            for (int64_t r = 0; r < rows; ++r) {
              T* ds = ds_tile.data() + r * kBlockK;
              const T* p = p_tile.data() + r * kBlockK;
              const Vec<T> vdelta(delta[r]);
              at::vec::map2([vdelta](Vec<T> pv, Vec<T> dpv) { return pv * (dpv - vdelta); },
                            ds, p, ds, cols);
            }
            // dQ_blk += scale dS K_tile;  dK_tile += scale dS^T Q_blk
            gemm<T>(false, false, rows, D, cols, scale, ds_tile.data(), kBlockK, k_tile, k.ld,
                    T(1), dq_blk, D);
            gemm<T>(true, false, cols, D, rows, scale, ds_tile.data(), kBlockK, q_blk, q.ld,
                    T(1), dk_rows + j0 * D, D);
          }
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------- glue

at::ScalarType compute_type(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The operand as the kernels read it: compute dtype, last dim contiguous, rows at least D apart.
at::Tensor as_operand(const at::Tensor& t, at::ScalarType type) {
  at::Tensor x = t.to(type);
  const bool rows_ok = x.size(2) <= 1 || x.stride(2) >= x.size(3);
  if (x.size(3) > 1 && x.stride(3) != 1) return x.contiguous();
  return rows_ok ? x : x.contiguous();
}

Geometry check_and_describe(const char* op, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, bool is_causal, int64_t window_left,
                            int64_t window_right) {
  const std::pair<const char*, const at::Tensor*> operands[] = {{"q", &q}, {"k", &k}, {"v", &v}};
  for (const auto& [name, t] : operands) {
    TORCH_CHECK(t->device().is_cpu(), op, ": ", name, " must be a CPU tensor");
    TORCH_CHECK(t->dim() == 4, op, ": ", name, " must be 4-D (B, H, L, D), got ", t->sizes());
    TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": ", name,
                " must be floating point, got ", t->scalar_type());
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), op, ": ", name, " has dtype ",
                t->scalar_type(), " but q has ", q.scalar_type());
  }
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": k ", k.sizes(), " and v ", v.sizes(), " differ");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(3) == q.size(3), op, ": q ", q.sizes(),
              " and k ", k.sizes(), " differ in batch or head dim");
  TORCH_CHECK(k.size(1) > 0 ? q.size(1) % k.size(1) == 0 : q.size(1) == 0, op, ": ",
              q.size(1), " query heads are not a multiple of ", k.size(1), " key heads");
  int64_t right = window_right;
  if (is_causal) right = right < 0 ? 0 : std::min<int64_t>(right, 0);
  return {q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), window_left, right};
}

// The mask as a (B, Hq, Lq, Lk) view in the kernels' types; `holder` keeps converted data alive.
template <typename T>
Mask<T> describe_mask(const std::optional<at::Tensor>& attn_mask, const Geometry& g,
                      at::Tensor& holder) {
  Mask<T> mask;
  if (!attn_mask.has_value()) return mask;
  at::Tensor m = *attn_mask;
  TORCH_CHECK(m.device().is_cpu(), "attention: attn_mask must be a CPU tensor");
  TORCH_CHECK(m.scalar_type() == at::kBool || at::isFloatingType(m.scalar_type()),
              "attention: attn_mask must be bool or floating point, got ", m.scalar_type());
  TORCH_CHECK(m.dim() <= 4, "attention: attn_mask must have at most 4 dims, got ", m.sizes());
  if (m.scalar_type() != at::kBool) m = m.to(c10::CppTypeToScalarType<T>::value);
  // Broadcast (stride 0, no copy); expand raises for a shape that does not broadcast.
  holder = m.expand({g.B, g.Hq, g.Lq, g.Lk});
  mask.sb = holder.stride(0);
  mask.sh = holder.stride(1);
  mask.si = holder.stride(2);
  mask.sj = holder.stride(3);
  if (m.scalar_type() == at::kBool) {
    mask.kind = Mask<T>::kKeep;
    mask.keep = holder.data_ptr<bool>();
  } else {
    mask.kind = Mask<T>::kAdd;
    mask.add = holder.data_ptr<T>();
  }
  return mask;
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& attn_mask, double scale, bool is_causal,
    int64_t window_left, int64_t window_right) {
  const Geometry g =
      check_and_describe("attention_fwd", q, k, v, is_causal, window_left, window_right);
  const auto type = compute_type(q);
  at::Tensor out = at::empty({g.B, g.Hq, g.Lq, g.D}, q.options().dtype(type));
  at::Tensor lse = at::empty({g.B, g.Hq, g.Lq}, q.options().dtype(type));
  AT_DISPATCH_FLOATING_TYPES(type, "attention_fwd_cpu", [&] {
    at::Tensor mask_holder;
    const Mask<scalar_t> mask = describe_mask<scalar_t>(attn_mask, g, mask_holder);
    const at::Tensor qc = as_operand(q, type), kc = as_operand(k, type), vc = as_operand(v, type);
    attention_fwd_kernel<scalar_t>(g, operand<scalar_t>(qc), operand<scalar_t>(kc),
                                   operand<scalar_t>(vc), mask, static_cast<scalar_t>(scale),
                                   out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
  });
  return {out.to(q.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& attn_mask,
    double scale, bool is_causal, int64_t window_left, int64_t window_right) {
  const Geometry g =
      check_and_describe("attention_bwd", q, k, v, is_causal, window_left, window_right);
  TORCH_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "attention_bwd: dout ", dout.sizes(), " and out ", out.sizes(),
              " must have q's shape ", q.sizes());
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == g.B && lse.size(1) == g.Hq &&
                  lse.size(2) == g.Lq,
              "attention_bwd: lse must have shape (B, Hq, Lq), got ", lse.sizes());
  TORCH_CHECK(dout.device().is_cpu() && out.device().is_cpu() && lse.device().is_cpu(),
              "attention_bwd: dout, out and lse must be CPU tensors");
  const auto type = compute_type(q);
  auto opts = q.options().dtype(type);
  at::Tensor dq = at::empty({g.B, g.Hq, g.Lq, g.D}, opts);
  at::Tensor dk = at::empty({g.B, g.Hk, g.Lk, g.D}, opts);
  at::Tensor dv = at::empty({g.B, g.Hk, g.Lk, g.D}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "attention_bwd_cpu", [&] {
    at::Tensor mask_holder;
    const Mask<scalar_t> mask = describe_mask<scalar_t>(attn_mask, g, mask_holder);
    const at::Tensor qc = as_operand(q, type), kc = as_operand(k, type), vc = as_operand(v, type);
    const at::Tensor doc = as_operand(dout, type), oc = as_operand(out, type);
    const at::Tensor lsec = lse.to(type).contiguous();
    attention_bwd_kernel<scalar_t>(g, operand<scalar_t>(doc), operand<scalar_t>(qc),
                                   operand<scalar_t>(kc), operand<scalar_t>(vc),
                                   operand<scalar_t>(oc), lsec.data_ptr<scalar_t>(), mask,
                                   static_cast<scalar_t>(scale), dq.data_ptr<scalar_t>(),
                                   dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>());
  });
  const auto dtype = q.scalar_type();
  return {dq.to(dtype), dk.to(dtype), dv.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(leedl_fast, CPU, m) {
  m.impl("attention_fwd", &attention_fwd_cpu);
  m.impl("attention_bwd", &attention_bwd_cpu);
}

}  // namespace leedl_fast
