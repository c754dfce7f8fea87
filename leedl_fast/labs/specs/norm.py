"""Lab ops of the normalization family (BOOK.md §7.1, eq. 7.1): layer norm and RMS norm over the
last dimension, forward, and layer norm's backward.

    layer_norm(x, weight, bias, eps) -> y                    y = (x - m) / sqrt(var + eps) * w + b
    rms_norm(x, weight, eps) -> y                            y = x / sqrt(mean(x^2) + eps) * w
    layer_norm_backward(dy, x, weight, eps) -> (dx, dweight, dbias)
"""
import torch

from leedl_fast.labs.spec import Case, OpSpec, randn, register, strided, tensor_bytes

# (rows, N): one element, a row narrower than any block, odd widths across block edges, a wide row
_SHAPES = [(1, 1), (4, 7), (3, 5, 33), (17, 1000), (2, 4099), (64, 768)]
_QUICK = [(4, 7), (3, 5, 33), (5, 130)]


def _norm_cases(quick, make):
    shapes = _QUICK if quick else _SHAPES
    cases = [Case(f"{'x'.join(map(str, s))} fp32", make(s, False), torch.float32,
                  {"rows": s[0] if len(s) == 2 else s[0] * s[1], "n": s[-1]}) for s in shapes]
    last = shapes[-1]
    cases.append(Case(f"{'x'.join(map(str, last))} fp32 strided x", make(last, True),
                      torch.float32))
    for dtype, tag in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        cases.append(Case(f"{'x'.join(map(str, last))} {tag}", make(last, False), dtype))
    return cases


def _shaped(make):
    return lambda shape: Case(f"{shape['rows']}x{shape['n']}", make((shape["rows"], shape["n"]),
                                                                     False))


_DEFAULT = {"rows": 4096, "n": 4096}


def _bench(quick, make):
    shape = (64, 1024) if quick else (4096, 4096)
    return [Case(f"{shape[0]}x{shape[1]} fp32", make(shape, False), torch.float32)]


# --- layer_norm --------------------------------------------------------------------------------

def _ln_inputs(shape, strided_x):
    def make(device, dtype, g):
        x = randn(shape, device, dtype, g, scale=2.0, shift=0.5)
        return {"x": strided(x) if strided_x else x,
                "weight": randn(shape[-1:], device, dtype, g, 0.5, 1.0),
                "bias": randn(shape[-1:], device, dtype, g, 0.5), "eps": 1e-5}
    return make


def _ln_oracle(x, weight, bias, eps):
    m = x.mean(-1, keepdim=True)
    var = ((x - m) ** 2).mean(-1, keepdim=True)
    return (x - m) / torch.sqrt(var + eps) * weight + bias


def _ln_torch(x, weight, bias, eps):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)


def _ln_ours(x, weight, bias, eps):
    import leedl_fast.functional as F

    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def _ln_reference(x, weight, bias, eps):
    from leedl_fast.reference.norm import layer_norm

    return layer_norm(x, x.shape[-1:], weight, bias, eps)


def _rowwise_bytes(extra_outputs=0):
    def nbytes(i):
        x = i.get("x", i.get("dy"))
        return tensor_bytes(x) * (2 + extra_outputs) + tensor_bytes(i.get("weight"), i.get("bias"))
    return nbytes


register(OpSpec(
    name="layer_norm", family="norm", args=("x", "weight", "bias", "eps"), outputs=("y",),
    doc="layer norm over the last dim, eq. 7.1 (§7.1): y = (x - mean) / sqrt(var + eps) * weight "
        "+ bias, var biased (1/N); x (..., N), weight and bias (N,); y has x's shape and dtype",
    cases=lambda quick: _norm_cases(quick, _ln_inputs),
    bench_cases=lambda quick: _bench(quick, _ln_inputs),
    oracle=_ln_oracle, torch_fn=_ln_torch, ours=_ln_ours, reference=_ln_reference,
    nbytes=_rowwise_bytes(), flops=lambda i: 8 * i["x"].numel(),
    default_shape=_DEFAULT, shape_case=_shaped(_ln_inputs),
))


