// CPU kernels for the normalization family: layer norm and RMS norm, with an optional fused
// residual add ("Add & Norm", book §7.4), forward and backward. See docs/norm.md.
//
// One code path serves all four forward ops: template flags IS_RMS (skip the mean) and HAS_RES
// (add the residual first and also store the sum). Work is split over rows with
// at::parallel_for; each row is processed with at::vec::Vectorized<float>, so fp16/bf16 inputs
// are widened to fp32 once per row (accumulation is always fp32). A row is read from memory
// once: the passes over it (sum, centred sum of squares, normalize) hit L1/L2 for the widths
// the book's models use (a 16384-wide fp32 row is 64 KiB). Large outputs get huge pages and
// streaming stores (memory.h: at LLM sizes page faults and read-for-ownership dominate).
//
// Backward: dx per row needs two row-wide dot products,
//   xhat = (x - mean) * rstd,  g = dy * weight,
//   dx   = rstd * (g - xhat * mean(g * xhat) - mean(g))     (RMS norm: drop the mean(g) term)
// and dweight/dbias are column sums over all rows. Rows are cut into one chunk per thread; each
// chunk accumulates its own fp32 partial row (no atomics, no races, deterministic), and a second
// parallel pass over columns adds the partials up.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "memory.h"
#include "vec_loops.h"

#include <cmath>
#include <tuple>
#include <vector>

namespace leedl_fast {
namespace {

// Accumulation type: fp32 for fp16/bf16/fp32 inputs, fp64 for fp64 (so gradcheck is exact).
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Sum of f(i, count) (a vector of A) over a row of n elements; the tail goes through a partial
// load, which fills the missing lanes with zeros.
template <typename A, typename F>
inline A row_reduce(int64_t n, F f) {
  using V = at::vec::Vectorized<A>;
  constexpr int64_t kV = V::size();
  // Four independent accumulators: a vector add has ~4 cycles of latency, so one chain would
  // run at a quarter of the throughput (measured: the centred-variance pass cost ~40% of
  // layer_norm's time at 4096x768 with two chains).
  V acc0(A(0)), acc1(A(0)), acc2(A(0)), acc3(A(0));
  int64_t i = 0;
  for (; i + 4 * kV <= n; i += 4 * kV) {
    acc0 = acc0 + f(i, kV);
    acc1 = acc1 + f(i + kV, kV);
    acc2 = acc2 + f(i + 2 * kV, kV);
    acc3 = acc3 + f(i + 3 * kV, kV);
  }
  for (; i < n; i += kV) acc0 = acc0 + f(i, std::min(kV, n - i));
  return at::vec::vec_reduce_all<A>([](V a, V b) { return a + b; }, (acc0 + acc1) + (acc2 + acc3));
}

template <typename A>
inline at::vec::Vectorized<A> load(const A* p, int64_t count) {
  using V = at::vec::Vectorized<A>;
  return count == V::size() ? V::loadu(p) : V::loadu(p, count);
}

template <typename A>
inline void store(const at::vec::Vectorized<A>& v, A* p, int64_t count) {
  if (count == at::vec::Vectorized<A>::size()) v.store(p); else v.store(p, count);
}

// Accumulation-type view of a row: the row itself when T == A, else widened into `scratch`.
template <typename T, typename A = acc_t<T>>
inline const A* as_acc(const T* src, int64_t n, A* scratch) {
  if constexpr (std::is_same_v<T, A>) {
    return src;
  } else {
    at::vec::convert(src, scratch, n);
    return scratch;
  }
}

// dst (memory, streamed when 32-byte aligned) = buf (cache) = x + y.
// s = x + y for one row of A, written to `dst` (with streaming stores when `stream` and dst is
// 32-byte aligned) and, when `buf` is given, to that cache-resident copy too (a streamed row is
// not in cache for the passes that follow). Returns the row's sum of s, or of s^2 (SQUARES),
// so the first statistics pass rides along with the add.
template <bool SQUARES, typename A>
inline A add_rows(A* dst, A* buf, const A* x, const A* y, int64_t n, bool stream) {
  using V = at::vec::Vectorized<A>;
  const bool nt = stream && reinterpret_cast<uintptr_t>(dst) % 32 == 0;
  V acc(A(0));
  for_each_vec<A>(n, [&](int64_t i, auto c) {
    const V sv = load(x + i, c) + load(y + i, c);  // lanes past the row are 0 + 0
    acc = acc + (SQUARES ? sv * sv : sv);
    if (buf) store(sv, buf + i, c);
    if (nt && c == V::size()) nt_store(dst + i, sv); else store(sv, dst + i, c);
  });
  return at::vec::vec_reduce_all<A>([](V a, V b) { return a + b; }, acc);
}

inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Optional per-column parameter (weight or bias) as a contiguous accumulation-type tensor.
at::Tensor param_acc(const std::optional<at::Tensor>& p, at::ScalarType acc) {
  if (!p.has_value() || !p->defined()) return at::Tensor();
  return p->to(acc).contiguous();
}

void check_inputs(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                  const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D (rows, width), got ", x.dim(), "-D");
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ",
              x.scalar_type());
  for (const auto* p : {&weight, &bias}) {
    if (p->has_value() && (*p)->defined()) {
      TORCH_CHECK((*p)->dim() == 1 && (*p)->size(0) == x.size(1), op,
                  ": weight/bias must have shape (", x.size(1), "), got ", (*p)->sizes());
      TORCH_CHECK((*p)->scalar_type() == x.scalar_type(), op,
                  ": weight/bias dtype must match x (", x.scalar_type(), ")");
    }
  }
}

// Rows per parallel task: enough work (~32K elements) to amortize the scheduling.
inline int64_t row_grain(int64_t n) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1));
}

