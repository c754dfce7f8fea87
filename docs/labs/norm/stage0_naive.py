"""Stage 0: layer norm written the way eq. 7.1 reads (BOOK.md §7.1), one PyTorch op per step.

Correct, and slow: each line is a separate kernel that reads a whole (rows, N) tensor from memory
and writes a new one. The mean, the centred values, their squares, the variance, the normalized
values, the scaled and the shifted values each cost a pass -- ~12 x-sized reads and writes
where the minimum is 2 (read x once, write y once).

    leedl-fast check docs/labs/norm/stage0_naive.py --op layer_norm
"""
import torch


def layer_norm(x, weight, bias, eps):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dim (var biased, 1/N)."""
    xf = x.float()                                   # fp16/bf16 inputs: accumulate in fp32
    mean = xf.mean(dim=-1, keepdim=True)             # pass: read x, write one value per row
    centred = xf - mean                              # pass: read x, write x - m
    var = (centred * centred).mean(dim=-1, keepdim=True)   # two passes: square, then mean
    rstd = 1.0 / torch.sqrt(var + eps)
    x_hat = centred * rstd                           # pass: normalize
    y = x_hat * weight.float() + bias.float()        # two passes: scale, shift
    return y.to(x.dtype)                             # and one more to round to x's dtype
