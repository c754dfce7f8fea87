// Backward of the depthwise convolution (groups = C, one k x k filter per channel, any channel
// multiplier), computed directly like the forward (conv_depthwise.cpp) instead of as C tiny
// GEMMs with im2col tiles (measured: ~20x faster channels_last at 8 x 256 x 56 x 56):
//
//   dweight[o, kh, kw] = sum over n, oh, ow of dz[n, o, oh, ow] * x_pad[n, c, oh*sh + kh*dh,
//                                                                     ow*sw + kw*dw]
//   dx[n, c, ih, iw]   = sum over the (o, kh, kw, oh, ow) that read x[n, c, ih, iw] of
//                        dz[n, o, oh, ow] * w[o, kh, kw]           (c = o / multiplier)
//
// NCHW, one task per (image, channel) plane. dweight: the plane is staged (padded and
// phase-split, conv.h `Staging`) and each tap's sum is a dot product of dz rows with staged
// rows -- k*k vector accumulators. dx: the scatter of the forward's reads, into a staged
// gradient buffer of the same layout (one contiguous read-modify-write per tap and output row;
// taps in the outer loop so that no store is re-read by the very next load), then un-staged
// into dx. The plane's buffers stay in L1/L2; channels never share a buffer, so no races.
//
// NHWC, vectorized over channels. dx gathers: per input pixel, list the (output pixel, tap)
// pairs that read it (oh = (ih + pt - kh*dh) / sh when that divides), then sum over the list a
// vector of channels at a time; tasks are blocks of input rows, each writing only its own rows.
// dweight: per output pixel and tap, partial[tap, o] += dz[pixel, o] * x[tap's pixel, o]; one
// partial per thread's contiguous range of rows, summed in order (deterministic).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>

#include "conv.h"

#include <vector>

namespace leedl_fast {
namespace conv {
namespace {

template <typename A>
inline A hsum(const Vec<A>& v) {
  return at::vec::vec_reduce_all<A>([](Vec<A>& a, Vec<A>& b) { return a + b; }, v);
}

// ----------------------------------------------------------------------------------- NCHW

// dweight of channel c's output channels for one image: dw_part[j * taps + t] (j < mult).
// KH_/KW_ compile-time kernel size (accumulators in registers), 0 for any.
template <int KH_, int KW_, typename A>
void dweight_plane_nchw(const Shape& s, const Staging& st, const A* xbuf, const A* dz_img,
                        int64_t c, A* dw_part) {
  constexpr int64_t kV = Vec<A>::size();
  constexpr bool kFixed = KH_ > 0 && KW_ > 0;
  const int64_t taps = kFixed ? KH_ * KW_ : s.taps(), KW = kFixed ? KW_ : s.KW;
  const int64_t mult = s.O / s.C;
  constexpr int kFixedTaps = kFixed ? KH_ * KW_ : 1;
  Vec<A> acc_fixed[kFixedTaps];
  int64_t off_fixed[kFixedTaps];
  std::vector<Vec<A>> acc_dyn(kFixed ? 0 : taps);
  std::vector<int64_t> off_dyn(kFixed ? 0 : taps);
  Vec<A>* acc = kFixed ? acc_fixed : acc_dyn.data();
  int64_t* toff = kFixed ? off_fixed : off_dyn.data();
  for (int64_t t = 0; t < taps; ++t) toff[t] = st.tap(s, 0, 0, t / KW, t % KW);
  for (int64_t j = 0; j < mult; ++j) {
    const A* dz = dz_img + (c * mult + j) * s.OHW();
    for (int64_t t = 0; t < taps; ++t) acc[t] = Vec<A>(A(0));
    for (int64_t oh = 0; oh < s.OH; ++oh) {
      const A* row = xbuf + oh * s.sh * st.row_len;
      for (int64_t ow = 0; ow < s.OW; ow += kV) {
        const int64_t cnt = std::min(kV, s.OW - ow);  // partial loads zero the tail lanes
        const Vec<A> d = load(dz + oh * s.OW + ow, cnt);
        for (int64_t t = 0; t < taps; ++t)
          acc[t] = at::vec::fmadd(d, load(row + toff[t] + ow, cnt), acc[t]);
      }
    }
    for (int64_t t = 0; t < taps; ++t) dw_part[j * taps + t] = hsum(acc[t]);
  }
}

// dx of channel c for one image: scatter into gbuf (staged layout), then un-stage into dx.
template <typename A>
void dx_plane_nchw(const Shape& s, const Staging& st, const A* w, const A* dz_img, int64_t c,
                   A* gbuf, int64_t nrows, A* dx) {
  constexpr int64_t kV = Vec<A>::size();
  const int64_t mult = s.O / s.C, taps = s.taps();
  std::fill(gbuf, gbuf + nrows * st.row_len, A(0));
  for (int64_t j = 0; j < mult; ++j) {
    const int64_t o = c * mult + j;
    const A* dz = dz_img + o * s.OHW();
    for (int64_t t = 0; t < taps; ++t) {
      const Vec<A> wv(w[o * taps + t]);
      const int64_t toff = st.tap(s, 0, 0, t / s.KW, t % s.KW);
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        A* g = gbuf + oh * s.sh * st.row_len + toff;
        for_each_vec<A>(s.OW, [&](int64_t ow, auto cnt) {
          const Vec<A> v = at::vec::fmadd(wv, load(dz + oh * s.OW + ow, cnt), load(g + ow, cnt));
          if (cnt == kV) v.store(g + ow); else v.store(g + ow, cnt);
        });
      }
    }
  }
  for (int64_t ih = 0; ih < s.H; ++ih) {
    A* dst = dx + ih * s.W;
    const int64_t r = ih + s.pt;
    if (r >= nrows) {  // below every window (stride leaves the last rows unread)
      std::fill(dst, dst + s.W, A(0));
      continue;
    }
    const A* src = gbuf + r * st.row_len;
    if (st.sw == 1) {
      std::copy(src + s.pl, src + s.pl + s.W, dst);
    } else {
      for (int64_t iw = 0; iw < s.W; ++iw) {
        const int64_t jcol = iw + s.pl;
        dst[iw] = src[(jcol % st.sw) * st.phase_len + jcol / st.sw];
      }
    }
  }
}

template <typename A>
void depthwise_bwd_nchw(const Shape& s, const A* x, const A* w, const A* dz, A* dx,
                        A* dw_parts /* (N, O, taps) */) {
  const Staging st(s);
  const int64_t nrows = st.rows(s, 0, s.OH), mult = s.O / s.C, taps = s.taps();
  auto dweight_plane = &dweight_plane_nchw<0, 0, A>;
  if (s.KH == 3 && s.KW == 3) dweight_plane = &dweight_plane_nchw<3, 3, A>;
  at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> buf(nrows * st.row_len, A(0));
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / s.C, c = nc % s.C;
      const A* dz_img = dz + n * s.O * s.OHW();
      if (dw_parts) {
        stage_rows(s, st, x + nc * s.HW(), 0, nrows, buf.data());
        dweight_plane(s, st, buf.data(), dz_img, c, dw_parts + (n * s.O + c * mult) * taps);
      }
      if (dx) dx_plane_nchw(s, st, w, dz_img, c, buf.data(), nrows, dx + nc * s.HW());
    }
  });
}

