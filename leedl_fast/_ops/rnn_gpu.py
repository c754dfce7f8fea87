"""The recurrent family's CUDA-device kernels: lstm_sequence_* and gru_sequence_* on GPU tensors.

Two implementations per op, picked by `register_gpu` (leedl_fast/_ops/_registry.py):

* "triton": the per-step path of kernels/rnn.py -- a Python loop over the steps,
  each one cuBLAS product for h_{t-1} W_hh^T and one fused Triton launch for the pointwise rest.
  Under the Triton interpreter the same launchers run CPU tensors (that is how the tests run it).
* "cuda" (the default where leedl_fast._C_cuda is built, Triton elsewhere): the persistent
  whole-sequence CUDA C++ kernels, looked up lazily in leedl_fast._ops.rnn_cuda.CUDA_IMPLS (same
  op names and signatures). Where that module or its entry for an op does not exist yet, the op
  runs the Triton path instead. Measured on the H100 (bench/results/cuda-nvidia-h100-80gb-hbm3.md,
  bf16): 2.1-3.4x cuDNN at batch <= 16 where the Triton path ran 0.25-0.41x (a Python loop of
  two launches per step), and ahead of Triton at batch 64 too, except one training case
  (1024x64x256: 36.3 vs 33.5 ms) before the staging fix of stage_chunk.

The fakes and autograd of these ops live in leedl_fast/_ops/rnn.py; the shapes are checked here,
once, before a kernel can read out of bounds (the C++ CPU kernels TORCH_CHECK the same).
"""
import importlib

from ._registry import register_gpu

_CUDA_MODULE = "leedl_fast._ops.rnn_cuda"


def _kernels():
    from leedl_fast.kernels import rnn as kernels  # imported lazily: triton is optional

    return kernels


def _cuda_impl(op):
    """The CUDA C++ implementation of op, or None where there is none (yet)."""
    try:
        module = importlib.import_module(_CUDA_MODULE)
    except ModuleNotFoundError as e:
        if e.name != _CUDA_MODULE:
            raise  # rnn_cuda exists but something it imports is broken: say so
        return None
    return getattr(module, "CUDA_IMPLS", {}).get(op)


# ------------------------------------------------------------------------------- validation

def _check(cond, op, message):
    if not cond:
        raise ValueError(f"leedl_fast.{op}: {message}")


def _check_tensors(op, dtype, device, **tensors):
    for name, t in tensors.items():
        if t.dtype != dtype:
            raise TypeError(f"leedl_fast.{op}: {name} has dtype {t.dtype}, expected {dtype}")
        if t.device != device:
            raise RuntimeError(f"leedl_fast.{op}: {name} is on {t.device}, expected {device}")
    if not dtype.is_floating_point:
        raise TypeError(f"leedl_fast.{op}: floating point tensors only, got {dtype}")


def _check_sequence(op, gates_x, w_hh, n_gates, **states):
    _check(gates_x.dim() == 3, op, f"gates_x must be (T, B, {n_gates}H), got "
           f"{tuple(gates_x.shape)}")
    batch, hidden = gates_x.shape[1], w_hh.shape[-1]
    _check(w_hh.dim() == 2 and w_hh.shape[0] == n_gates * hidden, op,
           f"w_hh must be ({n_gates}H, H), got {tuple(w_hh.shape)}")
    _check(gates_x.shape[2] == n_gates * hidden, op, f"gates_x's last dim {gates_x.shape[2]} "
           f"must be {n_gates} * hidden size {hidden}")
    for name, t in states.items():
        _check(tuple(t.shape) == (batch, hidden), op,
               f"{name} must be (B, H) = ({batch}, {hidden}), got {tuple(t.shape)}")
    _check_tensors(op, gates_x.dtype, gates_x.device, w_hh=w_hh, **states)


