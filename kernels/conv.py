"""Triton kernels for the convolution family, forward (docs/conv.md; the backward kernels are in
kernels/conv_backward.py). Three kernels, one launcher per op of csrc/ops.cpp:

* `conv2d_fwd_kernel`: conv2d as an IMPLICIT GEMM. With M = N*OH*OW output positions, N_gemm =
  O/groups output channels and K = (C/groups)*KH*KW, the (M x K) matrix of input patches (im2col)
  is never written: each program owns a BLOCK_M x BLOCK_N tile of the output and builds each
  BLOCK_M x BLOCK_K tile of patches in registers, from input coordinates

      ih = oh*s_h - pad_top + kh*d_h,   iw = ow*s_w - pad_left + kw*d_w     (masked: padding = 0)

  K is walked tap by tap ((kh, kw) outer, BLOCK_K input channels inner, as one loop so the
  software pipeliner sees every step), so a channels_last input gives contiguous K-runs. With
  fewer channels per group than BLOCK_K (the first layer's 3) every tap would be padded to a
  whole K tile, so K is then walked flat instead (FLAT_K: each column k = tap*C/groups + c
  decodes its own tap; 27 values of a 3-channel 3x3 conv fill one 32-wide tile instead of 9).
  tl.dot accumulates in fp32 (fp64 for fp64; fp32 inputs use input_precision="ieee": TF32 is
  ~1e-3 off). Groups are a program-id axis.
* `depthwise_conv2d_fwd_kernel`: groups == C (O = C * multiplier, output channel o reads input
  channel o // multiplier). No product to speak of (k*k MACs per output), so it is memory-bound: a
  program owns BLOCK_M positions x BLOCK_C channels, each of its k x k filter taps is loaded
  once into registers (KH, KW are constexpr; a row's KW taps are unrolled, the KH rows are a loop
  so a 31 x 31 kernel does not unroll 961 taps), and each of the k*k shifted input tiles it
  reads comes from DRAM once and from L1/L2 after that.
* `separable_conv2d_fwd_kernel`: depthwise -> dw activation -> pointwise 1x1 -> activation with the
  intermediate kept on chip. A program owns BLOCK_M positions x BLOCK_N output channels and walks
  the C mid channels in chunks of BLOCK_K: the depthwise chunk (BLOCK_M x BLOCK_K) is computed in
  registers and immediately multiplied (tl.dot) by the pointwise weight chunk (BLOCK_K x
  BLOCK_N). With O > BLOCK_N the depthwise part is recomputed per column block (it is cheap; the
  memory traffic of the unfused pair is what this removes).

The conv epilogue (both conv2d kernels): z = acc + bias[o] + residual; out = act(z) stored in x's
dtype; z is stored too where the backward needs it (gelu, silu).

The pooling epilogue (both conv2d kernels, POOL = 1 max / 2 avg over non-overlapping POOL_K x
POOL_K windows, floor mode; the conv2d_pool_fwd op, inference): the M index then enumerates
(n, pooled row, pooled col, window tap) with the tap fastest, so an M tile holds BLOCK_M // WIN
whole windows, WIN = POOL_K**2 rounded up to a power of two (4 for 2x2; 16 for 3x3, whose 7 pad
rows are masked: never loaded, -inf / 0 in the reduction). The tile's y = act(acc + bias) is
reshaped to (windows, WIN, channels) and reduced over the taps in registers; only the pooled
tile is stored, and conv positions outside the floor-mode windows are never computed.

Pointer arguments (every image-shaped tensor is read or written through its 4 strides, so NCHW and
channels_last alike; channels_last is the fast layout: contiguous channel runs):
    X (N, C, H, W)   RES, OUT, Z (N, O, OH, OW)   BIAS (O,)
    W (O, C/groups, KH, KW) through strides (swo, swc, swh, sww): the launcher lays it out as
      (KH, KW, C/groups, O) so a weight tile is contiguous along o (swo = 1)
    separable: DW_W (C, 1, KH, KW) as (KH, KW, C); PW_W (O, C) as (C, O); DW_B (C,), PW_B (O,)
Absent optional pointers get a dummy tensor and are never read (HAS_* flags are constexpr).
Offsets: n * stride_n in int64 (a batch can pass 2**31 elements); offsets inside one image in int32.
"""
import torch
import triton
import triton.language as tl

