"""Glue for the quantized matmul family (schemas: csrc/ops.cpp; formats: docs/quant.md and
leedl_fast/reference/quant.py).

Registers the fakes and GPU (Triton) kernels of int8_weight_linear, int4_weight_linear,
int8_dynamic_linear and codebook_linear, an autograd formula for x (dx = dy W, with W
dequantized: the weights are frozen, so they get no gradient), and the validated entry
`quantized_linear(x, qweight)` that leedl_fast.functional exports. x of any leading shape is
flattened to (M, K) rows, made contiguous, and the result reshaped back.
"""
import torch

from .. import _backend
from ..reference import quant as reference
from ._registry import call, register_autograd, register_gpu, triton_kernel

OPS = ("int8_weight_linear", "int4_weight_linear", "int8_dynamic_linear", "codebook_linear")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _out(x, n):
    return x.new_empty(x.shape[0], n)


@torch.library.register_fake("leedl_fast::int8_weight_linear")
def _(x, qweight, scales, bias):
    return _out(x, qweight.shape[0])


@torch.library.register_fake("leedl_fast::int4_weight_linear")
def _(x, packed, scales, zeros, group_size, bias):
    return _out(x, packed.shape[0])


@torch.library.register_fake("leedl_fast::int8_dynamic_linear")
def _(x, qweight, scales, bias):
    return _out(x, qweight.shape[0])


@torch.library.register_fake("leedl_fast::codebook_linear")
def _(x, packed, table, bits, in_features, bias):
    return _out(x, packed.shape[0])


# -------------------------------------------------------------------------------- autograd

def _dequantize(op, args):
    """W (N, K) float64 from an op's arguments after x."""
    if op in ("int8_weight_linear", "int8_dynamic_linear"):
        return reference.dequantize_int8(args[0], args[1])
    if op == "int4_weight_linear":
        return reference.dequantize_int4(*args[:4])
    return reference.dequantize_codebook(*args[:4])


def _make_autograd(op):
    def setup_context(ctx, inputs, output):
        ctx.weight_args = inputs[1:-1]  # everything but x and bias
        ctx.save_for_backward(*[a for a in ctx.weight_args if isinstance(a, torch.Tensor)])
        ctx.has_bias = inputs[-1] is not None

    def backward(ctx, dy):
        args = list(ctx.weight_args)
        tensors = iter(ctx.saved_tensors)
        args = [next(tensors) if isinstance(a, torch.Tensor) else a for a in args]
        weight = _dequantize(op, args).to(dy.dtype)
        dx = dy @ weight  # the straight-through gradient for int8 dynamic's rounding of x
        dbias = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[-1] else None
        return (dx,) + (None,) * len(args) + (dbias,)

    register_autograd(op, setup_context, backward)


for _op in OPS:
    _make_autograd(_op)


for _op in OPS:
    register_gpu(_op, triton=triton_kernel("quant", _op))


# ----------------------------------------------------------------------------- the entry

def quantized_linear(x, qweight, bias=None):
    """y = x W^T + bias for a quantized weight `qweight` (a leedl_fast.quant.QuantizedWeight:
    its format and tensors), x (..., K) in float16/bfloat16/float32; y (..., N) in x's dtype.
    Gradients flow to x (and bias); the quantized weight is frozen."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"leedl_fast.quantized_linear: x must be a Tensor, got "
                        f"{type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"leedl_fast.quantized_linear: x has dtype {x.dtype}; supported: "
                        "float16, bfloat16, float32")
    n, k = qweight.out_features, qweight.in_features
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"leedl_fast.quantized_linear: x's last dim must be in_features = {k}, "
                         f"got shape {tuple(x.shape)}")
    for name, t in qweight.tensors().items():
        if t.device != x.device:
            raise RuntimeError(f"leedl_fast.quantized_linear: {name} is on {t.device}, x on "
                               f"{x.device}")
    if bias is not None:
        if tuple(bias.shape) != (n,):
            raise ValueError(f"leedl_fast.quantized_linear: bias must be ({n},), got "
                             f"{tuple(bias.shape)}")
        if bias.dtype != x.dtype or bias.device != x.device:
            raise TypeError(f"leedl_fast.quantized_linear: bias is {bias.dtype} on "
                            f"{bias.device}, x is {x.dtype} on {x.device}")
    rows = x.reshape(-1, k)
    rows = rows if rows.is_contiguous() else rows.contiguous()
    args = qweight.op_args()
    if _backend.forced_backend() == "reference":
        y = getattr(reference, qweight.op)(rows, *args, bias)
    else:
        y = call(qweight.op, rows, *args, bias)
    return y.reshape(*x.shape[:-1], n)