def _check_backward(op, saved_name, saved, w_hh, n_gates, n_saved, sequences, states):
    _check(saved.dim() == 3 and w_hh.dim() == 2, op,
           f"{saved_name} must be (T, B, {n_saved}H) and w_hh ({n_gates}H, H)")
    steps, batch, hidden = saved.shape[0], saved.shape[1], w_hh.shape[1]
    _check(saved.shape[2] == n_saved * hidden and w_hh.shape[0] == n_gates * hidden, op,
           f"{saved_name} {tuple(saved.shape)} and w_hh {tuple(w_hh.shape)} disagree on the "
           "hidden size")
    for name, t in sequences.items():
        _check(tuple(t.shape) == (steps, batch, hidden), op,
               f"{name} must be (T, B, H) = ({steps}, {batch}, {hidden}), got {tuple(t.shape)}")
    for name, t in states.items():
        _check(tuple(t.shape) == (batch, hidden), op,
               f"{name} must be (B, H) = ({batch}, {hidden}), got {tuple(t.shape)}")
    h0 = states["h0"]
    _check_tensors(op, saved.dtype, h0.device, **{saved_name: saved})  # cast to fp32 if need be
    _check_tensors(op, h0.dtype, h0.device, w_hh=w_hh, **sequences, **states)


# ------------------------------------------------------------------------------- the kernels

def lstm_sequence_fwd(gates_x, w_hh, h0, c0):
    _check_sequence("lstm_sequence_fwd", gates_x, w_hh, 4, h0=h0, c0=c0)
    return _kernels().lstm_sequence_fwd(gates_x, w_hh, h0, c0)


def lstm_sequence_bwd(dy, dh_n, dc_n, gates, cells, y, h0, c0, w_hh):
    _check_backward("lstm_sequence_bwd", "gates", gates, w_hh, 4, 4, {"dy": dy, "y": y},
                    {"h0": h0, "dh_n": dh_n, "dc_n": dc_n, "c0": c0})
    _check(tuple(cells.shape) == tuple(y.shape), "lstm_sequence_bwd",
           f"cells must be (T, B, H) = {tuple(y.shape)}, got {tuple(cells.shape)}")
    _check_tensors("lstm_sequence_bwd", cells.dtype, h0.device, cells=cells)
    return _kernels().lstm_sequence_bwd(dy, dh_n, dc_n, gates, cells, y, h0, c0, w_hh)


def gru_sequence_fwd(gates_x, w_hh, b_hh, h0):
    _check_sequence("gru_sequence_fwd", gates_x, w_hh, 3, h0=h0)
    if b_hh is not None:
        _check(tuple(b_hh.shape) == (w_hh.shape[0],), "gru_sequence_fwd",
               f"b_hh must be (3H,) = ({w_hh.shape[0]},), got {tuple(b_hh.shape)}")
        _check_tensors("gru_sequence_fwd", gates_x.dtype, gates_x.device, b_hh=b_hh)
    return _kernels().gru_sequence_fwd(gates_x, w_hh, b_hh, h0)


def gru_sequence_bwd(dy, dh_n, saved, y, h0, w_hh, has_bias):
    _check_backward("gru_sequence_bwd", "saved", saved, w_hh, 3, 4, {"dy": dy, "y": y},
                    {"h0": h0, "dh_n": dh_n})
    return _kernels().gru_sequence_bwd(dy, dh_n, saved, y, h0, w_hh, has_bias)


TRITON_IMPLS = {
    "lstm_sequence_fwd": lstm_sequence_fwd,
    "lstm_sequence_bwd": lstm_sequence_bwd,
    "gru_sequence_fwd": gru_sequence_fwd,
    "gru_sequence_bwd": gru_sequence_bwd,
}


def _cuda_or_triton(op):
    """The "cuda" entry of op: the CUDA C++ kernel when rnn_cuda has one, else the Triton path."""
    def run(*args):
        impl = _cuda_impl(op)
        return (impl or TRITON_IMPLS[op])(*args)

    run.__name__ = f"{op}_cuda"
    return run


# The CUDA C++ kernels are the default: the H100 benchmark measured them faster (see the top).
for _op, _impl in TRITON_IMPLS.items():
    register_gpu(_op, triton=_impl, cuda=_cuda_or_triton(_op), default="cuda")
