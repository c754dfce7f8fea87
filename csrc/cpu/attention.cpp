// CPU kernels for the attention family: flash attention tiled for the CPU, forward and backward.
// The math (online softmax, the backward from the saved log-sum-exp) is derived in
// docs/attention.md; the Triton kernels in kernels/attention.py run the same algorithm on a GPU.
//
// Forward, one task per (batch, query head, block of queries), spread over the threads with
// at::parallel_for. A task streams the keys it may see in tiles of kBlockK:
//
//     S   = Q_blk (c K^T)_tile                       (tile product: block_q x kBlockK, in L2)
//     per row: mask, m_new = max(m, rowmax S), P = 2^(S - m_new), l = l 2^(m - m_new) + sum P,
//              acc *= 2^(m - m_new)
//     acc += P V_tile                                 (tile product)
//
// and ends with out = acc / l, lse = (m + log2 l) ln 2. K is transposed and scaled by
// c = scale * log2(e) once per call, so the scores come out in log2 units and every exponential
// is a cheap 2^x (see exp2_nonpositive). The L x L matrix never exists: a thread holds one score
// tile. Keys a query block cannot see (causal, sliding window) are never touched: the key loop
// runs over the union of the block's visible ranges, which for a window w is w + block_q keys
// instead of L. This is where the window speed comes from.
//
// Backward, one task per (batch, key/value head): for each query head sharing it (GQA) and each
// query block, recompute P = exp(S - lse) tile by tile and accumulate
//     dV += P^T dO,  dP = dO V^T,  dS = P * (dP - delta),  dQ += scale dS K,  dK += scale dS^T Q
// with delta = rowsum(dO * O). The tiles are kept transposed (keys x queries: S^T = K Q^T), so
// that every product is a plain row-major A B with no transposed operand: the tile products are
// oneDNN's batch-reduce GEMM (blas.h), which takes none. A task owns its dK/dV rows and its
// queries' dQ rows, so threads never write the same memory (no atomics, deterministic).
//
// Precision: fp32 inputs compute in fp32, fp64 in fp64 (gradcheck); fp16/bf16 are widened to
// fp32 once up front (the tile products need a BLAS type) and the outputs narrowed at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "blas.h"
#include "fast_math.h"

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
  // The same rule read along a key's column: the queries that see key j.
  int64_t first_query(int64_t j) const {
    return right < 0 ? 0 : std::max<int64_t>(0, j - (Lk - Lq) - right);
  }
  int64_t last_query(int64_t j) const {
    return left < 0 ? Lq - 1 : std::min<int64_t>(Lq - 1, j - (Lk - Lq) + left);
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
  // With one row, torch leaves stride(2) free (it may be < D); the BLAS wants ld >= D anyway.
  return {t.data_ptr<T>(), t.stride(0), t.stride(1),
          std::max({t.stride(2), t.size(3), int64_t(1)})};
}

// attn_mask as a strided (B, Hq, Lq, Lk) view (stride 0 where it broadcasts): boolean (true =
// may attend) or additive in the compute type T.
template <typename T>
struct Mask {
  enum Kind { kNone, kKeep, kAdd } kind = kNone;
  const bool* keep = nullptr;
  const T* add = nullptr;
  int64_t sb = 0, sh = 0, si = 0, sj = 0;

  int64_t offset(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return b * sb + h * sh + i * si + j * sj;
  }

  // Applies the mask to a run of n scores whose mask entries start at `offset` and lie `step`
  // apart (sj along a query's keys, si along a key's queries). The scores are in log2 units,
  // so additive values are multiplied by log2(e) -- saturating, so that a finite value below
  // lowest / log2(e) (torch.finfo(dtype).min is the usual padding value) stays finite: a row
  // padded with it entirely gets torch's uniform average, not the "sees nothing" zero of -inf.
  void apply(T* s, int64_t offset, int64_t step, int64_t n) const {
    if (kind == kNone || n <= 0) return;
    if (kind == kKeep) {
      const bool* k = keep + offset;
      for (int64_t x = 0; x < n; ++x)
        if (!k[x * step]) s[x] = kNegInf<T>;
    } else if (step == 1) {  // the common layout: a contiguous run, vectorized by the compiler
      const T* a = add + offset;
      for (int64_t x = 0; x < n; ++x) s[x] += log2_units(a[x]);
    } else {
      const T* a = add + offset;
      for (int64_t x = 0; x < n; ++x) s[x] += log2_units(a[x * step]);
    }
  }

  static T log2_units(T a) {
    constexpr T kLog2e = T(1.4426950408889634);
    constexpr T kLowest = std::numeric_limits<T>::lowest();
    return a == kNegInf<T> ? a : std::max(a * kLog2e, kLowest);
  }
};

