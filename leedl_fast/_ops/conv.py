"""Glue for the convolution family (schemas: csrc/ops.cpp; math: docs/conv.md).

Registers the fake and autograd kernels of conv2d_fwd / conv2d_bwd / separable_conv2d_fwd (the
CPU kernels are C++: csrc/cpu/conv*.cpp; the GPU kernels are Triton: kernels/conv.py) and the
public entry points with torch's signatures, which validate the user's input once, here.

Memory formats. Every kernel writes its image-shaped outputs in the memory format of the input
it follows, by one rule (`memory_format` below): channels_last when the tensor is contiguous as
channels_last and not as NCHW, NCHW-contiguous otherwise. The entry points hand the kernels x
already contiguous in one of the two formats (a sliced or permuted input is copied once).
"""
import numbers

import torch
import torch.nn.functional as torch_F

from .. import _backend
from ..reference import conv as reference
from ._registry import (call, register_autograd, register_gpu, register_no_double_backward,
                        triton_kernel)

ACTIVATIONS = reference.ACTIVATIONS
_SAVES_Z = ("gelu", "silu")  # activations whose derivative needs the pre-activation
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def memory_format(x):
    """The format the kernels write x-shaped outputs in (see the top of the file)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _out_hw(x_shape, w_shape, stride, padding, dilation):
    return (reference.out_size(x_shape[2], w_shape[2], stride[0], padding[0], padding[1],
                               dilation[0]),
            reference.out_size(x_shape[3], w_shape[3], stride[1], padding[2], padding[3],
                               dilation[1]))


# ------------------------------------------------------------------------------ fake kernels

def _empty(like, shape, fmt=torch.contiguous_format, dtype=None):
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


@torch.library.register_fake("leedl_fast::conv2d_fwd")
def _(x, weight, bias, residual, stride, padding, dilation, groups, activation):
    oh, ow = _out_hw(x.shape, weight.shape, stride, padding, dilation)
    shape = (x.shape[0], weight.shape[0], oh, ow)
    out = _empty(x, shape, memory_format(x))
    z = _empty(x, shape, memory_format(x)) if activation in _SAVES_Z else x.new_empty(0)
    return out, z


@torch.library.register_fake("leedl_fast::conv2d_bwd")
def _(dout, x, weight, out, z, stride, padding, dilation, groups, activation, output_mask):
    def maybe(present, t, like_format=None):
        if not present:
            return t.new_empty(0)
        fmt = memory_format(like_format) if like_format is not None else torch.contiguous_format
        return _empty(t, t.shape, fmt)

    dbias = weight.new_empty(weight.shape[0] if output_mask[2] else 0)
    return (maybe(output_mask[0], x, x), maybe(output_mask[1], weight), dbias,
            maybe(output_mask[3], dout, dout))


@torch.library.register_fake("leedl_fast::conv2d_pool_fwd")
def _(x, weight, bias, stride, padding, dilation, groups, activation, pool, pool_size):
    oh, ow = _out_hw(x.shape, weight.shape, stride, padding, dilation)
    return _empty(x, (x.shape[0], weight.shape[0], oh // pool_size, ow // pool_size),
                  memory_format(x))


@torch.library.register_fake("leedl_fast::separable_conv2d_fwd")
def _(x, dw_weight, dw_bias, dw_activation, pw_weight, pw_bias, activation, stride, padding,
      dilation):
    oh, ow = _out_hw(x.shape, dw_weight.shape, stride, padding, dilation)
    return _empty(x, (x.shape[0], pw_weight.shape[0], oh, ow), memory_format(x))


# --------------------------------------------------------------------------------- autograd

def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, stride, padding, dilation, groups, activation = inputs
    out, z = output
    ctx.mark_non_differentiable(z)
    ctx.conv = (list(stride), list(padding), list(dilation), groups, activation)
    ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
    ctx.save_for_backward(x, weight, out, z)


def _backward(ctx, dout, _dz):
    x, weight, out, z = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[0], need[1], ctx.has_bias and need[2], ctx.has_residual and need[3]]
    if not any(mask):
        return (None,) * 9
    dout = dout.contiguous(memory_format=memory_format(out))
    dx, dw, db, dres = call("conv2d_bwd", dout, x, weight, out, z, *ctx.conv, mask)
    return (dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None,
            dres if mask[3] else None, None, None, None, None, None)


register_autograd("conv2d_fwd", _setup_context, _backward)
register_no_double_backward("conv2d_bwd")


# ------------------------------------------------------------------------ GPU registration

for _op in ("conv2d_fwd", "conv2d_bwd", "conv2d_pool_fwd", "separable_conv2d_fwd"):
    register_gpu(_op, triton=triton_kernel("conv", _op))


# ------------------------------------------------------------------------------- validation

def _pair(value, name):
    if isinstance(value, numbers.Integral):
        value = (int(value), int(value))
    if not isinstance(value, (tuple, list, torch.Size)):
        raise TypeError(f"leedl_fast.conv2d: {name} must be an int or a pair of ints, got "
                         f"{value!r}")
    value = tuple(value)
    if len(value) == 1:
        value = value * 2
    if len(value) != 2 or not all(isinstance(v, numbers.Integral) for v in value):
        raise ValueError(f"leedl_fast.conv2d: {name} must be an int or a pair of ints, got "
                         f"{value!r}")
    return tuple(int(v) for v in value)


def resolve_padding(padding, kernel_size, stride, dilation):
    """torch's padding argument -> (top, bottom, left, right). 'same' pads d*(k-1) in total,
    the odd one on the bottom/right (as torch does); 'valid' is no padding."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"leedl_fast.conv2d: padding must be an int, a pair, 'same' or "
                             f"'valid', got {padding!r}")
        if stride != (1, 1):
            raise ValueError("leedl_fast.conv2d: padding='same' is not supported for strided "
                             f"convolutions (stride={stride}), as in torch")
        pads = []
        for k, d in zip(kernel_size, dilation):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"leedl_fast.conv2d: padding must be >= 0, got {(ph, pw)}")
    return (ph, ph, pw, pw)


