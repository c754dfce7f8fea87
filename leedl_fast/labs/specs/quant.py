"""Lab ops of the quantized matmul family (BOOK.md §17.3; docs/quant.md): a linear layer whose
weight is stored in 8 or 4 bits and dequantized on the fly.

    int8_weight_linear(x, qweight, scales, bias) -> y
        y = x @ (qweight * scales[:, None]).T + bias
        x (M, K) fp32/fp16/bf16, qweight int8 (N, K), scales fp32 (N,), bias (N,) in x's dtype
        or None; y (M, N) in x's dtype
    int4_weight_linear(x, packed, scales, zeros, group_size, bias) -> y
        W[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g], g = k // group_size, q in [0, 15]
        packed uint8 (N, K / 2): q[n, 2j] in the low nibble of byte j, q[n, 2j + 1] in the high
        one; scales, zeros fp32 (N, K / group_size); K a multiple of group_size (even)

The weights are made like a real layer's: a float weight W ~ N(0, 1/K), quantized per output row
(int8: scale = max|W| / 127; int4: each group's [min, max] onto [0, 15]).
"""
import torch

from leedl_fast.labs.spec import Case, OpSpec, randn, register, strided, tensor_bytes


def _float_weight(n, k, g, device):
    return randn((n, k), device, torch.float32, g, scale=k ** -0.5)


def _int8_weight(n, k, g, device):
    w = _float_weight(n, k, g, device)
    scales = w.abs().amax(dim=1).clamp_min(1e-8) / 127
    qweight = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return qweight, scales


def _int4_weight(n, k, group_size, g, device):
    w = _float_weight(n, k, g, device).view(n, k // group_size, group_size)
    lo = w.amin(dim=2).clamp_max(0)
    hi = w.amax(dim=2).clamp_min(0)
    scales = ((hi - lo) / 15).clamp_min(1e-8)
    zeros = torch.round(-lo / scales)
    q = torch.round(w / scales[..., None] + zeros[..., None]).clamp(0, 15).to(torch.uint8)
    q = q.view(n, k)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)       # low nibble: even k, high nibble: odd k
    return packed, scales, zeros


def _x(m, k, device, dtype, g, strided_x):
    x = randn((m, k), device, dtype, g)
    return strided(x) if strided_x else x


def _label(m, k, n, tag, extra=""):
    return f"M{m} K{k} N{n} {tag}{extra}"


# --- int8_weight_linear ---------------------------------------------------------------------------

def _int8_inputs(m, k, n, strided_x=False, has_bias=True):
    def make(device, dtype, g):
        qweight, scales = _int8_weight(n, k, g, device)
        return {"x": _x(m, k, device, dtype, g, strided_x), "qweight": qweight,
                "scales": scales,
                "bias": randn((n,), device, dtype, g, 0.1) if has_bias else None}
    return make


# (M, K, N): decode (M = 1), a few rows, more rows than one 16-row tile; K and N odd-ish
# (K = 300 and 1000 at N = 67: few enough output blocks that a split-K kernel splits K)
_INT8 = [(1, 100, 257), (3, 257, 100), (17, 768, 300), (1, 1024, 768), (1, 1000, 67),
         (33, 96, 130)]
_INT8_QUICK = [(1, 300, 67), (3, 67, 40), (17, 48, 33)]


def _int8_cases(quick):
    shapes = _INT8_QUICK if quick else _INT8
    cases = [Case(_label(*s, "fp32"), _int8_inputs(*s), torch.float32,
                  {"m": s[0], "k": s[1], "n": s[2]}) for s in shapes]
    m, k, n = shapes[1]
    cases.append(Case(_label(m, k, n, "fp32", " no bias"), _int8_inputs(m, k, n, has_bias=False)))
    m, k, n = shapes[0]
    cases.append(Case(_label(m, k, n, "fp32", " strided x"), _int8_inputs(m, k, n, True)))
    for dtype, tag in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        for m, k, n in (shapes[0], shapes[2]):
            cases.append(Case(_label(m, k, n, tag), _int8_inputs(m, k, n), dtype))
    return cases


