"""The CUDA C++ normalization forwards (csrc/cuda/norm.cu -> leedl_fast._C_cuda) as plain
functions with the op schemas' signatures, for `register_gpu(op, triton=..., cuda=...)`.

The extension is imported inside each function, not at module import: it exists only where
torch has CUDA and the build found nvcc, and this module must import everywhere (CPU-only
machines included). There is no CUDA C++ backward: the backward ops keep the Triton kernels,
which read the mean/rstd these forwards save (same shapes and dtypes).

The kernels take float16, bfloat16 and float32; float64 raises a RuntimeError naming the op.
"""


def _ext():
    import leedl_fast._C_cuda as ext  # lazy on purpose, see above

    return ext


def layer_norm_fwd(x, weight, bias, eps):
    return _ext().layer_norm_fwd(x, weight, bias, eps)  # (out, mean, rstd)


def rms_norm_fwd(x, weight, eps):
    return _ext().rms_norm_fwd(x, weight, eps)  # (out, rstd)


def add_layer_norm_fwd(x, residual, weight, bias, eps):
    return _ext().add_layer_norm_fwd(x, residual, weight, bias, eps)  # (out, res_out, mean, rstd)


def add_rms_norm_fwd(x, residual, weight, eps):
    return _ext().add_rms_norm_fwd(x, residual, weight, eps)  # (out, res_out, rstd)


CUDA_IMPLS = {
    "layer_norm_fwd": layer_norm_fwd,
    "rms_norm_fwd": rms_norm_fwd,
    "add_layer_norm_fwd": add_layer_norm_fwd,
    "add_rms_norm_fwd": add_rms_norm_fwd,
}
