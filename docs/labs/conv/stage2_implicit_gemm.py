"""Stage 2 of the conv2d lab: implicit GEMM in Triton.

Stage 1's matmul, without writing im2col to memory. View the convolution as the GEMM

    Y[m, n] = sum_k A[m, k] * B[k, n]       m <-> (b, p, q)  output pixel    (B*P*Q rows)
                                            n <-> k_out      output channel  (K columns)
                                            k <-> (c, r, s)  filter tap      (C*R*S)
    A[m, k] = x_pad[b, c, p*stride + r, q*stride + s]       B[k, n] = weight[n, c, r, s]

Each program owns a BLOCK_M x BLOCK_N tile of Y (a tile of output pixels x a tile of output
channels) and walks the reduction in BLOCK_K steps. At each step it builds the BLOCK_M x BLOCK_K
tile of A in registers straight from x -- decode m into (b, p, q) and k into (c, r, s), compute
the input coordinates, and let the mask read the zero padding -- so the only memory traffic is x,
weight and y themselves (x is re-read from L2 by the programs that share it, never from a 9x
copy in DRAM). tl.dot multiplies the tiles (tensor cores for fp16/bf16 on the GPU) into an fp32
accumulator; the bias is added in the epilogue and each y element is written once.

x is read through its four strides, so NCHW, channels_last and sliced inputs all work without a
copy. y is written NCHW-contiguous.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def conv2d_implicit_gemm_kernel(
        X, W, BIAS, Y,                       # x (B, C, H, W) strided; w (K, C, R, S) contiguous;
        #                                      bias (K,); y (B, K, P, Q) contiguous
        B, C, H, WIDTH, K, P, Q,             # sizes (WIDTH: x's W, the name W is the weight)
        sxb, sxc, sxh, sxw,                  # x's strides, in elements
        stride, padding,
        R: tl.constexpr, S: tl.constexpr,    # the filter's size: the tap decode divides by them
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        DOT_FP32: tl.constexpr):             # multiply in fp32 (fp32 inputs; the interpreter)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)

    # The tile's output pixels m = (b, p, q), b slowest, and output channels n.
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < B * P * Q
    b = m // (P * Q)
    p = (m // Q) % P
    q = m % Q
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < K
    # Top-left corner of each pixel's receptive field in x (negative inside the padding).
    h0 = p * stride - padding
    w0 = q * stride - padding
    x_pixel = X + b.to(tl.int64) * sxb       # int64: a big batch passes 2**31 elements

    CRS = C * R * S
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, CRS, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)       # reduction index k = (c, r, s), s fastest, the
        k_ok = k < CRS                       # same order as weight's contiguous (c, r, s)
        c = k // (R * S)
        r = (k // S) % R
        s = k % S
        ih = h0[:, None] + r[None, :]        # (BLOCK_M, BLOCK_K) input coordinates
        iw = w0[:, None] + s[None, :]
        inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < WIDTH)   # outside: zero padding
        a = tl.load(x_pixel[:, None] + c[None, :] * sxc + ih * sxh + iw * sxw,
                    mask=m_ok[:, None] & k_ok[None, :] & inside, other=0.0)
        # B[k, n] = weight[n, c, r, s] = W[n * CRS + k]: a (BLOCK_K, BLOCK_N) tile
        w = tl.load(W + n[None, :] * CRS + k[:, None], mask=k_ok[:, None] & n_ok[None, :],
                    other=0.0)
        if DOT_FP32:
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)          # fp16/bf16 tensor cores, fp32 accumulation

    # Epilogue: + bias, cast, one store per output element; y[b, n, p, q] in NCHW.
    acc += tl.load(BIAS + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_off = (b.to(tl.int64) * K * P * Q + p * Q + q)[:, None] + (n * P * Q)[None, :]
    tl.store(Y + y_off, acc.to(Y.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


BLOCK_M, BLOCK_N, BLOCK_K, NUM_WARPS = 64, 64, 32, 4


def conv2d(x, weight, bias, stride, padding):
    """x (B, C, H, W) any strides, weight (K, C, R, S), bias (K,) -> y (B, K, P, Q)."""
    b, c, h, w = x.shape
    k, _, r, s = weight.shape
    p = (h + 2 * padding - r) // stride + 1
    q = (w + 2 * padding - s) // stride + 1
    weight = weight.contiguous()             # tiny next to x; the kernel wants (c, r, s) rows
    y = torch.empty((b, k, p, q), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(b * p * q, BLOCK_M), triton.cdiv(k, BLOCK_N))
    conv2d_implicit_gemm_kernel[grid](
        x, weight, bias, y, b, c, h, w, k, p, q, *x.stride(), stride, padding, R=r, S=s,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
        # fp32 stays exact (TF32 is ~1e-3 off); the interpreter's bf16 tl.dot is wrong
        DOT_FP32=x.dtype == torch.float32 or not x.is_cuda, num_warps=NUM_WARPS)
    return y


# Ahead-of-time compile checks (sm_90 / sm_80): the bench shape (AlphaGo's 3 x 3 layer), fp32
# and bf16.
_SIG = {"B": "i32", "C": "i32", "H": "i32", "WIDTH": "i32", "K": "i32", "P": "i32", "Q": "i32",
        "sxb": "i32", "sxc": "i32", "sxh": "i32", "sxw": "i32", "stride": "i32",
        "padding": "i32"}
COMPILE_CHECKS = [
    {"kernel": "conv2d_implicit_gemm_kernel",
     "signature": {"X": f"*{t}", "W": f"*{t}", "BIAS": f"*{t}", "Y": f"*{t}", **_SIG},
     "constexprs": {"R": 3, "S": 3, "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "BLOCK_K": BLOCK_K,
                    "DOT_FP32": t == "fp32"},
     "num_warps": NUM_WARPS}
    for t in ("fp32", "bf16")
]
