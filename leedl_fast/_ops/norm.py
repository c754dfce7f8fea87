"""Glue for the normalization family (schemas: csrc/ops.cpp; math: docs/norm.md).

Registers, for every norm op: the fake (shape/dtype) kernel, the CUDA-device kernel (Triton),
and autograd. Validation of user input happens once, here, in the public entry points at the
bottom (leedl_fast.functional re-exports them with torch's signatures). Inputs of any layout are
made contiguous and viewed as (rows, width) before they reach a kernel.
"""
import math
import numbers

import torch

from .. import _backend
from ..reference import norm as reference
from ._registry import call, register_autograd, register_no_double_backward, register_gpu
from .norm_cuda import CUDA_IMPLS


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------ fake kernels

def _stats(x):
    return x.new_empty(x.shape[0], dtype=_acc_dtype(x.dtype))


@torch.library.register_fake("leedl_fast::layer_norm_fwd")
def _(x, weight, bias, eps):
    return torch.empty_like(x), _stats(x), _stats(x)


@torch.library.register_fake("leedl_fast::rms_norm_fwd")
def _(x, weight, eps):
    return torch.empty_like(x), _stats(x)


@torch.library.register_fake("leedl_fast::add_layer_norm_fwd")
def _(x, residual, weight, bias, eps):
    return torch.empty_like(x), torch.empty_like(x), _stats(x), _stats(x)


@torch.library.register_fake("leedl_fast::add_rms_norm_fwd")
def _(x, residual, weight, eps):
    return torch.empty_like(x), torch.empty_like(x), _stats(x)


def _grad_param(x, present):
    return x.new_empty(x.shape[1] if present else 0)


@torch.library.register_fake("leedl_fast::layer_norm_bwd")
def _(dy, x, weight, mean, rstd, dresidual, has_bias):
    return torch.empty_like(x), _grad_param(x, weight is not None), _grad_param(x, has_bias)


@torch.library.register_fake("leedl_fast::rms_norm_bwd")
def _(dy, x, weight, rstd, dresidual):
    return torch.empty_like(x), _grad_param(x, weight is not None)


# ------------------------------------------------------------------ GPU kernels (Triton)
# The Triton launchers return None for absent outputs; ops must return tensors, so absent
# statistics / parameter grads come back as empty tensors, as from the C++ kernels.

def _kernels():
    from leedl_fast.kernels import norm as kernels  # imported lazily: triton is optional

    return kernels


def _or_empty(t, like):
    return t if t is not None else like.new_empty(0)


def _triton_layer_norm_fwd(x, weight, bias, eps):
    y, _, mean, rstd = _kernels().norm_fwd(x, None, weight, bias, eps, is_rms=False)
    return y, mean, rstd


def _triton_rms_norm_fwd(x, weight, eps):
    y, _, _, rstd = _kernels().norm_fwd(x, None, weight, None, eps, is_rms=True)
    return y, rstd


def _triton_add_layer_norm_fwd(x, residual, weight, bias, eps):
    return _kernels().norm_fwd(x, residual, weight, bias, eps, is_rms=False)


def _triton_add_rms_norm_fwd(x, residual, weight, eps):
    y, res_out, _, rstd = _kernels().norm_fwd(x, residual, weight, None, eps, is_rms=True)
    return y, res_out, rstd


def _triton_layer_norm_bwd(dy, x, weight, mean, rstd, dresidual, has_bias):
    dx, dw, db = _kernels().norm_bwd(dy, x, weight, mean, rstd, dresidual, has_bias, False)
    return dx, _or_empty(dw, x), _or_empty(db, x)


def _triton_rms_norm_bwd(dy, x, weight, rstd, dresidual):
    dx, dw, _ = _kernels().norm_bwd(dy, x, weight, None, rstd, dresidual, False, True)
    return dx, _or_empty(dw, x)


for _op in ("layer_norm_fwd", "rms_norm_fwd", "add_layer_norm_fwd", "add_rms_norm_fwd",
            "layer_norm_bwd", "rms_norm_bwd"):
    # Triton stays the default on CUDA tensors: the CUDA C++ forwards have not yet been
    # measured on a GPU (make bench-gpu compares both; switch the default when they win).
    register_gpu(_op, triton=globals()[f"_triton_{_op}"], cuda=CUDA_IMPLS.get(_op))


# ------------------------------------------------------------------------------- autograd

def _make_autograd(is_rms, has_res):
    """setup_context/backward for one forward op. Inputs are (x, [residual,] weight, [bias,] eps);
    outputs are (out, [residual_out,] [mean,] rstd). The backward op receives the tensor that was
    normalized: x, or residual_out for the add variants."""

    def setup_context(ctx, inputs, output):
        weight = inputs[1 + has_res]
        ctx.has_bias = (not is_rms) and inputs[2 + has_res] is not None
        ctx.has_weight = weight is not None
        normalized = output[1] if has_res else inputs[0]
        mean = None if is_rms else output[-2]
        ctx.save_for_backward(normalized, weight, mean, output[-1])

    def backward(ctx, dy, *grads):
        x, weight, mean, rstd = ctx.saved_tensors
        dy = torch.zeros_like(x) if dy is None else dy.contiguous()
        dres = None
        if has_res and grads[0] is not None:
            dres = grads[0].contiguous()  # the gradient reaching residual_out directly
        if is_rms:
            dx, dw = call("rms_norm_bwd", dy, x, weight, rstd, dres)
            db = None
        else:
            dx, dw, db = call("layer_norm_bwd", dy, x, weight, mean, rstd, dres, ctx.has_bias)
        result = [dx, dx] if has_res else [dx]  # d(x + residual)/dx = d/dresidual = identity
        result.append(dw if ctx.has_weight else None)
        if not is_rms:
            result.append(db if ctx.has_bias else None)
        return (*result, None)  # eps

    return setup_context, backward


