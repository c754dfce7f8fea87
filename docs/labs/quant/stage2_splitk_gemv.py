"""Stage 2 of the int8 weight-only lab: a split-K GEMV in Triton, blocked for M = 1 (decoding).

At M = 1 the layer is a matrix-vector product: every weight byte is used once, so the time is
(weight bytes) / (memory bandwidth) and the whole job is to stream the int8 weight at full speed.
Two changes from stage 1:

1. No tl.dot. A program owns BLOCK_N weight rows and one row of x; each step loads a
   BLOCK_N x BLOCK_K int8 tile (256 contiguous bytes per row: wide, coalesced loads), converts
   it in registers and multiplies it elementwise by the x chunk into a 2-D fp32 accumulator,
   reduced across K once at the end. No 16-row padding, and the loop body is loads and FMAs.
2. Split K. N / BLOCK_N programs are too few to fill the GPU (and a GPU needs many bytes in
   flight to reach its bandwidth), so K is split into SPLIT_K slices, each its own program: about
   4 programs per SM. Each writes its fp32 partial sums; a second small kernel adds the SPLIT_K
   partials in a fixed order (deterministic, no atomics) and applies the scales and the bias.

The weight tile is re-read for every row of x (grid axis 2), which is fine for a few rows (they
hit in L2); for large M use stage 1's tiled GEMM (exercise: dispatch on M).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def int8_gemv_splitk_kernel(
        X, QW, SCALES, BIAS, Y, PART,  # x (M, K) strided; qweight int8 (N, K); scales fp32 (N,);
        #                                bias (N,) or dummy; y (M, N); PART fp32 (SPLIT_K, M, N)
        M, N, K, sxm, sxk, K_PER_SPLIT,
        HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n, pid_k, row = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    w_rows = QW + n.to(tl.int64)[:, None] * K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT                  # this program's slice of K
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < k_end
        x = tl.load(X + row * sxm + k * sxk, mask=k_ok, other=0.0).to(tl.float32)
        q = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
        acc += q.to(tl.float32) * x[None, :]       # dequantized in registers, never stored
    partial = tl.sum(acc, axis=1)                  # (BLOCK_N,): one reduction per program
    if SPLIT:
        tl.store(PART + (pid_k * M + row).to(tl.int64) * N + n, partial, mask=n_ok)
    else:
        _epilogue(partial, row, n, n_ok, N, SCALES, BIAS, Y, HAS_BIAS)


@triton.jit
def _epilogue(acc, row, n, n_ok, N, SCALES, BIAS, Y, HAS_BIAS: tl.constexpr):
    """y[row, n] = acc * scales[n] + bias[n], in y's dtype."""
    acc = acc * tl.load(SCALES + n, mask=n_ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(BIAS + n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(Y + row.to(tl.int64) * N + n, acc.to(Y.dtype.element_ty), mask=n_ok)


@triton.jit
def splitk_reduce_kernel(PART, SCALES, BIAS, Y, M, N, SPLIT_K, HAS_BIAS: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """y[row, n-block] = epilogue(sum over s of PART[s, row, n-block]), s in order."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row = tl.program_id(1)
    n_ok = n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for s in range(SPLIT_K):
        acc += tl.load(PART + (s * M + row).to(tl.int64) * N + n, mask=n_ok, other=0.0)
    _epilogue(acc, row, n, n_ok, N, SCALES, BIAS, Y, HAS_BIAS)


BLOCK_N, BLOCK_K, NUM_WARPS = 16, 256, 4  # 80 registers on sm_90 (32 x 128: 168)
REDUCE_BLOCK_N = 256
PROGRAMS_PER_SM = 4       # split K until about this many programs per SM
INTERPRETER_PROGRAMS = 8  # ... and this many under the interpreter (so the check splits K)


def split_k(programs, k, device):
    """(SPLIT_K, K_PER_SPLIT): split K until about PROGRAMS_PER_SM programs run per SM, each
    slice a whole number of BLOCK_K chunks."""
    chunks = triton.cdiv(k, BLOCK_K)
    if device.type == "cuda":
        target = PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = INTERPRETER_PROGRAMS
    split = max(1, min(chunks, triton.cdiv(target, programs)))
    per_split = triton.cdiv(chunks, split)
    return triton.cdiv(chunks, per_split), per_split * BLOCK_K


def int8_weight_linear(x, qweight, scales, bias):
    """x (M, K) any strides, qweight int8 (N, K), scales fp32 (N,), bias (N,) or None."""
    m, k = x.shape
    n = qweight.shape[0]
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    blocks_n = triton.cdiv(n, BLOCK_N)
    splits, k_per_split = split_k(blocks_n * m, k, x.device)
    part = torch.empty((splits, m, n) if splits > 1 else (1,), device=x.device,
                       dtype=torch.float32)
    bias_arg = y if bias is None else bias   # a dummy pointer when there is no bias
    int8_gemv_splitk_kernel[(blocks_n, splits, m)](
        x, qweight.contiguous(), scales, bias_arg, y, part, m, n, k, *x.stride(), k_per_split,
        HAS_BIAS=bias is not None, SPLIT=splits > 1, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
        num_warps=NUM_WARPS)
    if splits > 1:
        splitk_reduce_kernel[(triton.cdiv(n, REDUCE_BLOCK_N), m)](
            part, scales, bias_arg, y, m, n, splits, HAS_BIAS=bias is not None,
            BLOCK_N=REDUCE_BLOCK_N, num_warps=4)
    return y


# Ahead-of-time compile checks (sm_90 / sm_80) at the bench's configuration (M = 1, K = N =
# 4096 on an H100: K is split), fp32 and fp16 x.
COMPILE_CHECKS = [
    {"kernel": "int8_gemv_splitk_kernel",
     "signature": {"X": f"*{t}", "QW": "*i8", "SCALES": "*fp32", "BIAS": f"*{t}", "Y": f"*{t}",
                   "PART": "*fp32", "M": "i32", "N": "i32", "K": "i32", "sxm": "i32",
                   "sxk": "i32", "K_PER_SPLIT": "i32"},
     "constexprs": {"HAS_BIAS": True, "SPLIT": True, "BLOCK_N": BLOCK_N, "BLOCK_K": BLOCK_K},
     "num_warps": NUM_WARPS}
    for t in ("fp32", "fp16")
] + [
    {"kernel": "splitk_reduce_kernel",
     "signature": {"PART": "*fp32", "SCALES": "*fp32", "BIAS": f"*{t}", "Y": f"*{t}",
                   "M": "i32", "N": "i32", "SPLIT_K": "i32"},
     "constexprs": {"HAS_BIAS": True, "BLOCK_N": REDUCE_BLOCK_N}, "num_warps": 4}
    for t in ("fp32", "fp16")
]
