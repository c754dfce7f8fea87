// Torch binding of the persistent whole-sequence LSTM/GRU kernels (device code: rnn.cuh), part
// of leedl_fast._C_cuda (module.cu holds the PYBIND11_MODULE). Reached from Python through
// leedl_fast/_ops/rnn_cuda.py. Each function takes exactly the arguments of its schema in
// csrc/ops.cpp and returns what the CPU kernel (csrc/cpu/rnn.cpp) returns, as a list:
//   lstm_sequence_fwd(gates_x, w_hh, h0, c0)  -> [y, h_n, c_n, cells (fp32), gates (fp32)]
//   lstm_sequence_bwd(dy, dh_n, dc_n, gates, cells, y, h0, c0, w_hh)
//                                             -> [dgates_x, dw_hh, dh0, dc0]
//   gru_sequence_fwd(gates_x, w_hh, b_hh?, h0) -> [y, h_n, saved (fp32)]
//   gru_sequence_bwd(dy, dh_n, saved, y, h0, w_hh, has_bias)
//                                             -> [dgates_x, dw_hh, db_hh ((3H,) or (0,)), dh0]
// or an EMPTY list when the layer's weights do not fit on chip (rnn.cuh: kDoesNotFit): the
// caller then runs the per-step path. Nothing is allocated before that check.
//
// float16, bfloat16 and float32 (float64 raises: the caller sends it to the per-step path).
// The recurrence state, saved activations and the gradients the host GEMMs read are fp32, as
// on the CPU: dW_hh = sum_t dG_t^T h_{t-1} is one at::mm over all steps in fp32, then rounded.
// fp16/bf16 run the per-step product on tensor cores (sm_80+; h or dG rounded to the dtype as
// its operand, like torch's GEMMs in that dtype) unless rnn_set_tensor_cores(False).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <atomic>
#include <climits>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "rnn.cuh"

namespace leedl_fast {
namespace {

namespace rnn = cuda_rnn;
using TensorList = std::vector<at::Tensor>;
using Named = std::pair<const char*, const at::Tensor*>;

void check_dtype(const char* op, at::ScalarType t) {
  TORCH_CHECK(t != at::kDouble, op, ": the CUDA kernels do not support float64 (they accumulate "
              "in float32); use the Triton backend (leedl_fast.backend(\"triton\")) or float32");
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op,
              ": expected float16, bfloat16 or float32 tensors, got ", t);
}

// `t` on `device`, of `shape`, with dtype `dtype` (nullopt: any).
void check_tensor(const char* op, const char* name, const at::Tensor& t, const at::Device& device,
                  at::IntArrayRef shape, std::optional<at::ScalarType> dtype) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cuda() && t.device() == device, op, ": ", name, " must be on ", device,
              ", got ", t.device());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ",
              t.sizes());
  if (dtype.has_value())
    TORCH_CHECK(t.scalar_type() == *dtype, op, ": ", name, " must be ", *dtype, ", got ",
                t.scalar_type());
}

void check_sizes(const char* op, int64_t steps, int64_t batch, int64_t hidden) {
  TORCH_CHECK(hidden > 0, op, ": hidden size must be positive, got ", hidden);
  TORCH_CHECK(steps <= INT_MAX && batch <= INT_MAX && 4 * hidden <= INT_MAX, op,
              ": sizes too large (steps ", steps, ", batch ", batch, ", hidden ", hidden, ")");
}

