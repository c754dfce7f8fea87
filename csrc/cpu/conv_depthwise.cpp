// Depthwise convolution (groups = C: one k x k filter per channel, book §17.4) computed
// directly, and the depthwise-separable block (depthwise -> pointwise 1x1) fused so that the
// intermediate never goes to memory.
//
// A depthwise output costs k*k multiply-adds and reads k*k inputs that its neighbours read too:
// a GEMM formulation (im2col with one channel per group) would copy every input k*k times for
// no reuse. The kernels here are the sliding window itself, vectorized with
// at::vec::Vectorized along the dimension that is contiguous in memory:
//
// NCHW -- along a row (W). A task stages the input rows its output rows need, for one channel,
//   into a thread-local buffer: zero padding added and, for a stride s > 1, the columns split
//   into s phases (column j goes to phase j % s at j / s). Then every tap (kh, kw) of every
//   output row is one contiguous vector load -- no bounds checks, no gathers -- and the k*k
//   filter weights sit in vector registers (broadcast once per channel).
// NHWC -- along the channels (C). Interior pixels of a 3x3 kernel (the common case) go four at
//   a time with a vector of channels' nine weights in registers; at stride 1 the four pixels
//   share their six input columns per row, so each input vector is loaded once for up to three
//   multiply-adds. The input row the next output row needs is prefetched. Edge pixels and other
//   kernels: the taps inside the image are listed once per pixel, then each vector of channels
//   sums tap * weight over the list.
//
// Outputs larger than the last-level cache are written with streaming stores (memory.h).
//
// The separable block works on a tile of output rows of one image: the depthwise result for
// all C channels of the tile (plus dw_bias and dw_activation) goes to a thread-local buffer
// (~200 KB, in L2), then one GEMM (blas.h `matmul`) with the pointwise weights produces the
// tile's O output channels, and the epilogue adds pw_bias and applies the activation on its way
// to memory. Memory traffic: x read once, out written once -- the intermediate of C x H x W
// values (as large as x) is never written or read back.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "blas.h"
#include "conv.h"

#include <vector>