def _check_conv_args(x, weight, bias, residual, stride, padding, dilation, groups, activation):
    """Validates the public arguments; returns (stride, padding (4), dilation, out shape)."""
    for name, t in (("input", x), ("weight", weight), ("bias", bias), ("residual", residual)):
        if (t is not None or name == "weight") and not isinstance(t, torch.Tensor):
            raise TypeError(f"leedl_fast.conv2d: {name} must be a Tensor, got {type(t).__name__}")
    if x.dim() != 4:
        raise ValueError(f"leedl_fast.conv2d: input must be (N, C, H, W) or unbatched (C, H, W), "
                         f"got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"leedl_fast.conv2d: weight must be (out_channels, in_channels / "
                         f"groups, kH, kW), got shape {tuple(weight.shape)}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"leedl_fast.conv2d: input dtype {x.dtype} is not supported "
                        f"(float16, bfloat16, float32, float64)")
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"leedl_fast.conv2d: {name} has dtype {t.dtype}, input has {x.dtype}")
        if t.device != x.device:
            raise RuntimeError(f"leedl_fast.conv2d: {name} is on {t.device}, input on {x.device}")
    if not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"leedl_fast.conv2d: groups must be a positive int, got {groups!r}")
    c, o = x.shape[1], weight.shape[0]
    if c % groups or o % groups:
        raise ValueError(f"leedl_fast.conv2d: groups={groups} must divide both in_channels "
                         f"({c}) and out_channels ({o})")
    if weight.shape[1] * groups != c:
        raise ValueError(f"leedl_fast.conv2d: input has {c} channels, but weight "
                         f"{tuple(weight.shape)} with groups={groups} expects "
                         f"{weight.shape[1] * groups}")
    if min(weight.shape) == 0:
        raise ValueError(f"leedl_fast.conv2d: weight {tuple(weight.shape)} has a zero-size dim")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"leedl_fast.conv2d: stride and dilation must be >= 1, got "
                         f"stride={stride}, dilation={dilation}")
    pad = resolve_padding(padding, tuple(weight.shape[2:]), stride, dilation)
    if activation is None:
        activation = "none"
    if activation not in ACTIVATIONS:
        raise ValueError(f"leedl_fast.conv2d: activation must be one of {ACTIVATIONS} or None, "
                         f"got {activation!r}")
    for dim, (size, k, d, before, after) in enumerate(zip(
            x.shape[2:], weight.shape[2:], dilation, pad[0::2], pad[1::2])):
        span = d * (k - 1) + 1
        if size + before + after < span:
            raise ValueError(f"leedl_fast.conv2d: kernel size {tuple(weight.shape[2:])} "
                             f"(dilated: {span} along dim {dim + 2}) is bigger than the padded "
                             f"input ({size + before + after}); input {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"leedl_fast.conv2d: bias must be ({o},), got {tuple(bias.shape)}")
    oh, ow = _out_hw(x.shape, weight.shape, stride, pad, dilation)
    shape = (x.shape[0], o, oh, ow)
    if residual is not None and tuple(residual.shape) != shape:
        raise ValueError(f"leedl_fast.conv2d: residual must have the output's shape {shape}, "
                         f"got {tuple(residual.shape)}")
    return stride, pad, dilation, activation, shape


def _formatted(t):
    """t contiguous in its own memory format (a copy only for other layouts)."""
    fmt = memory_format(t)
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


# --------------------------------------------------------------------------- public entries

def _conv2d_op(x, weight, bias, residual, stride, pad, dilation, groups, activation):
    """The op on validated arguments (pad: (top, bottom, left, right))."""
    out, _ = call("conv2d_fwd", _formatted(x), weight.contiguous(),
                  None if bias is None else bias.contiguous(),
                  None if residual is None else _formatted(residual), list(stride), list(pad),
                  list(dilation), int(groups), activation)
    return out


POOLS = ("max", "avg")


def _check_pool(pool, out_shape):
    """pool=(kind, size) -> (kind, size), validated against the conv's output."""
    if isinstance(pool, str) or not isinstance(pool, (tuple, list)) or len(pool) != 2:
        raise ValueError(f"leedl_fast.conv2d: pool must be a pair (kind, size), e.g. ('max', 2), "
                         f"got {pool!r}")
    kind, size = pool
    if kind not in POOLS or not isinstance(size, int) or size not in (2, 3):
        raise ValueError(f"leedl_fast.conv2d: pool must be ('max' | 'avg', 2 | 3), got {pool!r}")
    if min(out_shape[2:]) < size:
        raise ValueError(f"leedl_fast.conv2d: the conv's output {tuple(out_shape[2:])} is "
                         f"smaller than the {size} x {size} pooling window")
    return kind, size


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           activation=None, residual=None, pool=None):
    """torch.nn.functional.conv2d, plus a fused epilogue: out = activation(conv(input, weight)
    + bias + residual), activation in (None, "relu", "gelu", "silu"), one pass over the output.
    pool=("max" | "avg", 2 | 3) then pools non-overlapping windows (stride = size, floor, as
    nn.MaxPool2d(size) / nn.AvgPool2d(size)); for inference it is fused too (the
    full-resolution activation never goes to memory), with gradients it runs torch's pooling
    after the conv. padding: int, pair, 'same' or 'valid' (zeros; see leedl_fast.nn.Conv2d for
    other modes)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"leedl_fast.conv2d: input must be a Tensor, got {type(input).__name__}")
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
        if isinstance(residual, torch.Tensor) and residual.dim() == 3:
            residual = residual.unsqueeze(0)
    stride, pad, dilation, activation, out_shape = _check_conv_args(
        input, weight, bias, residual, stride, padding, dilation, groups, activation)
    if pool is not None:
        pool = _check_pool(pool, out_shape)
        if residual is not None:
            raise ValueError("leedl_fast.conv2d: pool= and residual= cannot be combined")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, weight, bias))
    if _backend.forced_backend() == "reference":
        out = reference.conv2d(input, weight, bias, stride, pad, dilation, groups, activation,
                               residual)
        if pool is not None:
            out = getattr(reference, f"{pool[0]}_pool2d")(out, pool[1])
        out = out.contiguous(memory_format=memory_format(input))
    elif pool is not None and not needs_grad:
        out = call("conv2d_pool_fwd", _formatted(input), weight.contiguous(),
                   None if bias is None else bias.contiguous(), list(stride), list(pad),
                   list(dilation), int(groups), activation, pool[0], pool[1])
    else:
        out = _conv2d_op(input, weight, bias, residual, stride, pad, dilation, groups,
                         activation)
        if pool is not None:
            pool_fn = torch_F.max_pool2d if pool[0] == "max" else torch_F.avg_pool2d
            out = pool_fn(out, pool[1])
    return out.squeeze(0) if unbatched else out


def separable_conv2d(input, dw_weight, dw_bias, pw_weight, pw_bias, stride=1, padding=0,
                     dilation=1, *, dw_activation=None, activation=None):
    """The depthwise-separable block (BOOK.md §17.4): activation(pointwise(dw_activation(
    depthwise(input) + dw_bias)) + pw_bias), dw_weight (C, 1, kH, kW), pw_weight (O, C, 1, 1).
    Inference runs one fused op that keeps the depthwise result on chip; when a gradient is
    needed it runs as two conv2d ops (the intermediate is then saved for the backward)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"leedl_fast.separable_conv2d: input must be a Tensor, got "
                        f"{type(input).__name__}")
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    c = input.shape[1] if input.dim() == 4 else -1
    if not isinstance(dw_weight, torch.Tensor) or dw_weight.dim() != 4 or dw_weight.shape[:2] != (
            c, 1):
        raise ValueError(f"leedl_fast.separable_conv2d: dw_weight must be ({c}, 1, kH, kW) (one "
                         f"filter per input channel), got "
                         f"{tuple(getattr(dw_weight, 'shape', ()))}")
    stride, pad, dilation, dw_activation, _ = _check_conv_args(
        input, dw_weight, dw_bias, None, stride, padding, dilation, c, dw_activation)
    if not isinstance(pw_weight, torch.Tensor) or pw_weight.dim() != 4 or tuple(
            pw_weight.shape[1:]) != (c, 1, 1):
        raise ValueError(f"leedl_fast.separable_conv2d: pw_weight must be (O, {c}, 1, 1), got "
                         f"{tuple(getattr(pw_weight, 'shape', ()))}")
    o = pw_weight.shape[0]
    for name, t, shape in (("pw_weight", pw_weight, None), ("pw_bias", pw_bias, (o,))):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"leedl_fast.separable_conv2d: {name} must be a Tensor, got "
                            f"{type(t).__name__}")
        if t.dtype != input.dtype or t.device != input.device:
            raise TypeError(f"leedl_fast.separable_conv2d: {name} is {t.dtype} on {t.device}, "
                            f"input {input.dtype} on {input.device}")
        if shape is not None and tuple(t.shape) != shape:
            raise ValueError(f"leedl_fast.separable_conv2d: {name} must be {shape}, got "
                             f"{tuple(t.shape)}")
    activation = "none" if activation is None else activation
    if activation not in ACTIVATIONS:
        raise ValueError(f"leedl_fast.separable_conv2d: activation must be one of "
                         f"{ACTIVATIONS} or None, got {activation!r}")
    tensors = (input, dw_weight, dw_bias, pw_weight, pw_bias)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors)
    if _backend.forced_backend() == "reference":
        out = reference.separable_conv2d(input, dw_weight, dw_bias, dw_activation, pw_weight,
                                         pw_bias, activation, stride, pad, dilation
                                         ).contiguous(memory_format=memory_format(input))
    elif needs_grad:
        mid = _conv2d_op(input, dw_weight, dw_bias, None, stride, pad, dilation, c,
                         dw_activation)
        out = _conv2d_op(mid, pw_weight, pw_bias, None, (1, 1), (0, 0, 0, 0), (1, 1), 1,
                         activation)
    else:
        out = call("separable_conv2d_fwd", _formatted(input), dw_weight.contiguous(),
                   None if dw_bias is None else dw_bias.contiguous(), dw_activation,
                   pw_weight.contiguous(), None if pw_bias is None else pw_bias.contiguous(),
                   activation, list(stride), list(pad), list(dilation))
    return out.squeeze(0) if unbatched else out