// Raises on a CUDA error; true when the kernel ran, false when it did not fit.
bool launched(const char* op, cudaError_t err) {
  if (err == rnn::kDoesNotFit) return false;
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA error: ", cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

// Runs `body` with the CUDA element type of `dtype` (at::Half / at::BFloat16 share the bit
// layout of __half / __nv_bfloat16).
template <typename Body>
auto dispatch(at::ScalarType dtype, Body&& body) {
  switch (dtype) {
    case at::kHalf: return body(__half{});
    case at::kBFloat16: return body(__nv_bfloat16{});
    default: return body(float{});
  }
}

// Tensor cores for fp16/bf16 (sm_80+) where they fit: on by default; tests and benchmarks turn
// them off to run the CUDA-core product (set_tensor_cores).
std::atomic<bool> g_tensor_cores{true};

rnn::RnnOptions launch_options() { return rnn::RnnOptions{g_tensor_cores.load(), false}; }

template <typename T>
bool fits(rnn::RnnKernel kind, int64_t hidden, int64_t batch) {
  const cudaError_t err = rnn::rnn_fits<T>(kind, static_cast<int>(hidden),
                                           static_cast<int>(batch), g_tensor_cores.load());
  if (err == rnn::kDoesNotFit) return false;
  TORCH_CHECK(err == cudaSuccess, "leedl_fast rnn: CUDA error: ", cudaGetErrorString(err));
  return true;
}

bool fits_on_chip(rnn::RnnKernel kind, at::ScalarType dtype, int64_t hidden, int64_t batch) {
  return dispatch(dtype, [&](auto tag) { return fits<decltype(tag)>(kind, hidden, batch); });
}

template <typename T> const T* cptr(const at::Tensor& t) {
  return static_cast<const T*>(t.const_data_ptr());
}
template <typename T> T* mptr(at::Tensor& t) { return static_cast<T*>(t.mutable_data_ptr()); }

// h_{t-1} for every step, fp32: [h0, y[0], ..., y[T-2]] as (T*B, H).
at::Tensor previous_states(const at::Tensor& h0, const at::Tensor& y) {
  const int64_t steps = y.size(0);
  at::Tensor h = at::cat({h0.unsqueeze(0), y.narrow(0, 0, steps - 1)}).to(at::kFloat);
  return h.reshape({steps * y.size(1), y.size(2)});
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// ------------------------------------------------------------------------------------ LSTM

TensorList lstm_sequence_fwd(const at::Tensor& gates_x_in, const at::Tensor& w_hh_in,
                             const at::Tensor& h0_in, const at::Tensor& c0_in) {
  const char* op = "lstm_sequence_fwd";
  TORCH_CHECK(gates_x_in.dim() == 3, op, ": gates_x must be (T, B, 4H), got ",
              gates_x_in.sizes());
  TORCH_CHECK(w_hh_in.dim() == 2, op, ": w_hh must be (4H, H), got ", w_hh_in.sizes());
  const int64_t T_ = gates_x_in.size(0), B = gates_x_in.size(1), H = w_hh_in.size(1);
  const auto dtype = gates_x_in.scalar_type();
  const auto device = gates_x_in.device();
  check_dtype(op, dtype);
  TORCH_CHECK(gates_x_in.is_cuda(), op, ": gates_x must be a CUDA tensor");
  check_sizes(op, T_, B, H);
  check_tensor(op, "gates_x", gates_x_in, device, {T_, B, 4 * H}, dtype);
  check_tensor(op, "w_hh", w_hh_in, device, {4 * H, H}, dtype);
  check_tensor(op, "h0", h0_in, device, {B, H}, dtype);
  check_tensor(op, "c0", c0_in, device, {B, H}, dtype);
  const c10::cuda::CUDAGuard guard(device);
  const auto f32 = gates_x_in.options().dtype(at::kFloat);

  if (T_ == 0 || B == 0) {  // nothing to run: the CPU kernel's outputs for empty sequences
    return {at::empty({T_, B, H}, gates_x_in.options()), h0_in.clone(at::MemoryFormat::Contiguous),
            c0_in.clone(at::MemoryFormat::Contiguous), at::empty({T_, B, H}, f32),
            at::empty({T_, B, 4 * H}, f32)};
  }
  if (!fits_on_chip(rnn::RnnKernel::kLstmFwd, dtype, H, B)) return {};  // caller falls back

  const at::Tensor gates_x = gates_x_in.contiguous(), w_hh = w_hh_in.contiguous();
  const at::Tensor c0 = c0_in.to(at::kFloat).contiguous();
  at::Tensor hbuf = at::empty({2, B, H}, f32);
  hbuf.select(0, 1).copy_(h0_in);  // h_{-1}: the kernel reads hbuf[(t + 1) % 2] at step t
  at::Tensor y = at::empty({T_, B, H}, gates_x.options());
  at::Tensor cells = at::empty({T_, B, H}, f32);
  at::Tensor gates = at::empty({T_, B, 4 * H}, f32);

  const bool ran = dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    rnn::LstmFwdArgs<T> a;
    a.gates_x = cptr<T>(gates_x);
    a.w_hh = cptr<T>(w_hh);
    a.c0 = c0.const_data_ptr<float>();
    a.hbuf = hbuf.mutable_data_ptr<float>();
    a.y = mptr<T>(y);
    a.cells = cells.mutable_data_ptr<float>();
    a.gates = gates.mutable_data_ptr<float>();
    a.steps = static_cast<int>(T_);
    a.batch = static_cast<int>(B);
    a.hidden = static_cast<int>(H);
    return launched(op, rnn::launch_lstm_fwd<T>(a, stream(), launch_options()));
  });
  if (!ran) return {};
  at::Tensor h_n = y.select(0, T_ - 1).clone(at::MemoryFormat::Contiguous);
  at::Tensor c_n = cells.select(0, T_ - 1).to(dtype, /*non_blocking=*/false, /*copy=*/true);
  return {y, h_n, c_n, cells, gates};
}