namespace leedl_fast {
namespace conv {
namespace {

// ----------------------------------------------------------------------------------- NCHW

// dst[(oh - r0) * OW + ow] = sum over taps of w[kh, kw] * x_pad[oh*sh + kh*dh, ow*sw + kw*dw]
// for output rows [r0, r1) of one channel, from the staged rows. KH_/KW_: compile-time kernel
// size (the taps unroll and the weights stay in registers), 0 for any.
template <int KH_, int KW_, typename A>
void dw_rows_nchw(const Shape& s, const Staging& st, const A* buf, int64_t prow0, int64_t r0,
                  int64_t r1, const A* w, A* dst) {
  constexpr int64_t kV = Vec<A>::size();
  constexpr bool kFixed = KH_ > 0 && KW_ > 0;
  const int64_t KH = kFixed ? KH_ : s.KH, KW = kFixed ? KW_ : s.KW;
  // Broadcast weights and tap offsets (relative to the output row's first padded row).
  constexpr int kFixedTaps = kFixed ? KH_ * KW_ : 1;
  Vec<A> wv_fixed[kFixedTaps];
  int64_t off_fixed[kFixedTaps];
  std::vector<Vec<A>> wv_dyn(kFixed ? 0 : KH * KW);
  std::vector<int64_t> off_dyn(kFixed ? 0 : KH * KW);
  Vec<A>* wv = kFixed ? wv_fixed : wv_dyn.data();
  int64_t* toff = kFixed ? off_fixed : off_dyn.data();
  for (int64_t kh = 0; kh < KH; ++kh)
    for (int64_t kw = 0; kw < KW; ++kw) {
      wv[kh * KW + kw] = Vec<A>(w[kh * KW + kw]);
      toff[kh * KW + kw] = st.tap(s, 0, 0, kh, kw);
    }
  for (int64_t oh = r0; oh < r1; ++oh) {
    A* out_row = dst + (oh - r0) * s.OW;
    const A* row = buf + (oh * s.sh - prow0) * st.row_len;
    int64_t ow = 0;
    // Two vectors per step: two independent FMA chains.
    for (; ow + 2 * kV <= s.OW; ow += 2 * kV) {
      Vec<A> acc0(A(0)), acc1(A(0));
      for (int64_t t = 0; t < KH * KW; ++t) {
        acc0 = at::vec::fmadd(wv[t], Vec<A>::loadu(row + toff[t] + ow), acc0);
        acc1 = at::vec::fmadd(wv[t], Vec<A>::loadu(row + toff[t] + ow + kV), acc1);
      }
      acc0.store(out_row + ow);
      acc1.store(out_row + ow + kV);
    }
    for (; ow < s.OW; ow += kV) {  // full loads (the staging slack), partial store at the end
      Vec<A> acc(A(0));
      for (int64_t t = 0; t < KH * KW; ++t)
        acc = at::vec::fmadd(wv[t], Vec<A>::loadu(row + toff[t] + ow), acc);
      const int64_t c = std::min(kV, s.OW - ow);
      if (c == kV) acc.store(out_row + ow); else acc.store(out_row + ow, c);
    }
  }
}

template <typename A>
using DwRowsNchw = void (*)(const Shape&, const Staging&, const A*, int64_t, int64_t, int64_t,
                            const A*, A*);

template <typename A>
DwRowsNchw<A> pick_nchw(const Shape& s) {
  if (s.KH == 3 && s.KW == 3) return &dw_rows_nchw<3, 3, A>;
  if (s.KH == 5 && s.KW == 5) return &dw_rows_nchw<5, 5, A>;
  return &dw_rows_nchw<0, 0, A>;
}

// ----------------------------------------------------------------------------------- NHWC

// One output pixel (oh, ow) of one image (x_img: H x W x C) into px[o], any kernel, stride,
// padding or channel multiplier. w_t: (mult, taps, C) -- the weight of output channel
// c * mult + j, tap t, at w_t[(j * taps + t) * C + c]. Scratch: xs, ws (taps pointers each) and
// tmp (C values, only for mult > 1).
template <typename A>
void dw_pixel_nhwc(const Shape& s, const A* x_img, const A* w_t, int64_t oh, int64_t ow, A* px,
                   const A** xs, const A** ws, A* tmp) {
  constexpr int64_t kV = Vec<A>::size();
  const int64_t C = s.C, mult = s.O / s.C, taps = s.taps();
  int64_t n = 0;  // the taps inside the image: their input pixel and their weights
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    const int64_t ih = oh * s.sh - s.pt + kh * s.dh;
    if (ih < 0 || ih >= s.H) continue;
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const int64_t iw = ow * s.sw - s.pl + kw * s.dw;
      if (iw < 0 || iw >= s.W) continue;
      xs[n] = x_img + (ih * s.W + iw) * C;
      ws[n++] = w_t + (kh * s.KW + kw) * C;
    }
  }
  for (int64_t j = 0; j < mult; ++j) {
    A* target = mult == 1 ? px : tmp;
    const int64_t wj = j * taps * C;
    int64_t c = 0;
    // Four vectors of channels at a time: four independent FMA chains per tap.
    for (; c + 4 * kV <= C; c += 4 * kV) {
      Vec<A> a0(A(0)), a1(A(0)), a2(A(0)), a3(A(0));
      for (int64_t t = 0; t < n; ++t) {
        const A* xp = xs[t] + c;
        const A* wp = ws[t] + wj + c;
        a0 = at::vec::fmadd(Vec<A>::loadu(wp), Vec<A>::loadu(xp), a0);
        a1 = at::vec::fmadd(Vec<A>::loadu(wp + kV), Vec<A>::loadu(xp + kV), a1);
        a2 = at::vec::fmadd(Vec<A>::loadu(wp + 2 * kV), Vec<A>::loadu(xp + 2 * kV), a2);
        a3 = at::vec::fmadd(Vec<A>::loadu(wp + 3 * kV), Vec<A>::loadu(xp + 3 * kV), a3);
      }
      a0.store(target + c);
      a1.store(target + c + kV);
      a2.store(target + c + 2 * kV);
      a3.store(target + c + 3 * kV);
    }
    for (; c < C; c += kV) {
      const int64_t cnt = std::min(kV, C - c);
      Vec<A> acc(A(0));
      for (int64_t t = 0; t < n; ++t)
        acc = at::vec::fmadd(load(ws[t] + wj + c, cnt), load(xs[t] + c, cnt), acc);
      if (cnt == kV) acc.store(target + c); else acc.store(target + c, cnt);
    }
    if (mult > 1)
      for (int64_t cc = 0; cc < C; ++cc) px[cc * mult + j] = tmp[cc];
  }
}

// The interior pixels [ow_a, ow_b) of output row oh (every tap inside the image) for a
// KH_ x KW_ kernel, channel multiplier 1 and C a multiple of the vector width. Four pixels at a
// time: per vector of channels, the KH_*KW_ weights are loaded into registers once and serve
// four independent accumulators (one load per multiply-add instead of two). Sweeping all the
// channels of four pixels before moving on matters: with C = 256 fp32 the pixels lie 1 KB
// apart, so a sweep along the row at a fixed channel would hit only 4 of the 64 L1 sets and
// evict itself (measured: 2x slower).
template <int KH_, int KW_, typename A>
void dw_interior_nhwc(const Shape& s, const A* x_img, const A* w_pack, int64_t oh, int64_t ow_a,
                      int64_t ow_b, A* row, int64_t ld) {
  constexpr int64_t kV = Vec<A>::size();
  constexpr int kTaps = KH_ * KW_;
  const int64_t C = s.C;
  int64_t toff[kTaps];
  for (int kh = 0; kh < KH_; ++kh)
    for (int kw = 0; kw < KW_; ++kw) toff[kh * KW_ + kw] = (kh * s.dh * s.W + kw * s.dw) * C;
  const A* top_left = x_img + ((oh * s.sh - s.pt) * s.W - s.pl) * C;  // tap (0, 0) of ow = 0
  const int64_t step = s.sw * C;
  // The input row the next output row adds (its last tap row), fetched ahead into the cache
  // while this row computes: without it, each new row's 1 KB pixels arrive one miss at a time.
  const int64_t next_ih = (oh + 1) * s.sh - s.pt + (KH_ - 1) * s.dh;
  const A* next_row = next_ih < s.H ? x_img + next_ih * s.W * C : nullptr;
  int64_t ow = ow_a;
  for (; ow + 4 <= ow_b; ow += 4) {
    const A* base = top_left + ow * step;
    A* out = row + ow * ld;
    if (next_row) {
      const int64_t iw0 = ow * s.sw - s.pl;
      const int64_t iw1 = std::min(s.W, iw0 + 4 * s.sw);
      for (const char* p = reinterpret_cast<const char*>(next_row + std::max<int64_t>(iw0, 0) * C);
           p < reinterpret_cast<const char*>(next_row + iw1 * C); p += 64)
        __builtin_prefetch(p, 0, 3);
    }
    for (int64_t c = 0; c < C; c += kV) {
      const A* wc = w_pack + c * kTaps;
      // Even and odd taps in separate accumulators: eight chains of ~kTaps/2 dependent FMAs
      // (one chain of kTaps per pixel would leave the FMA units waiting on its latency).
      Vec<A> a[4] = {Vec<A>(A(0)), Vec<A>(A(0)), Vec<A>(A(0)), Vec<A>(A(0))};
      Vec<A> b[4] = {Vec<A>(A(0)), Vec<A>(A(0)), Vec<A>(A(0)), Vec<A>(A(0))};
      for (int t = 0; t < kTaps; ++t) {
        const Vec<A> w = Vec<A>::loadu(wc + t * kV);
        const A* p = base + toff[t] + c;
        Vec<A>* acc = t % 2 ? b : a;
        for (int i = 0; i < 4; ++i) acc[i] = at::vec::fmadd(w, Vec<A>::loadu(p + i * step), acc[i]);
      }
      for (int i = 0; i < 4; ++i) (a[i] + b[i]).store(out + i * ld + c);
    }
  }
  for (; ow < ow_b; ++ow) {
    const A* base = top_left + ow * step;
    for (int64_t c = 0; c < C; c += kV) {
      Vec<A> acc(A(0));
      for (int t = 0; t < kTaps; ++t)
        acc = at::vec::fmadd(Vec<A>::loadu(w_pack + c * kTaps + t * kV),
                             Vec<A>::loadu(base + toff[t] + c), acc);
      acc.store(row + ow * ld + c);
    }
  }
}

// The same for stride 1 and dilation 1 along W: four neighbouring pixels read six input
// columns per tap row, so each input vector is loaded once and feeds up to KW_ multiply-adds
// (18 loads for 36 FMAs at 3x3), with the KH_*KW_ weights in registers. Written for the
// compiler to keep everything in the 16 AVX2 registers: 9 weights, 4 accumulators, 1 input.
template <int KH_, int KW_, typename A>
void dw_interior_nhwc_s1(const Shape& s, const A* x_img, const A* w_pack, int64_t oh,
                         int64_t ow_a, int64_t ow_b, A* row, int64_t ld) {
  constexpr int64_t kV = Vec<A>::size();
  constexpr int kTaps = KH_ * KW_, kP = 4, kCols = kP + KW_ - 1;
  const int64_t C = s.C;
  const A* tap_rows[KH_];  // input row kh, at column -pl
  for (int kh = 0; kh < KH_; ++kh)
    tap_rows[kh] = x_img + ((oh * s.sh - s.pt + kh * s.dh) * s.W - s.pl) * C;
  // The input row the next output row adds, fetched ahead (one line per pixel per 16 channels)
  // so that its pixels do not arrive one miss at a time when that row starts.
  const int64_t next_ih = (oh + 1) * s.sh - s.pt + (KH_ - 1) * s.dh;
  const A* next_row = next_ih < s.H ? x_img + (next_ih * s.W - s.pl) * C : nullptr;
  int64_t ow = ow_a;
  for (; ow + kP <= ow_b; ow += kP) {
    A* out = row + ow * ld;
    for (int64_t c = 0; c < C; c += kV) {
      if (next_row && c % 16 == 0)
        for (int i = 0; i < kP; ++i) __builtin_prefetch(next_row + (ow + i) * C + c, 0, 3);
      const A* wc = w_pack + c * kTaps;
      Vec<A> w[kTaps];
      for (int t = 0; t < kTaps; ++t) w[t] = Vec<A>::loadu(wc + t * kV);
      Vec<A> acc[kP];
      for (int i = 0; i < kP; ++i) acc[i] = Vec<A>(A(0));
      for (int kh = 0; kh < KH_; ++kh) {
        const A* q = tap_rows[kh] + ow * C + c;
        for (int j = 0; j < kCols; ++j) {
          const Vec<A> xv = Vec<A>::loadu(q + j * C);
          for (int kw = 0; kw < KW_; ++kw) {
            const int i = j - kw;
            if (i >= 0 && i < kP) acc[i] = at::vec::fmadd(w[kh * KW_ + kw], xv, acc[i]);
          }
        }
      }
      for (int i = 0; i < kP; ++i) acc[i].store(out + i * ld + c);
    }
  }
  for (; ow < ow_b; ++ow)
    for (int64_t c = 0; c < C; c += kV) {
      Vec<A> acc(A(0));
      for (int kh = 0; kh < KH_; ++kh)
        for (int kw = 0; kw < KW_; ++kw)
          acc = at::vec::fmadd(Vec<A>::loadu(w_pack + c * kTaps + (kh * KW_ + kw) * kV),
                               Vec<A>::loadu(tap_rows[kh] + (ow + kw) * C + c), acc);
      acc.store(row + ow * ld + c);
    }
}

// Output rows [r0, r1) of one image into dst, pixel (oh, ow) at
// dst + ((oh - r0) * OW + ow) * ld_dst: the 3x3 interior fast, everything else per pixel.
template <typename A>
void dw_rows_nhwc(const Shape& s, const A* x_img, const A* w_t, const A* w_pack, int64_t r0,
                  int64_t r1, A* dst, int64_t ld_dst, const A** xs, const A** ws, A* tmp) {
  const bool fast = w_pack != nullptr && s.KH == 3 && s.KW == 3;
  const int64_t a = s.first_full_col(), e = std::max(a, s.last_full_col());
  for (int64_t oh = r0; oh < r1; ++oh) {
    A* row = dst + (oh - r0) * s.OW * ld_dst;
    const int64_t ih = oh * s.sh - s.pt;
    if (fast && ih >= 0 && ih + (s.KH - 1) * s.dh < s.H && e > a) {
      if (s.sw == 1 && s.dw == 1)
        dw_interior_nhwc_s1<3, 3>(s, x_img, w_pack, oh, a, e, row, ld_dst);
      else
        dw_interior_nhwc<3, 3>(s, x_img, w_pack, oh, a, e, row, ld_dst);
      for (int64_t ow = 0; ow < a; ++ow)
        dw_pixel_nhwc(s, x_img, w_t, oh, ow, row + ow * ld_dst, xs, ws, tmp);
      for (int64_t ow = e; ow < s.OW; ++ow)
        dw_pixel_nhwc(s, x_img, w_t, oh, ow, row + ow * ld_dst, xs, ws, tmp);
    } else {
      for (int64_t ow = 0; ow < s.OW; ++ow)
        dw_pixel_nhwc(s, x_img, w_t, oh, ow, row + ow * ld_dst, xs, ws, tmp);
    }
  }
}

// Rows of output per task: about `target` outputs per channel, and enough tasks for the team.
int64_t rows_per_task(const Shape& s, int64_t target, int64_t other_tasks) {
  int64_t rows = std::max<int64_t>(1, std::min(s.OH, target / std::max<int64_t>(s.OW, 1)));
  const int64_t want = 4 * at::get_num_threads();
  while (rows > 1 && other_tasks * ((s.OH + rows - 1) / rows) < want) rows = (rows + 1) / 2;
  return rows;
}

// ------------------------------------------------------------------------ depthwise forward

template <typename T>
void depthwise_fwd_impl(const Shape& s, const acc_t<T>* x, const acc_t<T>* w, const acc_t<T>* b,
                        const T* res, Act act, T* out, T* z) {
  using A = acc_t<T>;
  const int64_t mult = s.O / s.C, OHW = s.OHW();
  // Outputs past the last-level cache go straight to memory (memory.h).
  const int64_t out_bytes = s.N * s.O * OHW * int64_t(sizeof(T));
  const bool stream = use_streaming_stores(s.N * s.C * s.HW() * int64_t(sizeof(A)) +
                                           out_bytes * (1 + (z != nullptr) + (res != nullptr)));
  if (!s.channels_last) {
    // Tasks: (image, channel, block of output rows); a channel's staged rows serve its mult
    // output channels.
    const int64_t rows = rows_per_task(s, 1 << 14, s.N * s.C);
    const int64_t blocks = (s.OH + rows - 1) / rows;
    const Staging st(s);
    const auto kernel = pick_nchw<A>(s);
    at::parallel_for(0, s.N * s.C * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> buf(st.rows(s, 0, rows) * st.row_len, A(0)), acc(rows * s.OW);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t blk = task % blocks, nc = task / blocks, c = nc % s.C, n = nc / s.C;
        const int64_t r0 = blk * rows, r1 = std::min(s.OH, r0 + rows);
        const int64_t prow0 = st.first_row(s, r0);
        stage_rows(s, st, x + nc * s.HW(), prow0, st.rows(s, r0, r1), buf.data());
        for (int64_t j = 0; j < mult; ++j) {
          const int64_t o = c * mult + j, off = (n * s.O + o) * OHW + r0 * s.OW;
          kernel(s, st, buf.data(), prow0, r0, r1, w + o * s.taps(), acc.data());
          with_act(act, [&](auto a) {
            epilogue<decltype(a)::value>(acc.data(), (r1 - r0) * s.OW, b ? b[o] : A(0),
                                         (const A*)nullptr, res ? res + off : nullptr, out + off,
                                         z ? z + off : nullptr, stream);
          });
        }
      }
      if (stream) stream_fence();
    });
    return;
  }
  // NHWC: tasks are (image, block of output rows); all channels of a pixel at once.
  const NhwcWeights nw(s, w, c10::CppTypeToScalarType<A>::value, Vec<A>::size());
  const A *wt = nw.generic_ptr<A>(), *wp = nw.packed_ptr<A>();
  const int64_t rows = rows_per_task(s, std::max<int64_t>(s.OW, (1 << 14) / s.O), s.N);
  const int64_t blocks = (s.OH + rows - 1) / rows;
  at::parallel_for(0, s.N * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(rows * s.OW * s.O), tmp(s.C);
    std::vector<const A*> xs(s.taps()), ws(s.taps());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task % blocks, n = task / blocks;
      const int64_t r0 = blk * rows, r1 = std::min(s.OH, r0 + rows);
      dw_rows_nhwc(s, x + n * s.C * s.HW(), wt, wp, r0, r1, acc.data(), s.O, xs.data(), ws.data(),
                   tmp.data());
      const int64_t off = (n * OHW + r0 * s.OW) * s.O;
      with_act(act, [&](auto a) {
        for (int64_t p = 0; p < (r1 - r0) * s.OW; ++p)
          epilogue<decltype(a)::value>(acc.data() + p * s.O, s.O, A(0), b,
                                       res ? res + off + p * s.O : nullptr,
                                       out + off + p * s.O, z ? z + off + p * s.O : nullptr,
                                       stream);
      });
    }
    if (stream) stream_fence();
  });
}

}  // namespace