// ----------------------------------------------------------------------------------- NHWC

// dx rows [i0, i1) of image n. w_t: (mult, taps, C) (weight of output channel c*mult + j).
template <typename A>
void dx_rows_nhwc(const Shape& s, const A* w_t, const A* dz_img, int64_t i0, int64_t i1,
                  A* dx_img, const A** dzs, const A** ws) {
  constexpr int64_t kV = Vec<A>::size();
  const int64_t C = s.C, mult = s.O / s.C, taps = s.taps();
  for (int64_t ih = i0; ih < i1; ++ih)
    for (int64_t iw = 0; iw < s.W; ++iw) {
      int64_t n = 0;  // the (output pixel, tap) pairs that read (ih, iw)
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        const int64_t ph = ih + s.pt - kh * s.dh;
        if (ph < 0 || ph % s.sh || ph / s.sh >= s.OH) continue;
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          const int64_t pw = iw + s.pl - kw * s.dw;
          if (pw < 0 || pw % s.sw || pw / s.sw >= s.OW) continue;
          dzs[n] = dz_img + ((ph / s.sh) * s.OW + pw / s.sw) * s.O;
          ws[n++] = w_t + (kh * s.KW + kw) * C;
        }
      }
      A* d = dx_img + (ih * s.W + iw) * C;
      if (mult == 1) {
        for_each_vec<A>(C, [&](int64_t c, auto cnt) {
          Vec<A> acc(A(0));
          for (int64_t t = 0; t < n; ++t)
            acc = at::vec::fmadd(load(ws[t] + c, cnt), load(dzs[t] + c, cnt), acc);
          if (cnt == kV) acc.store(d + c); else acc.store(d + c, cnt);
        });
      } else {
        for (int64_t c = 0; c < C; ++c) {
          A acc = 0;
          for (int64_t t = 0; t < n; ++t)
            for (int64_t j = 0; j < mult; ++j)
              acc += dzs[t][c * mult + j] * ws[t][j * taps * C + c];
          d[c] = acc;
        }
      }
    }
}

