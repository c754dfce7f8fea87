"""Stage 1 of the conv2d lab: im2col + one matmul, in PyTorch.

A convolution is a matrix product in disguise (docs/conv.md, "Implicit GEMM"). Copy every
receptive field into a column (im2col, torch's `unfold`):

    cols[b, (c, r, s), (p, q)] = x_pad[b, c, p*stride + r, q*stride + s]     (B, C*R*S, P*Q)

then y[b] = w.view(K, C*R*S) @ cols[b] is ONE matmul of (K x CRS) by (CRS x PQ), run by the
BLAS at close to the CPU's (or cuBLAS at the GPU's) matmul ceiling, instead of R*S thin ones that
each re-read and re-write y.

The cost is memory: cols holds every input pixel R*S times (9x the input for a 3 x 3 filter),
written once and read once. Stage 2 removes it.
"""
import torch


def conv2d(x, weight, bias, stride, padding):
    """x (B, C, H, W), weight (K, C, R, S), bias (K,) -> y (B, K, P, Q) in x's dtype."""
    b, c, h, w = x.shape
    k, _, r_size, s_size = weight.shape
    p_size = (h + 2 * padding - r_size) // stride + 1
    q_size = (w + 2 * padding - s_size) // stride + 1
    # (B, C*R*S, P*Q); the row index is c*R*S + r*S + s, the same order as weight's (c, r, s)
    cols = torch.nn.functional.unfold(x.float(), (r_size, s_size), padding=padding,
                                      stride=stride)
    # (K, CRS) @ (B, CRS, PQ) -> (B, K, PQ): one batched matmul, bias added in the same call
    y = torch.baddbmm(bias.float().view(1, k, 1), weight.float().reshape(1, k, -1)
                      .expand(b, k, c * r_size * s_size), cols)
    return y.view(b, k, p_size, q_size).to(x.dtype)