template <typename T>
inline T row_max(const T* s, int64_t n) {
  return at::vec::reduce_all<T>([](Vec<T>& x, Vec<T>& y) { return at::vec::maximum(x, y); }, s,
                                n);
}

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

// s[x] = 2^(s[x] - shift[x]) in place (every s[x] <= shift[x]; shift = +inf gives 0).
template <typename T>
inline void exp2_minus(T* s, const T* shift, int64_t n) {
  int64_t x = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float>) {
    for (; x + 8 <= n; x += 8)
      _mm256_storeu_ps(s + x, exp2_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + x),
                                                             _mm256_loadu_ps(shift + x))));
  }
#endif
  for (; x < n; ++x) s[x] = std::exp2(s[x] - shift[x]);
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

// kt: (B, Hk, D, Lk) contiguous, K transposed and scaled by scale * log2(e).
template <typename T>
void attention_fwd_kernel(const Geometry& g, Operand<T> q, const T* kt, Operand<T> v,
                          const Mask<T>& mask, T* out, T* lse) {
  const int64_t D = g.D, block_q = query_block(g.left);
  const int64_t n_blocks = (g.Lq + block_q - 1) / block_q;
  at::parallel_for(0, g.B * g.Hq * n_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scores(block_q * kBlockK), acc(block_q * D), m(block_q), l(block_q);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task % n_blocks, bh = task / n_blocks;
      const int64_t b = bh / g.Hq, h = bh % g.Hq, hk = h / g.group();
      const int64_t i0 = blk * block_q, rows = std::min(block_q, g.Lq - i0);
      const T* kt_head = kt + (b * g.Hk + hk) * D * g.Lk;
      fill(acc.data(), rows * D, T(0));
      fill(m.data(), rows, kNegInf<T>);
      fill(l.data(), rows, T(0));
      // The union of the rows' visible key ranges (both ends grow with i).
      const int64_t key_begin = g.first_key(i0), key_end = g.last_key(i0 + rows - 1) + 1;
      for (int64_t j0 = key_begin; j0 < key_end; j0 += kBlockK) {
        const int64_t cols = std::min(kBlockK, key_end - j0);
        matmul(rows, cols, D, q.rows(b, h, i0), q.ld, kt_head + j0, g.Lk, scores.data(), kBlockK,
               /*accumulate=*/false);
        for (int64_t r = 0; r < rows; ++r) {
          T* s = scores.data() + r * kBlockK;
          const auto [a, e] = visible_in_tile(g, i0 + r, j0, cols);
          mask.apply(s + a, mask.offset(b, h, i0 + r, j0 + a), mask.sj, e - a);
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
        matmul(rows, D, cols, scores.data(), kBlockK, v.rows(b, hk, j0), v.ld, acc.data(), D,
               /*accumulate=*/true);
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
    matmul_release();
  });
}

// --------------------------------------------------------------------------------- backward

// dst (D x rows, row stride ld) = factor * src^T, src rows x D with row stride src_ld.
template <typename T>
void transpose_block(const T* src, int64_t src_ld, int64_t rows, int64_t D, T factor, T* dst,
                     int64_t ld) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < D; ++d) dst[d * ld + r] = factor * src[r * src_ld + d];
}

// How many key chunks the backward splits each (batch, key head) into: one, unless there are
// fewer (batch, key head) pairs than threads (B = 1 and a few heads, MQA); then enough chunks to
// give every thread work, each a whole number of key tiles.
inline int64_t key_chunks(const Geometry& g) {
  const int64_t pairs = g.B * g.Hk, threads = at::get_num_threads();
  if (pairs == 0 || pairs >= threads) return 1;
  const int64_t tiles = (g.Lk + kBlockK - 1) / kBlockK;
  return std::max<int64_t>(1, std::min((threads + pairs - 1) / pairs, tiles));
}

