"""Glue for the attention family (schemas: csrc/ops.cpp; math: docs/attention.md).

Registers the fake, CUDA-device (Triton) and autograd kernels of attention_fwd/attention_bwd (the
CPU kernels are C++: csrc/cpu/attention.cpp), and validates user input once in
`scaled_dot_product_attention` (torch's signature plus `window`).
"""
import math
import numbers

import torch

from .. import _backend
from ..reference import attention as reference
from ._registry import call, register_autograd, register_no_double_backward, register_gpu


def _kernels():
    from leedl_fast.kernels import attention as kernels  # lazily: triton is optional

    return kernels


def _window(left, right):
    return (None if left < 0 else left, None if right < 0 else right)


# ------------------------------------------------------------------------------ fake kernels

# The kernels return contiguous tensors whatever the inputs' layout: the fakes must say so too
# (empty_like would copy a transposed q's strides and mislead torch.compile).
def _dense(t):
    return t.new_empty(t.shape)


def lse_dtype(dtype):
    """The log-sum-exp is kept in the accumulation type: fp64 for fp64 inputs, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("leedl_fast::attention_fwd")
def _(q, k, v, attn_mask, scale, is_causal, window_left, window_right):
    return _dense(q), q.new_empty(q.shape[:-1], dtype=lse_dtype(q.dtype))


@torch.library.register_fake("leedl_fast::attention_bwd")
def _(dout, q, k, v, out, lse, attn_mask, scale, is_causal, window_left, window_right):
    return _dense(q), _dense(k), _dense(v)


# ------------------------------------------------------------------ GPU kernels (Triton)

def _check_triton(q):
    if q.dtype == torch.float64:
        raise TypeError("scaled_dot_product_attention: the Triton kernels take fp16, bf16 and "
                        "fp32; float64 runs on the CPU kernel or the reference")
    if q.shape[-1] > 256:
        raise NotImplementedError("scaled_dot_product_attention: the Triton kernels take head "
                                  f"dims up to 256, got {q.shape[-1]}")


def _triton_attention_fwd(q, k, v, attn_mask, scale, is_causal, window_left, window_right):
    _check_triton(q)
    return _kernels().attention_fwd(q, k, v, scale, is_causal,
                                    _window(window_left, window_right), attn_mask)


def _triton_attention_bwd(dout, q, k, v, out, lse, attn_mask, scale, is_causal, window_left,
                          window_right):
    _check_triton(q)
    return _kernels().attention_bwd(dout, q, k, v, out, lse, scale, is_causal,
                                    _window(window_left, window_right), attn_mask)


register_gpu("attention_fwd", triton=_triton_attention_fwd)
register_gpu("attention_bwd", triton=_triton_attention_bwd)


# ------------------------------------------------------------------------------- autograd

def _setup_context(ctx, inputs, output):
    q, k, v, attn_mask, scale, is_causal, window_left, window_right = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)  # a statistic for the backward, not a differentiable output
    ctx.save_for_backward(q, k, v, out, lse, attn_mask)
    ctx.args = (scale, is_causal, window_left, window_right)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, attn_mask = ctx.saved_tensors
    dq, dk, dv = call("attention_bwd", dout.contiguous(), q, k, v, out, lse, attn_mask,
                      *ctx.args)
    return dq, dk, dv, None, None, None, None, None


register_autograd("attention_fwd", _setup_context, _backward)


# ---------------------------------------------------------------------- public entry point

def _check_tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"scaled_dot_product_attention: {name} must be a Tensor, "
                        f"got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"scaled_dot_product_attention: {name} must be floating point, "
                        f"got {t.dtype}")
    if t.dim() < 3:
        raise ValueError(f"scaled_dot_product_attention: {name} must have at least 3 dims "
                         f"(..., L, E), got shape {list(t.shape)}")


def _check_window(window):
    if window is None:
        return -1, -1
    ok = isinstance(window, (tuple, list)) and len(window) == 2 and all(
        w is None or (isinstance(w, numbers.Integral) and w >= 0) for w in window)
    if not ok:
        raise ValueError("scaled_dot_product_attention: window must be None or (left, right) "
                         f"with ints >= 0 or None (unbounded), got {window!r}")
    return tuple(-1 if w is None else int(w) for w in window)


def _validate(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, window):
    name = "scaled_dot_product_attention"
    for arg, t in (("query", query), ("key", key), ("value", value)):
        _check_tensor(arg, t)
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"{name}: query, key and value must share a dtype, got {query.dtype}, "
                        f"{key.dtype}, {value.dtype}")
    if not (query.device == key.device == value.device):
        raise ValueError(f"{name}: query, key and value must be on one device, got "
                         f"{query.device}, {key.device}, {value.device}")
    if not (query.dim() == key.dim() == value.dim()):
        raise ValueError(f"{name}: query, key and value must have the same number of dims")
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(f"{name}: key's head dim {key.shape[-1]} must equal query's "
                         f"{query.shape[-1]}")
    if value.shape[-1] != query.shape[-1]:
        raise NotImplementedError(f"{name}: value's head dim {value.shape[-1]} differs from "
                                  f"query's {query.shape[-1]}; leedl_fast needs them equal")
    if key.shape[:-1] != value.shape[:-1]:
        raise ValueError(f"{name}: key {list(key.shape)} and value {list(value.shape)} must "
                         "agree in every dim but the last")
    # Every dim but (L, E) must agree, except the head dim (-3 of a 4-D+ input) under GQA.
    batch = -2 if query.dim() == 3 else -3
    if query.shape[:batch] != key.shape[:batch]:
        raise ValueError(f"{name}: batch dims of query {list(query.shape[:batch])} and key "
                         f"{list(key.shape[:batch])} differ")
    if query.dim() >= 4 and query.shape[-3] != key.shape[-3]:
        if not enable_gqa or query.shape[-3] % key.shape[-3]:
            raise ValueError(f"{name}: {query.shape[-3]} query heads vs {key.shape[-3]} key "
                             "heads: pass enable_gqa=True with query heads a multiple of key "
                             "heads")
    if dropout_p != 0.0:
        raise NotImplementedError(f"{name}: dropout_p={dropout_p}: leedl_fast's attention has "
                                  "no dropout (see docs/attention.md)")
    if is_causal and attn_mask is not None:
        raise ValueError(f"{name}: pass either attn_mask or is_causal, not both")
    if scale is not None and (not isinstance(scale, numbers.Real) or not math.isfinite(scale)):
        raise ValueError(f"{name}: scale must be None or a finite number, got {scale!r}")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"{name}: attn_mask must be a Tensor or None")
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"{name}: attn_mask must be bool or floating point, got "
                            f"{attn_mask.dtype}")
        if attn_mask.device != query.device:
            raise ValueError(f"{name}: attn_mask is on {attn_mask.device} but query is on "
                             f"{query.device}")
        target = (*query.shape[:-1], key.shape[-2])
        try:
            if torch.broadcast_shapes(attn_mask.shape, target) != target:
                raise RuntimeError
        except RuntimeError:
            raise ValueError(f"{name}: attn_mask of shape {list(attn_mask.shape)} does not "
                             f"broadcast to {list(target)}") from None
        if attn_mask.requires_grad:
            raise NotImplementedError(f"{name}: no gradient flows to attn_mask in leedl_fast")
    return _check_window(window)


def _as_4d(t):
    """(..., H, L, E) -> (B, H, L, E) view; 3-D input is one head."""
    if t.dim() == 3:
        return t.unsqueeze(1)
    if t.dim() == 4:
        return t
    return t.reshape(math.prod(t.shape[:-3]), *t.shape[-3:])


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False, *, window=None):
    wl, wr = _validate(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                       window)
    if _backend.forced_backend() == "reference":
        return reference.scaled_dot_product_attention(
            query, key, value, attn_mask, 0.0, is_causal, scale, enable_gqa,
            window=None if window is None else _window(wl, wr))
    q, k, v = _as_4d(query), _as_4d(key), _as_4d(value)
    mask = None
    if attn_mask is not None:  # a stride-0 view of the mask at (B, Hq, Lq, Lk): no copy
        if attn_mask.is_floating_point() and query.device.type == "cpu":
            # The C++ kernel reads an additive mask in its compute type: convert the small
            # user tensor here, before the broadcast (converting the view would materialize it).
            attn_mask = attn_mask.to(lse_dtype(query.dtype))
        full = attn_mask.expand(*query.shape[:-1], key.shape[-2])
        mask = full.unsqueeze(1) if query.dim() == 3 else \
            full.reshape(q.shape[0], q.shape[1], *full.shape[-2:])
    # A bound that reaches past both sequences excludes nothing: unbounded (the kernels' index
    # arithmetic stays small; window=(None, sys.maxsize) is a valid request).
    reach = query.shape[-2] + key.shape[-2]
    wl, wr = (-1 if w >= reach else w for w in (wl, wr))
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    out, _ = call("attention_fwd", q, k, v, mask, scale, bool(is_causal), wl, wr)
    return out.view(query.shape)


for _op in ['attention_bwd']:
    register_no_double_backward(_op)