template <typename T, bool IS_RMS, bool HAS_RES>
void norm_fwd_kernel(const T* x, const T* res, const acc_t<T>* w, const acc_t<T>* b, T* out,
                     T* res_out, acc_t<T>* mean_out, acc_t<T>* rstd_out, int64_t M, int64_t N,
                     double eps, bool stream) {
  using A = acc_t<T>;
  using V = at::vec::Vectorized<A>;
  constexpr int64_t kV = V::size();
  constexpr bool kWiden = !std::is_same_v<T, A>;  // fp16/bf16: rows are widened to fp32
  at::parallel_for(0, M, row_grain(N), [&](int64_t begin, int64_t end) {
    // Cache-resident row buffers: the widened input row (or residual sum), the output row in
    // the accumulation type, and a finished row of T waiting to be streamed out.
    std::vector<A> buf(2 * N);
    std::vector<T> t_buf(stream ? N : 0);
    A* row_buf = buf.data();
    A* out_buf = buf.data() + N;
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * N;
      const A* row;
      A first_pass = 0;  // sum (or sum of squares) of the row when the residual add made it
      bool have_first_pass = false;
      if constexpr (HAS_RES) {
        // s = x + residual, rounded to T and stored; the rounded sum is what gets normalized
        // (as in eager `s = x + r; layer_norm(s)`, and what the backward sees).
        const T* rr = res + r * N;
        if constexpr (kWiden) {
          T* so = stream ? t_buf.data() : res_out + r * N;
          for (int64_t i = 0; i < N; ++i) {
            so[i] = static_cast<T>(A(xr[i]) + A(rr[i]));
            row_buf[i] = A(so[i]);
          }
          row = row_buf;
          if (stream) stream_row(res_out + r * N, so, N);
        } else {
          first_pass = add_rows<IS_RMS>(res_out + r * N, stream ? row_buf : nullptr, xr, rr, N,
                                        stream);
          have_first_pass = true;
          row = stream ? row_buf : res_out + r * N;
        }
      } else {
        row = as_acc(xr, N, row_buf);
      }
      A mean = 0, sq;
      if constexpr (IS_RMS) {
        sq = have_first_pass ? first_pass : row_reduce<A>(N, [&](int64_t i, int64_t c) {
          V v = load(row + i, c);
          return v * v;
        });
      } else {
        mean = (have_first_pass ? first_pass : row_reduce<A>(N, [&](int64_t i, int64_t c) {
          return load(row + i, c);
        })) / N;
        const V vm(mean);
        // Centred second pass (not E[x^2] - E[x]^2): stable when |mean| >> std.
        sq = row_reduce<A>(N, [&](int64_t i, int64_t c) {
          V d = load(row + i, c) - vm;
          return c == kV ? d * d : V::set(V(A(0)), d * d, c);  // zero lanes past the row
        });
        mean_out[r] = mean;
      }
      const A rstd = A(1) / std::sqrt(sq / N + static_cast<A>(eps));
      rstd_out[r] = rstd;
      A* o = kWiden ? out_buf : reinterpret_cast<A*>(out + r * N);
      const V vm(mean), vr(rstd);
      const bool nt = !kWiden && stream && (reinterpret_cast<uintptr_t>(o) % 32 == 0);
      for_each_vec<A>(N, [&](int64_t i, auto c) {
        V y = (load(row + i, c) - vm) * vr;
        if (w) y = y * load(w + i, c);
        if (b) y = y + load(b + i, c);
        if (nt && c == kV) nt_store(o + i, y); else store(y, o + i, c);
      });
      if constexpr (kWiden) {
        at::vec::convert(out_buf, stream ? t_buf.data() : out + r * N, N);
        if (stream) stream_row(out + r * N, t_buf.data(), N);
      }
    }
    if (stream) stream_fence();
  });
}