TensorList lstm_sequence_bwd(const at::Tensor& dy_in, const at::Tensor& dh_n,
                             const at::Tensor& dc_n, const at::Tensor& gates_in,
                             const at::Tensor& cells_in, const at::Tensor& y_in,
                             const at::Tensor& h0, const at::Tensor& c0,
                             const at::Tensor& w_hh_in) {
  const char* op = "lstm_sequence_bwd";
  TORCH_CHECK(gates_in.dim() == 3 && w_hh_in.dim() == 2, op,
              ": gates must be (T, B, 4H) and w_hh (4H, H)");
  const int64_t T_ = gates_in.size(0), B = gates_in.size(1), H = w_hh_in.size(1);
  const auto dtype = h0.scalar_type();
  const auto device = h0.device();
  check_dtype(op, dtype);
  TORCH_CHECK(h0.is_cuda(), op, ": h0 must be a CUDA tensor");
  check_sizes(op, T_, B, H);
  check_tensor(op, "w_hh", w_hh_in, device, {4 * H, H}, dtype);
  check_tensor(op, "gates", gates_in, device, {T_, B, 4 * H}, std::nullopt);
  for (const auto& [name, t] : {Named{"dy", &dy_in}, Named{"cells", &cells_in}, Named{"y", &y_in}})
    check_tensor(op, name, *t, device, {T_, B, H}, std::nullopt);
  for (const auto& [name, t] :
       {Named{"dh_n", &dh_n}, Named{"dc_n", &dc_n}, Named{"h0", &h0}, Named{"c0", &c0}})
    check_tensor(op, name, *t, device, {B, H}, std::nullopt);
  const c10::cuda::CUDAGuard guard(device);
  const auto f32 = h0.options().dtype(at::kFloat);

  if (T_ == 0 || B == 0) {
    return {at::empty({T_, B, 4 * H}, h0.options()), at::zeros({4 * H, H}, h0.options()),
            dh_n.to(dtype, false, true), dc_n.to(dtype, false, true)};
  }
  if (!fits_on_chip(rnn::RnnKernel::kLstmBwd, dtype, H, B)) return {};  // caller falls back

  // Inputs in the dtypes the kernel reads (no copies when they already are).
  const at::Tensor dy = dy_in.to(dtype).contiguous(), w_hh = w_hh_in.to(dtype).contiguous();
  const at::Tensor gates = gates_in.to(at::kFloat).contiguous();
  const at::Tensor cells = cells_in.to(at::kFloat).contiguous();
  const at::Tensor c0f = c0.to(at::kFloat).contiguous();
  at::Tensor dgates = at::empty({T_, B, 4 * H}, f32);
  at::Tensor dh = dh_n.to(at::kFloat, false, /*copy=*/true).contiguous();  // in: dh_n, out: dh0
  at::Tensor dc = dc_n.to(at::kFloat, false, /*copy=*/true).contiguous();

  const bool ran = dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    rnn::LstmBwdArgs<T> a;
    a.dy = cptr<T>(dy);
    a.gates = gates.const_data_ptr<float>();
    a.cells = cells.const_data_ptr<float>();
    a.c0 = c0f.const_data_ptr<float>();
    a.w_hh = cptr<T>(w_hh);
    a.dgates = dgates.mutable_data_ptr<float>();
    a.dh = dh.mutable_data_ptr<float>();
    a.dc = dc.mutable_data_ptr<float>();
    a.steps = static_cast<int>(T_);
    a.batch = static_cast<int>(B);
    a.hidden = static_cast<int>(H);
    return launched(op, rnn::launch_lstm_bwd<T>(a, stream(), launch_options()));
  });
  if (!ran) return {};
  // dW_hh = sum_t dG_t^T h_{t-1}: one GEMM over all steps.
  at::Tensor dw = at::mm(dgates.reshape({T_ * B, 4 * H}).t(), previous_states(h0, y_in));
  return {dgates.to(dtype), dw.to(dtype), dh.to(dtype), dc.to(dtype)};
}