// kt: (B, Hk, D, Lk) contiguous, K transposed (unscaled). Tiles are keys x queries (see top).
// A task is (batch, key head, key chunk): it owns dK/dV of its chunk's keys, and writes the dQ
// contributions of those keys to dq_parts[chunk] (B, Hq, Lq, D); with one chunk that is dq
// itself, with several the caller sums the parts.
template <typename T>
void attention_bwd_kernel(const Geometry& g, Operand<T> dout, Operand<T> q, Operand<T> k,
                          const T* kt, Operand<T> v, Operand<T> out, const T* lse,
                          const Mask<T>& mask, T scale, int64_t n_chunks, T* dq_parts, T* dk,
                          T* dv) {
  constexpr T kLog2e = T(1.4426950408889634);
  const int64_t D = g.D, block_q = query_block(g.left);
  const int64_t n_blocks = (g.Lq + block_q - 1) / block_q;
  const int64_t tiles = (g.Lk + kBlockK - 1) / kBlockK;
  const int64_t chunk_keys = (tiles + n_chunks - 1) / n_chunks * kBlockK;
  at::parallel_for(0, g.B * g.Hk * n_chunks, 1, [&](int64_t begin, int64_t end) {
    // p_t: P^T, ds_t: dP^T then dS^T (kBlockK x block_q); q_t = scale log2(e) Q^T, do_t = dO^T,
    // dq_t = dQ^T (D x block_q).
    std::vector<T> p_t(kBlockK * block_q), ds_t(kBlockK * block_q);
    std::vector<T> q_t(D * block_q), do_t(D * block_q), dq_t(D * block_q);
    std::vector<T> delta(block_q), lse2(block_q);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % n_chunks, b = task / n_chunks / g.Hk;
      const int64_t hk = task / n_chunks % g.Hk;
      const int64_t chunk_begin = std::min(chunk * chunk_keys, g.Lk);
      const int64_t chunk_end = std::min(chunk_begin + chunk_keys, g.Lk);
      T* dq = dq_parts + chunk * g.B * g.Hq * g.Lq * D;
      const T* kt_head = kt + (b * g.Hk + hk) * D * g.Lk;
      T* dk_rows = dk + (b * g.Hk + hk) * g.Lk * D;  // this task owns its chunk's rows
      T* dv_rows = dv + (b * g.Hk + hk) * g.Lk * D;
      fill(dk_rows + chunk_begin * D, (chunk_end - chunk_begin) * D, T(0));
      fill(dv_rows + chunk_begin * D, (chunk_end - chunk_begin) * D, T(0));
      for (int64_t h = hk * g.group(); h < (hk + 1) * g.group(); ++h) {
        for (int64_t blk = 0; blk < n_blocks; ++blk) {
          const int64_t i0 = blk * block_q, rows = std::min(block_q, g.Lq - i0);
          T* dq_blk = dq + ((b * g.Hq + h) * g.Lq + i0) * D;
          // This chunk's keys that the block's queries may see.
          const int64_t key_begin = std::max(g.first_key(i0), chunk_begin);
          const int64_t key_end = std::min(g.last_key(i0 + rows - 1) + 1, chunk_end);
          if (key_end <= key_begin) {
            fill(dq_blk, rows * D, T(0));
            continue;
          }
          const T* q_blk = q.rows(b, h, i0);
          const T* do_blk = dout.rows(b, h, i0);
          const T* lse_blk = lse + (b * g.Hq + h) * g.Lq + i0;
          transpose_block(q_blk, q.ld, rows, D, scale * kLog2e, q_t.data(), block_q);
          transpose_block(do_blk, dout.ld, rows, D, T(1), do_t.data(), block_q);
          fill(dq_t.data(), D * block_q, T(0));
          for (int64_t r = 0; r < rows; ++r) {  // delta_i = dO_i . O_i; lse in log2 units
            delta[r] = at::vec::map2_reduce_all<T>(
                [](Vec<T> x, Vec<T> y) { return x * y; },
                [](Vec<T> x, Vec<T> y) { return x + y; }, do_blk + r * dout.ld,
                out.rows(b, h, i0 + r), D);
            lse2[r] = lse_blk[r] * kLog2e;
          }
          for (int64_t j0 = key_begin; j0 < key_end; j0 += kBlockK) {
            const int64_t cols = std::min(kBlockK, key_end - j0);
            // P^T = 2^(S^T - lse), S^T = K_tile (c Q^T); zero where a query cannot see the key.
            matmul(cols, rows, D, k.rows(b, hk, j0), k.ld, q_t.data(), block_q, p_t.data(),
                   block_q, /*accumulate=*/false);
            for (int64_t c = 0; c < cols; ++c) {
              T* p = p_t.data() + c * block_q;
              const int64_t j = j0 + c;
              const int64_t a = std::clamp(g.first_query(j) - i0, int64_t(0), rows);
              const int64_t e = std::clamp(g.last_query(j) + 1 - i0, a, rows);
              mask.apply(p + a, mask.offset(b, h, i0 + a, j), mask.si, e - a);
              exp2_minus(p + a, lse2.data() + a, e - a);
              fill(p, a, T(0));
              fill(p + e, rows - e, T(0));
            }
            // dV_tile += P^T dO
            matmul(cols, D, rows, p_t.data(), block_q, do_blk, dout.ld, dv_rows + j0 * D, D,
                   /*accumulate=*/true);
            // dP^T = V_tile dO^T, then dS^T = scale P^T (dP^T - delta) in place
            matmul(cols, rows, D, v.rows(b, hk, j0), v.ld, do_t.data(), block_q, ds_t.data(),
                   block_q, /*accumulate=*/false);
            const Vec<T> vscale(scale);
            for (int64_t c = 0; c < cols; ++c) {
              T* ds = ds_t.data() + c * block_q;
              at::vec::map3([vscale](Vec<T> p, Vec<T> dp, Vec<T> dl) {
                return vscale * p * (dp - dl);
              }, ds, p_t.data() + c * block_q, ds, delta.data(), rows);
            }
            // dK_tile += dS^T Q;  dQ^T += K^T_tile dS^T
            matmul(cols, D, rows, ds_t.data(), block_q, q_blk, q.ld, dk_rows + j0 * D, D,
                   /*accumulate=*/true);
            matmul(D, rows, cols, kt_head + j0, g.Lk, ds_t.data(), block_q, dq_t.data(),
                   block_q, /*accumulate=*/true);
          }
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t d = 0; d < D; ++d) dq_blk[r * D + d] = dq_t[d * block_q + r];
        }
      }
    }
    matmul_release();
  });
}