template <bool IS_RMS, bool HAS_RES>
std::vector<at::Tensor> norm_fwd(const char* op, const at::Tensor& x,
                                 const std::optional<at::Tensor>& residual,
                                 const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& bias, double eps) {
  check_inputs(op, x, weight, bias);
  if constexpr (HAS_RES) {
    TORCH_CHECK(residual->sizes() == x.sizes() && residual->scalar_type() == x.scalar_type() &&
                    residual->is_contiguous(),
                op, ": residual must be contiguous with x's shape and dtype");
  }
  const int64_t M = x.size(0), N = x.size(1);
  const auto acc = acc_dtype(x.scalar_type());
  auto out = empty_output(x);
  auto res_out = HAS_RES ? empty_output(x) : at::Tensor();
  auto mean = at::empty({IS_RMS ? 0 : M}, x.options().dtype(acc));
  auto rstd = at::empty({M}, x.options().dtype(acc));
  const at::Tensor w = param_acc(weight, acc), b = param_acc(bias, acc);
  if (M > 0 && N > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "norm_fwd", [&] {
      using A = acc_t<scalar_t>;
      norm_fwd_kernel<scalar_t, IS_RMS, HAS_RES>(
          x.const_data_ptr<scalar_t>(), HAS_RES ? residual->const_data_ptr<scalar_t>() : nullptr,
          w.defined() ? w.const_data_ptr<A>() : nullptr,
          b.defined() ? b.const_data_ptr<A>() : nullptr, out.mutable_data_ptr<scalar_t>(),
          HAS_RES ? res_out.mutable_data_ptr<scalar_t>() : nullptr,
          IS_RMS ? nullptr : mean.mutable_data_ptr<A>(), rstd.mutable_data_ptr<A>(), M, N, eps,
          use_streaming_stores(static_cast<int64_t>(out.nbytes()) * (HAS_RES ? 4 : 2)));
    });
  } else if (M > 0) {
    rstd.fill_(1.0 / std::sqrt(eps));  // zero-width rows: variance 0
    if (!IS_RMS) mean.zero_();
  }
  std::vector<at::Tensor> result{out};
  if (HAS_RES) result.push_back(res_out);
  if (!IS_RMS) result.push_back(mean);
  result.push_back(rstd);
  return result;
}

