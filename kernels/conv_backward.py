"""Triton kernels for the convolution family, backward (docs/conv.md; forward and the shared
helpers: kernels/conv.py). With dz = dout * act'(z):

    dbias = sum_{n,i,j} dz,   dresidual = dz,
    dx[n, c, ih, iw] = sum_{o, kh, kw} dz[n, o, oh, ow] w[o, c, kh, kw]
                       where oh*s_h = ih + pad_top - kh*d_h (and the same along w),
    dw[o, c, kh, kw] = sum_{n, oh, ow} dz[n, o, oh, ow] x[n, c, oh*s_h - pad_top + kh*d_h, ...].

Kernels:
* `conv2d_bwd_dz_kernel`: dz = dout * act'(z) (relu reads out > 0, gelu/silu read z), stored in
  the input dtype, and the per-program partial dbias in fp32 (summed afterwards: no atomics,
  deterministic). With no activation and no dbias/dresidual wanted it is skipped (dz = dout).
* `conv2d_bwd_dx_kernel`: dx as an implicit GEMM of dz with the weight (the transposed conv):
  M = N*H*W input positions, N_gemm = C/groups, K = (O/groups)*KH*KW. A stride s makes a tap
  contribute only to input positions ih with (ih + pad - kh*d) divisible by s, so the input
  positions are split into s_h*s_w phases (ih mod s_h, iw mod s_w), a program-id axis: inside a
  phase, a tap either contributes to every position or to none, and the taps that do not are
  skipped whole (a scalar branch) instead of multiplying masked zeros.
* `conv2d_bwd_dw_kernel`: dweight as an implicit GEMM over M: (O/groups) x (C/groups) per tap
  (or, for few channels per group, x the flat (tap, channel) columns, as the forward's FLAT_K),
  reducing over the N*OH*OW positions, which are split into chunks (a program-id axis) whose fp32
  partials are summed afterwards -- deterministic, no atomics.
* `depthwise_conv2d_bwd_dx_kernel`: depthwise dx, direct (elementwise, like the forward).
* `depthwise_conv2d_bwd_dw_kernel`: depthwise dweight: a program owns BLOCK_C channels and a chunk
  of positions and accumulates all taps at once in a (BLOCK_M, BLOCK_T, BLOCK_C) register tile
  (BLOCK_T = next power of two >= KH*KW), so dz is read once; partials summed afterwards.

Pointer arguments (image-shaped tensors through their 4 strides):
    DOUT, OUT, Z, DZ (N, O, OH, OW)   X, DX (N, C, H, W)
    W (O, C/groups, KH, KW) through strides (the launcher lays it out so tiles are contiguous)
    DB_PART (P, O) fp32   DW_PART (P, O, C/groups, KH*KW) fp32 / depthwise (P, KH*KW, O) fp32
"""
import torch
import triton
import triton.language as tl

from . import conv
from .conv import (ACTIVATIONS, _acc_type, _flat_taps, _image_offsets, _positions, dot_precision,
                   empty_like_format, fwd_config, memory_format, vector_loads, weight_tiles)

_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
_SQRT1_2 = tl.constexpr(0.7071067811865476)


@triton.jit
def _activation_grad(z, ACT: tl.constexpr):
    """d act / dz for gelu (2) and silu (3)."""
    if ACT == 2:
        g = 0.5 * (1.0 + tl.math.erf(z * _SQRT1_2)) + z * tl.exp(-0.5 * z * z) * _INV_SQRT_2PI
    else:
        s = 1.0 / (1.0 + tl.exp(-z))
        g = s * (1.0 + z * (1.0 - s))
    return g