// ------------------------------------------------------------------------------------- glue

constexpr double kLog2e = 1.4426950408889634;

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
  // A bound of Lq + Lk or more cannot exclude a key: make it unbounded, which also keeps the
  // index arithmetic (i + Lk - Lq + right) far from int64 overflow.
  const int64_t reach = q.size(2) + k.size(2);
  const int64_t left = window_left >= reach ? -1 : window_left;
  int64_t right = window_right >= reach ? -1 : window_right;
  if (is_causal) right = right < 0 ? 0 : std::min<int64_t>(right, 0);
  return {q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), left, right};
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
    const at::Tensor qc = as_operand(q, type), vc = as_operand(v, type);
    // K^T scaled by scale * log2(e): the scores come out of the tile product in log2 units.
    // (Out of place: transpose().contiguous() of a (B, H, 1, D) K is a view of the user's K.)
    at::Tensor kt = at::empty({g.B, g.Hk, g.D, g.Lk}, q.options().dtype(type));
    at::mul_out(kt, k.to(type).transpose(2, 3),
                at::scalar_tensor(scale * kLog2e, kt.options()));
    attention_fwd_kernel<scalar_t>(g, operand<scalar_t>(qc), kt.data_ptr<scalar_t>(),
                                   operand<scalar_t>(vc), mask, out.data_ptr<scalar_t>(),
                                   lse.data_ptr<scalar_t>());
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
  // dQ gets one part per key chunk (key_chunks), summed below when there are several.
  const int64_t n_chunks = key_chunks(g);
  at::Tensor dq_parts = at::empty({n_chunks, g.B, g.Hq, g.Lq, g.D}, opts);
  at::Tensor dk = at::empty({g.B, g.Hk, g.Lk, g.D}, opts);
  at::Tensor dv = at::empty({g.B, g.Hk, g.Lk, g.D}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "attention_bwd_cpu", [&] {
    at::Tensor mask_holder;
    const Mask<scalar_t> mask = describe_mask<scalar_t>(attn_mask, g, mask_holder);
    const at::Tensor qc = as_operand(q, type), kc = as_operand(k, type), vc = as_operand(v, type);
    const at::Tensor doc = as_operand(dout, type), oc = as_operand(out, type);
    const at::Tensor lsec = lse.to(type).contiguous();
    const at::Tensor kt = kc.transpose(2, 3).contiguous();
    attention_bwd_kernel<scalar_t>(g, operand<scalar_t>(doc), operand<scalar_t>(qc),
                                   operand<scalar_t>(kc), kt.data_ptr<scalar_t>(),
                                   operand<scalar_t>(vc), operand<scalar_t>(oc),
                                   lsec.data_ptr<scalar_t>(), mask,
                                   static_cast<scalar_t>(scale), n_chunks,
                                   dq_parts.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(),
                                   dv.data_ptr<scalar_t>());
  });
  at::Tensor dq = n_chunks == 1 ? dq_parts[0] : dq_parts.sum(0);
  const auto dtype = q.scalar_type();
  return {dq.to(dtype), dk.to(dtype), dv.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(leedl_fast, CPU, m) {
  m.impl("attention_fwd", &attention_fwd_cpu);
  m.impl("attention_bwd", &attention_bwd_cpu);
}

}  // namespace leedl_fast