void depthwise_fwd(const Shape& s, const at::Tensor& x, const at::Tensor& w,
                   const at::Tensor& bias, const at::Tensor& res, Act act, at::Tensor& out,
                   at::Tensor& z) {
  if (out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "depthwise", [&] {
    using A = acc_t<scalar_t>;
    depthwise_fwd_impl<scalar_t>(s, x.const_data_ptr<A>(), w.const_data_ptr<A>(),
                                 bias.defined() ? bias.const_data_ptr<A>() : nullptr,
                                 res.defined() ? res.const_data_ptr<scalar_t>() : nullptr, act,
                                 out.mutable_data_ptr<scalar_t>(),
                                 z.defined() && z.numel() ? z.mutable_data_ptr<scalar_t>()
                                                          : nullptr);
  });
}

template <typename A>
void depthwise_rows_nchw(const Shape& s, const Staging& st, const A* buf, int64_t prow0,
                         int64_t r0, int64_t r1, const A* w, A* dst) {
  pick_nchw<A>(s)(s, st, buf, prow0, r0, r1, w, dst);
}

template <typename A>
void depthwise_rows_nhwc(const Shape& s, const A* x_img, const NhwcWeights& nw, int64_t r0,
                         int64_t r1, A* dst, const A** xs, const A** ws, A* tmp) {
  dw_rows_nhwc(s, x_img, nw.generic_ptr<A>(), nw.packed_ptr<A>(), r0, r1, dst, s.O, xs, ws, tmp);
}