ACTIVATIONS = {"none": 0, "relu": 1, "gelu": 2, "silu": 3}  # the kernels' ACT codes
POOLS = {"max": 1, "avg": 2}  # the kernels' POOL codes (0: no pooling)
SAVES_Z = ("gelu", "silu")  # their derivative needs the pre-activation z
_SQRT1_2 = tl.constexpr(0.7071067811865476)


# ------------------------------------------------------------------------------ shared helpers

@triton.constexpr_function
def _acc_type(dtype):
    """The accumulation dtype for a tensor's element dtype: fp64 for fp64, fp32 otherwise."""
    return tl.float64 if dtype == tl.float64 else tl.float32


@triton.constexpr_function
def pool_window(pool_k):
    """M rows one pooling window takes in a tile: pool_k**2 rounded up to a power of two (1
    without pooling, 4 for 2x2, 16 for 3x3)."""
    return triton.next_power_of_2(pool_k * pool_k)


@triton.jit
def _activate(z, ACT: tl.constexpr):
    """act(z): 0 none, 1 relu, 2 gelu (exact: z * Phi(z), with erf), 3 silu (z * sigmoid z)."""
    y = z
    if ACT == 1:  # NaN stays NaN, as torch.relu (the default maximum is maxnum: NaN -> 0)
        y = tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif ACT == 2:
        y = 0.5 * z * (1.0 + tl.math.erf(z * _SQRT1_2))
    elif ACT == 3:
        y = z / (1.0 + tl.exp(-z))  # exp overflow for z << 0 gives z / inf = -0, no NaN
    return y


@triton.jit
def _max_propagate_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _positions(offs, OH, OW):
    """(n, oh, ow) of flattened positions offs = (n * OH + oh) * OW + ow."""
    ow = offs % OW
    t = offs // OW
    return t // OH, t % OH, ow