# --- rms_norm ----------------------------------------------------------------------------------

def _rms_inputs(shape, strided_x):
    def make(device, dtype, g):
        x = randn(shape, device, dtype, g, scale=2.0)
        return {"x": strided(x) if strided_x else x,
                "weight": randn(shape[-1:], device, dtype, g, 0.5, 1.0), "eps": 1e-6}
    return make


def _rms_oracle(x, weight, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def _rms_torch(x, weight, eps):
    return torch.nn.functional.rms_norm(x, x.shape[-1:], weight, eps)


def _rms_ours(x, weight, eps):
    import leedl_fast.functional as F

    return F.rms_norm(x, x.shape[-1:], weight, eps)


def _rms_reference(x, weight, eps):
    from leedl_fast.reference.norm import rms_norm

    return rms_norm(x, x.shape[-1:], weight, eps)


register(OpSpec(
    name="rms_norm", family="norm", args=("x", "weight", "eps"), outputs=("y",),
    doc="RMS norm over the last dim: y = x / sqrt(mean(x^2) + eps) * weight (layer norm without "
        "centring or bias); x (..., N), weight (N,)",
    cases=lambda quick: _norm_cases(quick, _rms_inputs),
    bench_cases=lambda quick: _bench(quick, _rms_inputs),
    oracle=_rms_oracle, torch_fn=_rms_torch, ours=_rms_ours, reference=_rms_reference,
    nbytes=_rowwise_bytes(), flops=lambda i: 5 * i["x"].numel(),
    default_shape=_DEFAULT, shape_case=_shaped(_rms_inputs),
))


# --- layer_norm_backward -----------------------------------------------------------------------

def _lnb_inputs(shape, strided_x):
    forward = _ln_inputs(shape, strided_x)

    def make(device, dtype, g):
        i = forward(device, dtype, g)
        return {"dy": randn(shape, device, dtype, g), "x": i["x"], "weight": i["weight"],
                "eps": i["eps"]}
    return make


def _lnb_grads(fn, dy, x, weight, eps):
    x = x.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    b = torch.zeros_like(w, requires_grad=True)
    y = fn(x, w, b, eps)
    return torch.autograd.grad(y, (x, w, b), dy)


def _lnb_oracle(dy, x, weight, eps):
    return _lnb_grads(_ln_oracle, dy, x, weight, eps)


def _lnb_torch(dy, x, weight, eps):
    return _lnb_grads(_ln_torch, dy, x, weight, eps)


def _lnb_ours(dy, x, weight, eps):
    return _lnb_grads(_ln_ours, dy, x, weight, eps)


def _lnb_reference(dy, x, weight, eps):
    return _lnb_grads(_ln_reference, dy, x, weight, eps)


register(OpSpec(
    name="layer_norm_backward", family="norm", args=("dy", "x", "weight", "eps"),
    outputs=("dx", "dweight", "dbias"),
    doc="the gradients of layer_norm (bias = 0 does not change them): dx = rstd * (dy*w - "
        "mean(dy*w) - x_hat * mean(dy*w * x_hat)), dweight = sum over rows of dy * x_hat, dbias "
        "= sum over rows of dy; x_hat and rstd recomputed from x",
    cases=lambda quick: _norm_cases(quick, _lnb_inputs),
    bench_cases=lambda quick: _bench(quick, _lnb_inputs),
    oracle=_lnb_oracle, torch_fn=_lnb_torch, ours=_lnb_ours, reference=_lnb_reference,
    nbytes=_rowwise_bytes(extra_outputs=1), flops=lambda i: 14 * i["x"].numel(),
    tol={"out": (5e-5, 1e-4)},
    default_shape=_DEFAULT, shape_case=_shaped(_lnb_inputs),
))