#define LEEDL_DW_ROWS(A)                                                                       \
  template void depthwise_rows_nchw<A>(const Shape&, const Staging&, const A*, int64_t,        \
                                       int64_t, int64_t, const A*, A*);                        \
  template void depthwise_rows_nhwc<A>(const Shape&, const A*, const NhwcWeights&, int64_t,    \
                                       int64_t, A*, const A**, const A**, A*);
LEEDL_DW_ROWS(float)
LEEDL_DW_ROWS(double)
#undef LEEDL_DW_ROWS

namespace {

// ------------------------------------------------------------------------ separable block

// x, dw (C, taps), pw (O, C) [NCHW] or pw_t (C, O) [NHWC]: accumulation type; out: T.
template <typename T>
void separable_impl(const Shape& s, const acc_t<T>* x, const acc_t<T>* dw, const acc_t<T>* dw_b,
                    Act dw_act, const acc_t<T>* pw, const acc_t<T>* pw_b, int64_t O, Act act,
                    T* out) {
  using A = acc_t<T>;
  const int64_t C = s.C, OHW = s.OHW();
  // A tile of ~kTile output positions: the mid tile (C x kTile) and the output tile
  // (O x kTile) stay in L2 with the pointwise weights.
  constexpr int64_t kTile = 192;
  const int64_t rows = rows_per_task(s, kTile, s.N);
  const int64_t blocks = (s.OH + rows - 1) / rows, tile = rows * s.OW;
  const bool stream = use_streaming_stores((s.N * C * s.HW() + s.N * O * OHW) * int64_t(sizeof(T)));
  if (!s.channels_last) {
    const Staging st(s);
    const auto kernel = pick_nchw<A>(s);
    at::parallel_for(0, s.N * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> buf(st.rows(s, 0, rows) * st.row_len, A(0)), mid(C * tile), acc(O * tile);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t blk = task % blocks, n = task / blocks;
        const int64_t r0 = blk * rows, r1 = std::min(s.OH, r0 + rows), m = (r1 - r0) * s.OW;
        const int64_t prow0 = st.first_row(s, r0);
        for (int64_t c = 0; c < C; ++c) {  // mid (C x m): depthwise + dw_bias + dw_act
          stage_rows(s, st, x + (n * C + c) * s.HW(), prow0, st.rows(s, r0, r1), buf.data());
          A* mid_row = mid.data() + c * m;
          kernel(s, st, buf.data(), prow0, r0, r1, dw + c * s.taps(), mid_row);
          with_act(dw_act, [&](auto a) {
            epilogue<decltype(a)::value, A, A>(mid_row, m, dw_b ? dw_b[c] : A(0), nullptr,
                                               nullptr, mid_row, nullptr);
          });
        }
        matmul(O, m, C, pw, C, mid.data(), m, acc.data(), m, /*accumulate=*/false);
        with_act(act, [&](auto a) {
          for (int64_t o = 0; o < O; ++o) {
            const int64_t off = (n * O + o) * OHW + r0 * s.OW;
            epilogue<decltype(a)::value>(acc.data() + o * m, m, pw_b ? pw_b[o] : A(0),
                                         (const A*)nullptr, (const T*)nullptr, out + off,
                                         (T*)nullptr, stream);
          }
        });
      }
      if (stream) stream_fence();
      matmul_release();
    });
    return;
  }
  const NhwcWeights nw(s, dw, c10::CppTypeToScalarType<A>::value, Vec<A>::size());
  const A *wt = nw.generic_ptr<A>(), *wp = nw.packed_ptr<A>();
  at::parallel_for(0, s.N * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> mid(tile * C), acc(tile * O);
    std::vector<const A*> xs(s.taps()), ws(s.taps());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task % blocks, n = task / blocks;
      const int64_t r0 = blk * rows, r1 = std::min(s.OH, r0 + rows), m = (r1 - r0) * s.OW;
      dw_rows_nhwc(s, x + n * C * s.HW(), wt, wp, r0, r1, mid.data(), C, xs.data(), ws.data(),
                   static_cast<A*>(nullptr));
      with_act(dw_act, [&](auto a) {
        for (int64_t p = 0; p < m; ++p)
          epilogue<decltype(a)::value, A, A>(mid.data() + p * C, C, A(0), dw_b, nullptr,
                                             mid.data() + p * C, nullptr);
      });
      matmul(m, O, C, mid.data(), C, pw, O, acc.data(), O, /*accumulate=*/false);
      const int64_t off = (n * OHW + r0 * s.OW) * O;
      with_act(act, [&](auto a) {
        for (int64_t p = 0; p < m; ++p)
          epilogue<decltype(a)::value>(acc.data() + p * O, O, A(0), pw_b, (const T*)nullptr,
                                       out + off + p * O, (T*)nullptr, stream);
      });
    }
    if (stream) stream_fence();
    matmul_release();
  });
}

