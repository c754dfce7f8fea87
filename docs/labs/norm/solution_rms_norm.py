"""Solution to the RMS-norm exercise: stage 1 adapted to y = x / sqrt(mean(x^2) + eps) * weight.

What changes from layer norm: no mean is subtracted (so no masking of x - mean: the padding
lanes are loaded as 0 and stay 0), one reduction instead of two, and no bias.

    leedl-fast check docs/labs/norm/solution_rms_norm.py --op rms_norm --backend triton
"""
import torch
import triton
import triton.language as tl


@triton.jit
def rms_norm_row_kernel(X, W, Y, N, stride_x_row, stride_x_col, eps, BLOCK_N: tl.constexpr):
    """X: (rows, N) with any strides; W: (N,) contiguous; Y: (rows, N) contiguous."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x_row + cols * stride_x_col, mask=mask, other=0.0)
    x = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
    w = tl.load(W + cols, mask=mask).to(tl.float32)
    tl.store(Y + row * N + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)


def rms_norm(x, weight, eps):
    N = x.shape[-1]
    x2 = x.reshape(-1, N)
    y = torch.empty((x2.shape[0], N), dtype=x.dtype, device=x.device)
    BLOCK_N = triton.next_power_of_2(N)
    num_warps = min(max(BLOCK_N // 256, 1), 8)
    rms_norm_row_kernel[(x2.shape[0],)](x2, weight, y, N, x2.stride(0), x2.stride(1), eps,
                                        BLOCK_N=BLOCK_N, num_warps=num_warps)
    return y.reshape(x.shape)


COMPILE_CHECKS = [
    {"kernel": "rms_norm_row_kernel",
     "signature": {"X": f"*{t}", "W": f"*{t}", "Y": f"*{t}", "N": "i32", "stride_x_row": "i32",
                   "stride_x_col": "i32", "eps": "fp32"},
     "constexprs": {"BLOCK_N": 4096}, "num_warps": 8}
    for t in ("fp32", "bf16")
]