@triton.jit
def _tile_positions(pid_m, N, OH, OW, POOL_K: tl.constexpr, BLOCK_M: tl.constexpr):
    """(n, oh, ow, m_ok) of the BLOCK_M conv positions of M tile pid_m. POOL_K 1: positions
    pid_m * BLOCK_M + i of the flattened (n, oh, ow). Pooling: row i is tap t = i % WIN, t = dy *
    POOL_K + dx, of window p = pid_m * (BLOCK_M // WIN) + i // WIN of the floor-mode pooled output
    (N, OH // POOL_K, OW // POOL_K); pad taps t >= POOL_K**2 (3x3 windows in 16 rows) are masked."""
    if POOL_K == 1:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < N * OH * OW
        n, oh, ow = _positions(offs_m, OH, OW)
    else:
        WIN: tl.constexpr = pool_window(POOL_K)
        rows = tl.arange(0, BLOCK_M)
        p = pid_m * (BLOCK_M // WIN) + rows // WIN
        tap = rows % WIN
        PH = OH // POOL_K
        PW = OW // POOL_K
        m_ok = (p < N * PH * PW) & (tap < POOL_K * POOL_K)
        n, ph, pw = _positions(p, PH, PW)
        oh = ph * POOL_K + tap // POOL_K
        ow = pw * POOL_K + tap % POOL_K
    return n, oh, ow, m_ok


@triton.jit
def _flat_taps(k, C_G, KW):
    """(c, kh, kw) of flat reduction indices k = (kh * KW + kw) * C_G + c."""
    tap = k // C_G
    return k % C_G, tap // KW, tap % KW


@triton.jit
def _image_offsets(n, h, w, c, sn, sc, sh, sw):
    """(BLOCK_M, BLOCK_C) element offsets of positions (n, h, w) x channels c; int64."""
    return (n.to(tl.int64) * sn + h * sh + w * sw)[:, None] + (c * sc)[None, :]


@triton.jit
def _epilogue(acc, n, oh, ow, o, m_ok, o_ok, BIAS, RES, OUT, Z, srn, src, srh, srw,
              son, soc, soh, sow, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
              ACT: tl.constexpr, SAVE_Z: tl.constexpr):
    """z = acc + bias[o] + residual[n, o, oh, ow]; OUT = act(z) (and Z = z) for a tile of
    positions (n, oh, ow) x channels o."""
    mask = m_ok[:, None] & o_ok[None, :]
    z = acc
    if HAS_BIAS:
        z += tl.load(BIAS + o, mask=o_ok, other=0.0).to(acc.dtype)[None, :]
    if HAS_RES:
        res = tl.load(RES + _image_offsets(n, oh, ow, o, srn, src, srh, srw), mask=mask,
                      other=0.0)
        z += res.to(acc.dtype)
    offs = _image_offsets(n, oh, ow, o, son, soc, soh, sow)
    tl.store(OUT + offs, _activate(z, ACT).to(OUT.dtype.element_ty), mask=mask)
    if SAVE_Z:
        tl.store(Z + offs, z.to(Z.dtype.element_ty), mask=mask)


@triton.jit
def _pool_epilogue(acc, m_ok, o, o_ok, pid_m, N, OH, OW, BIAS, OUT, son, soc, soh, sow,
                   HAS_BIAS: tl.constexpr, ACT: tl.constexpr, POOL: tl.constexpr,
                   POOL_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """y = act(acc + bias[o]) for a tile laid out by _tile_positions (whole windows, tap
    fastest), reduced over each window's taps (POOL 1: max; 2: mean of the POOL_K**2 taps) and
    stored at the pooled positions: the full-resolution y never leaves registers."""
    WIN: tl.constexpr = pool_window(POOL_K)
    BLOCK_P: tl.constexpr = BLOCK_M // WIN
    z = acc
    if HAS_BIAS:
        z += tl.load(BIAS + o, mask=o_ok, other=0.0).to(acc.dtype)[None, :]
    y = _activate(z, ACT)
    if POOL == 1:  # a NaN in a window gives NaN, as torch's max_pool2d (tl.max drops NaNs)
        y = tl.where(m_ok[:, None], y, float("-inf"))
        pooled = tl.reduce(tl.reshape(y, (BLOCK_P, WIN, BLOCK_N)), 1, _max_propagate_nan)
    else:
        y = tl.where(m_ok[:, None], y, 0.0)
        pooled = tl.sum(tl.reshape(y, (BLOCK_P, WIN, BLOCK_N)), axis=1) / (POOL_K * POOL_K)
    p = pid_m * BLOCK_P + tl.arange(0, BLOCK_P)
    PH = OH // POOL_K
    PW = OW // POOL_K
    n, ph, pw = _positions(p, PH, PW)
    mask = (p < N * PH * PW)[:, None] & o_ok[None, :]
    tl.store(OUT + _image_offsets(n, ph, pw, o, son, soc, soh, sow),
             pooled.to(OUT.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- the kernels

@triton.jit
def conv2d_fwd_kernel(X, W, BIAS, RES, OUT, Z, N, H, WIDTH, C_G, OH, OW, O_G, KH, KW,
                      sxn, sxc, sxh, sxw, swo, swc, swh, sww, srn, src, srh, srw,
                      son, soc, soh, sow, SH, SW, PT, PL, DH, DW,
                      HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr,
                      SAVE_Z: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, FLAT_K: tl.constexpr,
                      DOT_PRECISION: tl.constexpr, POOL: tl.constexpr, POOL_K: tl.constexpr):
    """One BLOCK_M x BLOCK_N tile of group g's output: out[m, o] = act(sum_k A[m, k] W[k, o] +
    ...), k walked as (tap, channel chunk), or flat (FLAT_K: k = tap * C_G + c decoded per column,
    for few channels per group, e.g. the first layer's 3, which would pad every tap to a K tile).
    POOL 1/2 (POOL_K 2/3; else 0 and 1): the tile is BLOCK_M // WIN whole pooling windows and
    the pooled tile is stored (_pool_epilogue; no residual, no z).
    Grid: (cdiv(M, BLOCK_M), cdiv(O_G, BLOCK_N), groups), M = N*OH*OW or, pooled, N*PH*PW*WIN."""
    tl.static_assert((POOL == 0) == (POOL_K == 1))
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    n, oh, ow, m_ok = _tile_positions(pid_m, N, OH, OW, POOL_K, BLOCK_M)
    o_in_group = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_ok = o_in_group < O_G
    o = g * O_G + o_in_group
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = X + n.to(tl.int64) * sxn + g * C_G * sxc  # (BLOCK_M,) pointers: image, group
    ih0 = oh * SH - PT
    iw0 = ow * SW - PL
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=_acc_type(X.dtype.element_ty))
    if FLAT_K:
        k_total = C_G * KH * KW
        for k0 in range(0, k_total, BLOCK_K):
            k_ok = k0 + offs_k < k_total
            c, kh, kw = _flat_taps(k0 + offs_k, C_G, KW)
            ih = ih0[:, None] + (kh * DH)[None, :]
            iw = iw0[:, None] + (kw * DW)[None, :]
            ok = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < WIDTH)
            a = tl.load(x_rows[:, None] + ih * sxh + iw * sxw + (c * sxc)[None, :], mask=ok,
                        other=0.0)
            b = tl.load(W + (c * swc + kh * swh + kw * sww)[:, None] + (o * swo)[None, :],
                        mask=k_ok[:, None] & o_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    else:
        k_chunks = tl.cdiv(C_G, BLOCK_K)
        for step in range(KH * KW * k_chunks):
            tap = step // k_chunks
            kh = tap // KW
            kw = tap % KW
            c = (step % k_chunks) * BLOCK_K + offs_k
            c_ok = c < C_G
            ih = ih0 + kh * DH
            iw = iw0 + kw * DW
            row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < WIDTH)
            a = tl.load((x_rows + ih * sxh + iw * sxw)[:, None] + (c * sxc)[None, :],
                        mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(W + (c * swc + kh * swh + kw * sww)[:, None] + (o * swo)[None, :],
                        mask=c_ok[:, None] & o_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    if POOL == 0:
        _epilogue(acc, n, oh, ow, o, m_ok, o_ok, BIAS, RES, OUT, Z, srn, src, srh, srw,
                  son, soc, soh, sow, HAS_BIAS, HAS_RES, ACT, SAVE_Z)
    else:
        _pool_epilogue(acc, m_ok, o, o_ok, pid_m, N, OH, OW, BIAS, OUT, son, soc, soh, sow,
                       HAS_BIAS, ACT, POOL, POOL_K, BLOCK_M, BLOCK_N)


@triton.jit
def depthwise_conv2d_fwd_kernel(X, W, BIAS, RES, OUT, Z, N, H, WIDTH, OH, OW, O, MULT,
                                sxn, sxc, sxh, sxw, swo, swh, sww, srn, src, srh, srw,
                                son, soc, soh, sow, SH, SW, PT, PL, DH, DW,
                                KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr,
                                HAS_RES: tl.constexpr, ACT: tl.constexpr, SAVE_Z: tl.constexpr,
                                BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                                POOL: tl.constexpr, POOL_K: tl.constexpr):
    """Depthwise conv (groups = C), direct: BLOCK_M positions x BLOCK_C output channels; output
    channel o reads input channel o // MULT. POOL as in conv2d_fwd_kernel.
    Grid: (cdiv(M, BLOCK_M), cdiv(O, BLOCK_C))."""
    tl.static_assert((POOL == 0) == (POOL_K == 1))
    pid_m = tl.program_id(0)
    n, oh, ow, m_ok = _tile_positions(pid_m, N, OH, OW, POOL_K, BLOCK_M)
    o = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    o_ok = o < O
    x_chan = X + (n.to(tl.int64) * sxn)[:, None] + ((o // MULT) * sxc)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=_acc_type(X.dtype.element_ty))
    for kh in range(KH):  # a loop; the KW taps of a row are unrolled
        ih = oh * SH - PT + kh * DH
        h_ok = m_ok & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = ow * SW - PL + kw * DW
            ok = h_ok & (iw >= 0) & (iw < WIDTH)
            w = tl.load(W + o * swo + kh * swh + kw * sww, mask=o_ok, other=0.0)
            x = tl.load(x_chan + (ih * sxh + iw * sxw)[:, None],
                        mask=ok[:, None] & o_ok[None, :], other=0.0)
            acc += x.to(acc.dtype) * w.to(acc.dtype)[None, :]
    if POOL == 0:
        _epilogue(acc, n, oh, ow, o, m_ok, o_ok, BIAS, RES, OUT, Z, srn, src, srh, srw,
                  son, soc, soh, sow, HAS_BIAS, HAS_RES, ACT, SAVE_Z)
    else:
        _pool_epilogue(acc, m_ok, o, o_ok, pid_m, N, OH, OW, BIAS, OUT, son, soc, soh, sow,
                       HAS_BIAS, ACT, POOL, POOL_K, BLOCK_M, BLOCK_C)


@triton.jit
def separable_conv2d_fwd_kernel(X, DW_W, DW_B, PW_W, PW_B, OUT, N, C, H, WIDTH, OH, OW, O,
                                sxn, sxc, sxh, sxw, sdc, sdh, sdw, spo, spc,
                                son, soc, soh, sow, SH, SW, PT, PL, DH, DW,
                                KH: tl.constexpr, KW: tl.constexpr, HAS_DW_BIAS: tl.constexpr,
                                DW_ACT: tl.constexpr, HAS_PW_BIAS: tl.constexpr,
                                ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """out = act(dw_act(depthwise(x) + dw_b) @ pw + pw_b) for BLOCK_M positions x BLOCK_N output
    channels; mid lives in registers one BLOCK_K-channel chunk at a time.
    Grid: (cdiv(M, BLOCK_M), cdiv(O, BLOCK_N))."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < N * OH * OW
    n, oh, ow = _positions(offs_m, OH, OW)
    o = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    o_ok = o < O
    x_img = X + n.to(tl.int64) * sxn
    acc_ty = _acc_type(X.dtype.element_ty)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_ty)
    for c0 in range(0, C, BLOCK_K):
        c = c0 + tl.arange(0, BLOCK_K)
        c_ok = c < C
        mid = tl.zeros((BLOCK_M, BLOCK_K), dtype=acc_ty)
        for kh in range(KH):  # a loop; the KW taps of a row are unrolled
            ih = oh * SH - PT + kh * DH
            h_ok = m_ok & (ih >= 0) & (ih < H)
            for kw in tl.static_range(KW):
                iw = ow * SW - PL + kw * DW
                ok = h_ok & (iw >= 0) & (iw < WIDTH)
                w = tl.load(DW_W + c * sdc + kh * sdh + kw * sdw, mask=c_ok, other=0.0)
                x = tl.load((x_img + ih * sxh + iw * sxw)[:, None] + (c * sxc)[None, :],
                            mask=ok[:, None] & c_ok[None, :], other=0.0)
                mid += x.to(acc_ty) * w.to(acc_ty)[None, :]
        if HAS_DW_BIAS:
            mid += tl.load(DW_B + c, mask=c_ok, other=0.0).to(acc_ty)[None, :]
        mid = _activate(mid, DW_ACT)  # padded channels: act(0) = 0 for every activation
        pw = tl.load(PW_W + (c * spc)[:, None] + (o * spo)[None, :],
                     mask=c_ok[:, None] & o_ok[None, :], other=0.0)
        acc = tl.dot(mid.to(pw.dtype), pw, acc, input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    _epilogue(acc, n, oh, ow, o, m_ok, o_ok, PW_B, OUT, OUT, OUT, 0, 0, 0, 0,
              son, soc, soh, sow, HAS_PW_BIAS, False, ACT, False)


# ----------------------------------------------------------------------------- launch helpers

def memory_format(t):
    """The layout of x-shaped outputs, the glue's rule (leedl_fast/_ops/conv.py): channels_last
    when t is contiguous as channels_last and not as NCHW, NCHW-contiguous otherwise."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def empty_like_format(like, shape, dtype=None):
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device,
                       memory_format=memory_format(like))


def dot_precision(dtype):
    """fp32 (and fp64) inputs keep full precision: Triton's default on NVIDIA is TF32."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def out_size(size, kernel, stride, pad_before, pad_after, dilation):
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def _pow2_between(n, lo, hi):
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def vector_loads(t, channels):
    """Whether the JIT will see a channels_last tensor's K-runs as 16-byte aligned: channel
    stride 1 and the other strides and the channel count multiples of 16 (Triton specializes
    int arguments divisible by 16). Then loads are vectorized and take far fewer registers."""
    return t.stride(1) == 1 and channels % 16 == 0 and all(
        s % 16 == 0 for s in (t.stride(0), t.stride(2), t.stride(3)))


def k_tile(dtype, is_cuda=True):
    """BLOCK_K of the conv GEMMs: 32 for 16-bit tensor-core dots, 16 otherwise."""
    return 32 if is_cuda and dtype in (torch.float16, torch.bfloat16) else 16


def use_flat_k(channels_per_group, tile):
    """Walk the reduction flat over (tap, channel) when one tap's channels do not fill a tile
    (the first layer's 3 channels would pad each of the k*k taps to BLOCK_K). Read at call time:
    tests force either path."""
    return channels_per_group < tile


def fwd_config(out_per_group, dtype, is_cuda=True, vector=True, flat=False):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) of conv2d_fwd_kernel (and of the dx
    GEMM, with C/groups for out_per_group). Sized with tests/test_compile_checks.py so that ptxas
    reports no spills on sm_90 and sm_80: without vector loads (NCHW, odd channel counts) every
    element of the A tile has its own address, so the M tile is halved; the flat reduction
    decodes 2-D coordinates per element, so it takes 8 warps. conv2d_pool_fwd uses the same
    tiles (every BLOCK_M holds whole windows: 4 or 16 rows); its epilogue has no residual and
    no z, so it takes fewer registers, and the window reduction reuses the pipeline's shared
    memory (compile-check rows *-max2 / *-avg3)."""
    block_k = k_tile(dtype, is_cuda)
    if not is_cuda:
        return 64, 16, block_k, 4, 1  # the interpreter: few programs (each runs as Python)
    warps = 8 if flat else 4
    if dtype == torch.float64:
        return 32, 32, block_k, warps, 1
    if dtype == torch.float32:  # ieee dots (no tensor cores): FMA tiles
        return 64, _pow2_between(out_per_group, 32, 64), block_k, warps, 2
    block_n = _pow2_between(out_per_group, 32, 128)
    return 128 if vector else 64, block_n, block_k, 8 if block_n == 128 else warps, 3


def depthwise_config(dtype, is_cuda=True):
    """(BLOCK_M, BLOCK_C, num_warps) of depthwise_conv2d_fwd_kernel."""
    if not is_cuda:
        return 64, 16, 4
    return 64, 32, 8  # 4 warps spill (7x7 taps unrolled at 64 x 32; 8 bytes at 32 x 32)


def separable_config(out_channels, dtype, is_cuda=True):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) of separable_conv2d_fwd_kernel."""
    if not is_cuda:
        return 64, 16, 16, 4, 1
    if dtype in (torch.float32, torch.float64):
        return 32, _pow2_between(out_channels, 32, 64), 16, 4, 1
    return 64, _pow2_between(out_channels, 32, 128), 32, 8, 2


_INT32_MAX = 2**31 - 1


def check_index_range(op, images, positions, reach=1):
    """The kernels compute offsets inside one image in int32 (only the image's n * stride_n is
    int64), and walk the flattened (n, h, w) positions of the batch in int32 -- a backward
    reduction chunk's end (start + rows) reaches up to twice their count (reach=2). Past that an
    offset would wrap and the kernel read or write outside the tensors: refuse such sizes with a
    clear error, before anything is allocated. images: tensors (their strides count) or the
    (N, C, H, W) shapes of the contiguous outputs; positions: the counts the kernels walk."""
    for t in images:
        if isinstance(t, torch.Tensor):
            extent = 0 if t.numel() == 0 else 1 + sum(
                (size - 1) * abs(st) for size, st in zip(t.shape[1:], t.stride()[1:]))
            shape = tuple(t.shape)
        else:
            extent, shape = t[1] * t[2] * t[3], tuple(t)
        if extent > _INT32_MAX:
            raise ValueError(f"leedl_fast.{op}: one image of a {shape} tensor spans {extent} "
                             f"elements; the Triton kernels index an image in int32 (at most "
                             f"2**31 - 1): split the image or use the cpu backend")
    for count in positions:
        if reach * count + (1 << 16) > _INT32_MAX:
            raise ValueError(f"leedl_fast.{op}: {count} positions (N * H * W) are too many for "
                             f"the Triton kernels' int32 position index (at most "
                             f"{(_INT32_MAX - (1 << 16)) // reach}): split the batch")


def _strides4(t):
    return tuple(t.stride()) if t is not None else (0, 0, 0, 0)


def weight_tiles(weight):
    """weight (O, C/groups, KH, KW) as a view of the same shape whose memory is laid out (KH, KW,
    C/groups, O): the kernels' weight tiles are then contiguous along o. One small copy per call
    (the weight is tiny next to the activations)."""
    return weight.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)


def _conv_out_hw(x, weight, stride, padding, dilation):
    top, bottom, left, right = padding
    return (out_size(x.shape[2], weight.shape[2], stride[0], top, bottom, dilation[0]),
            out_size(x.shape[3], weight.shape[3], stride[1], left, right, dilation[1]))


def _launch_fwd(x, weight, bias, residual, out, z, conv_hw, stride, padding, dilation, groups,
                activation, pool=None, pool_size=1):
    """Run the forward kernel that fits (depthwise for groups == C, else the implicit GEMM) into
    out (and z); with pool the M tiles are whole pool_size x pool_size windows of the
    (oh, ow) = conv_hw conv output and out is the pooled (N, O, oh // k, ow // k)."""
    n, c, h, w = x.shape
    o, c_g, kh, kw = weight.shape
    oh, ow = conv_hw
    top, _, left, _ = padding
    save_z = z.numel() > 0
    # M rows: conv positions, or pooled positions x the window's rows (a power of two >= k*k).
    m_rows = n * oh * ow if pool is None else n * (oh // pool_size) * (ow // pool_size)
    win = pool_window(pool_size)
    common = dict(HAS_BIAS=bias is not None, HAS_RES=residual is not None,
                  ACT=ACTIVATIONS[activation], SAVE_Z=save_z, POOL=POOLS.get(pool, 0),
                  POOL_K=pool_size)
    tensors = (bias if bias is not None else out, residual if residual is not None else out,
               out, z if save_z else out)
    geometry = (stride[0], stride[1], top, left, dilation[0], dilation[1])
    w_t = weight_tiles(weight)
    if groups == c:
        block_m, block_c, warps = depthwise_config(x.dtype, x.is_cuda)
        sw = w_t.stride()
        grid = (triton.cdiv(m_rows, block_m // win), triton.cdiv(o, block_c))
        depthwise_conv2d_fwd_kernel[grid](
            x, w_t, *tensors, n, h, w, oh, ow, o, o // c, *x.stride(), sw[0], sw[2], sw[3],
            *_strides4(residual), *out.stride(), *geometry, KH=kh, KW=kw, **common,
            BLOCK_M=block_m, BLOCK_C=block_c, num_warps=warps)
        return
    flat = use_flat_k(c_g, k_tile(x.dtype, x.is_cuda))
    block_m, block_n, block_k, warps, stages = fwd_config(o // groups, x.dtype, x.is_cuda,
                                                          vector_loads(x, c_g), flat)
    grid = (triton.cdiv(m_rows, block_m // win), triton.cdiv(o // groups, block_n), groups)
    conv2d_fwd_kernel[grid](
        x, w_t, *tensors, n, h, w, c_g, oh, ow, o // groups, kh, kw, *x.stride(),
        *w_t.stride(), *_strides4(residual), *out.stride(), *geometry, **common,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, FLAT_K=flat,
        DOT_PRECISION=dot_precision(x.dtype), num_warps=warps, num_stages=stages)


def conv2d_fwd(x, weight, bias, residual, stride, padding, dilation, groups, activation):
    """The conv2d_fwd op: (out, z), out = act(conv(x, weight) + bias + residual) in x's dtype and
    memory format; z saved only for gelu/silu (else a (0,) tensor). padding (top, bottom, left,
    right). Depthwise (groups == C) runs the direct kernel, everything else the implicit GEMM."""
    oh, ow = _conv_out_hw(x, weight, stride, padding, dilation)
    out_shape = (x.shape[0], weight.shape[0], oh, ow)
    check_index_range("conv2d", (x, residual, out_shape) if residual is not None else
                      (x, out_shape), (x.shape[0] * oh * ow,))
    out = empty_like_format(x, out_shape)
    save_z = activation in SAVES_Z
    z = empty_like_format(x, out.shape) if save_z else x.new_empty(0)
    if out.numel() == 0:
        return out, z
    _launch_fwd(x, weight, bias, residual, out, z, (oh, ow), stride, padding, dilation, groups,
                activation)
    return out, z


def conv2d_pool_fwd(x, weight, bias, stride, padding, dilation, groups, activation, pool,
                    pool_size):
    """The conv2d_pool_fwd op (inference): pool(act(conv(x, weight) + bias)), pool "max" or
    "avg" over non-overlapping pool_size x pool_size windows (stride pool_size, floor mode), out
    (N, O, OH // pool_size, OW // pool_size) in x's dtype and memory format. The conv kernels'
    pooling epilogue: the full-resolution activation is never written. The glue has checked
    OH, OW >= pool_size, pool in POOLS and pool_size in (2, 3)."""
    oh, ow = _conv_out_hw(x, weight, stride, padding, dilation)
    out_shape = (x.shape[0], weight.shape[0], oh // pool_size, ow // pool_size)
    check_index_range("conv2d", (x, out_shape),
                      (out_shape[0] * out_shape[2] * out_shape[3] * pool_window(pool_size),))
    out = empty_like_format(x, out_shape)
    if out.numel() == 0:
        return out
    _launch_fwd(x, weight, bias, None, out, x.new_empty(0), (oh, ow), stride, padding, dilation,
                groups, activation, pool, pool_size)
    return out


def separable_conv2d_fwd(x, dw_weight, dw_bias, dw_activation, pw_weight, pw_bias, activation,
                         stride, padding, dilation):
    """The separable_conv2d_fwd op: act(pointwise(dw_act(depthwise(x) + dw_bias)) + pw_bias),
    dw_weight (C, 1, KH, KW), pw_weight (O, C, 1, 1); out in x's dtype and memory format."""
    n, c, h, w = x.shape
    kh, kw = dw_weight.shape[2:]
    o = pw_weight.shape[0]
    top, bottom, left, right = padding
    oh = out_size(h, kh, stride[0], top, bottom, dilation[0])
    ow = out_size(w, kw, stride[1], left, right, dilation[1])
    check_index_range("separable_conv2d", (x, (n, o, oh, ow)), (n * oh * ow,))
    out = empty_like_format(x, (n, o, oh, ow))
    if out.numel() == 0:
        return out
    dw_t = weight_tiles(dw_weight)
    sd = dw_t.stride()
    pw_t = pw_weight.reshape(o, c).t().contiguous().t()  # (O, C), laid out (C, O)
    block_m, block_n, block_k, warps, stages = separable_config(o, x.dtype, x.is_cuda)
    grid = (triton.cdiv(n * oh * ow, block_m), triton.cdiv(o, block_n))
    separable_conv2d_fwd_kernel[grid](
        x, dw_t, dw_bias if dw_bias is not None else dw_t, pw_t,
        pw_bias if pw_bias is not None else pw_t, out, n, c, h, w, oh, ow, o, *x.stride(),
        sd[0], sd[2], sd[3], *pw_t.stride(), *out.stride(), stride[0], stride[1], top,
        left, dilation[0], dilation[1], KH=kh, KW=kw, HAS_DW_BIAS=dw_bias is not None,
        DW_ACT=ACTIVATIONS[dw_activation], HAS_PW_BIAS=pw_bias is not None,
        ACT=ACTIVATIONS[activation], BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        DOT_PRECISION=dot_precision(x.dtype), num_warps=warps, num_stages=stages)
    return out


def conv2d_bwd(dout, x, weight, out, z, stride, padding, dilation, groups, activation,
               output_mask):
    """The conv2d_bwd op: (dx, dweight, dbias, dresidual); kernels/conv_backward.py."""
    from . import conv_backward  # imported here: conv_backward imports this module's helpers

    return conv_backward.conv2d_bwd(dout, x, weight, out, z, stride, padding, dilation, groups,
                                    activation, output_mask)
