// CPU backward of conv2d_fwd (conv.cpp): given dout, and z or out for the activation,
//   dz        = dout * act'(z)              (relu: dout * (out > 0); none: dout)
//   dresidual = dz
//   dbias     = sum of dz over (N, OH, OW)
//   dx        = the transposed convolution of dz:  per group, col = W_g^T dz, then "col2im"
//               adds every col entry back onto the input pixel its receptive field read
//   dweight   = the correlation of x with dz:      per group, dW_g = dz col(x)^T
// with the same layouts and tiles as the forward (conv.cpp): NCHW multiplies (K x Og)(Og x M),
// NHWC (M x Og)(Og x K), both plain row-major products for blas.h's `matmul`.
//
// Races and determinism. dx: neighbouring blocks of output rows scatter into overlapping input
// rows (a k-row kernel reaches k - 1 rows past its block). Blocks are made at least
// (KH - 1) * dh / sh + 1 rows tall, so block b and block b + 2 never touch the same input row:
// the even blocks run in parallel, then the odd ones -- no atomics, no locks, same sums in the
// same order every run. dweight: the tasks are cut into one contiguous range per thread, each
// accumulating its own partial dW (Og x K per group) with GEMMs, then the partials are added in
// a fixed order.
//
// Depthwise convolutions take the direct kernels of conv_depthwise_bwd.cpp instead.
//
// Everything accumulates in fp32 (fp64 for fp64); dx is returned in x's dtype, dweight and
// dbias in weight's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "blas.h"
#include "conv.h"

#include <tuple>
#include <vector>

namespace leedl_fast {
namespace conv {
namespace {

// dz = dout * act'(z or out), all contiguous in one layout, over `numel` elements.
template <typename T>
void activation_backward(const T* dout, const T* saved, Act act, acc_t<T>* dz, int64_t numel) {
  using A = acc_t<T>;
  at::parallel_for(0, numel, 1 << 15, [&](int64_t begin, int64_t end) {
    with_act(act, [&](auto a) {
      constexpr Act kAct = decltype(a)::value;
      for_each_vec<A>(end - begin, [&](int64_t i0, auto c) {
        const int64_t i = begin + i0;
        Vec<A> d = load_as<A>(dout + i, c);
        if constexpr (kAct == Act::kRelu) {
          // out > 0 (out = relu(z) rounded to T): where it is not, the gradient is 0.
          const Vec<A> keep = load_as<A>(saved + i, c) > Vec<A>(A(0));
          d = d & keep;
        } else if constexpr (kAct != Act::kNone) {
          d = d * activate_grad<kAct>(load_as<A>(saved + i, c));
        }
        store_as(d, dz + i, c);
      });
    });
  });
}

template <typename A>
void col2im_nchw(const Shape& s, const A* col, int64_t m0, int64_t m, A* dxg) {
  for (int64_t c = 0; c < s.Cg(); ++c)
    for (int64_t kh = 0; kh < s.KH; ++kh)
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        const A* src = col + ((c * s.KH + kh) * s.KW + kw) * m;
        const auto [lo, hi] = valid_cols(s, kw);
        const int64_t col_off = kw * s.dw - s.pl;
        for_each_row_segment(s, m0, m, [&](int64_t j, int64_t oh, int64_t ow0, int64_t count) {
          const int64_t ih = oh * s.sh - s.pt + kh * s.dh;
          if (ih < 0 || ih >= s.H) return;
          const A* sp = src + j - ow0;
          A* d = dxg + c * s.HW() + ih * s.W + col_off;
          const int64_t a = std::clamp(lo, ow0, ow0 + count), e = std::clamp(hi, a, ow0 + count);
          if (s.sw == 1) {
            for (int64_t ow = a; ow < e; ++ow) d[ow] += sp[ow];
          } else {
            for (int64_t ow = a; ow < e; ++ow) d[ow * s.sw] += sp[ow];
          }
        });
      }
}

template <typename A>
void col2im_nhwc(const Shape& s, const A* col, int64_t g, int64_t m0, int64_t m, A* dx_img) {
  const int64_t Cg = s.Cg(), K = s.K();
  for (int64_t p = 0; p < m; ++p) {
    const int64_t oh = (m0 + p) / s.OW, ow = (m0 + p) % s.OW;
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const int64_t ih = oh * s.sh - s.pt + kh * s.dh;
      if (ih < 0 || ih >= s.H) continue;
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        const int64_t iw = ow * s.sw - s.pl + kw * s.dw;
        if (iw < 0 || iw >= s.W) continue;
        const A* src = col + p * K + (kh * s.KW + kw) * Cg;
        A* d = dx_img + (ih * s.W + iw) * s.C + g * Cg;
        for (int64_t c = 0; c < Cg; ++c) d[c] += src[c];
      }
    }
  }
}

