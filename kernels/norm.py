"""Triton kernels for the normalization family: layer norm and RMS norm (book eq. 7.1), each with
an optional fused residual add ("Add & Norm", §7.4), forward and backward. See docs/norm.md.

Why fuse: normalization does ~8 FLOPs per element, so it is bound by memory traffic. The least
traffic a forward can move is: read x (and the residual), write y (and the sum) -- every extra
pass over HBM costs as much as the whole op. So each program owns whole rows:

* width <= FWD_MAX_FUSED: the row is loaded into registers once (BLOCK_N >= N, masked), reduced,
  normalized and stored -- one read, one write.
* wider rows: a looped variant walks the row in BLOCK_N chunks (sum, centred sum of squares,
  normalize); the re-reads mostly hit L2.

Backward: dx needs two row reductions (c1 = mean(g * xhat), c2 = mean(g), g = dy * w):
    dx = rstd * (g - xhat * c1 - c2)        (RMS norm: no c2, xhat = x * rstd)
dweight = sum_rows(dy * xhat) and dbias = sum_rows(dy) are column sums over all rows. A program
walks a contiguous band of rows, accumulates its partial column sums in fp32 (registers, or its own
row of a scratch buffer for wide rows), writes them once to PARTIAL[pid, :]; a second small kernel
adds the partials column-wise (two-stage reduction: no atomics, deterministic).

Pointer arguments (all contiguous, rows of width N):
    X, RES, Y, RES_OUT, DY, DX, DRES : (M, N) in the input dtype
    W, B                             : (N,)   weight / bias, input dtype
    MEAN, RSTD                       : (M,)   fp32 (fp64 for fp64 inputs); RSTD's dtype is the
                                              accumulation dtype used inside the kernels
    DW_PART, DB_PART                 : (P, N) fp32/fp64 per-program partial column sums
Absent optional pointers are passed a dummy tensor and never touched (HAS_* flags are constexpr).
"""
import math

import torch
import triton
import triton.language as tl

FWD_MAX_FUSED = 16384  # widths up to this keep the whole row in registers (forward)
BWD_MAX_FUSED = 8192   # the backward holds ~6 row-sized values, so its limit is lower
LOOP_BLOCK_N = 4096    # chunk width of the looped variants


