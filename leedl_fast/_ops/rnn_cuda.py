"""The persistent whole-sequence CUDA C++ LSTM/GRU kernels (csrc/cuda/rnn.cu -> leedl_fast._C_cuda)
as plain functions with the op schemas' signatures; leedl_fast/_ops/rnn_gpu.py plugs CUDA_IMPLS
into the "cuda" kernels of the torch.library ops.

Each function falls back to the per-step Triton path (leedl_fast.kernels.rnn, same names and
signatures, reached through rnn_gpu's validating entries) where the persistent kernel cannot
run:
  * the CUDA extension is not built (it exists only where torch has CUDA and the build found nvcc);
  * float64 (the kernels accumulate in float32);
  * the layer's W_hh does not fit on chip: the kernel keeps it in shared memory across the grid
    (one block per SM): on H100 the LSTM fits up to hidden ~1600 in fp16/bf16 and ~1190 in
    fp32, the GRU up to ~2000 / ~1440 (csrc/cuda/rnn.cuh); the extension then returns an empty
    list without allocating or launching anything.
Both imports are lazy, inside the functions: this module must import everywhere, CPU-only
machines and machines without triton included.
"""
import torch

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _ext():
    """leedl_fast._C_cuda, or None where it is not built."""
    try:
        import leedl_fast._C_cuda as ext  # lazy on purpose, see above
    except ImportError:
        return None
    return ext


def _fallback(op, *args):
    # The per-step path through rnn_gpu's entry, which validates the arguments (shapes, dtypes,
    # devices) before leedl_fast.kernels.rnn.<op> launches anything; lazy: triton is optional.
    from .rnn_gpu import TRITON_IMPLS

    return TRITON_IMPLS[op](*args)


def _run(op, dtype, *args):
    ext = _ext() if dtype in _DTYPES else None
    out = getattr(ext, op)(*args) if ext is not None else None
    if not out:  # no extension, float64, or the weights do not fit on chip
        return _fallback(op, *args)
    return tuple(out)


def fits(op, hidden, batch, dtype):
    """Whether the persistent kernel of `op` (an op name) runs for this hidden size, batch and
    dtype on the current CUDA device, i.e. keeps its weights on chip; False without the
    extension or for float64."""
    ext = _ext()
    if ext is None or dtype not in _DTYPES:
        return False
    return ext.rnn_fits(op, hidden, batch, str(dtype).removeprefix("torch."))


def use_tensor_cores(enabled):
    """fp16/bf16 recurrences on tensor cores (the default, sm_80+; the step's h or dG is
    rounded to the dtype as the product's operand, as in torch's GEMMs) or on CUDA cores (fp32
    products of the 16-bit weights, as the CPU kernels). Returns the previous setting; for
    tests and benchmarks."""
    ext = _ext()
    if ext is None:
        return False
    return ext.rnn_set_tensor_cores(bool(enabled))


def lstm_sequence_fwd(gates_x, w_hh, h0, c0):
    # (y, h_n, c_n, cells fp32, gates fp32)
    return _run("lstm_sequence_fwd", gates_x.dtype, gates_x, w_hh, h0, c0)


def lstm_sequence_bwd(dy, dh_n, dc_n, gates, cells, y, h0, c0, w_hh):
    # (dgates_x, dw_hh, dh0, dc0)
    return _run("lstm_sequence_bwd", h0.dtype, dy, dh_n, dc_n, gates, cells, y, h0, c0, w_hh)


def gru_sequence_fwd(gates_x, w_hh, b_hh, h0):
    # (y, h_n, saved fp32)
    return _run("gru_sequence_fwd", gates_x.dtype, gates_x, w_hh, b_hh, h0)


def gru_sequence_bwd(dy, dh_n, saved, y, h0, w_hh, has_bias):
    # (dgates_x, dw_hh, db_hh or an empty tensor, dh0)
    return _run("gru_sequence_bwd", h0.dtype, dy, dh_n, saved, y, h0, w_hh, has_bias)


CUDA_IMPLS = {
    "lstm_sequence_fwd": lstm_sequence_fwd,
    "lstm_sequence_bwd": lstm_sequence_bwd,
    "gru_sequence_fwd": gru_sequence_fwd,
    "gru_sequence_bwd": gru_sequence_bwd,
}