// dx (accumulation type, s's layout). w_t: NCHW (groups, K, Og) = W_g^T; NHWC (groups, Og, K)
// with K ordered (kh, kw, c). dx must be zero unless the convolution is pointwise.
template <typename A>
void dx_kernel(const Shape& s, const A* dz, const A* w_t, A* dx) {
  const int64_t Og = s.Og(), Cg = s.Cg(), K = s.K(), OHW = s.OHW(), HW = s.HW();
  if (s.pointwise()) {  // dx = W^T dz position by position: a plain GEMM, disjoint outputs
    const int64_t block = position_block(s, sizeof(A)), blocks = (OHW + block - 1) / block;
    at::parallel_for(0, s.N * s.groups * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t blk = task % blocks, ng = task / blocks, g = ng % s.groups;
        const int64_t n = ng / s.groups, m0 = blk * block, m = std::min(block, OHW - m0);
        if (!s.channels_last)
          matmul(Cg, m, Og, w_t + g * K * Og, Og, dz + (n * s.O + g * Og) * OHW + m0, OHW,
                 dx + (n * s.C + g * Cg) * HW + m0, HW, /*accumulate=*/false);
        else
          matmul(m, Cg, Og, dz + (n * OHW + m0) * s.O + g * Og, s.O, w_t + g * Og * K, K,
                 dx + (n * HW + m0) * s.C + g * Cg, s.C, /*accumulate=*/false);
      }
      matmul_release();
    });
    return;
  }
  // Blocks of whole output rows, tall enough that block b and b + 2 write disjoint input rows.
  const int64_t min_rows = (s.KH - 1) * s.dh / s.sh + 1;
  const int64_t rows = std::clamp<int64_t>(position_block(s, sizeof(A)) / s.OW, min_rows,
                                           std::max(min_rows, s.OH));
  const int64_t blocks = (s.OH + rows - 1) / rows, per_parity = (blocks + 1) / 2;
  for (int64_t parity = 0; parity < 2; ++parity) {
    at::parallel_for(0, s.N * s.groups * per_parity, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> col(K * rows * s.OW);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t blk = 2 * (task % per_parity) + parity, ng = task / per_parity;
        if (blk >= blocks) continue;
        const int64_t g = ng % s.groups, n = ng / s.groups;
        const int64_t r0 = blk * rows, r1 = std::min(s.OH, r0 + rows);
        const int64_t m0 = r0 * s.OW, m = (r1 - r0) * s.OW;
        if (!s.channels_last) {
          matmul(K, m, Og, w_t + g * K * Og, Og, dz + (n * s.O + g * Og) * OHW + m0, OHW,
                 col.data(), m, /*accumulate=*/false);
          col2im_nchw(s, col.data(), m0, m, dx + (n * s.C + g * Cg) * HW);
        } else {
          matmul(m, K, Og, dz + (n * OHW + m0) * s.O + g * Og, s.O, w_t + g * Og * K, K,
                 col.data(), K, /*accumulate=*/false);
          col2im_nhwc(s, col.data(), g, m0, m, dx + n * HW * s.C);
        }
      }
      matmul_release();
    });
  }
}