# The bench shape: one decoding step (M = 1) through an LLM-sized 4096 x 4096 projection.
_DEFAULT = {"m": 1, "k": 4096, "n": 4096}
_BENCH_QUICK = {"m": 1, "k": 256, "n": 512}


def _int8_shaped(shape):
    return Case(_label(shape["m"], shape["k"], shape["n"], "fp32"),
                _int8_inputs(shape["m"], shape["k"], shape["n"]), torch.float32, dict(shape))


def _linear_bytes(i):
    """x read, the stored weight (codes and scales) read once, bias read, y written."""
    x = i["x"]
    n = i["scales"].shape[0]
    weight = [i[name] for name in ("qweight", "packed", "scales", "zeros") if name in i]
    return tensor_bytes(x, *weight, i["bias"]) + x.shape[0] * n * x.element_size()


def _linear_flops(i):
    return 2 * i["x"].shape[0] * i["x"].shape[1] * i["scales"].shape[0]


def _int8_oracle(x, qweight, scales, bias):
    y = x @ (qweight.double() * scales[:, None]).T
    return y if bias is None else y + bias


def _int8_torch(x, qweight, scales, bias):
    """What PyTorch offers out of the box: dequantize the whole weight, then F.linear."""
    weight = qweight.to(x.dtype) * scales[:, None].to(x.dtype)
    return torch.nn.functional.linear(x, weight, bias)


def _int8_ours(x, qweight, scales, bias):
    from leedl_fast.functional import quantized_linear
    from leedl_fast.quant import Int8WeightOnly, QuantizedWeight

    n, k = qweight.shape
    weight = QuantizedWeight(Int8WeightOnly(), n, k, {"qweight": qweight, "scales": scales})
    return quantized_linear(x, weight, bias)


def _int8_reference(x, qweight, scales, bias):
    from leedl_fast.reference.quant import int8_weight_linear

    return int8_weight_linear(x, qweight, scales, bias)


register(OpSpec(
    name="int8_weight_linear", family="quant", args=("x", "qweight", "scales", "bias"),
    outputs=("y",),
    doc="int8 weight-only linear layer (§17.3): y = x @ (qweight * scales[:, None]).T + bias; "
        "x (M,K) fp32/fp16/bf16 any strides, qweight int8 (N,K), scales fp32 (N,), bias (N,) in "
        "x's dtype or None; y (M,N) in x's dtype",
    cases=_int8_cases,
    bench_cases=lambda quick: [_int8_shaped(_BENCH_QUICK if quick else _DEFAULT)],
    oracle=_int8_oracle, torch_fn=_int8_torch, ours=_int8_ours, reference=_int8_reference,
    nbytes=_linear_bytes, flops=_linear_flops,
    tol={"out": (1e-5, 1e-4)},
    default_shape=_DEFAULT, shape_case=_int8_shaped,
))


# --- int4_weight_linear ---------------------------------------------------------------------------

def _int4_inputs(m, k, n, group_size, strided_x=False, has_bias=True):
    def make(device, dtype, g):
        packed, scales, zeros = _int4_weight(n, k, group_size, g, device)
        return {"x": _x(m, k, device, dtype, g, strided_x), "packed": packed,
                "scales": scales, "zeros": zeros,
                "group_size": group_size,
                "bias": randn((n,), device, dtype, g, 0.1) if has_bias else None}
    return make


# (M, K, N, group_size): K must be a multiple of group_size, and group_size even
_INT4 = [(1, 128, 257, 32), (3, 96, 100, 48), (17, 768, 300, 128), (1, 1024, 768, 64),
         (33, 100, 130, 10)]
_INT4_QUICK = [(1, 64, 67, 32), (3, 96, 40, 48), (17, 48, 33, 16)]