@triton.jit
def norm_fwd_kernel(X, RES, W, B, Y, RES_OUT, MEAN, RSTD, N, eps,
                    IS_RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr,
                    HAS_B: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE_BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: row * N may pass 2**31
    acc = RSTD.dtype.element_ty
    X += row * N
    Y += row * N
    RES += row * N
    RES_OUT += row * N
    if SINGLE_BLOCK:
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        x = tl.load(X + cols, mask=mask, other=0.0).to(acc)
        if HAS_RES:
            # Normalize the sum rounded to the output dtype: exactly what eager `x + r` gives
            # and what the backward will read back.
            s = (x + tl.load(RES + cols, mask=mask, other=0.0).to(acc)).to(RES_OUT.dtype.element_ty)
            tl.store(RES_OUT + cols, s, mask=mask)
            x = s.to(acc)
        if IS_RMS:
            mean = 0.0
            var = tl.sum(x * x, axis=0) / N
        else:
            mean = tl.sum(x, axis=0) / N
            d = tl.where(mask, x - mean, 0.0)
            var = tl.sum(d * d, axis=0) / N
    else:
        # Pass 1: row sum (or sum of squares), storing the residual sum on the way.
        total = tl.zeros([BLOCK_N], dtype=acc)
        for off in range(0, N, BLOCK_N):
            cols = off + tl.arange(0, BLOCK_N)
            mask = cols < N
            x = tl.load(X + cols, mask=mask, other=0.0).to(acc)
            if HAS_RES:
                s = (x + tl.load(RES + cols, mask=mask, other=0.0).to(acc))
                s = s.to(RES_OUT.dtype.element_ty)
                tl.store(RES_OUT + cols, s, mask=mask)
                x = s.to(acc)
            total += x * x if IS_RMS else x
        if IS_RMS:
            mean = 0.0
            var = tl.sum(total, axis=0) / N
        else:
            mean = tl.sum(total, axis=0) / N
            # Pass 2: centred sum of squares (stable when |mean| >> std).
            total = tl.zeros([BLOCK_N], dtype=acc)
            for off in range(0, N, BLOCK_N):
                cols = off + tl.arange(0, BLOCK_N)
                mask = cols < N
                src = RES_OUT if HAS_RES else X
                x = tl.load(src + cols, mask=mask, other=0.0).to(acc)
                d = tl.where(mask, x - mean, 0.0)
                total += d * d
            var = tl.sum(total, axis=0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    if not IS_RMS:
        tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)
    # Normalize and store (the single-block variant still holds x in registers).
    for off in range(0, N, BLOCK_N):
        cols = off + tl.arange(0, BLOCK_N)
        mask = cols < N
        if not SINGLE_BLOCK:
            src = RES_OUT if HAS_RES else X
            x = tl.load(src + cols, mask=mask, other=0.0).to(acc)
        y = (x - mean) * rstd
        if HAS_W:
            y = y * tl.load(W + cols, mask=mask, other=0.0).to(acc)
        if HAS_B:
            y = y + tl.load(B + cols, mask=mask, other=0.0).to(acc)
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _row_grad(DY, X, W, DX, DRES, cols, mask, mean, rstd, c1, c2,
              HAS_W: tl.constexpr, HAS_DRES: tl.constexpr):
    """dx for one chunk of one row; returns (dy, xhat) for the dweight/dbias partials."""
    acc = rstd.dtype
    dy = tl.load(DY + cols, mask=mask, other=0.0).to(acc)
    xhat = (tl.load(X + cols, mask=mask, other=0.0).to(acc) - mean) * rstd
    g = dy * tl.load(W + cols, mask=mask, other=0.0).to(acc) if HAS_W else dy
    dx = (g - xhat * c1 - c2) * rstd
    if HAS_DRES:
        dx += tl.load(DRES + cols, mask=mask, other=0.0).to(acc)
    tl.store(DX + cols, dx.to(DX.dtype.element_ty), mask=mask)
    return dy, xhat


@triton.jit
def _row_coeffs(DY, X, W, cols, mask, mean, rstd, IS_RMS: tl.constexpr, HAS_W: tl.constexpr):
    """Partial sums of g * xhat and g over one chunk of one row (g = dy * w)."""
    acc = rstd.dtype
    dy = tl.load(DY + cols, mask=mask, other=0.0).to(acc)
    xhat = tl.where(mask, (tl.load(X + cols, mask=mask, other=0.0).to(acc) - mean) * rstd, 0.0)
    g = dy * tl.load(W + cols, mask=mask, other=0.0).to(acc) if HAS_W else dy
    return tl.sum(g * xhat, axis=0), tl.sum(g, axis=0)


@triton.jit
def norm_bwd_kernel(DY, X, W, MEAN, RSTD, DRES, DX, DW_PART, DB_PART, M, N, rows_per_program,
                    IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                    HAS_DRES: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE_BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc = RSTD.dtype.element_ty
    row_start = pid.to(tl.int64) * rows_per_program  # int64 loop: row * N may pass 2**31
    row_end = tl.minimum(row_start + rows_per_program, M)
    DW_PART += pid.to(tl.int64) * N
    DB_PART += pid.to(tl.int64) * N
    if SINGLE_BLOCK:
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        dw = tl.zeros([BLOCK_N], dtype=acc)
        db = tl.zeros([BLOCK_N], dtype=acc)
    for row in range(row_start, row_end):
        off_row = row * N
        mean = 0.0 if IS_RMS else tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        if SINGLE_BLOCK:
            s_gx, s_g = _row_coeffs(DY + off_row, X + off_row, W, cols, mask, mean, rstd,
                                    IS_RMS, HAS_W)
        else:
            s_gx = tl.zeros((), dtype=acc)
            s_g = tl.zeros((), dtype=acc)
            for off in range(0, N, BLOCK_N):
                cols = off + tl.arange(0, BLOCK_N)
                mask = cols < N
                a, b = _row_coeffs(DY + off_row, X + off_row, W, cols, mask, mean, rstd,
                                   IS_RMS, HAS_W)
                s_gx += a
                s_g += b
        c1 = s_gx / N
        c2 = 0.0 if IS_RMS else s_g / N
        if SINGLE_BLOCK:
            dy, xhat = _row_grad(DY + off_row, X + off_row, W, DX + off_row, DRES + off_row,
                                 cols, mask, mean, rstd, c1, c2, HAS_W, HAS_DRES)
            dw += dy * xhat
            db += dy
        else:
            for off in range(0, N, BLOCK_N):
                cols = off + tl.arange(0, BLOCK_N)
                mask = cols < N
                dy, xhat = _row_grad(DY + off_row, X + off_row, W, DX + off_row, DRES + off_row,
                                     cols, mask, mean, rstd, c1, c2, HAS_W, HAS_DRES)
                # This program's own row of the partial buffers: no other program touches it.
                if HAS_W:
                    tl.store(DW_PART + cols, tl.load(DW_PART + cols, mask=mask) + dy * xhat,
                             mask=mask)
                if HAS_B:
                    tl.store(DB_PART + cols, tl.load(DB_PART + cols, mask=mask) + dy, mask=mask)
    if SINGLE_BLOCK:
        if HAS_W:
            tl.store(DW_PART + cols, dw, mask=mask)
        if HAS_B:
            tl.store(DB_PART + cols, db, mask=mask)


@triton.jit
def column_sum_kernel(PART, OUT, P, N, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Stage two of the dweight/dbias reduction: OUT[n] = sum_p PART[p, n]."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    total = tl.zeros([BLOCK_P, BLOCK_N], dtype=PART.dtype.element_ty)
    for p in range(0, P, BLOCK_P):
        rows = p + tl.arange(0, BLOCK_P)
        ptrs = PART + rows[:, None].to(tl.int64) * N + cols[None, :]
        total += tl.load(ptrs, mask=(rows[:, None] < P) & (cols[None, :] < N), other=0.0)
    tl.store(OUT + cols, tl.sum(total, axis=0).to(OUT.dtype.element_ty), mask=cols < N)


# ----------------------------------------------------------------------------- launch helpers

def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _num_warps(block_n):
    # ~8 elements per thread for a row in registers, between 1 and 16 warps.
    return max(1, min(16, block_n // 256))


def _config(n, max_fused):
    # A width that is not a multiple of 16 loses the 16-byte alignment hint, so loads are not
    # vectorized and a row costs more registers: halve the single-block limit for it (measured
    # with ptxas by tests/test_compile_checks.py: otherwise the widest rows spill).
    if n % 16:
        max_fused //= 2
    if n <= max_fused:
        block = triton.next_power_of_2(max(n, 1))
        return block, True, _num_warps(block)
    block = min(LOOP_BLOCK_N, triton.next_power_of_2(max_fused))
    return block, False, _num_warps(block)


def fwd_config(n):
    """(BLOCK_N, SINGLE_BLOCK, num_warps) the forward launcher uses for width n."""
    return _config(n, FWD_MAX_FUSED)


def bwd_config(n):
    """(BLOCK_N, SINGLE_BLOCK, num_warps) the backward launcher uses for width n."""
    return _config(n, BWD_MAX_FUSED)


def column_sum_config(is_cuda=True):
    """(BLOCK_P, BLOCK_N, num_warps) of the stage-two column sum."""
    return 32, (64 if is_cuda else 128), 4


def _num_programs(x, m):
    if x.is_cuda:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        return max(1, min(m, 4 * sms))
    return max(1, min(m, 4))  # the interpreter runs programs one by one: keep it small


def norm_fwd(x, residual, weight, bias, eps, is_rms):
    """x, residual: (M, N) contiguous. Returns (y, residual_out | None, mean | None, rstd)."""
    m, n = x.shape
    acc = _acc_dtype(x.dtype)
    y = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else None
    mean = None if is_rms else torch.empty(m, device=x.device, dtype=acc)
    rstd = torch.empty(m, device=x.device, dtype=acc)
    if m == 0:
        return y, res_out, mean, rstd
    if n == 0:
        rstd.fill_(math.inf if eps == 0 else eps ** -0.5)  # zero-width rows: variance 0
        if mean is not None:
            mean.zero_()
        return y, res_out, mean, rstd
    block, single, warps = fwd_config(n)
    norm_fwd_kernel[(m,)](
        x, residual if residual is not None else x, weight if weight is not None else x,
        bias if bias is not None else x, y, res_out if res_out is not None else y,
        mean if mean is not None else rstd, rstd, n, eps,
        IS_RMS=is_rms, HAS_RES=residual is not None, HAS_W=weight is not None,
        HAS_B=bias is not None, BLOCK_N=block, SINGLE_BLOCK=single, num_warps=warps)
    return y, res_out, mean, rstd


def column_sum(part, out):
    """out[:] = part.sum(0), with the stage-two Triton kernel."""
    p, n = part.shape
    block_p, block_n, warps = column_sum_config(part.is_cuda)
    column_sum_kernel[(triton.cdiv(n, block_n),)](part, out, p, n, BLOCK_P=block_p,
                                                   BLOCK_N=block_n, num_warps=warps)
    return out


def norm_bwd(dy, x, weight, mean, rstd, dresidual, has_bias, is_rms):
    """Returns (dx, dweight | None, dbias | None); x is the tensor that was normalized."""
    m, n = x.shape
    dx = torch.empty_like(x)
    has_w = weight is not None
    dweight = torch.zeros(n, device=x.device, dtype=x.dtype) if has_w else None
    dbias = torch.zeros(n, device=x.device, dtype=x.dtype) if has_bias else None
    if m == 0 or n == 0:
        if dresidual is not None:
            dx.copy_(dresidual)
        return dx, dweight, dbias
    block, single, warps = bwd_config(n)
    programs = _num_programs(x, m)
    rows_per_program = triton.cdiv(m, programs)
    programs = triton.cdiv(m, rows_per_program)
    acc = rstd.dtype
    # The looped variant accumulates in place, so its partials must start at zero.
    alloc = torch.empty if single else torch.zeros
    dw_part = alloc(programs, n, device=x.device, dtype=acc) if has_w else rstd
    db_part = alloc(programs, n, device=x.device, dtype=acc) if has_bias else rstd
    norm_bwd_kernel[(programs,)](
        dy, x, weight if has_w else x, rstd if mean is None else mean, rstd,
        dresidual if dresidual is not None else dy, dx, dw_part, db_part, m, n, rows_per_program,
        IS_RMS=is_rms, HAS_W=has_w, HAS_B=has_bias, HAS_DRES=dresidual is not None,
        BLOCK_N=block, SINGLE_BLOCK=single, num_warps=warps)
    if has_w:
        column_sum(dw_part, dweight)
    if has_bias:
        column_sum(db_part, dbias)
    return dx, dweight, dbias