// dW (O x K, K ordered as the layout's col: NCHW (c, kh, kw), NHWC (kh, kw, c)) = sum over
// images and positions of dz col^T. One partial per range of tasks, summed in order.
template <typename A>
at::Tensor dweight_kernel(const Shape& s, const A* x, const A* dz, const at::TensorOptions& opts) {
  const int64_t Og = s.Og(), Cg = s.Cg(), K = s.K(), OHW = s.OHW(), HW = s.HW();
  const bool pointwise = s.pointwise();
  const int64_t block = position_block(s, sizeof(A)), blocks = (OHW + block - 1) / block;
  const int64_t tasks = s.N * s.groups * blocks;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
  at::Tensor partial = at::zeros({parts, s.O, K}, opts);
  A* pw = partial.mutable_data_ptr<A>();
  at::parallel_for(0, parts, 1, [&](int64_t pbegin, int64_t pend) {
    std::vector<A> col(pointwise ? 0 : K * block);
    for (int64_t part = pbegin; part < pend; ++part) {
      A* dw = pw + part * s.O * K;
      for (int64_t task = tasks * part / parts; task < tasks * (part + 1) / parts; ++task) {
        const int64_t blk = task % blocks, ng = task / blocks, g = ng % s.groups;
        const int64_t n = ng / s.groups, m0 = blk * block, m = std::min(block, OHW - m0);
        if (!s.channels_last) {
          const A* xg = x + (n * s.C + g * Cg) * HW;
          const A* rhs = xg + m0;
          int64_t ld = HW;
          if (!pointwise) {
            im2col_nchw(s, xg, m0, m, col.data());
            rhs = col.data(), ld = m;
          }
          // dW_g (Og x K) += dz_g (Og x m) rhs^T (m x K)
          gemm<A>(false, true, Og, K, m, A(1), dz + (n * s.O + g * Og) * OHW + m0, OHW, rhs, ld,
                  A(1), dw + g * Og * K, K);
        } else {
          const A* lhs = x + (n * HW + m0) * s.C + g * Cg;
          int64_t ld = s.C;
          if (!pointwise) {
            im2col_nhwc(s, x + n * HW * s.C, g, m0, m, col.data());
            lhs = col.data(), ld = K;
          }
          // dW_g (Og x K) += dz_g^T (Og x m) col (m x K)
          gemm<A>(true, false, Og, K, m, A(1), dz + (n * OHW + m0) * s.O + g * Og, s.O, lhs, ld,
                  A(1), dw + g * Og * K, K);
        }
      }
    }
  });
  at::Tensor dw = parts == 1 ? partial[0] : partial.sum(0);
  if (s.channels_last)  // (groups, Og, KH, KW, Cg) -> (O, Cg, KH, KW)
    dw = dw.view({s.O, s.KH, s.KW, Cg}).permute({0, 3, 1, 2});
  return dw.reshape({s.O, Cg, s.KH, s.KW});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv2d_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& out,
    const at::Tensor& z, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 4> output_mask) {
  constexpr const char* op = "conv2d_bwd";
  const Shape s = check_shape(op, x, weight, stride, padding, dilation, groups);
  const Act act = parse_activation(op, activation);
  const std::vector<int64_t> out_shape{s.N, s.O, s.OH, s.OW};
  const auto T = x.scalar_type();
  TORCH_CHECK(dout.device().is_cpu() && dout.scalar_type() == T &&
                  dout.sizes() == at::IntArrayRef(out_shape),
              op, ": dout must be a CPU tensor of x's dtype with the output's shape ",
              at::IntArrayRef(out_shape), ", got ", dout.scalar_type(), " ", dout.sizes());
  // The activation's saved tensor: out for relu, z for gelu/silu.
  const at::Tensor& saved = act == Act::kRelu ? out : z;
  if (act != Act::kNone)
    TORCH_CHECK(saved.device().is_cpu() && saved.scalar_type() == T &&
                    saved.sizes() == at::IntArrayRef(out_shape),
                op, ": activation \"", std::string(activation), "\" needs ",
                act == Act::kRelu ? "out" : "z", " with the output's shape ",
                at::IntArrayRef(out_shape), " and x's dtype, got ", saved.scalar_type(), " ",
                saved.sizes());
  const auto fmt = layout_of(x);
  const auto acc = acc_dtype(T);
  const auto opts = x.options().dtype(acc);
  // dz in the accumulation type and x's layout (dout itself for "none" when already so).
  at::Tensor dz;
  if (act == Act::kNone) {
    dz = formatted(dout, acc, fmt);
  } else {
    dz = empty_image(out_shape, opts, fmt);
    const at::Tensor d = dout.contiguous(fmt), a = saved.contiguous(fmt);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, T, op, [&] {
      activation_backward<scalar_t>(d.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
                                    act, dz.mutable_data_ptr<acc_t<scalar_t>>(), dz.numel());
    });
  }
  const auto empty = [&](const at::Tensor& like) { return at::empty({0}, like.options()); };
  at::Tensor dres = empty(dout), dbias = empty(weight), dx = empty(x), dweight = empty(weight);
  if (output_mask[3]) {  // a fresh tensor: dz may be dout itself
    dres = at::empty(out_shape, dout.options().memory_format(layout_of(dout)));
    dres.copy_(dz);
  }
  if (output_mask[2]) dbias = dz.sum({0, 2, 3}).to(weight.scalar_type());
  if (!output_mask[0] && !output_mask[1]) return {dx, dweight, dbias, dres};
  const at::Tensor xa = formatted(x, acc, fmt), wa = weight.to(acc).contiguous();
  if (s.depthwise()) {  // direct kernels, conv_depthwise_bwd.cpp
    at::Tensor dxa = output_mask[0] ? empty_image(x.sizes(), opts, fmt) : at::Tensor();
    at::Tensor dwa = output_mask[1] ? at::empty(weight.sizes(), opts) : at::Tensor();
    depthwise_bwd(s, xa, wa, dz, dxa, dwa);
    if (output_mask[0]) dx = dxa.to(T);
    if (output_mask[1]) dweight = dwa.to(weight.scalar_type());
    return {dx, dweight, dbias, dres};
  }
  AT_DISPATCH_FLOATING_TYPES(acc, op, [&] {
    using A = scalar_t;
    if (output_mask[0]) {
      const at::Tensor w_t =
          s.channels_last
              ? wa.view({s.groups, s.Og(), s.Cg(), s.KH, s.KW}).permute({0, 1, 3, 4, 2})
                    .contiguous()                                   // (groups, Og, K)
              : wa.view({s.groups, s.Og(), s.K()}).transpose(1, 2).contiguous();  // (g, K, Og)
      at::Tensor dxa = empty_image(x.sizes(), opts, fmt);  // (at::zeros drops the format)
      if (!s.pointwise()) dxa.zero_();
      if (dxa.numel() > 0)
        dx_kernel<A>(s, dz.const_data_ptr<A>(), w_t.const_data_ptr<A>(), dxa.mutable_data_ptr<A>());
      dx = dxa.to(T);
    }
    if (output_mask[1]) {
      dweight = s.N == 0 ? at::zeros(weight.sizes(), opts)
                         : dweight_kernel<A>(s, xa.const_data_ptr<A>(),
                                             dz.const_data_ptr<A>(), opts);
      dweight = dweight.to(weight.scalar_type()).contiguous();
    }
  });
  return {dx, dweight, dbias, dres};
}

}  // namespace
}  // namespace conv

TORCH_LIBRARY_IMPL(leedl_fast, CPU, m) {
  m.impl("conv2d_bwd", &conv::conv2d_bwd_cpu);
}

}  // namespace leedl_fast