@triton.jit
def conv2d_bwd_dz_kernel(DOUT, SAVED, DZ, DB_PART, M, O, OH, OW, rows_per_program,
                         sgn, sgc, sgh, sgw, ssn, ssc, ssh, ssw, sdn, sdc, sdh, sdw,
                         ACT: tl.constexpr, STORE_DZ: tl.constexpr, HAS_DBIAS: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dz for rows_per_program positions x BLOCK_N channels; SAVED is out (relu) or z (gelu,
    silu). DB_PART[pid, o] = this program's sum of dz. Grid: (P, cdiv(O, BLOCK_N))."""
    pid = tl.program_id(0)
    o = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    o_ok = o < O
    acc_ty = _acc_type(DOUT.dtype.element_ty)
    part = tl.zeros((BLOCK_N,), dtype=acc_ty)
    start = pid * rows_per_program
    for m0 in range(start, tl.minimum(start + rows_per_program, M), BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        n, oh, ow = _positions(offs_m, OH, OW)
        mask = (offs_m < M)[:, None] & o_ok[None, :]
        g = tl.load(DOUT + _image_offsets(n, oh, ow, o, sgn, sgc, sgh, sgw), mask=mask,
                    other=0.0).to(acc_ty)
        if ACT != 0:
            s = tl.load(SAVED + _image_offsets(n, oh, ow, o, ssn, ssc, ssh, ssw), mask=mask,
                        other=0.0).to(acc_ty)
            if ACT == 1:
                g = tl.where(s > 0, g, 0.0)
            else:
                g = g * _activation_grad(s, ACT)
        if STORE_DZ:
            tl.store(DZ + _image_offsets(n, oh, ow, o, sdn, sdc, sdh, sdw),
                     g.to(DZ.dtype.element_ty), mask=mask)
        if HAS_DBIAS:
            part += tl.sum(g, axis=0)
    if HAS_DBIAS:
        tl.store(DB_PART + pid.to(tl.int64) * O + o, part, mask=o_ok)


@triton.jit
def conv2d_bwd_dx_kernel(DZ, W, DX, N, H, WIDTH, C_G, OH, OW, O_G, KH, KW,
                         sdn, sdc, sdh, sdw, swo, swc, swh, sww, sxn, sxc, sxh, sxw,
                         SH, SW, PT, PL, DH, DW, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dx of BLOCK_M input positions of one stride phase x BLOCK_N channels of group g.
    Grid: (cdiv(N * cdiv(H, SH) * cdiv(W, SW), BLOCK_M), cdiv(C_G, BLOCK_N), groups*SH*SW)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2) // (SH * SW)
    phase = tl.program_id(2) % (SH * SW)
    rh = phase // SW
    rw = phase % SW
    # This phase's positions: ih = rh + i*SH, iw = rw + j*SW (i, j over a grid of the phase 0 size).
    hp = tl.cdiv(H, SH)
    wp = tl.cdiv(WIDTH, SW)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n, i, j = _positions(offs_m, hp, wp)
    ih = rh + i * SH
    iw = rw + j * SW
    m_ok = (offs_m < N * hp * wp) & (ih < H) & (iw < WIDTH)
    c_in_group = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = c_in_group < C_G
    offs_k = tl.arange(0, BLOCK_K)
    dz_rows = DZ + n.to(tl.int64) * sdn + g * O_G * sdc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=_acc_type(DZ.dtype.element_ty))
    k_chunks = tl.cdiv(O_G, BLOCK_K)
    for step in range(KH * KW * k_chunks):
        tap = step // k_chunks
        kh = tap // KW
        kw = tap % KW
        th = rh + PT - kh * DH  # oh = i + th / SH when SH divides th (C-style % and / are
        tw = rw + PL - kw * DW  # exact then, for negative th too)
        if (th % SH == 0) & (tw % SW == 0):
            oh = i + th // SH
            ow = j + tw // SW
            row_ok = m_ok & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
            o = (step % k_chunks) * BLOCK_K + offs_k
            o_ok = o < O_G
            a = tl.load((dz_rows + oh * sdh + ow * sdw)[:, None] + (o * sdc)[None, :],
                        mask=row_ok[:, None] & o_ok[None, :], other=0.0)
            b = tl.load(W + ((g * O_G + o) * swo + kh * swh + kw * sww)[:, None] +
                        (c_in_group * swc)[None, :], mask=o_ok[:, None] & c_ok[None, :],
                        other=0.0)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    offs = _image_offsets(n, ih, iw, g * C_G + c_in_group, sxn, sxc, sxh, sxw)
    tl.store(DX + offs, acc.to(DX.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


@triton.jit
def conv2d_bwd_dw_kernel(DZ, X, DW_PART, N, H, WIDTH, C_G, OH, OW, O_G, KH, KW, m_per_chunk,
                         chunks, sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw, SH, SW, PT, PL, DH, DW,
                         BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
                         FLAT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Partial dweight of BLOCK_O output channels x BLOCK_C columns of group g, summed over one
    chunk of positions: DW_PART[chunk, o, c, tap]. A column is an input channel at one tap, or
    (FLAT, for few channels per group) any (tap, channel) pair j = tap * C_G + c.
    Grid: (cdiv(O_G, BLOCK_O), cdiv(C_G, BLOCK_C) * KH*KW or cdiv(C_G*KH*KW, BLOCK_C),
    groups * chunks)."""
    if FLAT:
        j = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = j < C_G * KH * KW
        c_in_group, kh, kw = _flat_taps(j, C_G, KW)
        col_offs = c_in_group * (KH * KW) + kh * KW + kw  # in a row of DW_PART[chunk, o]
    else:
        c_blocks = tl.cdiv(C_G, BLOCK_C)
        tap = tl.program_id(1) // c_blocks
        kh = tap // KW
        kw = tap % KW
        c_in_group = (tl.program_id(1) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = c_in_group < C_G
        col_offs = c_in_group * (KH * KW) + tap
    g = tl.program_id(2) // chunks
    chunk = tl.program_id(2) % chunks
    o_in_group = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = o_in_group < O_G
    x_chan = (g * C_G + c_in_group) * sxc
    m_total = N * OH * OW
    acc = tl.zeros((BLOCK_O, BLOCK_C), dtype=_acc_type(X.dtype.element_ty))
    start = chunk * m_per_chunk
    for m0 in range(start, tl.minimum(start + m_per_chunk, m_total), BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < m_total
        n, oh, ow = _positions(offs_m, OH, OW)
        img = n.to(tl.int64)
        a = tl.load(DZ + (img * sdn + oh * sdh + ow * sdw)[None, :] +
                    ((g * O_G + o_in_group) * sdc)[:, None],
                    mask=o_ok[:, None] & m_ok[None, :], other=0.0)  # dz^T (BLOCK_O, BLOCK_M)
        if FLAT:  # every column has its own tap: 2-D input coordinates
            ih = (oh * SH - PT)[:, None] + (kh * DH)[None, :]
            iw = (ow * SW - PL)[:, None] + (kw * DW)[None, :]
            ok = m_ok[:, None] & col_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (
                iw < WIDTH)
            b = tl.load(X + (img * sxn)[:, None] + ih * sxh + iw * sxw + x_chan[None, :],
                        mask=ok, other=0.0)
        else:
            ih = oh * SH - PT + kh * DH
            iw = ow * SW - PL + kw * DW
            row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < WIDTH)
            b = tl.load(X + (img * sxn + ih * sxh + iw * sxw)[:, None] + x_chan[None, :],
                        mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    groups = tl.num_programs(2) // chunks
    row = chunk.to(tl.int64) * (groups * O_G) + g * O_G + o_in_group  # DW_PART[chunk, o]
    tl.store(DW_PART + row[:, None] * (C_G * KH * KW) + col_offs[None, :], acc,
             mask=o_ok[:, None] & col_ok[None, :])


@triton.jit
def depthwise_conv2d_bwd_dx_kernel(DZ, W, DX, N, H, WIDTH, C, OH, OW, MULT, KH, KW,
                                   sdn, sdc, sdh, sdw, swo, swh, sww, sxn, sxc, sxh, sxw,
                                   SH, SW, PT, PL, DH, DW, BLOCK_M: tl.constexpr,
                                   BLOCK_C: tl.constexpr):
    """Depthwise dx of BLOCK_M input positions x BLOCK_C channels: channel c collects its MULT
    output channels c*MULT + j over every tap. Grid: (cdiv(N*H*W, BLOCK_M), cdiv(C, BLOCK_C))."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < N * H * WIDTH
    n, ih, iw = _positions(offs_m, H, WIDTH)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=_acc_type(DZ.dtype.element_ty))
    for kh in range(KH):
        th = ih + PT - kh * DH  # oh = th / SH where that divides and lands in [0, OH)
        oh = th // SH
        h_ok = m_ok & (th >= 0) & (th % SH == 0) & (oh < OH)
        for kw in range(KW):
            tw = iw + PL - kw * DW
            ow = tw // SW
            ok = h_ok & (tw >= 0) & (tw % SW == 0) & (ow < OW)
            for j in range(MULT):
                o = c * MULT + j
                w = tl.load(W + o * swo + kh * swh + kw * sww, mask=c_ok, other=0.0)
                dz = tl.load(DZ + _image_offsets(n, oh, ow, o, sdn, sdc, sdh, sdw),
                             mask=ok[:, None] & c_ok[None, :], other=0.0)
                acc += dz.to(acc.dtype) * w.to(acc.dtype)[None, :]
    tl.store(DX + _image_offsets(n, ih, iw, c, sxn, sxc, sxh, sxw), acc.to(DX.dtype.element_ty),
             mask=m_ok[:, None] & c_ok[None, :])


@triton.jit
def depthwise_conv2d_bwd_dw_kernel(DZ, X, DW_PART, N, H, WIDTH, OH, OW, O, MULT, KH, KW,
                                   m_per_chunk, sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw,
                                   SH, SW, PT, PL, DH, DW, BLOCK_M: tl.constexpr,
                                   BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """Partial depthwise dweight of BLOCK_C output channels over one chunk of positions, every
    tap t = kh*KW + kw at once: DW_PART[chunk, t, o]. Grid: (cdiv(O, BLOCK_C), chunks)."""
    o = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    o_ok = o < O
    chunk = tl.program_id(1)
    t = tl.arange(0, BLOCK_T)
    kh = t // KW
    kw = t % KW
    t_ok = t < KH * KW
    m_total = N * OH * OW
    x_chan = ((o // MULT) * sxc)[None, None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_T, BLOCK_C), dtype=_acc_type(X.dtype.element_ty))
    start = chunk * m_per_chunk
    for m0 in range(start, tl.minimum(start + m_per_chunk, m_total), BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < m_total
        n, oh, ow = _positions(offs_m, OH, OW)
        dz = tl.load(DZ + _image_offsets(n, oh, ow, o, sdn, sdc, sdh, sdw),
                     mask=m_ok[:, None] & o_ok[None, :], other=0.0)
        ih = (oh * SH - PT)[:, None] + (kh * DH)[None, :]  # (BLOCK_M, BLOCK_T)
        iw = (ow * SW - PL)[:, None] + (kw * DW)[None, :]
        ok = m_ok[:, None] & t_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < WIDTH)
        rows = (n.to(tl.int64) * sxn)[:, None] + ih * sxh + iw * sxw
        x = tl.load(X + rows[:, :, None] + x_chan, mask=ok[:, :, None] & o_ok[None, None, :],
                    other=0.0)
        acc += x.to(acc.dtype) * dz.to(acc.dtype)[:, None, :]
    offs = (chunk.to(tl.int64) * (KH * KW) + t[:, None]) * O + o[None, :]  # DW_PART[chunk, t, o]
    tl.store(DW_PART + offs, tl.sum(acc, axis=0), mask=t_ok[:, None] & o_ok[None, :])


# ----------------------------------------------------------------------------- launch helpers

def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunks(t, blocks, tiles, interpreted):
    """How many chunks to split a reduction over `blocks` row blocks into, when `tiles` programs
    already run per chunk: ~4 programs per SM on a GPU, `interpreted` chunks under the
    interpreter (it runs programs one by one)."""
    if t.is_cuda:
        sms = torch.cuda.get_device_properties(t.device).multi_processor_count
        chunks = triton.cdiv(4 * sms, tiles)
    else:
        chunks = interpreted
    return max(1, min(chunks, blocks))


def _split(m, block_m, chunks):
    """(rows per chunk, a multiple of block_m; number of chunks) for m rows."""
    rows = block_m * triton.cdiv(triton.cdiv(m, block_m), chunks)
    return rows, triton.cdiv(m, rows)


def dz_config(dtype, is_cuda=True):
    """(BLOCK_M, BLOCK_N, num_warps) of conv2d_bwd_dz_kernel."""
    if not is_cuda:
        return 64, 16, 4
    return (16 if dtype == torch.float64 else 32), 64, 4  # fp64 erf/exp take many registers


def dw_config(dtype, is_cuda=True):
    """(BLOCK_O, BLOCK_C, BLOCK_M, num_warps, num_stages) of conv2d_bwd_dw_kernel."""
    if not is_cuda:
        return 16, 16, 64, 4, 1
    if dtype == torch.float64:
        return 32, 32, 16, 8, 1  # 4 warps: a 12-byte spill on sm_90
    if dtype == torch.float32:
        return 32, 32, 32, 4, 2
    return 64, 64, 32, 4, 3


def depthwise_dx_config(dtype, is_cuda=True):
    """(BLOCK_M, BLOCK_C, num_warps) of depthwise_conv2d_bwd_dx_kernel (the forward's 8 warps
    spill 4 bytes here on sm_90 with runtime strides)."""
    return (64, 32, 4) if is_cuda else (64, 16, 4)


def depthwise_dw_config(kh, kw, dtype, is_cuda=True):
    """(BLOCK_M, BLOCK_T, BLOCK_C, num_warps) of depthwise_conv2d_bwd_dw_kernel: all taps at
    once, the (BLOCK_M, BLOCK_T, BLOCK_C) accumulator held to ~4K elements (large kernels, e.g.
    31 x 31, get fewer channels per program)."""
    block_t = triton.next_power_of_2(kh * kw)
    block_c = min(32 if is_cuda else 16, max(1, 4096 // block_t))
    return max(1, 4096 // (block_t * block_c)), block_t, block_c, 4


def _dz_and_dbias(dout, saved, act, store_dz, need_db):
    """dz = dout * act'(.) in dout's dtype and format (when store_dz) and dbias in fp32."""
    n, o, oh, ow = dout.shape
    m = n * oh * ow
    block_m, block_n, warps = dz_config(dout.dtype, dout.is_cuda)
    col_blocks = triton.cdiv(o, block_n)
    blocks = triton.cdiv(m, block_m)  # without dbias: one block per program
    rows, programs = _split(m, block_m, _chunks(dout, blocks, col_blocks, 4) if need_db
                            else blocks)
    dz = empty_like_format(dout, dout.shape) if store_dz else dout
    part = torch.empty(programs if need_db else 1, o, device=dout.device,
                       dtype=_acc_dtype(dout.dtype))
    conv2d_bwd_dz_kernel[(programs, col_blocks)](
        dout, saved, dz, part, m, o, oh, ow, rows, *dout.stride(), *saved.stride(),
        *dz.stride(), ACT=act, STORE_DZ=store_dz, HAS_DBIAS=need_db, BLOCK_M=block_m,
        BLOCK_N=block_n, num_warps=warps)
    return dz, part.sum(0) if need_db else None


def _geometry(stride, padding, dilation):
    return stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1]


def _dx(dz, x, weight, stride, padding, dilation, groups):
    n, c, h, w = x.shape
    o, c_g, kh, kw = weight.shape
    oh, ow = dz.shape[2:]
    dx = empty_like_format(x, x.shape)
    if groups == c:
        block_m, block_c, warps = depthwise_dx_config(x.dtype, x.is_cuda)
        w_t = weight_tiles(weight)
        sw = w_t.stride()
        grid = (triton.cdiv(n * h * w, block_m), triton.cdiv(c, block_c))
        depthwise_conv2d_bwd_dx_kernel[grid](
            dz, w_t, dx, n, h, w, c, oh, ow, o // c, kh, kw, *dz.stride(), sw[0], sw[2],
            sw[3], *dx.stride(), *_geometry(stride, padding, dilation), BLOCK_M=block_m,
            BLOCK_C=block_c, num_warps=warps)
        return dx
    block_m, block_n, block_k, warps, stages = fwd_config(c_g, x.dtype, x.is_cuda,
                                                          vector_loads(dz, o // groups))
    # (O, C/groups, KH, KW) laid out (KH, KW, O, C/groups): tiles contiguous along c.
    w_t = weight.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
    hp, wp = triton.cdiv(h, stride[0]), triton.cdiv(w, stride[1])
    grid = (triton.cdiv(n * hp * wp, block_m), triton.cdiv(c_g, block_n),
            groups * stride[0] * stride[1])
    conv2d_bwd_dx_kernel[grid](
        dz, w_t, dx, n, h, w, c_g, oh, ow, o // groups, kh, kw, *dz.stride(), *w_t.stride(),
        *dx.stride(), *_geometry(stride, padding, dilation), BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, DOT_PRECISION=dot_precision(x.dtype), num_warps=warps,
        num_stages=stages)
    return dx


def _dweight(dz, x, weight, stride, padding, dilation, groups):
    n, c, h, w = x.shape
    o, c_g, kh, kw = weight.shape
    oh, ow = dz.shape[2:]
    m = n * oh * ow
    acc = _acc_dtype(x.dtype)
    geometry = _geometry(stride, padding, dilation)
    if groups == c:
        block_m, block_t, block_c, warps = depthwise_dw_config(kh, kw, x.dtype, x.is_cuda)
        col_blocks = triton.cdiv(o, block_c)
        m_per_chunk, chunks = _split(m, block_m,
                                     _chunks(x, triton.cdiv(m, block_m), col_blocks, 2))
        part = torch.empty(chunks, kh * kw, o, device=x.device, dtype=acc)
        depthwise_conv2d_bwd_dw_kernel[(col_blocks, chunks)](
            dz, x, part, n, h, w, oh, ow, o, o // c, kh, kw, m_per_chunk, *dz.stride(),
            *x.stride(), *geometry, BLOCK_M=block_m, BLOCK_T=block_t, BLOCK_C=block_c,
            num_warps=warps)
        return part.sum(0).t().reshape(o, 1, kh, kw).to(weight.dtype).contiguous()
    block_o, block_c, block_m, warps, stages = dw_config(x.dtype, x.is_cuda)
    flat = conv.use_flat_k(c_g, block_c)
    columns = triton.cdiv(c_g * kh * kw, block_c) if flat else triton.cdiv(c_g, block_c) * kh * kw
    tiles = triton.cdiv(o // groups, block_o) * columns * groups
    chunks = min(_chunks(x, triton.cdiv(m, block_m), tiles, 2), 65535 // groups)
    m_per_chunk, chunks = _split(m, block_m, chunks)
    part = torch.empty(chunks, o, c_g, kh * kw, device=x.device, dtype=acc)
    grid = (triton.cdiv(o // groups, block_o), columns, groups * chunks)
    conv2d_bwd_dw_kernel[grid](
        dz, x, part, n, h, w, c_g, oh, ow, o // groups, kh, kw, m_per_chunk, chunks,
        *dz.stride(), *x.stride(), *geometry, BLOCK_O=block_o, BLOCK_C=block_c,
        BLOCK_M=block_m, FLAT=flat, DOT_PRECISION=dot_precision(x.dtype), num_warps=warps,
        num_stages=stages)
    return part.sum(0).view(o, c_g, kh, kw).to(weight.dtype)


def conv2d_bwd(dout, x, weight, out, z, stride, padding, dilation, groups, activation,
               output_mask):
    """The conv2d_bwd op: (dx, dweight, dbias, dresidual); an output whose output_mask entry is
    false is a (0,) tensor. dx in x's format, dresidual (= dz) in dout's, dweight contiguous;
    dweight and dbias in weight's dtype, accumulated in fp32 (fp64 for fp64)."""
    need_dx, need_dw, need_db, need_dres = (bool(v) for v in output_mask)
    conv.check_index_range("conv2d backward", [t for t in (dout, x, out, z) if t.dim() == 4],
                           (x.shape[0] * x.shape[2] * x.shape[3],
                            dout.shape[0] * dout.shape[2] * dout.shape[3]), reach=2)
    act = ACTIVATIONS[activation]
    o = weight.shape[0]
    if dout.numel() == 0 or x.numel() == 0:  # nothing flows: zero gradients
        def zeros(need, t, shape, fmt):
            if not need:
                return t.new_empty(0)
            return torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=fmt).zero_()

        return (zeros(need_dx, x, x.shape, memory_format(x)),
                zeros(need_dw, weight, weight.shape, torch.contiguous_format),
                zeros(need_db, weight, (o,), torch.contiguous_format),
                zeros(need_dres, dout, dout.shape, memory_format(dout)))
    # dz is materialized when it is an output (dresidual) or differs from dout.
    store_dz = need_dres or (act != 0 and (need_dx or need_dw))
    dz, dbias = dout, None
    if store_dz or need_db:
        saved = {1: out, 2: z, 3: z}.get(act, dout)  # what act' reads (none: nothing)
        dz, dbias = _dz_and_dbias(dout, saved, act, store_dz, need_db)
    args = (stride, padding, dilation, groups)
    dx = _dx(dz, x, weight, *args) if need_dx else x.new_empty(0)
    dweight = _dweight(dz, x, weight, *args) if need_dw else weight.new_empty(0)
    dbias = dbias.to(weight.dtype) if need_db else weight.new_empty(0)
    return dx, dweight, dbias, dz if need_dres else dout.new_empty(0)