at::Tensor separable_conv2d_fwd_cpu(const at::Tensor& x, const at::Tensor& dw_weight,
                                    const std::optional<at::Tensor>& dw_bias,
                                    c10::string_view dw_activation, const at::Tensor& pw_weight,
                                    const std::optional<at::Tensor>& pw_bias,
                                    c10::string_view activation, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "separable_conv2d_fwd";
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(dw_weight.dim() == 4 && dw_weight.size(0) == x.size(1) && dw_weight.size(1) == 1,
              op, ": dw_weight must be (C, 1, KH, KW) with C = ", x.size(1),
              " (x's channels), got ",
              dw_weight.sizes());
  Shape s = check_shape(op, x, dw_weight, stride, padding, dilation, x.size(1));
  TORCH_CHECK(pw_weight.dim() == 4 && pw_weight.size(1) == s.C && pw_weight.size(2) == 1 &&
                  pw_weight.size(3) == 1,
              op, ": pw_weight must be (O, ", s.C, ", 1, 1), got ", pw_weight.sizes());
  TORCH_CHECK(pw_weight.device().is_cpu() && pw_weight.scalar_type() == x.scalar_type(), op,
              ": pw_weight must be a CPU tensor of x's dtype (", x.scalar_type(), "), got ",
              pw_weight.scalar_type(), " on ", pw_weight.device());
  const Act dw_act = parse_activation(op, dw_activation), act = parse_activation(op, activation);
  const int64_t O = pw_weight.size(0);
  const auto acc = acc_dtype(x.scalar_type());
  const at::Tensor dwb = check_vector(op, "dw_bias", dw_bias, s.C, x);
  const at::Tensor pwb = check_vector(op, "pw_bias", pw_bias, O, x);
  const auto fmt = layout_of(x);
  at::Tensor out = empty_image({s.N, O, s.OH, s.OW}, x.options(), fmt);
  if (out.numel() == 0) return out;
  const at::Tensor xa = formatted(x, acc, fmt);
  const at::Tensor dw = dw_weight.to(acc).contiguous();
  at::Tensor pw = pw_weight.to(acc).reshape({O, s.C});
  pw = s.channels_last ? pw.t().contiguous() : pw.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    using A = acc_t<scalar_t>;
    separable_impl<scalar_t>(s, xa.const_data_ptr<A>(), dw.const_data_ptr<A>(),
                             dwb.defined() ? dwb.const_data_ptr<A>() : nullptr, dw_act,
                             pw.const_data_ptr<A>(),
                             pwb.defined() ? pwb.const_data_ptr<A>() : nullptr, O, act,
                             out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace
}  // namespace conv

TORCH_LIBRARY_IMPL(leedl_fast, CPU, m) {
  m.impl("separable_conv2d_fwd", &conv::separable_conv2d_fwd_cpu);
}

}  // namespace leedl_fast
