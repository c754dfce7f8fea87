"""Stage 3: layer norm's backward, fused, in two small Triton kernels.

With x_hat = (x - mean) * rstd and g = dy * weight, the gradients are (docs/norm.md):

    dx      = rstd * (g - mean(g) - x_hat * mean(g * x_hat))     per row: two row reductions
    dweight = sum over rows of dy * x_hat                       per column: a sum over all rows
    dbias   = sum over rows of dy

Autograd on the naive forward runs ~15 kernels, each a pass over (rows, N) data. The fused
backward reads x and dy once and writes dx once:

  kernel 1  a fixed number of programs P, each over a contiguous band of rows. Per row it
            recomputes mean and rstd from x (cheaper than storing and re-reading them), computes
            dx, and adds dy * x_hat and dy into its own fp32 partial sums (registers, one value
            per column). At the end it writes them to row `pid` of two (P, N) buffers.
  kernel 2  sums the P partial rows column by column.

Why two stages instead of atomics into dweight: atomic float adds land in a different order on
every run, so the result changes in the last bits from run to run. With the partials every sum
is taken in a fixed order: deterministic. And P (a few hundred) is small next to the rows, so
kernel 2 is cheap.

    leedl-fast check docs/labs/norm/stage3_fused_backward.py --op layer_norm_backward \
        --backend triton
"""
import torch
import triton
import triton.language as tl


@triton.jit
def layer_norm_bwd_kernel(DY, X, W, DX, DW_PART, DB_PART, M, N, rows_per_program,
                          stride_dy_row, stride_dy_col, stride_x_row, stride_x_col, eps,
                          BLOCK_N: tl.constexpr):
    """DY, X: (M, N) with any strides; W: (N,); DX: (M, N) contiguous;
    DW_PART, DB_PART: (P, N) fp32, row pid written by program pid only."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)     # this program's partial column sums
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row in range(row_start, row_end):
        x = tl.load(X + row * stride_x_row + cols * stride_x_col, mask=mask, other=0.0)
        dy = tl.load(DY + row * stride_dy_row + cols * stride_dy_col, mask=mask, other=0.0)
        x = x.to(tl.float32)
        dy = dy.to(tl.float32)
        # Recompute the forward's statistics (as stage 1 does).
        mean = tl.sum(x, axis=0) / N
        centred = tl.where(mask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / N + eps)
        x_hat = centred * rstd
        g = dy * w                                  # padding lanes: dy = 0, so g = 0
        mean_g = tl.sum(g, axis=0) / N
        mean_gx = tl.sum(g * x_hat, axis=0) / N
        dx = rstd * (g - mean_g - x_hat * mean_gx)
        tl.store(DX + row * N + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * x_hat
        db += dy
    tl.store(DW_PART + pid * N + cols, dw, mask=mask)
    tl.store(DB_PART + pid * N + cols, db, mask=mask)


@triton.jit
def column_sum_kernel(PART, OUT, P, N, BLOCK_COLS: tl.constexpr):
    """OUT[n] = sum over p of PART[p, n], in the order p = 0, 1, ... (deterministic)."""
    cols = tl.program_id(0) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    mask = cols < N
    total = tl.zeros([BLOCK_COLS], dtype=tl.float32)
    for p in range(P):
        total += tl.load(PART + p * N + cols, mask=mask, other=0.0)
    tl.store(OUT + cols, total.to(OUT.dtype.element_ty), mask=mask)


BLOCK_COLS = 256


def _num_programs(device):
    """How many bands of rows: a few per SM on a GPU; a fixed small number on the CPU."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 16


def _num_warps(block_n):
    """8 values of each row-sized variable per thread: the kernel keeps ~8 of them alive (x,
    dy, w, x_hat, g, dx and the two partial sums), ~100 registers a thread at 4096 wide."""
    return min(max(block_n // 256, 1), 16)


def layer_norm_backward(dy, x, weight, eps):
    N = x.shape[-1]
    x2, dy2 = x.reshape(-1, N), dy.reshape(-1, N)
    M = x2.shape[0]
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    BLOCK_N = triton.next_power_of_2(N)
    num_warps = _num_warps(BLOCK_N)
    rows_per_program = triton.cdiv(M, min(M, _num_programs(x.device)))
    P = triton.cdiv(M, rows_per_program)             # no program without rows
    dw_part = torch.empty((P, N), dtype=torch.float32, device=x.device)
    db_part = torch.empty((P, N), dtype=torch.float32, device=x.device)
    layer_norm_bwd_kernel[(P,)](dy2, x2, weight, dx, dw_part, db_part, M, N, rows_per_program,
                                dy2.stride(0), dy2.stride(1), x2.stride(0), x2.stride(1), eps,
                                BLOCK_N=BLOCK_N, num_warps=num_warps)
    dweight = torch.empty_like(weight)
    dbias = torch.empty_like(weight)
    grid = (triton.cdiv(N, BLOCK_COLS),)
    column_sum_kernel[grid](dw_part, dweight, P, N, BLOCK_COLS=BLOCK_COLS)
    column_sum_kernel[grid](db_part, dbias, P, N, BLOCK_COLS=BLOCK_COLS)
    return dx.reshape(x.shape), dweight, dbias


COMPILE_CHECKS = [
    {"kernel": "layer_norm_bwd_kernel",
     "signature": {"DY": f"*{t}", "X": f"*{t}", "W": f"*{t}", "DX": f"*{t}", "DW_PART": "*fp32",
                   "DB_PART": "*fp32", "M": "i32", "N": "i32", "rows_per_program": "i32",
                   "stride_dy_row": "i32", "stride_dy_col": "i32", "stride_x_row": "i32",
                   "stride_x_col": "i32", "eps": "fp32"},
     "constexprs": {"BLOCK_N": 4096}, "num_warps": _num_warps(4096)}
    for t in ("fp32", "bf16")
] + [
    {"kernel": "column_sum_kernel",
     "signature": {"PART": "*fp32", "OUT": f"*{t}", "P": "i32", "N": "i32"},
     "constexprs": {"BLOCK_COLS": BLOCK_COLS}, "num_warps": 4}
    for t in ("fp32", "bf16")
]
