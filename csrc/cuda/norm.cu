// Torch binding of the CUDA C++ normalization forwards (device code: norm.cuh), part of the
// extension leedl_fast._C_cuda (module.cu), which setup.py builds only where torch has CUDA.
// It is reached from Python through leedl_fast/_ops/norm_cuda.py, which plugs these functions
// into the "cuda" kernels of the torch.library ops, so the four functions below take and
// return exactly what the schemas in csrc/ops.cpp say (and what the CPU kernels in
// csrc/cpu/norm.cpp return):
//   layer_norm_fwd(x, weight?, bias?, eps)               -> (out, mean, rstd)
//   rms_norm_fwd(x, weight?, eps)                        -> (out, rstd)
//   add_layer_norm_fwd(x, residual, weight?, bias?, eps) -> (out, residual_out, mean, rstd)
//   add_rms_norm_fwd(x, residual, weight?, eps)          -> (out, residual_out, rstd)
// mean and rstd are float32 of shape (M,).
//
// Forward only: the backward ops (layer_norm_bwd, rms_norm_bwd) run the Triton kernels for CUDA
// tensors whichever forward ran -- they need only x (or residual_out), mean and rstd, which
// these kernels save in the same layout and dtype as the Triton forward.
//
// float64 is not supported here (the kernels accumulate in fp32); it raises, naming the op.
//
// The stream comes from c10/cuda/CUDAStream.h (c10::cuda::getCurrentCUDAStream, which
// at::cuda::getCurrentCUDAStream forwards to) rather than ATen/cuda/CUDAContext.h: the latter
// also pulls in the cuBLAS/cuSPARSE headers, which a toolkit without those libraries lacks.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <climits>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "norm.cuh"

namespace leedl_fast {
namespace {

bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

void check_x(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got device ", x.device());
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D (rows, width), got ", x.dim(), "-D");
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous");
  const auto t = x.scalar_type();
  TORCH_CHECK(t != at::kDouble, op, ": the CUDA kernels do not support float64 (they accumulate "
              "in float32); use the Triton backend (leedl_fast.backend(\"triton\")) or float32");
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op,
              ": x must be float16, bfloat16 or float32, got ", t);
  // Rows index a 1-D grid (one block per row for wide rows); columns are int in the kernels.
  TORCH_CHECK(x.size(0) <= INT_MAX && x.size(1) <= INT_MAX, op, ": x of shape ", x.sizes(),
              " is too large (rows and width must each be < 2**31)");
}

// A tensor that must sit on x's device with x's dtype, contiguous, of the given shape.
void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x,
                at::IntArrayRef shape) {
  TORCH_CHECK(t.is_cuda() && t.device() == x.device(), op, ": ", name, " must be on ",
              x.device(), ", got ", t.device());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " dtype must match x (",
              x.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

template <typename T>
const T* ptr_or_null(const std::optional<at::Tensor>& t) {
  return present(t) ? static_cast<const T*>(t->const_data_ptr()) : nullptr;
}

// Returns {out, [residual_out,] [mean,] rstd} -- the same order as the CPU kernels.
std::vector<at::Tensor> norm_fwd(const char* op, bool is_rms, const at::Tensor& x,
                                 const std::optional<at::Tensor>& residual,
                                 const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& bias, double eps) {
  check_x(op, x);
  const bool has_res = present(residual);
  if (has_res) check_like(op, "residual", *residual, x, x.sizes());
  if (present(weight)) check_like(op, "weight", *weight, x, {x.size(1)});
  if (present(bias)) check_like(op, "bias", *bias, x, {x.size(1)});

  const c10::cuda::CUDAGuard guard(x.device());  // allocate and launch on x's device
  const int64_t M = x.size(0), N = x.size(1);
  const auto stats_opts = x.options().dtype(at::kFloat);
  auto out = at::empty_like(x);
  auto residual_out = has_res ? at::empty_like(x) : at::Tensor();
  auto mean = is_rms ? at::Tensor() : at::empty({M}, stats_opts);
  auto rstd = at::empty({M}, stats_opts);

  if (M > 0 && N == 0) {  // zero-width rows: variance 0, as the CPU kernel
    rstd.fill_(1.0 / std::sqrt(eps));
    if (!is_rms) mean.zero_();
  } else if (M > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    auto launch = [&](auto type_tag) {
      using T = decltype(type_tag);
      cuda_norm::NormFwdArgs<T> a;
      a.x = static_cast<const T*>(x.const_data_ptr());
      a.residual = has_res ? static_cast<const T*>(residual->const_data_ptr()) : nullptr;
      a.weight = ptr_or_null<T>(weight);
      a.bias = ptr_or_null<T>(bias);
      a.out = static_cast<T*>(out.mutable_data_ptr());
      a.residual_out = has_res ? static_cast<T*>(residual_out.mutable_data_ptr()) : nullptr;
      a.mean = is_rms ? nullptr : mean.mutable_data_ptr<float>();
      a.rstd = rstd.mutable_data_ptr<float>();
      a.M = M;
      a.N = static_cast<int>(N);
      a.eps = static_cast<float>(eps);
      cuda_norm::launch_norm_fwd<T>(a, is_rms, stream);
    };
    switch (x.scalar_type()) {  // at::Half / at::BFloat16 share the CUDA types' bit layout
      case at::kFloat: launch(float{}); break;
      case at::kHalf: launch(__half{}); break;
      case at::kBFloat16: launch(__nv_bfloat16{}); break;
      default: TORCH_CHECK(false, op, ": unsupported dtype ", x.scalar_type());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  std::vector<at::Tensor> result{out};
  if (has_res) result.push_back(residual_out);
  if (!is_rms) result.push_back(mean);
  result.push_back(rstd);
  return result;
}

// --- entry points: the signatures of the schemas in csrc/ops.cpp ---

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps) {
  auto r = norm_fwd("layer_norm_fwd", false, x, std::nullopt, weight, bias, eps);
  return {r[0], r[1], r[2]};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd(const at::Tensor& x,
                                                const std::optional<at::Tensor>& weight,
                                                double eps) {
  auto r = norm_fwd("rms_norm_fwd", true, x, std::nullopt, weight, std::nullopt, eps);
  return {r[0], r[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_fwd(
    const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps) {
  auto r = norm_fwd("add_layer_norm_fwd", false, x, residual, weight, bias, eps);
  return {r[0], r[1], r[2], r[3]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_fwd(
    const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& weight,
    double eps) {
  auto r = norm_fwd("add_rms_norm_fwd", true, x, residual, weight, std::nullopt, eps);
  return {r[0], r[1], r[2]};
}

}  // namespace

// Called by module.cu's PYBIND11_MODULE.
void bind_norm(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("layer_norm_fwd", &layer_norm_fwd, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("eps"));
  m.def("rms_norm_fwd", &rms_norm_fwd, py::arg("x"), py::arg("weight"), py::arg("eps"));
  m.def("add_layer_norm_fwd", &add_layer_norm_fwd, py::arg("x"), py::arg("residual"),
        py::arg("weight"), py::arg("bias"), py::arg("eps"));
  m.def("add_rms_norm_fwd", &add_rms_norm_fwd, py::arg("x"), py::arg("residual"),
        py::arg("weight"), py::arg("eps"));
}

}  // namespace leedl_fast
