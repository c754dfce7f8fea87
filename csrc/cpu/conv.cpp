// CPU kernels for the convolution family: conv2d forward with the fused epilogue
//   z = conv(x, weight) + bias + residual;  out = activation(z)
// (conv2d_fwd; the backward is conv_bwd.cpp, the depthwise and separable kernels
// conv_depthwise.cpp). The math and the measurements are in docs/conv.md.
//
// A convolution is a matrix product once the receptive fields are laid out as rows ("im2col"):
// per group g, with K = C/groups * KH * KW,
//   NCHW:  out_g (Og x M) = W_g (Og x K) . col (K x M),    col[(c, kh, kw), m] = x_pad[c, ...]
//   NHWC:  out_g (M x Og) = col (M x K) . W_g^T (K x Og),   col[m, (kh, kw, c)] = x_pad[..., c]
// over the M = OH * OW output positions of an image. Neither layout needs a transposed operand,
// so the product is blas.h's `matmul` (oneDNN's brgemm micro-kernels for fp32). The whole col
// matrix is never built: a task takes a block of output positions of one image and one group,
// fills its col tile (~512 KB, in L2) in a thread-local buffer, multiplies, and runs the
// epilogue over the fp32 result tile on its way to `out` -- bias, residual and activation cost
// no extra pass over memory (streaming stores when the output is larger than the last-level
// cache). A 1x1 stride-1 unpadded convolution is a plain GEMM on x itself
// (NCHW: x_n is (C x HW); NHWC: x is (N*HW x C)), with no im2col.
//
// Tasks are (image, group, block of positions), spread with at::parallel_for, so a batch of 1
// still uses every thread. Depthwise convolutions (groups = C) take the direct kernels of
// conv_depthwise.cpp instead: an im2col tile with one channel per group has no reuse to offer. fp16/bf16 are widened to fp32 up front (the GEMM needs a BLAS type)
// and narrowed in the epilogue; fp64 runs in fp64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "blas.h"
#include "conv.h"
#include "memory.h"

#include <tuple>
#include <vector>

namespace leedl_fast {
namespace conv {

// ------------------------------------------------------------------------- shared helpers

Shape check_shape(const char* op, const at::Tensor& x, const at::Tensor& weight,
                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                  int64_t groups) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), op,
              ": x and weight must be CPU tensors, got ", x.device(), " and ", weight.device());
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op,
              ": x must be float32, float64, float16 or bfloat16, got ", t);
  TORCH_CHECK(weight.scalar_type() == t, op, ": weight has dtype ", weight.scalar_type(),
              " but x has ", t);
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D (O, C / groups, KH, KW), got shape ",
              weight.sizes());
  TORCH_CHECK(stride.size() == 2 && dilation.size() == 2 && padding.size() == 4, op,
              ": stride and dilation must have 2 entries and padding 4 (top, bottom, left, "
              "right), got ", stride.size(), ", ", dilation.size(), " and ", padding.size());
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1, op,
              ": stride and dilation must be >= 1, got stride ", stride, ", dilation ", dilation);
  for (int64_t p : padding) TORCH_CHECK(p >= 0, op, ": padding must be >= 0, got ", padding);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK(weight.size(0) > 0 && weight.size(1) > 0 && weight.size(2) > 0 &&
                  weight.size(3) > 0,
              op, ": weight ", weight.sizes(), " has a zero-size dim");
  Shape s{};
  s.N = x.size(0), s.C = x.size(1), s.H = x.size(2), s.W = x.size(3);
  s.O = weight.size(0), s.KH = weight.size(2), s.KW = weight.size(3);
  s.groups = groups;
  s.sh = stride[0], s.sw = stride[1], s.dh = dilation[0], s.dw = dilation[1];
  s.pt = padding[0], s.pb = padding[1], s.pl = padding[2], s.pr = padding[3];
  TORCH_CHECK(s.C % groups == 0 && s.O % groups == 0, op, ": groups = ", groups,
              " must divide both x's channels (", s.C, ") and weight's out channels (", s.O, ")");
  TORCH_CHECK(weight.size(1) * groups == s.C, op, ": x has ", s.C, " channels, but weight ",
              weight.sizes(), " with groups = ", groups, " expects ", weight.size(1) * groups);
  const int64_t span_h = s.dh * (s.KH - 1) + 1, span_w = s.dw * (s.KW - 1) + 1;
  TORCH_CHECK(s.H + s.pt + s.pb >= span_h && s.W + s.pl + s.pr >= span_w, op,
              ": the (dilated) kernel ", span_h, " x ", span_w, " is bigger than the padded input ",
              s.H + s.pt + s.pb, " x ", s.W + s.pl + s.pr);
  s.OH = (s.H + s.pt + s.pb - span_h) / s.sh + 1;
  s.OW = (s.W + s.pl + s.pr - span_w) / s.sw + 1;
  s.channels_last = layout_of(x) == at::MemoryFormat::ChannelsLast;
  return s;
}

