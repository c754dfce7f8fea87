"""Stage 2: rows of any width -- one program per row, walking the row in blocks of BLOCK_N.

Stage 1 holds the whole row in registers, which stops working for wide rows (a 65536-wide fp32
row is 256 KiB; a GPU program has ~64-256 KiB of registers for all its threads). Here BLOCK_N is
fixed and the program loops over the row's column blocks twice:

  pass 1  mean and variance in one sweep with Welford's update, merged block by block (Chan et
          al.): each block's own count, mean and centred sum of squares M2 are combined with the
          running ones. This is as stable as the two-pass centred variance (no E[x^2] - E[x]^2
          cancellation when |mean| >> std) but reads x only once.
  pass 2  normalize, scale, shift, store.

So x is read twice and y written once: 3 passes instead of stage 1's 2, but the second read of a
row mostly hits the L2 cache (one row is small next to the 50 MiB L2 of an H100), so the cost
over stage 1 is small -- and every width now compiles with a fixed register budget.

    leedl-fast check docs/labs/norm/stage2_blocked.py --op layer_norm --backend triton
"""
import torch
import triton
import triton.language as tl

MAX_BLOCK_N = 1024   # columns per block: 8 fp32 values per thread with 4 warps
NUM_WARPS = 4


@triton.jit
def layer_norm_blocked_kernel(X, W, B, Y, N, stride_x_row, stride_x_col, eps,
                              BLOCK_N: tl.constexpr):
    """X: (rows, N) with any strides; W, B: (N,) contiguous; Y: (rows, N) contiguous."""
    row = tl.program_id(0).to(tl.int64)
    X += row * stride_x_row
    Y += row * N

    # Pass 1: running (count, mean, M2) over the blocks, M2 = sum of (x - mean)^2.
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = cols < N
        x = tl.load(X + cols * stride_x_col, mask=mask, other=0.0).to(tl.float32)
        n_b = tl.minimum(N - start, BLOCK_N).to(tl.float32)   # valid columns in this block
        mean_b = tl.sum(x, axis=0) / n_b
        d = tl.where(mask, x - mean_b, 0.0)
        m2_b = tl.sum(d * d, axis=0)
        # Chan's merge of (count, mean, m2) with (n_b, mean_b, m2_b)
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta * delta * (count * n_b / total)
        count = total
    rstd = 1.0 / tl.sqrt(m2 / N + eps)

    # Pass 2: normalize and store, block by block.
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = cols < N
        x = tl.load(X + cols * stride_x_col, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(W + cols, mask=mask).to(tl.float32)
        b = tl.load(B + cols, mask=mask).to(tl.float32)
        y = (x - mean) * rstd * w + b
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)


def layer_norm(x, weight, bias, eps):
    N = x.shape[-1]
    x2 = x.reshape(-1, N)
    y = torch.empty((x2.shape[0], N), dtype=x.dtype, device=x.device)
    BLOCK_N = min(MAX_BLOCK_N, triton.next_power_of_2(N))  # narrow rows: one block
    layer_norm_blocked_kernel[(x2.shape[0],)](x2, weight, bias, y, N, x2.stride(0),
                                              x2.stride(1), eps, BLOCK_N=BLOCK_N,
                                              num_warps=NUM_WARPS)
    return y.reshape(x.shape)


COMPILE_CHECKS = [
    {"kernel": "layer_norm_blocked_kernel",
     "signature": {"X": f"*{t}", "W": f"*{t}", "B": f"*{t}", "Y": f"*{t}", "N": "i32",
                   "stride_x_row": "i32", "stride_x_col": "i32", "eps": "fp32"},
     "constexprs": {"BLOCK_N": MAX_BLOCK_N}, "num_warps": NUM_WARPS}
    for t in ("fp32", "bf16")
]