template <typename T, bool IS_RMS>
void norm_bwd_kernel(const T* dy, const T* x, const acc_t<T>* w, const acc_t<T>* mean,
                     const acc_t<T>* rstd, const T* dres, T* dx, acc_t<T>* dw_part,
                     acc_t<T>* db_part, int64_t M, int64_t N, int64_t num_chunks,
                     bool stream) {
  using A = acc_t<T>;
  using V = at::vec::Vectorized<A>;
  constexpr int64_t kV = V::size();
  constexpr bool kWiden = !std::is_same_v<T, A>;
  const int64_t rows_per_chunk = (M + num_chunks - 1) / num_chunks;
  at::parallel_for(0, num_chunks, 1, [&](int64_t cbegin, int64_t cend) {
    std::vector<A> buf(kWiden ? 4 * N : 0);
    A* dy_buf = buf.data();
    A* x_buf = buf.data() + N;
    A* dx_buf = buf.data() + 2 * N;
    A* dres_buf = buf.data() + 3 * N;
    // Two-level summation of dweight/dbias: rows add into a cache-resident block sum, which is
    // added into the chunk's partial every kBlockRows rows. The rounding error then grows with
    // kBlockRows + rows/kBlockRows, not with the chunk's row count (thousands of rows).
    constexpr int64_t kBlockRows = 64;
    std::vector<A> block_sums((dw_part ? N : 0) + (db_part ? N : 0), A(0));
    A* dw = dw_part ? block_sums.data() : nullptr;
    A* db = db_part ? block_sums.data() + (dw_part ? N : 0) : nullptr;
    auto flush = [&](int64_t chunk) {
      if (dw) at::vec::map2([](V p, V q) { return p + q; }, dw_part + chunk * N,
                            dw_part + chunk * N, dw, N);
      if (db) at::vec::map2([](V p, V q) { return p + q; }, db_part + chunk * N,
                            db_part + chunk * N, db, N);
      std::fill(block_sums.begin(), block_sums.end(), A(0));
    };
    for (int64_t chunk = cbegin; chunk < cend; ++chunk) {
      const int64_t r_begin = chunk * rows_per_chunk;
      const int64_t r_end = std::min(M, r_begin + rows_per_chunk);
      for (int64_t r = r_begin; r < r_end; ++r) {
        if (r > r_begin && (r - r_begin) % kBlockRows == 0) flush(chunk);
        const A* dyr = as_acc(dy + r * N, N, dy_buf);
        const A* xr = as_acc(x + r * N, N, x_buf);
        const V vm(IS_RMS ? A(0) : mean[r]), vr(rstd[r]);
        // c1 = mean(g * xhat) and c2 = mean(g), with g = dy * w, in one pass over the row
        // (lanes past the row load dy = 0, so they add nothing).
        V acc_gx(A(0)), acc_g(A(0));
        for_each_vec<A>(N, [&](int64_t i, auto c) {
          V g = load(dyr + i, c);
          if (w) g = g * load(w + i, c);
          acc_gx = acc_gx + g * ((load(xr + i, c) - vm) * vr);
          if constexpr (!IS_RMS) acc_g = acc_g + g;
        });
        auto vsum = [](const V& v) {
          return at::vec::vec_reduce_all<A>([](V a, V b) { return a + b; }, v);
        };
        const A c1 = vsum(acc_gx) / N;
        const A c2 = IS_RMS ? A(0) : vsum(acc_g) / N;
        const V vc1(c1), vc2(c2);
        A* o = kWiden ? dx_buf : reinterpret_cast<A*>(dx + r * N);
        const bool nt = !kWiden && stream && reinterpret_cast<uintptr_t>(o) % 32 == 0;
        const A* dresr = dres ? as_acc(dres + r * N, N, dres_buf) : nullptr;
        for_each_vec<A>(N, [&](int64_t i, auto c) {
          const V d = load(dyr + i, c);
          const V xhat = (load(xr + i, c) - vm) * vr;
          const V g = w ? d * load(w + i, c) : d;
          V dxv = (g - xhat * vc1 - vc2) * vr;
          if (dresr) dxv = dxv + load(dresr + i, c);
          if (nt && c == kV) nt_store(o + i, dxv); else store(dxv, o + i, c);
          if (dw) store(load(dw + i, c) + d * xhat, dw + i, c);
          if (db) store(load(db + i, c) + d, db + i, c);
        });
        if constexpr (kWiden) at::vec::convert(dx_buf, dx + r * N, N);
      }
      if (r_end > r_begin) flush(chunk);
    }
    if (stream) stream_fence();
  });
}

