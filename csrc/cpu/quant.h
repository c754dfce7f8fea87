// Shared input checks of the quantized matmul family (quant.cpp: weight-only int8/int4/codebook;
// quant_dynamic.cpp: int8 dynamic). The formats are documented with the schemas in csrc/ops.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace leedl_fast {
namespace quant {

// x: the (M, K) activations, CPU, contiguous, float32/float16/bfloat16.
inline void check_x(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op,
              ": x must be float32, float16 or bfloat16, got ", t);
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D (M, K), got shape ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous");
}

// A stored tensor of the format: CPU, the given dtype and exactly the given shape.
inline void check_param(const char* op, const char* name, const at::Tensor& t,
                        at::ScalarType dtype, std::vector<int64_t> shape) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), op, ": ", name, " must have shape ",
              at::IntArrayRef(shape), ", got ", t.sizes());
}

// The optional bias (N,) in x's dtype, returned as a contiguous tensor of `acc` (undefined when
// absent).
inline at::Tensor bias_as(const char* op, const std::optional<at::Tensor>& bias,
                          const at::Tensor& x, int64_t n, at::ScalarType acc) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  check_param(op, "bias", *bias, x.scalar_type(), {n});
  return bias->to(acc).contiguous();
}

}  // namespace quant
}  // namespace leedl_fast
