"""Triton kernels for the attention family: flash-attention forward (docs/attention.md).

Status: forward and backward with causal (bottom-right), sliding window with tile skipping,
boolean or additive attn_mask broadcastable to (B, Hq, Lq, Lk) (key padding is a (B, 1, 1, Lk)
boolean mask), GQA, Lq != Lk, any head dim <= 256 and `scale`.

The online softmax. For one query row, walking the keys in tiles and keeping a running maximum m,
a running normalizer l and an unnormalized output acc:

    s    = q . K_tile^T * scale                  (scores of this tile)
    m'   = max(m, max(s))
    p    = exp(s - m')                           (this tile's weights, relative to m')
    l'   = l * exp(m - m') + sum(p)
    acc' = acc * exp(m - m') + p @ V_tile
    out  = acc / l   and   lse = m + log(l)      (saved for the backward)

so the Lq x Lk score matrix never exists in memory: each program holds one BLOCK_M x BLOCK_N tile.
exp is computed as exp2 with log2(e) folded into the scale (one multiply fewer per score).

Which keys a query sees (see leedl_fast/reference/attention.py): with offset o = Lk - Lq, key j
is visible to query i iff i + o - LEFT <= j <= i + o + RIGHT (a side unbounded when its HAS_ flag
is off; causal is RIGHT = 0). Key tiles entirely outside [first query - LEFT, last query + RIGHT]
of a query block are never loaded: that skip is where a sliding window gets its speed.
A query that sees no key gets out = 0 and lse = +inf (so a backward recomputes p = 0).

Pointer arguments (strided; the head dim is contiguous):
    Q, O : (B, Hq, Lq, D)    K, V : (B, Hk, Lk, D)    LSE : (B, Hq, Lq) fp32
    MASK : (B, Hq, Lq, Lk) strided view (0 strides where broadcast), uint8 or float
GQA: query head h reads key/value head h // GROUP (GROUP = Hq / Hk).
"""
import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # host side: folded into qk_scale
LN2 = tl.constexpr(0.6931471805599453)  # kernel side: log2 units back to natural log
LOG2E_C = tl.constexpr(LOG2E)  # kernel side: natural-log LSE to log2 units
FLT_LOWEST = tl.constexpr(-3.4028234663852886e38)


@triton.jit
def _masked_scores(s, MASK, offs_m, offs_n, smm, smn, LQ, LK, MASK_KIND: tl.constexpr):
    """Apply attn_mask to a tile of scores (log2 units): MASK_KIND 1 = boolean (nonzero = may
    attend; others -> -inf), 2 = additive (added, times log2 e), 0 = no mask."""
    if MASK_KIND != 0:
        ptrs = MASK + offs_m.to(tl.int64)[:, None] * smm + offs_n.to(tl.int64)[None, :] * smn
        inside = (offs_m[:, None] < LQ) & (offs_n[None, :] < LK)
        if MASK_KIND == 1:
            s = tl.where(tl.load(ptrs, mask=inside, other=0) != 0, s, float("-inf"))
        else:
            add = tl.load(ptrs, mask=inside, other=0.0).to(tl.float32)
            # A finite value below -FLT_MAX / log2(e) (e.g. torch.finfo(float32).min, the usual
            # padding value) must stay finite in log2 units, or a fully padded row turns into
            # "sees nothing" (0) instead of torch's uniform average.
            s = s + tl.where(add == float("-inf"), add, tl.maximum(add * LOG2E_C, FLT_LOWEST))
    return s