at::Tensor check_vector(const char* op, const char* name, const std::optional<at::Tensor>& t,
                        int64_t size, const at::Tensor& x) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK(t->device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t->device());
  TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ",
              t->scalar_type(), " but x has ", x.scalar_type());
  TORCH_CHECK(t->dim() == 1 && t->size(0) == size, op, ": ", name, " must have shape (", size,
              "), got ", t->sizes());
  return t->to(acc_dtype(x.scalar_type())).contiguous();
}

at::Tensor empty_image(at::IntArrayRef shape, const at::TensorOptions& opts,
                       at::MemoryFormat fmt) {
  at::Tensor t = at::empty(shape, opts.memory_format(fmt));
  advise_huge_pages(t);
  return t;
}

Act parse_activation(const char* op, std::string_view name) {
  if (name == "none") return Act::kNone;
  if (name == "relu") return Act::kRelu;
  if (name == "gelu") return Act::kGelu;
  if (name == "silu") return Act::kSilu;
  TORCH_CHECK(false, op, ": activation must be \"none\", \"relu\", \"gelu\" or \"silu\", got \"",
              std::string(name), "\"");
}

// ---------------------------------------------------------------------------------- im2col

template <typename A>
void im2col_nchw(const Shape& s, const A* xg, int64_t m0, int64_t m, A* col) {
  for (int64_t c = 0; c < s.Cg(); ++c)
    for (int64_t kh = 0; kh < s.KH; ++kh)
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        A* dst = col + ((c * s.KH + kh) * s.KW + kw) * m;
        const auto [lo, hi] = valid_cols(s, kw);
        const int64_t col_off = kw * s.dw - s.pl;
        for_each_row_segment(s, m0, m, [&](int64_t j, int64_t oh, int64_t ow0, int64_t count) {
          A* d = dst + j - ow0;  // d[ow] is position (oh, ow)
          const int64_t ih = oh * s.sh - s.pt + kh * s.dh;
          const int64_t a = std::clamp(lo, ow0, ow0 + count), e = std::clamp(hi, a, ow0 + count);
          if (ih < 0 || ih >= s.H) {
            std::fill(d + ow0, d + ow0 + count, A(0));
            return;
          }
          const A* src = xg + c * s.HW() + ih * s.W + col_off;  // src[ow * sw] is (ih, iw)
          std::fill(d + ow0, d + a, A(0));
          if (s.sw == 1) {
            copy_vec(src + a, e - a, d + a);
          } else {
            for (int64_t ow = a; ow < e; ++ow) d[ow] = src[ow * s.sw];
          }
          std::fill(d + e, d + ow0 + count, A(0));
        });
      }
}

template <typename A>
void im2col_nhwc(const Shape& s, const A* x_img, int64_t g, int64_t m0, int64_t m, A* col) {
  const int64_t Cg = s.Cg(), K = s.K();
  for (int64_t p = 0; p < m; ++p) {
    const int64_t oh = (m0 + p) / s.OW, ow = (m0 + p) % s.OW;
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const int64_t ih = oh * s.sh - s.pt + kh * s.dh;
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        const int64_t iw = ow * s.sw - s.pl + kw * s.dw;
        A* dst = col + p * K + (kh * s.KW + kw) * Cg;
        if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) {
          std::fill(dst, dst + Cg, A(0));
        } else {
          copy_vec(x_img + (ih * s.W + iw) * s.C + g * Cg, Cg, dst);
        }
      }
    }
  }
}

