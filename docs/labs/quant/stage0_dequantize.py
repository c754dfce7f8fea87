"""Stage 0 of the int8 weight-only lab: dequantize the whole weight, then matmul, in PyTorch.

    W[n, k] = qweight[n, k] * scales[n]          y = x W^T + bias

This is what PyTorch gives you without a fused kernel: correct, and the baseline to beat. It
throws away the point of quantizing. Per weight, `qweight.float()` reads 1 byte and writes 4,
`* scales` reads those 4 and writes 4 more, and the matmul reads them back: 17 bytes of traffic
instead of the 1 byte the stored format needs. At M = 1 (decoding one token) the layer is a
matrix-vector product bound by exactly those bytes.
"""


def int8_weight_linear(x, qweight, scales, bias):
    """x (M, K), qweight int8 (N, K), scales fp32 (N,), bias (N,) or None -> y (M, N)."""
    weight = qweight.float() * scales[:, None]          # (N, K) fp32: the bytes we wanted to save
    y = x.float() @ weight.T
    if bias is not None:
        y += bias.float()
    return y.to(x.dtype)
