// Shared pieces of the convolution family's CPU kernels (conv.cpp: the GEMM forward;
// conv_bwd.cpp: the GEMM backward; conv_depthwise.cpp: the direct depthwise forward and the
// separable block; conv_depthwise_bwd.cpp: the direct depthwise backward). The math:
// docs/conv.md.
//
// Layouts. Every kernel runs in one of two layouts, chosen by the memory-format rule the Python
// glue's fakes use (leedl_fast/_ops/conv.py `memory_format`): channels_last when x is
// contiguous as channels_last and not as NCHW, NCHW otherwise. x is made contiguous in that
// layout (a copy only for other strides), outputs are written in it. Element (c, h, w) of an
// image lives at c * sc + h * sh + w * sw with (sc, sh, sw) = (H W, W, 1) for NCHW and
// (1, W C, C) for channels_last (NHWC).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>

#include "memory.h"
#include "vec_loops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace leedl_fast {
namespace conv {

// Accumulation type: fp32 for fp16/bf16/fp32, fp64 for fp64 (exact gradients in tests).
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
using Vec = at::vec::Vectorized<T>;

inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// ------------------------------------------------------------------------------ geometry

struct Shape {
  int64_t N, C, H, W;   // input
  int64_t O, KH, KW;    // weight (O, C / groups, KH, KW)
  int64_t OH, OW;       // output
  int64_t groups;
  int64_t sh, sw;       // stride
  int64_t pt, pb, pl, pr;  // padding (top, bottom, left, right)
  int64_t dh, dw;       // dilation
  bool channels_last;