def _int4_cases(quick):
    shapes = _INT4_QUICK if quick else _INT4

    def label(m, k, n, gs, tag, extra=""):
        return _label(m, k, n, tag, f" g{gs}{extra}")

    cases = [Case(label(*s, "fp32"), _int4_inputs(*s), torch.float32,
                  {"m": s[0], "k": s[1], "n": s[2], "group_size": s[3]}) for s in shapes]
    s = shapes[1]
    cases.append(Case(label(*s, "fp32", " no bias"), _int4_inputs(*s, has_bias=False)))
    s = shapes[0]
    cases.append(Case(label(*s, "fp32", " strided x"), _int4_inputs(*s, strided_x=True)))
    for dtype, tag in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        for s in (shapes[0], shapes[2]):
            cases.append(Case(label(*s, tag), _int4_inputs(*s), dtype))
    return cases


_INT4_DEFAULT = {"m": 1, "k": 4096, "n": 4096, "group_size": 128}
_INT4_BENCH_QUICK = {"m": 1, "k": 256, "n": 512, "group_size": 128}


def _int4_shaped(shape):
    s = (shape["m"], shape["k"], shape["n"], shape.get("group_size", 128))
    return Case(_label(*s[:3], "fp32", f" g{s[3]}"), _int4_inputs(*s), torch.float32,
                dict(shape))


def _unpack(packed):
    """uint8 (N, K / 2) -> the codes q (N, K), int64."""
    low, high = packed.long() & 15, packed.long() >> 4
    return torch.stack((low, high), dim=-1).flatten(1)


def _int4_dequantize(packed, scales, zeros, group_size, dtype):
    q = _unpack(packed).to(dtype)
    scale = scales.to(dtype).repeat_interleave(group_size, dim=1)
    zero = zeros.to(dtype).repeat_interleave(group_size, dim=1)
    return (q - zero) * scale


def _int4_oracle(x, packed, scales, zeros, group_size, bias):
    y = x @ _int4_dequantize(packed, scales, zeros, group_size, torch.float64).T
    return y if bias is None else y + bias


def _int4_torch(x, packed, scales, zeros, group_size, bias):
    """Unpack and dequantize the whole weight in x's dtype, then F.linear."""
    weight = _int4_dequantize(packed, scales, zeros, group_size, x.dtype)
    return torch.nn.functional.linear(x, weight, bias)


def _int4_ours(x, packed, scales, zeros, group_size, bias):
    from leedl_fast.functional import quantized_linear
    from leedl_fast.quant import Int4WeightOnly, QuantizedWeight

    weight = QuantizedWeight(Int4WeightOnly(group_size), packed.shape[0], x.shape[1],
                             {"packed": packed, "scales": scales, "zeros": zeros})
    return quantized_linear(x, weight, bias)


def _int4_reference(x, packed, scales, zeros, group_size, bias):
    from leedl_fast.reference.quant import int4_weight_linear

    return int4_weight_linear(x, packed, scales, zeros, group_size, bias)


register(OpSpec(
    name="int4_weight_linear", family="quant",
    args=("x", "packed", "scales", "zeros", "group_size", "bias"), outputs=("y",),
    doc="int4 group-wise weight-only linear layer (§17.3): W[n,k] = (q[n,k] - zeros[n,k//G]) * "
        "scales[n,k//G], q in [0,15] packed two per byte (even k in the low nibble); packed "
        "uint8 (N,K/2), scales and zeros fp32 (N,K/G), G = group_size even and dividing K; "
        "y = x @ W.T + bias, x (M,K) any strides, y (M,N) in x's dtype",
    cases=_int4_cases,
    bench_cases=lambda quick: [_int4_shaped(_INT4_BENCH_QUICK if quick else _INT4_DEFAULT)],
    oracle=_int4_oracle, torch_fn=_int4_torch, ours=_int4_ours, reference=_int4_reference,
    nbytes=_linear_bytes, flops=_linear_flops,
    tol={"out": (1e-5, 1e-4)},
    default_shape=_INT4_DEFAULT, shape_case=_int4_shaped,
))