template void im2col_nchw<float>(const Shape&, const float*, int64_t, int64_t, float*);
template void im2col_nchw<double>(const Shape&, const double*, int64_t, int64_t, double*);
template void im2col_nhwc<float>(const Shape&, const float*, int64_t, int64_t, int64_t, float*);
template void im2col_nhwc<double>(const Shape&, const double*, int64_t, int64_t, int64_t,
                                  double*);

int64_t position_block(const Shape& s, int64_t elem_bytes) {
  // The col tile (K x block) at ~512 KB (in L2 with the weights); a pointwise conv has none
  // (the output tile decides).
  const int64_t per = s.pointwise() ? s.Og() : s.K();
  // A multiple of 16 positions: in NCHW the block is the GEMM's N, and brgemm's vector tiles
  // run 16 wide (measured at 3x3, 64 -> 64: a block of 113 was 15% slower than 112).
  int64_t block = std::clamp<int64_t>((512 << 10) / (std::max<int64_t>(per, 1) * elem_bytes), 16,
                                      512);
  block = block / 16 * 16;
  block = std::min(block, s.OHW());
  const int64_t want = 4 * at::get_num_threads();
  while (block > 16 && s.N * s.groups * ((s.OHW() + block - 1) / block) < want) block /= 2;
  return std::max<int64_t>(block, 1);
}

// ------------------------------------------------------------------------ one GEMM tile

template <typename A>
void conv_tile(const Shape& s, const A* x, const A* w, int64_t n, int64_t g, int64_t m0,
               int64_t m, A* col, A* acc) {
  const int64_t Og = s.Og(), Cg = s.Cg(), K = s.K(), HW = s.HW();
  const bool pointwise = s.pointwise();
  if (!s.channels_last) {
    const A* xg = x + (n * s.C + g * Cg) * HW;
    const A* rhs = xg + m0;
    int64_t ld = HW;
    if (!pointwise) {
      im2col_nchw(s, xg, m0, m, col);
      rhs = col, ld = m;
    }
    matmul(Og, m, K, w + g * Og * K, K, rhs, ld, acc, m, /*accumulate=*/false);
  } else {
    const A* lhs = x + (n * HW + m0) * s.C + g * Cg;
    int64_t ld = s.C;
    if (!pointwise) {
      im2col_nhwc(s, x + n * HW * s.C, g, m0, m, col);
      lhs = col, ld = K;
    }
    matmul(m, Og, K, lhs, ld, w + g * K * Og, Og, acc, Og, /*accumulate=*/false);
  }
}

template void conv_tile<float>(const Shape&, const float*, const float*, int64_t, int64_t,
                               int64_t, int64_t, float*, float*);
template void conv_tile<double>(const Shape&, const double*, const double*, int64_t, int64_t,
                                int64_t, int64_t, double*, double*);

at::Tensor gemm_weight(const Shape& s, const at::Tensor& wa) {
  // NHWC multiplies by W_g^T with K ordered (kh, kw, c): (groups, KH, KW, Cg, Og).
  return s.channels_last ? wa.view({s.groups, s.Og(), s.Cg(), s.KH, s.KW})
                               .permute({0, 3, 4, 2, 1})
                               .contiguous()
                         : wa;
}