// ------------------------------------------------------------------------------------- GRU

TensorList gru_sequence_fwd(const at::Tensor& gates_x_in, const at::Tensor& w_hh_in,
                            const std::optional<at::Tensor>& b_hh_in, const at::Tensor& h0_in) {
  const char* op = "gru_sequence_fwd";
  TORCH_CHECK(gates_x_in.dim() == 3, op, ": gates_x must be (T, B, 3H), got ",
              gates_x_in.sizes());
  TORCH_CHECK(w_hh_in.dim() == 2, op, ": w_hh must be (3H, H), got ", w_hh_in.sizes());
  const int64_t T_ = gates_x_in.size(0), B = gates_x_in.size(1), H = w_hh_in.size(1);
  const auto dtype = gates_x_in.scalar_type();
  const auto device = gates_x_in.device();
  check_dtype(op, dtype);
  TORCH_CHECK(gates_x_in.is_cuda(), op, ": gates_x must be a CUDA tensor");
  check_sizes(op, T_, B, H);
  check_tensor(op, "gates_x", gates_x_in, device, {T_, B, 3 * H}, dtype);
  check_tensor(op, "w_hh", w_hh_in, device, {3 * H, H}, dtype);
  check_tensor(op, "h0", h0_in, device, {B, H}, dtype);
  const bool has_bias = b_hh_in.has_value() && b_hh_in->defined();
  if (has_bias) check_tensor(op, "b_hh", *b_hh_in, device, {3 * H}, dtype);
  const c10::cuda::CUDAGuard guard(device);
  const auto f32 = gates_x_in.options().dtype(at::kFloat);

  if (T_ == 0 || B == 0) {
    return {at::empty({T_, B, H}, gates_x_in.options()),
            h0_in.clone(at::MemoryFormat::Contiguous), at::empty({T_, B, 4 * H}, f32)};
  }
  if (!fits_on_chip(rnn::RnnKernel::kGruFwd, dtype, H, B)) return {};  // caller falls back

  const at::Tensor gates_x = gates_x_in.contiguous(), w_hh = w_hh_in.contiguous();
  const at::Tensor b_hh = has_bias ? b_hh_in->contiguous() : at::Tensor();
  at::Tensor hbuf = at::empty({2, B, H}, f32);
  hbuf.select(0, 1).copy_(h0_in);
  at::Tensor y = at::empty({T_, B, H}, gates_x.options());
  at::Tensor saved = at::empty({T_, B, 4 * H}, f32);

  const bool ran = dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    rnn::GruFwdArgs<T> a;
    a.gates_x = cptr<T>(gates_x);
    a.w_hh = cptr<T>(w_hh);
    a.b_hh = has_bias ? cptr<T>(b_hh) : nullptr;
    a.hbuf = hbuf.mutable_data_ptr<float>();
    a.y = mptr<T>(y);
    a.saved = saved.mutable_data_ptr<float>();
    a.steps = static_cast<int>(T_);
    a.batch = static_cast<int>(B);
    a.hidden = static_cast<int>(H);
    return launched(op, rnn::launch_gru_fwd<T>(a, stream(), launch_options()));
  });
  if (!ran) return {};
  return {y, y.select(0, T_ - 1).clone(at::MemoryFormat::Contiguous), saved};
}

