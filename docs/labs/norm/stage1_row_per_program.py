"""Stage 1: one Triton program per row, the whole row in one block.

Program r loads row r of x once into registers (BLOCK_N = the next power of two >= N, the extra
lanes masked off), reduces it twice in registers (mean, then the centred variance), normalizes,
applies weight and bias, and stores y once. One read of x and one write of y: the minimum bytes.

The limit: the row must fit in the registers of one program. Past a few thousand fp32 elements
per warp the compiler spills to local memory, and very wide rows do not compile at all -- stage 2
walks the row in blocks instead.

    leedl-fast check docs/labs/norm/stage1_row_per_program.py --op layer_norm --backend triton
"""
import torch
import triton
import triton.language as tl


@triton.jit
def layer_norm_row_kernel(X, W, B, Y, N, stride_x_row, stride_x_col, eps,
                          BLOCK_N: tl.constexpr):
    """X: (rows, N) with any strides; W, B: (N,) contiguous; Y: (rows, N) contiguous."""
    row = tl.program_id(0).to(tl.int64)           # int64: row * stride may pass 2**31
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N                                # BLOCK_N >= N: mask the padding lanes
    x = tl.load(X + row * stride_x_row + cols * stride_x_col, mask=mask, other=0.0)
    x = x.to(tl.float32)

    mean = tl.sum(x, axis=0) / N                   # padding lanes hold 0: they add nothing
    centred = tl.where(mask, x - mean, 0.0)        # ... but x - mean is not 0 there: mask it
    var = tl.sum(centred * centred, axis=0) / N
    rstd = 1.0 / tl.sqrt(var + eps)

    w = tl.load(W + cols, mask=mask).to(tl.float32)
    b = tl.load(B + cols, mask=mask).to(tl.float32)
    y = centred * rstd * w + b
    tl.store(Y + row * N + cols, y.to(Y.dtype.element_ty), mask=mask)


def layer_norm(x, weight, bias, eps):
    N = x.shape[-1]
    x2 = x.reshape(-1, N)                          # a view when it can be (strides kept)
    y = torch.empty((x2.shape[0], N), dtype=x.dtype, device=x.device)
    BLOCK_N = triton.next_power_of_2(N)
    num_warps = min(max(BLOCK_N // 256, 1), 8)     # ~8 fp32 values per thread up to 2048 wide
    layer_norm_row_kernel[(x2.shape[0],)](x2, weight, bias, y, N, x2.stride(0), x2.stride(1),
                                          eps, BLOCK_N=BLOCK_N, num_warps=num_warps)
    return y.reshape(x.shape)


# The bench shape (4096 x 4096) and a narrow one, as the launcher configures them.
COMPILE_CHECKS = [
    {"kernel": "layer_norm_row_kernel",
     "signature": {"X": f"*{t}", "W": f"*{t}", "B": f"*{t}", "Y": f"*{t}", "N": "i32",
                   "stride_x_row": "i32", "stride_x_col": "i32", "eps": "fp32"},
     "constexprs": {"BLOCK_N": block_n}, "num_warps": min(max(block_n // 256, 1), 8)}
    for t in ("fp32", "bf16") for block_n in (4096, 1024)
]