@triton.jit
def _key_range(pid_m, LQ, LK, LEFT, RIGHT, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """[lo, hi): the keys any query of block pid_m can see, lo rounded down to a key tile.
    Key tiles outside it are never loaded (the forward and dQ loops skip them)."""
    lo = 0
    hi = LK
    if HAS_LEFT:
        lo = tl.maximum(pid_m * BLOCK_M + (LK - LQ) - LEFT, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
    if HAS_RIGHT:
        hi = tl.minimum(pid_m * BLOCK_M + BLOCK_M - 1 + (LK - LQ) + RIGHT + 1, LK)
    return lo, hi


@triton.jit
def attn_fwd_kernel(Q, K, V, O, LSE, MASK,
                    sq_b, sq_h, sq_m, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_m,
                    sm_b, sm_h, sm_m, sm_n,
                    H, GROUP, LQ, LK, qk_scale, LEFT, RIGHT,
                    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                    MASK_KIND: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    Q += b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
    O += b.to(tl.int64) * so_b + h.to(tl.int64) * so_h
    K += b.to(tl.int64) * sk_b + hk.to(tl.int64) * sk_h
    V += b.to(tl.int64) * sv_b + hk.to(tl.int64) * sv_h
    LSE += bh.to(tl.int64) * LQ
    MASK += b.to(tl.int64) * sm_b + h.to(tl.int64) * sm_h  # broadcast dims have stride 0

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_m = offs_m.to(tl.int64)  # row * stride can pass 2**31 (strided layouts, long rows)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_D
    q = tl.load(Q + rows_m[:, None] * sq_m + offs_d[None, :],
                mask=(offs_m[:, None] < LQ) & d_ok[None, :], other=0.0)

    # Key range any query of this block can see; tiles outside it are skipped entirely.
    diag = offs_m + (LK - LQ)  # the key on each query's (bottom-right aligned) diagonal
    lo, hi = _key_range(pid_m, LQ, LK, LEFT, RIGHT, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_ok = offs_n < LK
        rows_n = offs_n.to(tl.int64)
        k = tl.load(K + rows_n[:, None] * sk_n + offs_d[None, :],
                    mask=kv_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # log2 units
        s = _masked_scores(s, MASK, offs_m, offs_n, sm_m, sm_n, LQ, LK, MASK_KIND)
        visible = kv_ok[None, :]
        if HAS_LEFT:
            visible = visible & (offs_n[None, :] >= diag[:, None] - LEFT)
        if HAS_RIGHT:
            visible = visible & (offs_n[None, :] <= diag[:, None] + RIGHT)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # Rows that have seen no key yet keep m = -inf; subtract 0 there so no inf - inf = NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(V + rows_n[:, None] * sv_n + offs_d[None, :],
                    mask=kv_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * LN2, float("inf"))
    m_ok = offs_m < LQ
    tl.store(O + rows_m[:, None] * so_m + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + offs_m, lse, mask=m_ok)


@triton.jit
def attn_bwd_preprocess_kernel(O, DO, DELTA, ROWS, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_D: tl.constexpr):
    """delta_i = sum_d dO_id * O_id for every query row (O, DO contiguous (rows, HEAD_D))."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < ROWS) & (cols[None, :] < HEAD_D)
    offs = rows[:, None].to(tl.int64) * HEAD_D + cols[None, :]
    o = tl.load(O + offs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + rows, tl.sum(o * do, axis=1), mask=rows < ROWS)


@triton.jit
def _visible(offs_m, offs_n, LQ, LK, LEFT, RIGHT, HAS_LEFT: tl.constexpr,
             HAS_RIGHT: tl.constexpr):
    """(BLOCK_M, BLOCK_N) mask of the keys each query sees (the same rule as the forward)."""
    diag = offs_m + (LK - LQ)
    ok = (offs_m[:, None] < LQ) & (offs_n[None, :] < LK)
    if HAS_LEFT:
        ok = ok & (offs_n[None, :] >= diag[:, None] - LEFT)
    if HAS_RIGHT:
        ok = ok & (offs_n[None, :] <= diag[:, None] + RIGHT)
    return ok


@triton.jit
def _load_rows(PTR, offs, offs_d, L, HEAD_D: tl.constexpr):
    """Rows `offs` of a contiguous (L, HEAD_D) matrix, zero-padded past L and HEAD_D."""
    mask = (offs[:, None] < L) & (offs_d[None, :] < HEAD_D)
    return tl.load(PTR + offs[:, None] * HEAD_D + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _bwd_bases(bh, H, GROUP, LQ, LK, HEAD_D: tl.constexpr):
    """Element offsets of (batch, query head) bh's query rows, of its key/value head's rows
    (GQA: head h reads h // GROUP), and of its row statistics."""
    bhk = (bh // H) * (H // GROUP) + (bh % H) // GROUP
    return bh.to(tl.int64) * LQ * HEAD_D, bhk.to(tl.int64) * LK * HEAD_D, bh.to(tl.int64) * LQ


@triton.jit
def _recompute_p_ds(q, k, v, do, lse, delta, offs_m, offs_n, qk_scale, LQ, LK, LEFT, RIGHT,
                    MASK, sm_m, sm_n, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                    MASK_KIND: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One (query tile, key tile): P from the saved LSE, and dS = P * (dO V^T - delta)."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    s = _masked_scores(s, MASK, offs_m, offs_n, sm_m, sm_n, LQ, LK, MASK_KIND)
    p = tl.math.exp2(s - lse[:, None] * LOG2E_C)
    p = tl.where(_visible(offs_m, offs_n, LQ, LK, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT), p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    return p, p * (dp - delta[:, None])


@triton.jit
def attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, MASK, sm_b, sm_h, sm_m, sm_n,
                         H, GROUP, LQ, LK, qk_scale, sm_scale,
                         LEFT, RIGHT, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_LEFT: tl.constexpr,
                         HAS_RIGHT: tl.constexpr, MASK_KIND: tl.constexpr,
                         DOT_PRECISION: tl.constexpr):
    """dK, dV of one key block for one query head (GQA: the launcher sums the group's heads).
    All tensors contiguous: Q/DO (B, Hq, Lq, D), K/V (B, Hk, Lk, D), DK/DV (B, Hq, Lk, D),
    LSE/DELTA (B, Hq, Lq). With P recomputed from the LSE:
        dV = P^T dO,  dS = P * (dO V^T - delta),  dK = dS^T Q * scale."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    q_base, kv_base, stat_base = _bwd_bases(bh, H, GROUP, LQ, LK, HEAD_D)
    MASK += (bh // H).to(tl.int64) * sm_b + (bh % H).to(tl.int64) * sm_h
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(K + kv_base, offs_n, offs_d, LK, HEAD_D)
    v = _load_rows(V + kv_base, offs_n, offs_d, LK, HEAD_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # Queries that can see a key of this block: diag(i) - LEFT <= j <= diag(i) + RIGHT.
    lo = 0
    hi = LQ
    if HAS_RIGHT:
        lo = tl.maximum(pid_n * BLOCK_N - RIGHT - (LK - LQ), 0)
        lo = (lo // BLOCK_M) * BLOCK_M
    if HAS_LEFT:
        hi = tl.minimum(pid_n * BLOCK_N + BLOCK_N - 1 + LEFT - (LK - LQ) + 1, LQ)
    for start in range(lo, hi, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        q = _load_rows(Q + q_base, offs_m, offs_d, LQ, HEAD_D)
        do = _load_rows(DO + q_base, offs_m, offs_d, LQ, HEAD_D)
        lse = tl.load(LSE + stat_base + offs_m, mask=offs_m < LQ, other=float("inf"))
        delta = tl.load(DELTA + stat_base + offs_m, mask=offs_m < LQ, other=0.0)
        p, ds = _recompute_p_ds(q, k, v, do, lse, delta, offs_m, offs_n, qk_scale, LQ, LK,
                                LEFT, RIGHT, MASK, sm_m, sm_n, HAS_LEFT, HAS_RIGHT, MASK_KIND,
                                DOT_PRECISION)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
    out = (bh.to(tl.int64) * LK * HEAD_D) + offs_n[:, None] * HEAD_D + offs_d[None, :]
    kv_mask = (offs_n[:, None] < LK) & (offs_d[None, :] < HEAD_D)
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, MASK, sm_b, sm_h, sm_m, sm_n,
                       H, GROUP, LQ, LK, qk_scale, sm_scale,
                       LEFT, RIGHT, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_LEFT: tl.constexpr,
                       HAS_RIGHT: tl.constexpr, MASK_KIND: tl.constexpr,
                       DOT_PRECISION: tl.constexpr):
    """dQ of one query block: dQ = dS K * scale, walking the same key tiles as the forward."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    q_base, kv_base, stat_base = _bwd_bases(bh, H, GROUP, LQ, LK, HEAD_D)
    MASK += (bh // H).to(tl.int64) * sm_b + (bh % H).to(tl.int64) * sm_h
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + q_base, offs_m, offs_d, LQ, HEAD_D)
    do = _load_rows(DO + q_base, offs_m, offs_d, LQ, HEAD_D)
    lse = tl.load(LSE + stat_base + offs_m, mask=offs_m < LQ, other=float("inf"))
    delta = tl.load(DELTA + stat_base + offs_m, mask=offs_m < LQ, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, hi = _key_range(pid_m, LQ, LK, LEFT, RIGHT, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k = _load_rows(K + kv_base, offs_n, offs_d, LK, HEAD_D)
        v = _load_rows(V + kv_base, offs_n, offs_d, LK, HEAD_D)
        _, ds = _recompute_p_ds(q, k, v, do, lse, delta, offs_m, offs_n, qk_scale, LQ, LK,
                                LEFT, RIGHT, MASK, sm_m, sm_n, HAS_LEFT, HAS_RIGHT, MASK_KIND,
                                DOT_PRECISION)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    q_mask = (offs_m[:, None] < LQ) & (offs_d[None, :] < HEAD_D)
    tl.store(DQ + q_base + offs_m[:, None] * HEAD_D + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)


# ----------------------------------------------------------------------------- launch helpers

def fwd_config(head_dim, is_cuda=True, dtype=torch.bfloat16):
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages) of the forward for a head dim."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if not is_cuda:
        return 16, 16, block_d, 4, 1  # the interpreter: small tiles run fastest
    if dtype == torch.float32:  # full-precision fp32 dots (no tensor cores): small tiles
        return 32, 32, block_d, 4, 1
    if block_d <= 64:
        return 128, 64, block_d, 4, 3
    if block_d <= 128:
        return 128, 64, block_d, 8, 3
    return 64, 32, block_d, 8, 2


def dot_precision(dtype):
    """fp32 inputs keep full precision ("ieee"): Triton's default on NVIDIA is TF32, ~1e-3
    relative error, far from what torch's fp32 attention gives. 16-bit inputs are unaffected."""
    return "ieee" if dtype == torch.float32 else "tf32"


def window_bounds(is_causal, window):
    """(has_left, left, has_right, right) for the kernel; causal is right = 0."""
    left, right = (None, None) if window is None else window
    if is_causal:
        right = 0 if right is None else min(right, 0)
    return left is not None, left or 0, right is not None, right or 0


def mask_args(attn_mask, b, hq, lq, lk, dummy):
    """(tensor, strides (b, h, m, n), MASK_KIND) for an attn_mask broadcastable to
    (B, Hq, Lq, Lk): broadcast dims get stride 0 (no copy); booleans are read as bytes."""
    if attn_mask is None:
        return dummy, (0, 0, 0, 0), 0
    m = attn_mask.expand(b, hq, lq, lk)
    if m.dtype == torch.bool:
        return m.view(torch.uint8), m.stride(), 1
    return m, m.stride(), 2


def attention_fwd(q, k, v, scale=None, is_causal=False, window=None, attn_mask=None):
    """q: (B, Hq, Lq, D), k/v: (B, Hk, Lk, D), Hq a multiple of Hk; attn_mask boolean (True =
    may attend) or additive, broadcastable to (B, Hq, Lq, Lk). Returns (out, lse)."""
    b, hq, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(b, hq, lq, device=q.device, dtype=torch.float32)
    if q.numel() == 0 or lk == 0:
        out.zero_()
        lse.fill_(float("inf"))
        return out, lse
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    block_m, block_n, block_d, warps, stages = fwd_config(d, q.is_cuda, q.dtype)
    has_left, left, has_right, right = window_bounds(is_causal, window)
    mask, mask_strides, mask_kind = mask_args(attn_mask, b, hq, lq, lk, q)
    grid = (triton.cdiv(lq, block_m), b * hq)
    attn_fwd_kernel[grid](
        q, k, v, out, lse, mask,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        *mask_strides, hq, hq // hk, lq, lk, scale * LOG2E, left, right,
        HEAD_D=d, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
        HAS_LEFT=has_left, HAS_RIGHT=has_right, MASK_KIND=mask_kind,
        DOT_PRECISION=dot_precision(q.dtype), num_warps=warps, num_stages=stages)
    return out, lse


def bwd_configs(head_dim, is_cuda=True, dtype=torch.bfloat16, kernel="dkdv"):
    """BLOCK_D and the (BLOCK_M, BLOCK_N, num_warps, num_stages) candidates of one backward
    kernel ("dkdv" or "dq"); on a GPU, triton.autotune times them at the first call per
    (head dim, mask kind, window, dtype) and keeps the fastest, elsewhere the first runs.

    Each program owns one side's tile (keys for dK/dV, queries for dQ) and loops over tiles of
    the other. Owning a wide tile re-reads the looped side (Q/dO, or K/V) for more rows at once;
    FlashAttention-2 and the Triton tutorial own 128 and loop over 32 on the H100. The 32 x 32
    tiles alone (the first candidate at head dim 128) ran the backward at ~0.6x SDPA-flash on
    the H100 (docs/attention.md). Every candidate compiles without spills on sm_90 and sm_80
    (tests/test_compile_checks.py): owning 128 keys at head dim 128 spills here (dK, dV, K, V
    tiles all live), so dK/dV owns 64."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if not is_cuda:
        return block_d, [(16, 16, 4, 1)]  # the interpreter: small tiles run fastest
    if dtype == torch.float32 or block_d > 128:
        return block_d, [(32, 32, 4, 1)]
    if block_d <= 64:
        configs = {"dkdv": [(64, 64, 4, 2), (32, 64, 4, 2)],
                   "dq": [(64, 64, 4, 2), (128, 32, 8, 2)]}
    else:
        configs = {"dkdv": [(32, 32, 4, 2), (32, 64, 8, 2)],
                   "dq": [(32, 32, 4, 2), (64, 32, 4, 2), (128, 32, 8, 1)]}
    return block_d, configs[kernel]


_TUNED = {}  # (kernel, candidates) -> the kernel wrapped in triton.autotune


def _bwd_kernel(kernel, candidates):
    """The backward kernel to launch and the launch options it still needs: the plain kernel
    with its one config, or (several candidates, on a GPU) its autotuned wrapper."""
    fn = attn_bwd_dkdv_kernel if kernel == "dkdv" else attn_bwd_dq_kernel
    if len(candidates) == 1:
        m, n, warps, stages = candidates[0]
        return fn, dict(BLOCK_M=m, BLOCK_N=n, num_warps=warps, num_stages=stages)
    key = (kernel, tuple(candidates))
    if key not in _TUNED:
        # Both kernels store (never accumulate into) their outputs, so the autotuner's repeated
        # launches leave the right result behind.
        _TUNED[key] = triton.autotune(
            configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                     for m, n, w, s in candidates],
            key=["HEAD_D", "MASK_KIND", "HAS_LEFT", "HAS_RIGHT"])(fn)
    return _TUNED[key], {}


def attention_bwd(do, q, k, v, out, lse, scale=None, is_causal=False, window=None,
                  attn_mask=None):
    """Gradients (dq, dk, dv) of attention_fwd; lse as it returned. No gradient flows to an
    additive attn_mask."""
    b, hq, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    q, k, v, out, do = (t.contiguous() for t in (q, k, v, out, do))
    dq = torch.zeros_like(q)
    # Per-query-head dK/dV; fp32 when a GQA group's heads are summed afterwards.
    head_dtype = q.dtype if hq == hk else torch.float32
    dk_heads = torch.zeros(b, hq, lk, d, device=q.device, dtype=head_dtype)
    dv_heads = torch.zeros(b, hq, lk, d, device=q.device, dtype=head_dtype)
    if q.numel() and lk:
        scale = 1.0 / math.sqrt(d) if scale is None else scale
        has_left, left, has_right, right = window_bounds(is_causal, window)
        delta = torch.empty(b, hq, lq, device=q.device, dtype=torch.float32)
        rows = b * hq * lq
        block_d, dkdv = bwd_configs(d, q.is_cuda, q.dtype, "dkdv")
        _, dq_configs = bwd_configs(d, q.is_cuda, q.dtype, "dq")
        attn_bwd_preprocess_kernel[(triton.cdiv(rows, 64),)](
            out, do, delta, rows, HEAD_D=d, BLOCK_M=64, BLOCK_D=block_d)
        mask, mask_strides, mask_kind = mask_args(attn_mask, b, hq, lq, lk, q)
        args = (mask, *mask_strides, hq, hq // hk, lq, lk, scale * LOG2E, scale, left, right)
        flags = dict(HEAD_D=d, BLOCK_D=block_d, HAS_LEFT=has_left, HAS_RIGHT=has_right,
                     MASK_KIND=mask_kind, DOT_PRECISION=dot_precision(q.dtype))
        fn, opts = _bwd_kernel("dkdv", dkdv)
        fn[lambda meta: (triton.cdiv(lk, meta["BLOCK_N"]), b * hq)](
            q, k, v, do, lse, delta, dk_heads, dv_heads, *args, **flags, **opts)
        fn, opts = _bwd_kernel("dq", dq_configs)
        fn[lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), b * hq)](
            q, k, v, do, lse, delta, dq, *args, **flags, **opts)
    # GQA: the query heads of a group all read one key/value head; their gradients add up.
    dk = dk_heads.view(b, hk, hq // hk, lk, d).sum(2).to(q.dtype)
    dv = dv_heads.view(b, hk, hq // hk, lk, d).sum(2).to(q.dtype)
    return dq, dk, dv