  int64_t Cg() const { return C / groups; }
  int64_t Og() const { return O / groups; }
  int64_t HW() const { return H * W; }
  int64_t OHW() const { return OH * OW; }
  int64_t taps() const { return KH * KW; }
  int64_t K() const { return Cg() * KH * KW; }  // the GEMM reduction length per group
  // 1x1, stride 1, no padding: the input itself is the GEMM operand (no im2col).
  bool pointwise() const {
    return KH == 1 && KW == 1 && sh == 1 && sw == 1 && pt == 0 && pb == 0 && pl == 0 && pr == 0;
  }
  // One filter per input channel (groups == C), any channel multiplier O / C.
  bool depthwise() const { return groups == C && Cg() == 1; }
  // Offsets of x's (c, h, w) and out's (o, h, w) within one image.
  int64_t x_sc() const { return channels_last ? 1 : H * W; }
  int64_t x_sh() const { return channels_last ? W * C : W; }
  int64_t x_sw() const { return channels_last ? C : 1; }
  // Range of output columns whose taps kw = 0 .. KW-1 all fall inside the input (may be empty).
  int64_t first_full_col() const { return std::min(OW, (pl + sw - 1) / sw); }
  int64_t last_full_col() const {  // one past
    const int64_t reach = W - 1 + pl - (KW - 1) * dw;  // ow * sw <= reach
    return reach < 0 ? 0 : std::min(OW, reach / sw + 1);
  }
};

// The memory format the glue's fakes promise for x-shaped outputs.
inline at::MemoryFormat layout_of(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// Validates x/weight/stride/padding/dilation/groups (op names the caller in messages) and
// returns the geometry.
Shape check_shape(const char* op, const at::Tensor& x, const at::Tensor& weight,
                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                  int64_t groups);

// An optional per-channel vector (bias) checked for shape/dtype and returned contiguous in the
// accumulation type, or undefined.
at::Tensor check_vector(const char* op, const char* name, const std::optional<at::Tensor>& t,
                        int64_t size, const at::Tensor& x);

// t in dtype `type` and contiguous in `fmt` (t itself when it already is: read-only use).
inline at::Tensor formatted(const at::Tensor& t, at::ScalarType type, at::MemoryFormat fmt) {
  return t.to(type).contiguous(fmt);
}

// An uninitialized (N, C, H, W) tensor in layout fmt; huge pages advised when large.
at::Tensor empty_image(at::IntArrayRef shape, const at::TensorOptions& opts,
                       at::MemoryFormat fmt);

// ---------------------------------------------------------------------------- activation

enum class Act { kNone, kRelu, kGelu, kSilu };

Act parse_activation(const char* op, std::string_view name);

inline bool saves_z(Act a) { return a == Act::kGelu || a == Act::kSilu; }

// Calls f(std::integral_constant<Act, a>) so that the activation is a compile-time constant in
// the inner loops.
template <typename F>
inline void with_act(Act a, F f) {
  switch (a) {
    case Act::kNone: f(std::integral_constant<Act, Act::kNone>{}); break;
    case Act::kRelu: f(std::integral_constant<Act, Act::kRelu>{}); break;
    case Act::kGelu: f(std::integral_constant<Act, Act::kGelu>{}); break;
    case Act::kSilu: f(std::integral_constant<Act, Act::kSilu>{}); break;
  }
}

template <Act kAct, typename A>
inline Vec<A> activate(const Vec<A>& z) {
  if constexpr (kAct == Act::kRelu) {
    return at::vec::maximum(z, Vec<A>(A(0)));  // NaN stays NaN, as torch.relu
  } else if constexpr (kAct == Act::kGelu) {  // exact: z * Phi(z)
    return z * Vec<A>(A(0.5)) * (Vec<A>(A(1)) + (z * Vec<A>(A(M_SQRT1_2))).erf());
  } else if constexpr (kAct == Act::kSilu) {
    return z / (Vec<A>(A(1)) + z.neg().exp());
  } else {
    return z;
  }
}

// d act(z) / dz (relu is handled from `out` by the caller: out > 0).
template <Act kAct, typename A>
inline Vec<A> activate_grad(const Vec<A>& z) {
  if constexpr (kAct == Act::kGelu) {
    const Vec<A> cdf = Vec<A>(A(0.5)) * (Vec<A>(A(1)) + (z * Vec<A>(A(M_SQRT1_2))).erf());
    const A inv_sqrt_2pi = A(0.3989422804014327);
    return cdf + z * (z * z * Vec<A>(A(-0.5))).exp() * Vec<A>(inv_sqrt_2pi);
  } else if constexpr (kAct == Act::kSilu) {
    const Vec<A> s = Vec<A>(A(1)) / (Vec<A>(A(1)) + z.neg().exp());
    return s * (Vec<A>(A(1)) + z * (Vec<A>(A(1)) - s));
  } else {
    return Vec<A>(A(1));
  }
}

// ------------------------------------------------------------------------------- epilogue

template <typename A>
inline Vec<A> load(const A* p, int64_t count) {
  return count == Vec<A>::size() ? Vec<A>::loadu(p) : Vec<A>::loadu(p, count);
}

// n elements of type T as a vector of A (fp16/bf16 widened).
template <typename A, typename T>
inline Vec<A> load_as(const T* p, int64_t count) {
  if constexpr (std::is_same_v<T, A>) {
    return load(p, count);
  } else {
    A tmp[Vec<A>::size()];
    for (int64_t i = 0; i < count; ++i) tmp[i] = static_cast<A>(p[i]);
    return Vec<A>::loadu(tmp, count);
  }
}

template <typename A, typename T>
inline void store_as(const Vec<A>& v, T* p, int64_t count) {
  if constexpr (std::is_same_v<T, A>) {
    if (count == Vec<A>::size()) v.store(p); else v.store(p, count);
  } else {
    A tmp[Vec<A>::size()];
    v.store(tmp, count);
    for (int64_t i = 0; i < count; ++i) p[i] = static_cast<T>(tmp[i]);
  }
}

// dst[0, n) = src[0, n), inline vector moves (the im2col copies are short runs: a call to
// memmove per run cost ~10% of a 3x3 convolution).
template <typename A>
inline void copy_vec(const A* src, int64_t n, A* dst) {
  for_each_vec<A>(n, [&](int64_t i, auto c) {
    const Vec<A> v = load(src + i, c);
    if (c == Vec<A>::size()) v.store(dst + i); else v.store(dst + i, c);
  });
}

// v to p (count lanes), bypassing the caches when `stream` (fp32 full vectors at 32-byte
// aligned addresses; anything else is an ordinary store).
template <typename A, typename T>
inline void put(const Vec<A>& v, T* p, int64_t count, bool stream) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<A, float>) {
    if (stream && count == Vec<A>::size() && reinterpret_cast<uintptr_t>(p) % 32 == 0) {
      nt_store(p, v);
      return;
    }
  }
  store_as(v, p, count);
}

// The fused epilogue over one run of n outputs, while they are in cache:
//   z = acc + bias_scalar + bias_vec[i] + res[i];  out[i] = act(z);  z_out[i] = z
// bias_vec, res and z_out may be null. acc may equal out (in place) when T == A. `stream`:
// out and z_out bypass the caches (outputs larger than the last-level cache; the caller runs
// stream_fence() before its parallel task ends).
template <Act kAct, typename T, typename A>
inline void epilogue(const A* acc, int64_t n, A bias_scalar, const A* bias_vec, const T* res,
                     T* out, T* z_out, bool stream = false) {
  const Vec<A> vb(bias_scalar);
  for_each_vec<A>(n, [&](int64_t i, auto c) {
    Vec<A> z = load(acc + i, c) + vb;
    if (bias_vec) z = z + load(bias_vec + i, c);
    if (res) z = z + load_as<A>(res + i, c);
    if (z_out) put(z, z_out + i, c, stream);
    put(activate<kAct>(z), out + i, c, stream);
  });
}