for _op, _is_rms, _has_res in (("layer_norm_fwd", False, False), ("rms_norm_fwd", True, False),
                               ("add_layer_norm_fwd", False, True),
                               ("add_rms_norm_fwd", True, True)):
    register_autograd(_op, *_make_autograd(_is_rms, _has_res))


# ---------------------------------------------------------------------- public entry points

def _normalized_shape(name, normalized_shape):
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    if isinstance(normalized_shape, (tuple, list, torch.Size)) and all(
            isinstance(d, (int, torch.SymInt)) for d in normalized_shape):
        return tuple(normalized_shape)
    if isinstance(normalized_shape, numbers.Integral):  # numpy ints and the like
        return (int(normalized_shape),)
    raise TypeError(f"{name}: normalized_shape must be an int or a sequence of ints, "
                    f"got {normalized_shape!r}")


def _check_eps(name, eps):
    if not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name}: eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _check_param(name, pname, p, shape, x):
    if p is None:
        return None
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{name}: {pname} must be a Tensor or None, got {type(p).__name__}")
    if p.shape != shape:
        raise ValueError(f"{name}: {pname} must have shape {list(shape)} (normalized_shape), "
                         f"got {list(p.shape)}")
    if p.device != x.device:
        raise ValueError(f"{name}: {pname} is on {p.device} but input is on {x.device}")
    if not p.is_floating_point():
        raise TypeError(f"{name}: {pname} must be floating point, got {p.dtype}")
    if p.dim() != 1:
        p = p.reshape(-1)
    # Differentiable cast: a float32 weight with bfloat16 input gets its gradient in float32.
    # Contiguous: the kernels index weight/bias as dense vectors (a strided view would be read
    # wrong by the Triton kernels).
    return (p if p.dtype == x.dtype else p.to(x.dtype)).contiguous()


def _as_rows(name, input, normalized_shape, residual=None):
    """Validate input (and residual); return them as contiguous (rows, width) views."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"{name}: input must be floating point (float16, bfloat16, float32, "
                        f"float64), got {input.dtype}")
    shape = _normalized_shape(name, normalized_shape)
    k = len(shape)
    if k == 0 or input.dim() < k or tuple(input.shape[input.dim() - k:]) != shape:
        raise ValueError(f"{name}: normalized_shape {list(shape)} must be non-empty and match "
                         f"the last dimensions of input of shape {list(input.shape)}")
    if residual is not None:
        if not isinstance(residual, torch.Tensor):
            raise TypeError(f"{name}: residual must be a Tensor, got {type(residual).__name__}")
        if residual.shape != input.shape:
            raise ValueError(f"{name}: residual shape {list(residual.shape)} must equal input "
                             f"shape {list(input.shape)}")
        if residual.device != input.device:
            raise ValueError(f"{name}: residual is on {residual.device} but input is on "
                             f"{input.device}")
        if residual.dtype != input.dtype:
            raise TypeError(f"{name}: residual dtype {residual.dtype} must equal input dtype "
                            f"{input.dtype}")
    width = math.prod(shape)
    rows = math.prod(input.shape[:input.dim() - k])
    x = input.contiguous().view(rows, width)
    r = None if residual is None else residual.contiguous().view(rows, width)
    return shape, x, r


def _use_reference():
    return _backend.forced_backend() == "reference"


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    name = "layer_norm"
    shape, x, _ = _as_rows(name, input, normalized_shape)
    w = _check_param(name, "weight", weight, shape, input)
    b = _check_param(name, "bias", bias, shape, input)
    eps = _check_eps(name, eps)
    if _use_reference():
        return reference.layer_norm(input, shape, weight, bias, eps)
    out, _, _ = call("layer_norm_fwd", x, w, b, eps)
    return out.view(input.shape)


def rms_norm(input, normalized_shape, weight=None, eps=None):
    name = "rms_norm"
    shape, x, _ = _as_rows(name, input, normalized_shape)
    w = _check_param(name, "weight", weight, shape, input)
    eps = torch.finfo(input.dtype).eps if eps is None else _check_eps(name, eps)
    if _use_reference():
        return reference.rms_norm(input, shape, weight, eps)
    out, _ = call("rms_norm_fwd", x, w, eps)
    return out.view(input.shape)


def add_layer_norm(input, residual, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Add & Norm: s = input + residual; returns (layer_norm(s), s) from one pass over memory."""
    name = "add_layer_norm"
    shape, x, r = _as_rows(name, input, normalized_shape, residual)
    w = _check_param(name, "weight", weight, shape, input)
    b = _check_param(name, "bias", bias, shape, input)
    eps = _check_eps(name, eps)
    if _use_reference():
        return reference.add_layer_norm(input, residual, shape, weight, bias, eps)
    out, res_out, _, _ = call("add_layer_norm_fwd", x, r, w, b, eps)
    return out.view(input.shape), res_out.view(input.shape)


def add_rms_norm(input, residual, normalized_shape, weight=None, eps=None):
    """s = input + residual; returns (rms_norm(s), s) from one pass over memory."""
    name = "add_rms_norm"
    shape, x, r = _as_rows(name, input, normalized_shape, residual)
    w = _check_param(name, "weight", weight, shape, input)
    eps = torch.finfo(input.dtype).eps if eps is None else _check_eps(name, eps)
    if _use_reference():
        return reference.add_rms_norm(input, residual, shape, weight, eps)
    out, res_out, _ = call("add_rms_norm_fwd", x, r, w, eps)
    return out.view(input.shape), res_out.view(input.shape)


for _op in ['layer_norm_bwd', 'rms_norm_bwd']:
    register_no_double_backward(_op)
