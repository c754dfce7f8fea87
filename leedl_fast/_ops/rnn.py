"""Glue for the recurrent family (schemas: csrc/ops.cpp; math: docs/rnn.md).

Registers the fake and autograd kernels of lstm_sequence_* and gru_sequence_* (the CPU kernels
are C++: csrc/cpu/rnn.cpp; the GPU ones are registered by rnn_gpu.py), and `lstm_layer` /
`gru_layer`, one layer and direction: the input projection for all steps as one GEMM (torch),
then the recurrence as one op, on whichever device the op's kernel for x's device runs.
"""
import torch
import torch.nn.functional as TF

from .. import _backend
from ..reference import rnn as reference
from ._registry import call, register_autograd, register_no_double_backward


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("leedl_fast::lstm_sequence_fwd")
def _(gates_x, w_hh, h0, c0):
    steps, batch, _ = gates_x.shape
    hidden = w_hh.shape[1]
    acc = _acc(gates_x.dtype)
    return (gates_x.new_empty(steps, batch, hidden), h0.new_empty(batch, hidden),
            c0.new_empty(batch, hidden), gates_x.new_empty(steps, batch, hidden, dtype=acc),
            gates_x.new_empty(gates_x.shape, dtype=acc))


@torch.library.register_fake("leedl_fast::lstm_sequence_bwd")
def _(dy, dh_n, dc_n, gates, cells, y, h0, c0, w_hh):
    return (y.new_empty(gates.shape), w_hh.new_empty(w_hh.shape), h0.new_empty(h0.shape),
            c0.new_empty(c0.shape))


def _setup_context(ctx, inputs, output):
    _, w_hh, h0, c0 = inputs
    y, _, _, cells, gates = output
    ctx.mark_non_differentiable(cells, gates)
    ctx.save_for_backward(gates, cells, y, h0, c0, w_hh)


def _backward(ctx, dy, dh_n, dc_n, _dcells, _dgates):
    gates, cells, y, h0, c0, w_hh = ctx.saved_tensors
    dy = torch.zeros_like(y) if dy is None else dy.contiguous()
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n.contiguous()
    dc_n = torch.zeros_like(c0) if dc_n is None else dc_n.contiguous()
    return call("lstm_sequence_bwd", dy, dh_n, dc_n, gates, cells, y, h0, c0, w_hh)


register_autograd("lstm_sequence_fwd", _setup_context, _backward)


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False):
    """One LSTM layer in one direction over x (T, B, I): returns y (T, B, H), h_T, c_T.
    Inputs are validated by the caller (leedl_fast.nn.LSTM)."""
    if _backend.forced_backend() == "reference":
        return reference.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse=reverse)
    bias = b_ih if b_hh is None else (b_hh if b_ih is None else b_ih + b_hh)
    gates_x = TF.linear(x, w_ih, bias)  # all steps' input projections: one GEMM
    if reverse:
        gates_x = gates_x.flip(0)
    y, h_n, c_n, _, _ = call("lstm_sequence_fwd", gates_x.contiguous(), w_hh.contiguous(),
                             h0.contiguous(), c0.contiguous())
    return (y.flip(0) if reverse else y), h_n, c_n


# -------------------------------------------------------------------------------------- GRU

@torch.library.register_fake("leedl_fast::gru_sequence_fwd")
def _(gates_x, w_hh, b_hh, h0):
    steps, batch, _ = gates_x.shape
    hidden = w_hh.shape[1]
    return (gates_x.new_empty(steps, batch, hidden), h0.new_empty(batch, hidden),
            gates_x.new_empty(steps, batch, 4 * hidden, dtype=_acc(gates_x.dtype)))


@torch.library.register_fake("leedl_fast::gru_sequence_bwd")
def _(dy, dh_n, saved, y, h0, w_hh, has_bias):
    steps, batch, _ = saved.shape
    return (y.new_empty(steps, batch, w_hh.shape[0]), w_hh.new_empty(w_hh.shape),
            w_hh.new_empty(w_hh.shape[0] if has_bias else 0), h0.new_empty(h0.shape))


def _gru_setup_context(ctx, inputs, output):
    _, w_hh, b_hh, h0 = inputs
    y, _, saved = output
    ctx.mark_non_differentiable(saved)
    ctx.has_bias = b_hh is not None
    ctx.save_for_backward(saved, y, h0, w_hh)


def _gru_backward(ctx, dy, dh_n, _dsaved):
    saved, y, h0, w_hh = ctx.saved_tensors
    dy = torch.zeros_like(y) if dy is None else dy.contiguous()
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n.contiguous()
    dgx, dw, db, dh0 = call("gru_sequence_bwd", dy, dh_n, saved, y, h0, w_hh, ctx.has_bias)
    return dgx, dw, (db if ctx.has_bias else None), dh0


register_autograd("gru_sequence_fwd", _gru_setup_context, _gru_backward)


def gru_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False):
    """One GRU layer in one direction over x (T, B, I): returns y (T, B, H), h_T."""
    if _backend.forced_backend() == "reference":
        return reference.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, reverse=reverse)
    gates_x = TF.linear(x, w_ih, b_ih)
    if reverse:
        gates_x = gates_x.flip(0)
    y, h_n, _ = call("gru_sequence_fwd", gates_x.contiguous(), w_hh.contiguous(),
                     None if b_hh is None else b_hh.contiguous(), h0.contiguous())
    return (y.flip(0) if reverse else y), h_n


for _op in ['lstm_sequence_bwd', 'gru_sequence_bwd']:
    register_no_double_backward(_op)
