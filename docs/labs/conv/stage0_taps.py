"""Stage 0 of the conv2d lab: the sliding window, one filter tap at a time, in PyTorch.

    y[b, k, p, q] = bias[k] + sum_{c, r, s} x_pad[b, c, p*stride + r, q*stride + s] * w[k, c, r, s]

Swap the order of the sums: for each tap (r, s) of the R x S filter, the input pixels that tap
touches, over all output positions at once, are one strided view of the padded image,
x_pad[:, :, r::stride, s::stride] (cut to P x Q). Multiplying that view by w[:, :, r, s] is a
small matmul over the channels (C -> K), and y is the sum of R*S such products.

Correct, and vectorized over the batch and the pixels, but it reads the input R*S times and
writes (and re-reads) the whole fp32 output R*S times: 9 passes over y for a 3 x 3 filter.
"""
import torch


def conv2d(x, weight, bias, stride, padding):
    """x (B, C, H, W), weight (K, C, R, S), bias (K,) -> y (B, K, P, Q) in x's dtype."""
    b, _, h, w = x.shape
    k, _, r_size, s_size = weight.shape
    p_size = (h + 2 * padding - r_size) // stride + 1
    q_size = (w + 2 * padding - s_size) // stride + 1
    # Accumulate in fp32 whatever x's dtype (fp16 sums of hundreds of terms lose digits).
    xp = torch.nn.functional.pad(x.float(), (padding, padding, padding, padding))
    wf = weight.float()
    y = bias.float().view(1, k, 1, 1).expand(b, k, p_size, q_size).clone()
    for r in range(r_size):
        for s in range(s_size):
            # the pixels tap (r, s) sees, for every output position: (B, C, P, Q)
            window = xp[:, :, r:r + stride * (p_size - 1) + 1:stride,
                        s:s + stride * (q_size - 1) + 1:stride]
            # (B, C, P, Q) x (K, C) -> (B, K, P, Q): mix the channels for this tap
            y += torch.einsum("bcpq,kc->bkpq", window, wf[:, :, r, s])
    return y.to(x.dtype)