// partial (taps x O) += the dweight terms of output rows [r0, r1) of image n.
template <typename A>
void dweight_rows_nhwc(const Shape& s, const A* x_img, const A* dz_img, int64_t r0, int64_t r1,
                       A* partial) {
  const int64_t C = s.C, O = s.O, mult = O / C;
  for (int64_t oh = r0; oh < r1; ++oh)
    for (int64_t ow = 0; ow < s.OW; ++ow) {
      const A* d = dz_img + (oh * s.OW + ow) * O;
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        const int64_t ih = oh * s.sh - s.pt + kh * s.dh;
        if (ih < 0 || ih >= s.H) continue;
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          const int64_t iw = ow * s.sw - s.pl + kw * s.dw;
          if (iw < 0 || iw >= s.W) continue;
          const A* xp = x_img + (ih * s.W + iw) * C;
          A* p = partial + (kh * s.KW + kw) * O;
          if (mult == 1) {
            for_each_vec<A>(O, [&](int64_t o, auto cnt) {
              const Vec<A> v =
                  at::vec::fmadd(load(d + o, cnt), load(xp + o, cnt), load(p + o, cnt));
              if (cnt == Vec<A>::size()) v.store(p + o); else v.store(p + o, cnt);
            });
          } else {
            for (int64_t o = 0; o < O; ++o) p[o] += d[o] * xp[o / mult];
          }
        }
      }
    }
}

template <typename A>
void depthwise_bwd_nhwc(const Shape& s, const A* x, const A* w, const A* dz, A* dx,
                        A* dweight /* (O, taps) */) {
  const int64_t taps = s.taps(), img_x = s.HW() * s.C, img_dz = s.OHW() * s.O;
  if (dx) {
    // (O, taps) -> (mult, taps, C), the layout dx_rows_nhwc reads.
    const at::Tensor w_t =
        at::from_blob(const_cast<A*>(w), {s.C, s.O / s.C, taps},
                      at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value))
            .permute({1, 2, 0})
            .contiguous();
    const A* wt = w_t.const_data_ptr<A>();
    const int64_t rows = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, s.W));
    const int64_t blocks = (s.H + rows - 1) / rows;
    at::parallel_for(0, s.N * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<const A*> dzs(taps), ws(taps);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / blocks, i0 = (task % blocks) * rows;
        dx_rows_nhwc(s, wt, dz + n * img_dz, i0, std::min(s.H, i0 + rows), dx + n * img_x,
                     dzs.data(), ws.data());
      }
    });
  }
  if (dweight) {
    // One partial per contiguous range of (image, output row) tasks, summed in order.
    const int64_t tasks = s.N * s.OH;
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
    std::vector<A> partial(parts * taps * s.O, A(0));
    at::parallel_for(0, parts, 1, [&](int64_t pbegin, int64_t pend) {
      for (int64_t part = pbegin; part < pend; ++part) {
        A* p = partial.data() + part * taps * s.O;
        for (int64_t task = tasks * part / parts; task < tasks * (part + 1) / parts; ++task) {
          const int64_t n = task / s.OH, oh = task % s.OH;
          dweight_rows_nhwc(s, x + n * img_x, dz + n * img_dz, oh, oh + 1, p);
        }
      }
    });
    for (int64_t o = 0; o < s.O; ++o)
      for (int64_t t = 0; t < taps; ++t) {
        A sum = 0;
        for (int64_t part = 0; part < parts; ++part) sum += partial[(part * taps + t) * s.O + o];
        dweight[o * taps + t] = sum;
      }
  }
}

}  // namespace

void depthwise_bwd(const Shape& s, const at::Tensor& x, const at::Tensor& w,
                   const at::Tensor& dz, at::Tensor dx, at::Tensor dweight) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "depthwise_bwd", [&] {
    using A = scalar_t;
    A* dxp = dx.defined() ? dx.mutable_data_ptr<A>() : nullptr;
    if (s.channels_last) {
      depthwise_bwd_nhwc<A>(s, x.const_data_ptr<A>(), w.const_data_ptr<A>(),
                            dz.const_data_ptr<A>(), dxp,
                            dweight.defined() ? dweight.mutable_data_ptr<A>() : nullptr);
      return;
    }
    at::Tensor parts;  // (N, O, taps), summed over images below
    if (dweight.defined()) parts = at::empty({s.N, s.O, s.taps()}, x.options());
    depthwise_bwd_nchw<A>(s, x.const_data_ptr<A>(), w.const_data_ptr<A>(),
                          dz.const_data_ptr<A>(), dxp,
                          parts.defined() ? parts.mutable_data_ptr<A>() : nullptr);
    if (dweight.defined()) dweight.view({s.O, s.taps()}).copy_(parts.sum(0));
  });
}

}  // namespace conv
}  // namespace leedl_fast
