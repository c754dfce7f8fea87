"""Quantized linear layers as the math defines them (BOOK.md §17.3: fewer bits per parameter;
weight clustering = a table of values plus a small index per weight).

Every format stores W (N out features, K in features) so that it can be dequantized exactly:

    int8 weight-only   W[n, k] = q[n, k] * scale[n]                          q int8
    int4 weight-only   W[n, k] = (q[n, k] - zero[n, g]) * scale[n, g]        q in [0, 15],
                       g = k // group_size; two q per byte, low nibble first
    int8 dynamic       the int8 weight above, and x quantized per row on the fly:
                       sx[m] = max|x[m, :]| / 127, xq = round(x / sx); y = (xq q^T) sx scale
    codebook           W[n, k] = table[idx[n, k]]                             idx < 2^bits,
                       bits per index, packed least significant bit first

The reference dequantizes, then multiplies in float64 (float32 for the int8 dynamic path's
exact integer product: the int32 accumulation is reproduced with float64, which is exact below
2^53). These functions are the oracle of every quantized kernel and of the quantizers'
round trips (leedl_fast/quant/formats.py).
"""
import torch


def _acc(x):
    return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


# ------------------------------------------------------------------------------ bit packing

def pack_bits(idx, bits):
    """idx (N, K) integers in [0, 2^bits) -> uint8 (N, ceil(K * bits / 8)): index k occupies
    bits [k * bits, (k + 1) * bits) of its row, least significant bit first."""
    n, k = idx.shape
    shifts = torch.arange(bits, device=idx.device)
    stream = ((idx.long().unsqueeze(-1) >> shifts) & 1).reshape(n, k * bits)  # the bit string
    nbytes = (k * bits + 7) // 8
    stream = torch.nn.functional.pad(stream, (0, nbytes * 8 - k * bits))
    weights = (1 << torch.arange(8, device=idx.device)).long()
    return (stream.reshape(n, nbytes, 8) * weights).sum(-1).to(torch.uint8)


def unpack_bits(packed, bits, k):
    """Inverse of pack_bits: uint8 (N, ceil(K * bits / 8)) -> int64 (N, K)."""
    n = packed.shape[0]
    stream = (packed.long().unsqueeze(-1) >> torch.arange(8, device=packed.device)) & 1
    stream = stream.reshape(n, -1)[:, :k * bits].reshape(n, k, bits)
    return (stream << torch.arange(bits, device=packed.device)).sum(-1)


def pack_int4(q):
    """q (N, K) in [0, 15], K even -> uint8 (N, K / 2), q[:, 2j] in the low nibble."""
    return pack_bits(q, 4)


def unpack_int4(packed):
    return unpack_bits(packed, 4, packed.shape[1] * 2)


# ---------------------------------------------------------------------------- dequantizers

def dequantize_int8(qweight, scales):
    return qweight.double() * scales.double()[:, None]


def dequantize_int4(packed, scales, zeros, group_size):
    q = unpack_int4(packed).double()
    scale = scales.double().repeat_interleave(group_size, dim=1)
    zero = zeros.double().repeat_interleave(group_size, dim=1)
    return (q - zero) * scale


def dequantize_codebook(packed, table, bits, in_features):
    return table.double()[unpack_bits(packed, bits, in_features)]


# --------------------------------------------------------------------------------- matmuls

def _linear(x, weight, bias):
    y = x.double() @ weight.T
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype)


def int8_weight_linear(x, qweight, scales, bias=None):
    return _linear(x, dequantize_int8(qweight, scales), bias)


def int4_weight_linear(x, packed, scales, zeros, group_size, bias=None):
    return _linear(x, dequantize_int4(packed, scales, zeros, group_size), bias)


def quantize_rows_int8(x):
    """The dynamic path's activation quantization: per row, symmetric, round half to even.
    Returns (xq as float64 integers, sx (M,) float32). An all-zero row has sx = 0 (xq = 0)."""
    xa = _acc(x)
    sx = (xa.abs().amax(dim=-1) / 127).float()
    safe = torch.where(sx > 0, sx, torch.ones_like(sx))
    xq = torch.clamp(torch.round(xa / safe[:, None].to(xa.dtype)), -127, 127)
    return xq.double(), sx


def int8_dynamic_linear(x, qweight, scales, bias=None):
    xq, sx = quantize_rows_int8(x)
    acc = xq @ qweight.double().T  # exact: |acc| <= 127 * 127 * K < 2^53
    y = acc * sx.double()[:, None] * scales.double()[None, :]
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype)


def codebook_linear(x, packed, table, bits, in_features, bias=None):
    return _linear(x, dequantize_codebook(packed, table, bits, in_features), bias)