TensorList gru_sequence_bwd(const at::Tensor& dy_in, const at::Tensor& dh_n,
                            const at::Tensor& saved_in, const at::Tensor& y_in,
                            const at::Tensor& h0, const at::Tensor& w_hh_in, bool has_bias) {
  const char* op = "gru_sequence_bwd";
  TORCH_CHECK(saved_in.dim() == 3 && w_hh_in.dim() == 2, op,
              ": saved must be (T, B, 4H) and w_hh (3H, H)");
  const int64_t T_ = saved_in.size(0), B = saved_in.size(1), H = w_hh_in.size(1);
  const auto dtype = h0.scalar_type();
  const auto device = h0.device();
  check_dtype(op, dtype);
  TORCH_CHECK(h0.is_cuda(), op, ": h0 must be a CUDA tensor");
  check_sizes(op, T_, B, H);
  check_tensor(op, "w_hh", w_hh_in, device, {3 * H, H}, dtype);
  check_tensor(op, "saved", saved_in, device, {T_, B, 4 * H}, std::nullopt);
  check_tensor(op, "dy", dy_in, device, {T_, B, H}, std::nullopt);
  check_tensor(op, "y", y_in, device, {T_, B, H}, std::nullopt);
  check_tensor(op, "dh_n", dh_n, device, {B, H}, std::nullopt);
  const c10::cuda::CUDAGuard guard(device);
  const auto f32 = h0.options().dtype(at::kFloat);
  auto bias_grad = [&](const at::Tensor& dgh) {  // (T*B, 3H) fp32 -> db_hh, or (0,)
    return has_bias ? dgh.sum(0).to(dtype) : at::empty({0}, h0.options());
  };

  if (T_ == 0 || B == 0) {
    return {at::empty({T_, B, 3 * H}, h0.options()), at::zeros({3 * H, H}, h0.options()),
            has_bias ? at::zeros({3 * H}, h0.options()) : at::empty({0}, h0.options()),
            dh_n.to(dtype, false, true)};
  }
  if (!fits_on_chip(rnn::RnnKernel::kGruBwd, dtype, H, B)) return {};  // caller falls back

  const at::Tensor dy = dy_in.to(dtype).contiguous(), y = y_in.to(dtype).contiguous();
  const at::Tensor w_hh = w_hh_in.to(dtype).contiguous();
  const at::Tensor saved = saved_in.to(at::kFloat).contiguous();
  const at::Tensor h0f = h0.to(at::kFloat).contiguous();
  at::Tensor dgx = at::empty({T_, B, 3 * H}, h0.options());
  at::Tensor dgh = at::empty({T_, B, 3 * H}, f32);
  at::Tensor dh = dh_n.to(at::kFloat, false, /*copy=*/true).contiguous();

  const bool ran = dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    rnn::GruBwdArgs<T> a;
    a.dy = cptr<T>(dy);
    a.saved = saved.const_data_ptr<float>();
    a.y = cptr<T>(y);
    a.h0 = h0f.const_data_ptr<float>();
    a.w_hh = cptr<T>(w_hh);
    a.dgates_x = mptr<T>(dgx);
    a.dgates_h = dgh.mutable_data_ptr<float>();
    a.dh = dh.mutable_data_ptr<float>();
    a.steps = static_cast<int>(T_);
    a.batch = static_cast<int>(B);
    a.hidden = static_cast<int>(H);
    return launched(op, rnn::launch_gru_bwd<T>(a, stream(), launch_options()));
  });
  if (!ran) return {};
  const at::Tensor dgh2 = dgh.reshape({T_ * B, 3 * H});
  at::Tensor dw = at::mm(dgh2.t(), previous_states(h0, y));
  return {dgx, dw.to(dtype), bias_grad(dgh2), dh.to(dtype)};
}

