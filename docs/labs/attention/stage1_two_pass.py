"""Stage 1: attention in Triton without the L x L matrix -- two passes over the keys.

One program per (block of BLOCK_M queries, one (batch, head) pair). The scores of the block live
only in registers, one (BLOCK_M, BLOCK_N) tile at a time, so nothing of size Lq x Lk is ever
written to memory. The catch: softmax needs each row's max and sum over ALL keys before any
p_ij is known. So two passes:

    pass 1 (the statistics): for each key tile, s = q k^T; keep per query row
        m = the running max of s        l = sum_j exp(s_j - m), rescaled by exp(m_old - m)
            whenever the max grows (the "online normalizer": one pass instead of max-then-sum)
    pass 2 (the output): for each key tile again, s = q k^T (recomputed), p = exp(s - m),
        acc += p v;   finally o = acc / l

Versus stage 0: the memory traffic drops from several passes over B*H*Lq*Lk scores to one read
of q, two of k, one of v, one write of o. The price: q k^T is computed twice (1.5x the FLOPs of
the two matmuls), and causal tiles that no query of the block can see are still visited.

Scores are in log2 units (exp2 is the hardware's native exponential): s2 = s * log2(e), and
exp(s - m) = exp2(s2 - m2).

    leedl-fast check docs/labs/attention/stage1_two_pass.py --op attention --backend triton
"""
import math

import torch
import triton
import triton.language as tl


@triton.jit
def two_pass_kernel(Q, K, V, O,
                    sq_b, sq_h, sq_m, sq_d, sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d,
                    so_b, so_h, so_m,
                    H, LQ, LK, qk_scale,
                    CAUSAL: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """Q (B, H, LQ, HEAD_D), K and V (B, H, LK, HEAD_D), any strides (s*_b, s*_h, s*_m or s*_n,
    s*_d); O (B, H, LQ, HEAD_D), last dim contiguous. qk_scale = scale * log2(e).
    Grid: (cdiv(LQ, BLOCK_M), B * H)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # int64: b * stride can pass 2**31 on big tensors
    h = (bh % H).to(tl.int64)
    Q += b * sq_b + h * sq_h
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    O += b * so_b + h * so_h

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)   # this program's queries
    offs_d = tl.arange(0, BLOCK_D)                     # head dim, padded to a power of two
    m_ok = offs_m < LQ
    d_ok = offs_d < HEAD_D
    q = tl.load(Q + offs_m[:, None] * sq_m + offs_d[None, :] * sq_d,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:  # the interpreter's tl.dot is wrong on bf16: compute in fp32 there
        q = q.to(tl.float32)

    # ---- pass 1: row max m and row sum l over all keys ----
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start in range(0, LK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k = tl.load(K + offs_n[:, None] * sk_n + offs_d[None, :] * sk_d,
                    mask=(offs_n[:, None] < LK) & d_ok[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        visible = offs_n[None, :] < LK
        if CAUSAL:
            visible = visible & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(visible, s, float("-inf"))
        # Every row sees key 0 (in the first tile), so m_i is finite from the first tile on and
        # exp2(-inf - m) = 0 handles the masked entries: no -inf - (-inf) = NaN can appear.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), axis=1)
        m_i = m_new

    # ---- pass 2: o = sum_j exp(s_j - m) v_j / l ----
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, LK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < LK) & d_ok[None, :]
        k = tl.load(K + offs_n[:, None] * sk_n + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
        v = tl.load(V + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        visible = offs_n[None, :] < LK
        if CAUSAL:
            visible = visible & (offs_n[None, :] <= offs_m[:, None])
        p = tl.where(visible, tl.math.exp2(s - m_i[:, None]), 0.0)
        # p in v's dtype: a 16-bit x 16-bit tensor-core product (fp32 accumulate) on the GPU
        acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)

    o = acc / l_i[:, None]
    tl.store(O + offs_m[:, None] * so_m + offs_d[None, :], o.to(O.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])


def config(q):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for q's device, dtype and head dim."""
    if not q.is_cuda:
        return 64, 64, 4, 1  # the interpreter: fewer, bigger numpy tiles run faster
    if q.dtype == torch.float32:
        return 64, 32, 8, 3  # full-precision fp32 dots run on the CUDA cores: small tiles
    return (128, 64, 8, 3) if q.shape[-1] <= 64 else (128, 32, 8, 3)  # no spills, sm_90/80


def attention(q, k, v, causal, scale):
    """q (B, H, Lq, D), k and v (B, H, Lk, D), any strides -> o (B, H, Lq, D) contiguous."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    o = torch.empty((b, h, lq, d), device=q.device, dtype=q.dtype)
    block_m, block_n, warps, stages = config(q)
    grid = (triton.cdiv(lq, block_m), b * h)
    two_pass_kernel[grid](
        q, k, v, o, *q.stride(), *k.stride(), *v.stride(), *o.stride()[:3],
        h, lq, lk, scale * math.log2(math.e),
        CAUSAL=bool(causal), HEAD_D=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
        BLOCK_M=block_m, BLOCK_N=block_n, UPCAST=not q.is_cuda,
        # fp32: "ieee" keeps full precision (Triton's default on NVIDIA is TF32, ~1e-3 off)
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=warps, num_stages=stages)
    return o


def _compile_check(dtype, d, block_m, block_n, warps):
    ints = ["sq_b", "sq_h", "sq_m", "sq_d", "sk_b", "sk_h", "sk_n", "sk_d", "sv_b", "sv_h",
            "sv_n", "sv_d", "so_b", "so_h", "so_m", "H", "LQ", "LK"]
    return {"kernel": "two_pass_kernel",
            "signature": {**{p: f"*{dtype}" for p in ("Q", "K", "V", "O")},
                          **{n: "i32" for n in ints}, "qk_scale": "fp32"},
            "constexprs": {"CAUSAL": True, "HEAD_D": d, "BLOCK_D": d, "BLOCK_M": block_m,
                           "BLOCK_N": block_n, "UPCAST": False,
                           "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32"},
            "num_warps": warps}


# The GPU configs of `config` at the bench shape (fp16, D = 64) and for fp32 and D = 128.
COMPILE_CHECKS = [_compile_check("fp16", 64, 128, 64, 8), _compile_check("bf16", 128, 128, 32, 8),
                  _compile_check("fp32", 64, 64, 32, 8)]
