// Convolution -> activation -> pooling in one pass, inference only (conv2d_pool_fwd):
//   out = pool(activation(conv(x, weight) + bias)),
// pool "max" or "avg" over non-overlapping k x k windows (k = pool_size = stride, no padding,
// floor: torch's F.max_pool2d(y, k) / F.avg_pool2d(y, k)). The math: docs/conv.md.
//
// A task is (image, group, band of r pooled rows) -- (image, channel, band) for a depthwise
// NCHW convolution, (image, band) for a depthwise NHWC one. It computes the k * r conv output
// rows of its band into a thread-local fp32 (fp64 for fp64) tile with the forward's own code:
// conv.cpp's `conv_tile` (im2col + matmul, the col tile ~512 KB as in the forward) or, for
// groups = C, conv_depthwise.cpp's direct rows. Bias and activation go over the tile in place,
// then the tile is pooled while it is in cache and only the pooled rows are written: the
// full-resolution activation never goes to memory (out is k^2 times smaller than the conv's
// output). Conv rows past the last full window (floor) are never computed; the last k - 1
// columns of each row at most are (the GEMM tile is whole rows).
//
// Pooling a tile: NCHW (rows x OW per channel) -- the k rows of a window reduced with vectors
// into a row buffer, then each k-wide run of it reduced; NHWC (pixels x Og) -- the k * k pixels
// of a window reduced as vectors of channels. max propagates NaN (as torch); avg is sum / k^2
// in the accumulation type, rounded once to the output dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "blas.h"
#include "conv.h"

#include <cmath>
#include <vector>