namespace {

// -------------------------------------------------------------------------- GEMM forward

// w: gemm_weight's layout.
template <typename T>
void gemm_fwd(const Shape& s, const acc_t<T>* x, const acc_t<T>* w, const acc_t<T>* b,
              const T* res, Act act, T* out, T* z) {
  using A = acc_t<T>;
  const int64_t Og = s.Og(), K = s.K(), OHW = s.OHW(), HW = s.HW();
  const int64_t block = position_block(s, sizeof(A));
  const int64_t blocks = (OHW + block - 1) / block;
  // Outputs past the last-level cache go straight to memory (memory.h).
  const int64_t out_bytes = s.N * s.O * OHW * int64_t(sizeof(T));
  const bool stream = use_streaming_stores(s.N * s.C * HW * int64_t(sizeof(A)) +
                                           out_bytes * (1 + (z != nullptr) + (res != nullptr)));
  at::parallel_for(0, s.N * s.groups * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> col(s.pointwise() ? 0 : K * block), acc(Og * block);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task % blocks, ng = task / blocks, g = ng % s.groups, n = ng / s.groups;
      const int64_t m0 = blk * block, m = std::min(block, OHW - m0);
      conv_tile(s, x, w, n, g, m0, m, col.data(), acc.data());
      with_act(act, [&](auto a) {
        constexpr Act kAct = decltype(a)::value;
        if (!s.channels_last) {
          for (int64_t o = 0; o < Og; ++o) {
            const int64_t oc = g * Og + o, off = (n * s.O + oc) * OHW + m0;
            epilogue<kAct>(acc.data() + o * m, m, b ? b[oc] : A(0), (const A*)nullptr,
                           res ? res + off : nullptr, out + off, z ? z + off : nullptr, stream);
          }
        } else {
          for (int64_t p = 0; p < m; ++p) {
            const int64_t off = (n * OHW + m0 + p) * s.O + g * Og;
            epilogue<kAct>(acc.data() + p * Og, Og, A(0), b ? b + g * Og : nullptr,
                           res ? res + off : nullptr, out + off, z ? z + off : nullptr, stream);
          }
        }
      });
    }
    if (stream) stream_fence();
    matmul_release();
  });
}

std::tuple<at::Tensor, at::Tensor> conv2d_fwd_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                  const std::optional<at::Tensor>& bias,
                                                  const std::optional<at::Tensor>& residual,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, int64_t groups,
                                                  c10::string_view activation) {
  constexpr const char* op = "conv2d_fwd";
  const Shape s = check_shape(op, x, weight, stride, padding, dilation, groups);
  const Act act = parse_activation(op, activation);
  const at::Tensor b = check_vector(op, "bias", bias, s.O, x);
  const auto fmt = layout_of(x);
  const std::vector<int64_t> out_shape{s.N, s.O, s.OH, s.OW};
  at::Tensor res;
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->device().is_cpu() && residual->scalar_type() == x.scalar_type(), op,
                ": residual must be a CPU tensor of x's dtype (", x.scalar_type(), "), got ",
                residual->scalar_type(), " on ", residual->device());
    TORCH_CHECK(residual->sizes() == at::IntArrayRef(out_shape), op,
                ": residual must have the output's shape ", at::IntArrayRef(out_shape), ", got ",
                residual->sizes());
    res = residual->contiguous(fmt);
  }
  at::Tensor out = empty_image(out_shape, x.options(), fmt);
  at::Tensor z = saves_z(act) ? empty_image(out_shape, x.options(), fmt)
                              : at::empty({0}, x.options());
  if (out.numel() == 0) return {out, z};
  const auto acc = acc_dtype(x.scalar_type());
  const at::Tensor xa = formatted(x, acc, fmt);
  const at::Tensor wa = weight.to(acc).contiguous();
  if (s.depthwise()) {
    depthwise_fwd(s, xa, wa, b, res, act, out, z);
    return {out, z};
  }
  const at::Tensor w = gemm_weight(s, wa);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    using A = acc_t<scalar_t>;
    gemm_fwd<scalar_t>(s, xa.const_data_ptr<A>(), w.const_data_ptr<A>(),
                       b.defined() ? b.const_data_ptr<A>() : nullptr,
                       res.defined() ? res.const_data_ptr<scalar_t>() : nullptr, act,
                       out.mutable_data_ptr<scalar_t>(),
                       z.defined() && z.numel() ? z.mutable_data_ptr<scalar_t>() : nullptr);
  });
  return {out, z};
}

}  // namespace
}  // namespace conv

TORCH_LIBRARY_IMPL(leedl_fast, CPU, m) {
  m.impl("conv2d_fwd", &conv::conv2d_fwd_cpu);
}

}  // namespace leedl_fast