// ------------------------------------------------------------------------------- im2col

// Valid output columns [lo, hi) for tap column kw: 0 <= ow*sw - pl + kw*dw < W.
inline std::pair<int64_t, int64_t> valid_cols(const Shape& s, int64_t kw) {
  const int64_t shift = s.pl - kw * s.dw;  // ow*sw >= shift  and  ow*sw <= W - 1 + shift
  const int64_t lo = shift <= 0 ? 0 : std::min(s.OW, (shift + s.sw - 1) / s.sw);
  const int64_t top = s.W - 1 + shift;
  const int64_t hi = top < 0 ? 0 : std::min(s.OW, top / s.sw + 1);
  return {lo, std::max(lo, hi)};
}

// Visits the output positions [m0, m0 + m) of one image row segment by row segment:
// f(j, oh, ow_begin, count) where j is the first position's index within the block.
template <typename F>
inline void for_each_row_segment(const Shape& s, int64_t m0, int64_t m, F f) {
  int64_t j = 0, oh = m0 / s.OW, ow = m0 % s.OW;
  while (j < m) {
    const int64_t count = std::min(s.OW - ow, m - j);
    f(j, oh, ow, count);
    j += count, ++oh, ow = 0;
  }
}

// The receptive fields of output positions [m0, m0 + m) of one image, one group, as GEMM
// operand tiles. NCHW: col (K x m), row (c, kh, kw), from the group's Cg planes xg. NHWC:
// col (m x K), column (kh, kw, c), from the image x_img (H x W x C). conv.cpp.
template <typename A>
void im2col_nchw(const Shape& s, const A* xg, int64_t m0, int64_t m, A* col);
template <typename A>
void im2col_nhwc(const Shape& s, const A* x_img, int64_t g, int64_t m0, int64_t m, A* col);

// Output positions per GEMM task: the col tile near 256 KB, and enough tasks for the team.
int64_t position_block(const Shape& s, int64_t elem_bytes);

// The convolution (no epilogue) of output positions [m0, m0 + m) of image n, group g, as one
// GEMM: NCHW acc (Og x m), NHWC acc (m x Og), fp32/fp64 (x: accumulation dtype, contiguous in
// s's layout; w: gemm_weight's layout). col: scratch of K * m (unused for pointwise()). The
// caller runs matmul_release() before its parallel task ends. conv.cpp.
template <typename A>
void conv_tile(const Shape& s, const A* x, const A* w, int64_t n, int64_t g, int64_t m0,
               int64_t m, A* col, A* acc);
// weight (O, Cg, KH, KW), accumulation dtype, contiguous, in the layout conv_tile reads: as is
// for NCHW; (groups, KH, KW, Cg, Og) for NHWC. conv.cpp.
at::Tensor gemm_weight(const Shape& s, const at::Tensor& wa);

// ----------------------------------------------------------------- depthwise staging (NCHW)

// The depthwise NCHW kernels (conv_depthwise*.cpp) work on one channel plane at a time through
// a thread-local copy of its rows, zero padding added and, for a stride s > 1, the columns
// split into s phases (column j goes to phase j % s at j / s): then every tap (kh, kw) of an
// output row is one contiguous run -- a vector load with no bounds checks or gathers.
// The staging buffer of one channel: padded input rows, each split into sw column phases of
// `phase_len` elements (with a vector of zero slack, so full-vector loads never leave it).
struct Staging {
  int64_t sw, phase_len, row_len;  // row_len = sw * phase_len

  explicit Staging(const Shape& s) : sw(s.sw) {
    const int64_t padded_w = s.W + s.pl + s.pr;
    phase_len = (padded_w + sw - 1) / sw + 16;  // 16 >= any Vectorized<float/double>::size()
    row_len = sw * phase_len;
  }
  int64_t first_row(const Shape& s, int64_t r0) const { return r0 * s.sh; }  // padded coords
  int64_t rows(const Shape& s, int64_t r0, int64_t r1) const {
    return (r1 - 1) * s.sh + (s.KH - 1) * s.dh + 1 - r0 * s.sh;
  }
  // Offset of tap (kh, kw) of output (oh, 0) within the buffer whose first padded row is prow0.
  int64_t tap(const Shape& s, int64_t prow0, int64_t oh, int64_t kh, int64_t kw) const {
    const int64_t off = kw * s.dw;
    return (oh * s.sh + kh * s.dh - prow0) * row_len + (off % sw) * phase_len + off / sw;
  }
};