namespace leedl_fast {
namespace conv {
namespace {

template <bool kMax, typename A>
inline Vec<A> combine(const Vec<A>& a, const Vec<A>& b) {
  if constexpr (kMax) return at::vec::maximum(a, b);  // NaN in either gives NaN
  else return a + b;
}

template <bool kMax, typename A>
inline A combine(A a, A b) {
  if constexpr (kMax) return (std::isnan(a) || a >= b) ? a : b;  // b NaN: a >= b false -> b
  else return a + b;
}

// One channel's band: src (k * prows x OW, rows OW apart) -> dst (prows x POW, rows POW apart).
// row: scratch of OW values.
template <bool kMax, typename T, typename A>
void pool_plane(const A* src, int64_t prows, int64_t OW, int64_t k, int64_t POW, T* dst,
                A* row) {
  const int64_t width = POW * k;
  const A inv = A(1) / A(k * k);
  for (int64_t pr = 0; pr < prows; ++pr) {
    const A* top = src + pr * k * OW;
    for_each_vec<A>(width, [&](int64_t i, auto c) {
      Vec<A> v = load(top + i, c);
      for (int64_t dy = 1; dy < k; ++dy) v = combine<kMax>(v, load(top + dy * OW + i, c));
      if (c == Vec<A>::size()) v.store(row + i); else v.store(row + i, c);
    });
    T* out = dst + pr * POW;
    for (int64_t pw = 0; pw < POW; ++pw) {
      const A* w = row + pw * k;
      A v = w[0];
      for (int64_t dx = 1; dx < k; ++dx) v = combine<kMax>(v, w[dx]);
      if constexpr (!kMax) v = v * inv;
      out[pw] = static_cast<T>(v);
    }
  }
}

// A band of pixels: src (k * prows x OW pixels, ld values apart, cnt channels each) -> dst
// (prows x POW pixels, ld_out values apart).
template <bool kMax, typename T, typename A>
void pool_pixels(const A* src, int64_t ld, int64_t cnt, int64_t prows, int64_t OW, int64_t k,
                 int64_t POW, T* dst, int64_t ld_out) {
  const Vec<A> inv(A(1) / A(k * k));
  for (int64_t pr = 0; pr < prows; ++pr)
    for (int64_t pw = 0; pw < POW; ++pw) {
      const A* corner = src + (pr * k * OW + pw * k) * ld;
      T* out = dst + (pr * POW + pw) * ld_out;
      for_each_vec<A>(cnt, [&](int64_t i, auto c) {
        Vec<A> v = load(corner + i, c);
        for (int64_t dy = 0; dy < k; ++dy)
          for (int64_t dx = dy == 0 ? 1 : 0; dx < k; ++dx)
            v = combine<kMax>(v, load(corner + (dy * OW + dx) * ld + i, c));
        if constexpr (!kMax) v = v * inv;
        store_as(v, out + i, c);
      });
    }
}

// Pooled rows per task: a conv tile of about `target` positions, and enough tasks for the team.
int64_t pooled_rows_per_task(const Shape& s, int64_t k, int64_t POH, int64_t target,
                             int64_t other_tasks) {
  int64_t rows = std::clamp<int64_t>(target / (k * std::max<int64_t>(s.OW, 1)), 1, POH);
  const int64_t want = 4 * at::get_num_threads();
  while (rows > 1 && other_tasks * ((POH + rows - 1) / rows) < want) rows = (rows + 1) / 2;
  return rows;
}

// x, w (gemm_weight's layout or, depthwise, (O, taps)), b: accumulation type; out: T.
template <bool kMax, typename T>
void conv_pool_impl(const Shape& s, const acc_t<T>* x, const acc_t<T>* w, const acc_t<T>* b,
                    Act act, int64_t k, T* out) {
  using A = acc_t<T>;
  const int64_t POH = s.OH / k, POW = s.OW / k, OW = s.OW, O = s.O;
  const int64_t out_plane = POH * POW;
  // Bias + activation in place over a run of n values of the tile.
  auto finish = [&](A* p, int64_t n, A bias_scalar, const A* bias_vec) {
    with_act(act, [&](auto a) {
      epilogue<decltype(a)::value, A, A>(p, n, bias_scalar, bias_vec, nullptr, p, nullptr);
    });
  };

  if (s.depthwise() && !s.channels_last) {
    // Tasks (image, channel, band); the staged rows serve the channel's mult output channels.
    const int64_t mult = O / s.C;
    const int64_t rows = pooled_rows_per_task(s, k, POH, 1 << 14, s.N * s.C);
    const int64_t bands = (POH + rows - 1) / rows;
    const Staging st(s);
    at::parallel_for(0, s.N * s.C * bands, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> buf(st.rows(s, 0, rows * k) * st.row_len, A(0)), acc(rows * k * OW),
          row(OW);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t band = task % bands, nc = task / bands, c = nc % s.C, n = nc / s.C;
        const int64_t p0 = band * rows, p1 = std::min(POH, p0 + rows);
        const int64_t r0 = p0 * k, r1 = p1 * k, prow0 = st.first_row(s, r0);
        stage_rows(s, st, x + nc * s.HW(), prow0, st.rows(s, r0, r1), buf.data());
        for (int64_t j = 0; j < mult; ++j) {
          const int64_t o = c * mult + j;
          depthwise_rows_nchw(s, st, buf.data(), prow0, r0, r1, w + o * s.taps(), acc.data());
          finish(acc.data(), (r1 - r0) * OW, b ? b[o] : A(0), nullptr);
          pool_plane<kMax>(acc.data(), p1 - p0, OW, k, POW,
                           out + (n * O + o) * out_plane + p0 * POW, row.data());
        }
      }
    });
    return;
  }

  if (s.depthwise()) {  // NHWC: tasks (image, band), all channels of a pixel at once
    const NhwcWeights nw(s, w, c10::CppTypeToScalarType<A>::value, Vec<A>::size());
    const int64_t rows =
        pooled_rows_per_task(s, k, POH, std::max<int64_t>(k * OW, (1 << 14) / O), s.N);
    const int64_t bands = (POH + rows - 1) / rows;
    at::parallel_for(0, s.N * bands, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> acc(rows * k * OW * O), tmp(s.C);
      std::vector<const A*> xs(s.taps()), ws(s.taps());
      for (int64_t task = begin; task < end; ++task) {
        const int64_t band = task % bands, n = task / bands;
        const int64_t p0 = band * rows, p1 = std::min(POH, p0 + rows);
        const int64_t r0 = p0 * k, r1 = p1 * k;
        depthwise_rows_nhwc(s, x + n * s.C * s.HW(), nw, r0, r1, acc.data(), xs.data(),
                            ws.data(), tmp.data());
        for (int64_t p = 0; p < (r1 - r0) * OW; ++p) finish(acc.data() + p * O, O, A(0), b);
        pool_pixels<kMax>(acc.data(), O, O, p1 - p0, OW, k, POW,
                          out + (n * out_plane + p0 * POW) * O, O);
      }
    });
    return;
  }

