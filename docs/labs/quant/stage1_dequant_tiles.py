"""Stage 1 of the int8 weight-only lab: a tiled Triton GEMM that dequantizes in registers.

Each program owns a BLOCK_M x BLOCK_N tile of y = x W^T. It walks K in BLOCK_K steps, loading
an x tile and the int8 weight tile (BLOCK_N x BLOCK_K bytes), converting the codes to floats in
registers and feeding both to tl.dot. The float weight never touches memory, so the kernel moves
the stored bytes only: 1 byte per weight instead of stage 0's 17.

The per-row scale factors out of the sum, y[m, n] = scales[n] * sum_k x[m, k] q[n, k], so it is
applied once per output element in the epilogue, not once per weight. (int8 codes are exact in
fp16 and bf16, so the tile can go to the tensor cores in x's dtype.)

What it does badly at M = 1: the smallest tl.dot tile is 16 rows, so 15/16 of the multiply is
padding (harmless: the layer is memory-bound), and N / BLOCK_N programs -- 64 for N = 4096 --
cannot keep an H100's 132 SMs busy enough to pull 3.35 TB/s. Stage 2 fixes that.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def int8_linear_tiled_kernel(
        X, QW, SCALES, BIAS, Y,        # x (M, K) strided; qweight int8 (N, K) contiguous;
        #                                scales fp32 (N,); bias (N,) or dummy; y (M, N)
        M, N, K, sxm, sxk,
        HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = m < M, n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x = tl.load(X + m[:, None] * sxm + k[None, :] * sxk, mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0)
        q = tl.load(QW + n.to(tl.int64)[:, None] * K + k[None, :],
                    mask=n_ok[:, None] & k_ok[None, :], other=0)   # int8 (BLOCK_N, BLOCK_K)
        if DOT_FP32:
            acc = tl.dot(x.to(tl.float32), tl.trans(q.to(tl.float32)), acc,
                         input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(q.to(x.dtype)), acc)       # codes exact in fp16/bf16
    # Epilogue: the row scales, the bias, one store per element.
    acc *= tl.load(SCALES + n, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(BIAS + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + m[:, None] * N + n[None, :], acc.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


BLOCK_M, BLOCK_N, BLOCK_K, NUM_WARPS = 16, 64, 32, 4  # fp32 at BLOCK_K 64 spills registers


def int8_weight_linear(x, qweight, scales, bias):
    """x (M, K) any strides, qweight int8 (N, K), scales fp32 (N,), bias (N,) or None."""
    m, k = x.shape
    n = qweight.shape[0]
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
    int8_linear_tiled_kernel[grid](
        x, qweight.contiguous(), scales, y if bias is None else bias, y, m, n, k, *x.stride(),
        HAS_BIAS=bias is not None,
        # fp32 stays exact (TF32 is ~1e-3 off); the interpreter's bf16 tl.dot is wrong
        DOT_FP32=x.dtype == torch.float32 or not x.is_cuda,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=NUM_WARPS)
    return y


# Ahead-of-time compile checks (sm_90 / sm_80) at the bench's configuration, fp32 and fp16 x.
COMPILE_CHECKS = [
    {"kernel": "int8_linear_tiled_kernel",
     "signature": {"X": f"*{t}", "QW": "*i8", "SCALES": "*fp32", "BIAS": f"*{t}", "Y": f"*{t}",
                   "M": "i32", "N": "i32", "K": "i32", "sxm": "i32", "sxk": "i32"},
     "constexprs": {"HAS_BIAS": True, "DOT_FP32": t == "fp32", "BLOCK_M": BLOCK_M,
                    "BLOCK_N": BLOCK_N, "BLOCK_K": BLOCK_K},
     "num_warps": NUM_WARPS}
    for t in ("fp32", "fp16")
]