// Copies padded rows [prow0, prow0 + nrows) of one channel plane (H x W, contiguous) into buf.
// The slack past each phase's data is never written, so it stays as zero-initialized.
template <typename A>
inline void stage_rows(const Shape& s, const Staging& st, const A* plane, int64_t prow0,
                       int64_t nrows, A* buf) {
  for (int64_t r = 0; r < nrows; ++r) {
    const int64_t ih = prow0 + r - s.pt;
    A* dst = buf + r * st.row_len;
    if (ih < 0 || ih >= s.H) {
      std::fill(dst, dst + st.row_len, A(0));
      continue;
    }
    const A* src = plane + ih * s.W;
    if (st.sw == 1) {
      std::fill(dst, dst + s.pl, A(0));
      std::copy(src, src + s.W, dst + s.pl);
      std::fill(dst + s.pl + s.W, dst + s.pl + s.W + s.pr, A(0));
    } else {
      const int64_t padded_w = s.W + s.pl + s.pr;
      for (int64_t j = 0; j < padded_w; ++j) {
        const int64_t col = j - s.pl;
        dst[(j % st.sw) * st.phase_len + j / st.sw] = (col >= 0 && col < s.W) ? src[col] : A(0);
      }
    }
  }
}

// ------------------------------------------------------------------ kernels across files

// The depthwise weights as the NHWC kernels read them, from (O, taps) in the accumulation type:
// `generic` (mult, taps, C) for dw_pixel_nhwc; `packed` (C / kV, taps, kV) -- the taps of one
// vector of channels side by side -- for dw_interior_nhwc (only for multiplier 1 and C a
// multiple of kV; undefined otherwise). Packed, one vector's 9 weights fill 5 cache lines; laid
// out (taps, C) with C = 256 they would sit 1 KB apart, in the same few L1 sets as the input
// pixels the kernel reads (also 1 KB apart), and evict them.
struct NhwcWeights {
  at::Tensor generic, packed;

  NhwcWeights(const Shape& s, const void* w, at::ScalarType type, int64_t kV) {
    const at::Tensor wt = at::from_blob(const_cast<void*>(w), {s.O, s.taps()},
                                        at::TensorOptions().dtype(type));
    generic = wt.reshape({s.C, s.O / s.C, s.taps()}).permute({1, 2, 0}).contiguous();
    if (s.O == s.C && s.C % kV == 0)
      packed = wt.reshape({s.C / kV, kV, s.taps()}).permute({0, 2, 1}).contiguous();
  }
  template <typename A>
  const A* generic_ptr() const { return generic.const_data_ptr<A>(); }
  template <typename A>
  const A* packed_ptr() const { return packed.defined() ? packed.const_data_ptr<A>() : nullptr; }
};

// The depthwise convolution (s.depthwise(); no bias or epilogue) of output rows [r0, r1) for
// callers that fuse their own epilogue (conv_pool.cpp). conv_depthwise.cpp.
// NCHW: one output channel from one channel's rows staged in buf (first padded row prow0; see
// Staging / stage_rows); w its taps (KH x KW); dst ((r1 - r0) x OW).
template <typename A>
void depthwise_rows_nchw(const Shape& s, const Staging& st, const A* buf, int64_t prow0,
                         int64_t r0, int64_t r1, const A* w, A* dst);
// NHWC: all O channels of image x_img (H x W x C) into dst ((r1 - r0) x OW x O). Scratch: xs and
// ws (taps pointers each), tmp (C values; may be null when O == C).
template <typename A>
void depthwise_rows_nhwc(const Shape& s, const A* x_img, const NhwcWeights& nw, int64_t r0,
                         int64_t r1, A* dst, const A** xs, const A** ws, A* tmp);


// The depthwise forward (s.depthwise()): out = act(conv + bias + res), z stored when defined.
// x: accumulation dtype, contiguous in s's layout; w: (O, 1, KH, KW) accumulation dtype,
// contiguous; bias: (O,) accumulation dtype or undefined; res, out, z: x's original dtype,
// contiguous in s's layout (res and z may be undefined). conv_depthwise.cpp.
void depthwise_fwd(const Shape& s, const at::Tensor& x, const at::Tensor& w,
                   const at::Tensor& bias, const at::Tensor& res, Act act, at::Tensor& out,
                   at::Tensor& z);

// The depthwise backward (s.depthwise()): dx (when defined; written whole) and dweight (when
// defined; (O, 1, KH, KW), written whole) from x, w and dz, all in the accumulation dtype, x,
// dz and dx contiguous in s's layout. conv_depthwise_bwd.cpp.
void depthwise_bwd(const Shape& s, const at::Tensor& x, const at::Tensor& w,
                   const at::Tensor& dz, at::Tensor dx, at::Tensor dweight);

}  // namespace conv
}  // namespace leedl_fast