  // The GEMM path: tasks (image, group, band).
  const int64_t Og = s.Og(), K = s.K();
  const int64_t rows =
      pooled_rows_per_task(s, k, POH, position_block(s, sizeof(A)), s.N * s.groups);
  const int64_t bands = (POH + rows - 1) / rows, tile = rows * k * OW;
  at::parallel_for(0, s.N * s.groups * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> col(s.pointwise() ? 0 : K * tile), acc(Og * tile), row(OW);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t band = task % bands, ng = task / bands, g = ng % s.groups, n = ng / s.groups;
      const int64_t p0 = band * rows, p1 = std::min(POH, p0 + rows);
      const int64_t m0 = p0 * k * OW, m = (p1 - p0) * k * OW;
      conv_tile(s, x, w, n, g, m0, m, col.data(), acc.data());
      if (!s.channels_last) {
        for (int64_t o = 0; o < Og; ++o) {
          const int64_t oc = g * Og + o;
          A* plane = acc.data() + o * m;
          finish(plane, m, b ? b[oc] : A(0), nullptr);
          pool_plane<kMax>(plane, p1 - p0, OW, k, POW, out + (n * O + oc) * out_plane + p0 * POW,
                           row.data());
        }
      } else {
        for (int64_t p = 0; p < m; ++p)
          finish(acc.data() + p * Og, Og, A(0), b ? b + g * Og : nullptr);
        pool_pixels<kMax>(acc.data(), Og, Og, p1 - p0, OW, k, POW,
                          out + (n * out_plane + p0 * POW) * O + g * Og, O);
      }
    }
    matmul_release();
  });
}

at::Tensor conv2d_pool_fwd_cpu(const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               c10::string_view activation, c10::string_view pool,
                               int64_t pool_size) {
  constexpr const char* op = "conv2d_pool_fwd";
  const Shape s = check_shape(op, x, weight, stride, padding, dilation, groups);
  const Act act = parse_activation(op, activation);
  TORCH_CHECK(pool == "max" || pool == "avg", op, ": pool must be \"max\" or \"avg\", got \"",
              std::string(pool), "\"");
  TORCH_CHECK(pool_size == 2 || pool_size == 3, op, ": pool_size must be 2 or 3, got ",
              pool_size);
  TORCH_CHECK(s.OH >= pool_size && s.OW >= pool_size, op, ": the conv's output ", s.OH, " x ",
              s.OW, " is smaller than the ", pool_size, " x ", pool_size, " pooling window");
  const at::Tensor b = check_vector(op, "bias", bias, s.O, x);
  const auto fmt = layout_of(x);
  at::Tensor out = empty_image({s.N, s.O, s.OH / pool_size, s.OW / pool_size}, x.options(), fmt);
  if (out.numel() == 0) return out;
  const auto acc = acc_dtype(x.scalar_type());
  const at::Tensor xa = formatted(x, acc, fmt);
  const at::Tensor wa = weight.to(acc).contiguous();
  const at::Tensor w = s.depthwise() ? wa : gemm_weight(s, wa);
  const bool is_max = pool == "max";
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    using A = acc_t<scalar_t>;
    const A* bp = b.defined() ? b.const_data_ptr<A>() : nullptr;
    auto* o = out.mutable_data_ptr<scalar_t>();
    if (is_max)
      conv_pool_impl<true, scalar_t>(s, xa.const_data_ptr<A>(), w.const_data_ptr<A>(), bp, act,
                                     pool_size, o);
    else
      conv_pool_impl<false, scalar_t>(s, xa.const_data_ptr<A>(), w.const_data_ptr<A>(), bp, act,
                                      pool_size, o);
  });
  return out;
}

}  // namespace
}  // namespace conv

TORCH_LIBRARY_IMPL(leedl_fast, CPU, m) {
  m.impl("conv2d_pool_fwd", &conv::conv2d_pool_fwd_cpu);
}

}  // namespace leedl_fast