// Whether the persistent kernel of `op` fits on chip on the current device for this hidden
// size, batch and dtype ("float16", "bfloat16" or "float32"); for tests and docs.
bool rnn_fits(const std::string& op, int64_t hidden, int64_t batch, const std::string& dtype) {
  rnn::RnnKernel kind;
  if (op == "lstm_sequence_fwd") {
    kind = rnn::RnnKernel::kLstmFwd;
  } else if (op == "lstm_sequence_bwd") {
    kind = rnn::RnnKernel::kLstmBwd;
  } else if (op == "gru_sequence_fwd") {
    kind = rnn::RnnKernel::kGruFwd;
  } else {
    TORCH_CHECK(op == "gru_sequence_bwd", "rnn_fits: unknown op ", op);
    kind = rnn::RnnKernel::kGruBwd;
  }
  at::ScalarType type;
  if (dtype == "float16") {
    type = at::kHalf;
  } else if (dtype == "bfloat16") {
    type = at::kBFloat16;
  } else {
    TORCH_CHECK(dtype == "float32", "rnn_fits: dtype must be float16, bfloat16 or float32, got ",
                dtype);
    type = at::kFloat;
  }
  if (hidden <= 0 || batch <= 0 || 4 * hidden > INT_MAX || batch > INT_MAX) return false;
  return fits_on_chip(kind, type, hidden, batch);
}

// Turns the tensor-core product on or off for later calls; returns the previous setting.
bool set_tensor_cores(bool enabled) { return g_tensor_cores.exchange(enabled); }

}  // namespace

// Called by module.cu's PYBIND11_MODULE.
void bind_rnn(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("lstm_sequence_fwd", &lstm_sequence_fwd, py::arg("gates_x"), py::arg("w_hh"),
        py::arg("h0"), py::arg("c0"));
  m.def("lstm_sequence_bwd", &lstm_sequence_bwd, py::arg("dy"), py::arg("dh_n"),
        py::arg("dc_n"), py::arg("gates"), py::arg("cells"), py::arg("y"), py::arg("h0"),
        py::arg("c0"), py::arg("w_hh"));
  m.def("gru_sequence_fwd", &gru_sequence_fwd, py::arg("gates_x"), py::arg("w_hh"),
        py::arg("b_hh"), py::arg("h0"));
  m.def("gru_sequence_bwd", &gru_sequence_bwd, py::arg("dy"), py::arg("dh_n"), py::arg("saved"),
        py::arg("y"), py::arg("h0"), py::arg("w_hh"), py::arg("has_bias"));
  m.def("rnn_fits", &rnn_fits, py::arg("op"), py::arg("hidden"), py::arg("batch"),
        py::arg("dtype"),
        "Whether the persistent kernel of `op` keeps its weights on chip on the current device.");
  m.def("rnn_set_tensor_cores", &set_tensor_cores, py::arg("enabled"),
        "fp16/bf16 recurrences on tensor cores (default) or CUDA cores; returns the old value.");
}

}  // namespace leedl_fast
