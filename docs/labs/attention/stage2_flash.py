"""Stage 2: flash attention -- one pass over the keys (online softmax), causal tiles skipped.

Stage 1 walked the keys twice because the output needs the final row max m and row sum l. The
trick (FlashAttention, Dao et al. 2022; the online softmax of Milakov & Gimelshein 2018) is to
keep the output accumulator *unnormalized* and rescale it whenever the max grows, exactly like
stage 1 already rescaled l:

    for each key tile:  s = q k^T (scaled)
        m_new = max(m, rowmax(s))
        alpha = exp(m - m_new)                     how much the old terms shrink
        p     = exp(s - m_new)
        l     = l * alpha + rowsum(p)
        acc   = acc * alpha + p v                  the old partial sum, re-expressed
        m     = m_new
    o = acc / l

At the end acc / l is exactly softmax(s) v (each term carries exp(s_j - m_final)). So: k and v are
read once, q k^T is computed once (back to the minimum 4*Lq*Lk*D FLOPs), and one loop instead of
two. With the causal mask, query block [m0, m0 + BLOCK_M) sees only keys j < m0 + BLOCK_M: the
loop stops there, so about half of the tiles are never loaded nor multiplied.

    leedl-fast check docs/labs/attention/stage2_flash.py --op attention --backend triton
"""
import math

import torch
import triton
import triton.language as tl


@triton.jit
def flash_kernel(Q, K, V, O,
                 sq_b, sq_h, sq_m, sq_d, sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d,
                 so_b, so_h, so_m,
                 H, LQ, LK, qk_scale,
                 CAUSAL: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """Q (B, H, LQ, HEAD_D), K and V (B, H, LK, HEAD_D), any strides; O (B, H, LQ, HEAD_D), last
    dim contiguous. qk_scale = scale * log2(e). Grid: (cdiv(LQ, BLOCK_M), B * H)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * sq_b + h * sq_h
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    O += b * so_b + h * so_h

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < LQ
    d_ok = offs_d < HEAD_D
    q = tl.load(Q + offs_m[:, None] * sq_m + offs_d[None, :] * sq_d,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:  # the interpreter's tl.dot is wrong on bf16: compute in fp32 there
        q = q.to(tl.float32)

    # Causal (query i sees keys j <= i): the last query of this block is m0 + BLOCK_M - 1, so no
    # key at or past m0 + BLOCK_M is visible to any of them -- stop the loop there.
    hi = tl.minimum(LK, (pid_m + 1) * BLOCK_M) if CAUSAL else LK

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < LK) & d_ok[None, :]
        k = tl.load(K + offs_n[:, None] * sk_n + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
        v = tl.load(V + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        visible = offs_n[None, :] < LK
        if CAUSAL:  # only the tiles on the diagonal really need this
            visible = visible & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(visible, s, float("-inf"))
        # Every row sees key 0 in the first tile, so m_new is finite from then on: no NaN.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)          # 0 on the first tile (m_i = -inf)
        p = tl.math.exp2(s - m_new[:, None])       # masked entries: exp2(-inf) = 0
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    o = acc / l_i[:, None]
    tl.store(O + offs_m[:, None] * so_m + offs_d[None, :], o.to(O.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])


def config(q):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for q's device, dtype and head dim."""
    if not q.is_cuda:
        return 64, 64, 4, 1  # the interpreter: fewer, bigger numpy tiles run faster
    if q.dtype == torch.float32:
        return 64, 32, 8, 3  # full-precision fp32 dots run on the CUDA cores: small tiles
    # 16-bit: a big query tile reuses each loaded k/v tile for 128 rows; 3 stages let the loads
    # of the next tiles overlap this tile's math. (Configs without register spills on sm_90 and
    # sm_80, from the compile check.)
    return (128, 64, 8, 3) if q.shape[-1] <= 64 else (128, 32, 8, 3)


def attention(q, k, v, causal, scale):
    """q (B, H, Lq, D), k and v (B, H, Lk, D), any strides -> o (B, H, Lq, D) contiguous."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    o = torch.empty((b, h, lq, d), device=q.device, dtype=q.dtype)
    block_m, block_n, warps, stages = config(q)
    grid = (triton.cdiv(lq, block_m), b * h)
    flash_kernel[grid](
        q, k, v, o, *q.stride(), *k.stride(), *v.stride(), *o.stride()[:3],
        h, lq, lk, scale * math.log2(math.e),
        CAUSAL=bool(causal), HEAD_D=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
        BLOCK_M=block_m, BLOCK_N=block_n, UPCAST=not q.is_cuda,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=warps, num_stages=stages)
    return o


def _compile_check(dtype, d, block_m, block_n, warps):
    ints = ["sq_b", "sq_h", "sq_m", "sq_d", "sk_b", "sk_h", "sk_n", "sk_d", "sv_b", "sv_h",
            "sv_n", "sv_d", "so_b", "so_h", "so_m", "H", "LQ", "LK"]
    return {"kernel": "flash_kernel",
            "signature": {**{p: f"*{dtype}" for p in ("Q", "K", "V", "O")},
                          **{n: "i32" for n in ints}, "qk_scale": "fp32"},
            "constexprs": {"CAUSAL": True, "HEAD_D": d, "BLOCK_D": d, "BLOCK_M": block_m,
                           "BLOCK_N": block_n, "UPCAST": False,
                           "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32"},
            "num_warps": warps}


# The GPU configs of `config` at the bench shape (fp16, D = 64) and for fp32 and D = 128.
COMPILE_CHECKS = [_compile_check("fp16", 64, 128, 64, 8), _compile_check("bf16", 128, 128, 32, 8),
                  _compile_check("fp32", 64, 64, 32, 8)]