template <bool IS_RMS>
std::vector<at::Tensor> norm_bwd(const char* op, const at::Tensor& dy, const at::Tensor& x,
                                 const std::optional<at::Tensor>& weight, const at::Tensor& mean,
                                 const at::Tensor& rstd, const std::optional<at::Tensor>& dres,
                                 bool has_bias) {
  check_inputs(op, x, weight, std::nullopt);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type() &&
                  dy.is_contiguous(),
              op, ": dy must be contiguous with x's shape and dtype");
  const int64_t M = x.size(0), N = x.size(1);
  const auto acc = acc_dtype(x.scalar_type());
  TORCH_CHECK(rstd.numel() == M && rstd.scalar_type() == acc && rstd.is_contiguous(), op,
              ": rstd must be a contiguous (", M, ",) tensor of ", acc);
  if (!IS_RMS)
    TORCH_CHECK(mean.numel() == M && mean.scalar_type() == acc && mean.is_contiguous(), op,
                ": mean must be a contiguous (", M, ",) tensor of ", acc);
  const bool has_dres = dres.has_value() && dres->defined();
  if (has_dres)
    TORCH_CHECK(dres->sizes() == x.sizes() && dres->scalar_type() == x.scalar_type() &&
                    dres->is_contiguous(),
                op, ": dresidual must be contiguous with x's shape and dtype");
  const bool has_w = weight.has_value() && weight->defined();
  const at::Tensor w = param_acc(weight, acc);
  auto dx = empty_output(x);
  auto dweight = at::zeros({has_w ? N : 0}, x.options());
  auto dbias = at::zeros({has_bias ? N : 0}, x.options());
  if (M == 0 || N == 0) {
    if (has_dres) dx.copy_(*dres);
    return {dx, dweight, dbias};
  }
  // One chunk of rows per thread (at least 8 rows each, so tiny inputs stay on one thread);
  // each chunk owns one row of the partial-sum buffers.
  const int64_t num_chunks =
      std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), M / 8));
  auto aopts = x.options().dtype(acc);
  auto dw_part = has_w ? at::zeros({num_chunks, N}, aopts) : at::Tensor();
  auto db_part = has_bias ? at::zeros({num_chunks, N}, aopts) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "norm_bwd", [&] {
    using A = acc_t<scalar_t>;
    norm_bwd_kernel<scalar_t, IS_RMS>(
        dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        has_w ? w.const_data_ptr<A>() : nullptr, IS_RMS ? nullptr : mean.const_data_ptr<A>(),
        rstd.const_data_ptr<A>(), has_dres ? dres->const_data_ptr<scalar_t>() : nullptr,
        dx.mutable_data_ptr<scalar_t>(), has_w ? dw_part.mutable_data_ptr<A>() : nullptr,
        has_bias ? db_part.mutable_data_ptr<A>() : nullptr, M, N, num_chunks,
        use_streaming_stores(static_cast<int64_t>(dx.nbytes()) * (has_dres ? 4 : 3)));
  });
  // Second stage: add the per-chunk partials up (a column sum over num_chunks rows).
  if (has_w) dweight.copy_(dw_part.sum(0));
  if (has_bias) dbias.copy_(db_part.sum(0));
  return {dx, dweight, dbias};
}

// --- op entry points (schemas in csrc/ops.cpp) ---

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps) {
  auto r = norm_fwd<false, false>("layer_norm_fwd", x, std::nullopt, weight, bias, eps);
  return {r[0], r[1], r[2]};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd(const at::Tensor& x,
                                                const std::optional<at::Tensor>& weight,
                                                double eps) {
  auto r = norm_fwd<true, false>("rms_norm_fwd", x, std::nullopt, weight, std::nullopt, eps);
  return {r[0], r[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_fwd(
    const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps) {
  auto r = norm_fwd<false, true>("add_layer_norm_fwd", x, residual, weight, bias, eps);
  return {r[0], r[1], r[2], r[3]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_fwd(
    const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& weight,
    double eps) {
  auto r = norm_fwd<true, true>("add_rms_norm_fwd", x, residual, weight, std::nullopt, eps);
  return {r[0], r[1], r[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd(
    const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const at::Tensor& mean, const at::Tensor& rstd, const std::optional<at::Tensor>& dresidual,
    bool has_bias) {
  auto r = norm_bwd<false>("layer_norm_bwd", dy, x, weight, mean, rstd, dresidual, has_bias);
  return {r[0], r[1], r[2]};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                const std::optional<at::Tensor>& weight,
                                                const at::Tensor& rstd,
                                                const std::optional<at::Tensor>& dresidual) {
  auto r = norm_bwd<true>("rms_norm_bwd", dy, x, weight, at::Tensor(), rstd, dresidual, false);
  return {r[0], r[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(leedl_fast, CPU, m) {
  m.impl("layer_norm_fwd", &layer_norm_fwd);
  m.impl("rms_norm_fwd", &rms_norm_fwd);
  m.impl("add_layer_norm_fwd", &add_layer_norm_fwd);
  m.impl("add_rms_norm_fwd", &add_rms_norm_fwd);
  m.impl("layer_norm_bwd", &layer_norm_bwd);
  m.impl("rms_norm_bwd", &rms_norm_bwd);
}

}  // namespace leedl_fast
