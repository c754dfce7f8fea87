"""Triton kernels for the quantized matmul family: y = x W^T + bias with W (N, K) stored in
8, 4 or fewer bits (docs/quant.md; formats in csrc/ops.cpp and leedl_fast/reference/quant.py).

The point of a quantized linear layer is to move fewer weight bytes, so the float weight is never
written anywhere: every kernel loads the stored tile and dequantizes it in registers.

    int8 weight-only   W[n, k] = q[n, k] * scales[n]                 q int8 (N, K)
    int4 weight-only   W[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g], g = k // group_size
    codebook           W[n, k] = table[idx[n, k]], idx of `bits` bits (1..4)
    int8 dynamic       int8 W as above, x quantized per row on the fly: int8 x int8 -> int32

Bit fields (int4 and codebook share one unpacker): row n's bytes are a bit string, field k at
bits [k * BITS, (k + 1) * BITS), least significant bit first. Every 8 consecutive fields fill
exactly BITS bytes (a "word": 1 byte for 1 bit, ... 4 bytes for int4), whatever BITS is -- also
for BITS = 3, whose fields straddle bytes. So a tile of BLOCK_K fields (BLOCK_K a multiple of 8,
starting at a multiple of 8) is BLOCK_K / 8 words: load BITS byte-planes (BLOCK_N, BLOCK_K / 8),
OR them into int32 words, shift each word by 0, BITS, ..., 7 * BITS into a (BLOCK_N, BLOCK_K / 8,
8) tensor, mask and reshape to (BLOCK_N, BLOCK_K). Each packed byte is read once.

Two paths for the weight-only formats (the launcher picks by M; GEMV_MAX_M read at call time):

* `quant_gemv_kernel`, M <= 16 (decode): memory-bound on the weight bytes. A program owns
  BLOCK_N output features and a slice of K; each weight tile is loaded and dequantized once (fp32)
  and multiplied with every row of x on the CUDA cores (a static loop over the <= 16 rows). With
  few programs (N / BLOCK_N small next to the GPU's SMs) K is split: each split writes its fp32
  partial (SPLIT_K, M, N), and `splitk_sum_kernel` adds them in a fixed order (deterministic, no
  atomics) and applies the epilogue.
* `quant_matmul_kernel`, larger M: BLOCK_M x BLOCK_N output tiles, the weight tile dequantized to
  x's dtype in registers and fed to tl.dot with fp32 accumulation (ieee for fp32 x: TF32 is
  ~1e-3 off). int8 codes are exact in fp16/bf16, so int8's per-row scale is applied in the
  epilogue instead of per element.

int4 scales/zeros: when a whole K tile lies in one group (group_size % BLOCK_K == 0; the
launcher shrinks BLOCK_K to a power-of-two group_size when it can) one (BLOCK_N,) column of
scales and zeros is loaded per tile (GROUP_TILE); otherwise they are gathered per element.

int8 dynamic: `quantize_rows_kernel` (a program per row: absmax, sx = absmax / 127, xq =
round-half-even(x / sx), with IEEE division as torch does it), then `int8_matmul_kernel`
(int8 x int8 -> int32 tl.dot, exact; tensor cores on the GPU) with the epilogue
y = acc * sx[m] * scales[n] + bias. Small M uses the same kernel at BLOCK_M = 16.

Pointer arguments (all contiguous):
    X (M, K) fp16/bf16/fp32            Y (M, N) in x's dtype       BIAS (N,) in x's dtype
    W: int8 (N, K) | uint8 (N, W_ROW) bit strings, W_ROW = ceil(K * BITS / 8)
    SCALES (N,) or (N, K / GROUP) fp32; ZEROS (N, K / GROUP) fp32; TABLE (2^BITS,) fp32
    PART (SPLIT_K, M, N) fp32 split-K partials;  XQ (M, K) int8, SX (M,) fp32 (int8 dynamic)
Absent tensors get a dummy pointer and are never read (FORMAT / HAS_BIAS are constexpr).
Offsets: rows of W and X in int64 (N * K bytes can pass 2**31).
"""
import torch
import triton
import triton.language as tl

INT8, INT4, CODEBOOK = 0, 1, 2  # the kernels' FORMAT codes
GEMV_MAX_M = 16                 # M up to this takes the GEMV path (read at call time)
GEMV_TILE = 4096                # BLOCK_N * BLOCK_K of a GEMV weight tile
GEMV_PROGRAMS_PER_SM = 4        # split K until about this many programs per SM
INTERPRETER_PROGRAMS = 4        # ... and this many under the interpreter (so tests split K)


# ------------------------------------------------------------------------------ shared helpers

@triton.jit
def _unpack_fields(W, row, n_ok, k0, W_ROW, BITS: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    """int32 (BLOCK_N, BLOCK_K) fields k0 .. k0 + BLOCK_K - 1 of the rows starting at byte
    offsets `row` (k0 a multiple of 8): BITS byte-planes -> words -> 8 fields per word."""
    first = (k0 // 8 + tl.arange(0, BLOCK_K // 8)) * BITS  # first byte of each word
    word = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.int32)
    for b in tl.static_range(BITS):
        byte = first + b
        v = tl.load(W + row[:, None] + byte[None, :], mask=n_ok[:, None] & (byte < W_ROW)[None, :],
                    other=0)
        word = word | (v.to(tl.int32) << (8 * b))
    shifts = tl.arange(0, 8) * BITS
    fields = (word[:, :, None] >> shifts[None, None, :]) & ((1 << BITS) - 1)
    return tl.reshape(fields, (BLOCK_N, BLOCK_K))


@triton.jit
def _weight_tile(W, SCALES, ZEROS, TABLE, n, n_ok, k0, K, W_ROW, GROUP,
                 FORMAT: tl.constexpr, BITS: tl.constexpr, GROUP_TILE: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The (BLOCK_N, BLOCK_K) weight tile W[n, k0:k0 + BLOCK_K] in fp32, dequantized in
    registers; int8 codes come without their per-row scale (the epilogue applies it)."""
    k = k0 + tl.arange(0, BLOCK_K)
    k_ok = k < K
    row = n.to(tl.int64) * W_ROW
    if FORMAT == 0:  # int8
        q = tl.load(W + row[:, None] + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
        w = q.to(tl.float32)
    else:
        idx = _unpack_fields(W, row, n_ok, k0, W_ROW, BITS, BLOCK_N, BLOCK_K)
        if FORMAT == 1:  # int4: (q - zero) * scale of the (row, group)
            groups = K // GROUP
            if GROUP_TILE:  # the tile lies in one group: one column of scales and zeros
                off = n * groups + k0 // GROUP
                s = tl.load(SCALES + off, mask=n_ok, other=0.0)[:, None]
                z = tl.load(ZEROS + off, mask=n_ok, other=0.0)[:, None]
            else:
                off = (n * groups)[:, None] + (k // GROUP)[None, :]
                ok = n_ok[:, None] & k_ok[None, :]
                s = tl.load(SCALES + off, mask=ok, other=0.0)
                z = tl.load(ZEROS + off, mask=ok, other=0.0)
            w = (idx.to(tl.float32) - z) * s
        else:  # codebook: a gather from the 2..16-entry table (L1-resident)
            w = tl.load(TABLE + idx)
    return w


@triton.jit
def _store_output(acc, m, n, M, N, SCALES, BIAS, Y, SCALE_N: tl.constexpr,
                  HAS_BIAS: tl.constexpr):
    """y[m, n] = acc * scales[n] (int8 formats) + bias[n], stored in Y's dtype."""
    n_ok = n < N
    if SCALE_N:
        acc = acc * tl.load(SCALES + n, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(BIAS + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + m.to(tl.int64)[:, None] * N + n[None, :], acc.to(Y.dtype.element_ty),
             mask=(m < M)[:, None] & n_ok[None, :])


# ------------------------------------------------------------------------------ weight-only

@triton.jit
def quant_gemv_kernel(X, W, SCALES, ZEROS, TABLE, BIAS, Y, PART, M, N, K, W_ROW, GROUP,
                      K_SPLIT, FORMAT: tl.constexpr, BITS: tl.constexpr,
                      GROUP_TILE: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program (pid_n, pid_k): y[:, n-block] over K in [pid_k * K_SPLIT, +K_SPLIT) (K_SPLIT a
    multiple of BLOCK_K), for all M <= BLOCK_M rows; SPLIT: store the fp32 partial instead."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    rows = tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * K_SPLIT
    k_end = tl.minimum(k_start + K_SPLIT, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        w = _weight_tile(W, SCALES, ZEROS, TABLE, n, n_ok, k0, K, W_ROW, GROUP, FORMAT, BITS,
                         GROUP_TILE, BLOCK_N, BLOCK_K)
        k = k0 + tl.arange(0, BLOCK_K)
        for r in tl.static_range(BLOCK_M):  # every row against the one dequantized tile
            x = tl.load(X + r * K + k, mask=(k < K) & (r < M), other=0.0).to(tl.float32)
            part = tl.sum(w * x[None, :], axis=1)
            acc = tl.where(rows[:, None] == r, acc + part[None, :], acc)
    if SPLIT:
        out = PART + pid_k.to(tl.int64) * M * N + rows[:, None] * N + n[None, :]
        tl.store(out, acc, mask=(rows < M)[:, None] & n_ok[None, :])
    else:
        _store_output(acc, rows, n, M, N, SCALES, BIAS, Y, FORMAT == 0, HAS_BIAS)


@triton.jit
def splitk_sum_kernel(PART, SCALES, BIAS, Y, M, N, SPLIT_K, SCALE_N: tl.constexpr,
                      HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """y[:, n-block] = epilogue(sum over s of PART[s]), s in order (deterministic)."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_M)
    offs = rows[:, None] * N + n[None, :]
    mask = (rows < M)[:, None] & (n < N)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in range(SPLIT_K):
        acc += tl.load(PART + s * M * N + offs, mask=mask, other=0.0)
    _store_output(acc, rows, n, M, N, SCALES, BIAS, Y, SCALE_N, HAS_BIAS)


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) in grouped order: GROUP_M row tiles share each weight tile in L2."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    size = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % size, (pid % per_group) // size


@triton.jit
def quant_matmul_kernel(X, W, SCALES, ZEROS, TABLE, BIAS, Y, M, N, K, W_ROW, GROUP,
                        FORMAT: tl.constexpr, BITS: tl.constexpr, GROUP_TILE: tl.constexpr,
                        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                        DOT_PRECISION: tl.constexpr):
    """A BLOCK_M x BLOCK_N tile of y = x W^T: x tile (BLOCK_M, BLOCK_K) times the dequantized
    weight tile, transposed, in x's dtype; fp32 accumulation."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    x_rows = X + m.to(tl.int64)[:, None] * K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + k[None, :], mask=(m < M)[:, None] & (k < K)[None, :], other=0.0)
        w = _weight_tile(W, SCALES, ZEROS, TABLE, n, n_ok, k0, K, W_ROW, GROUP, FORMAT, BITS,
                         GROUP_TILE, BLOCK_N, BLOCK_K)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc, input_precision=DOT_PRECISION)
    _store_output(acc, m, n, M, N, SCALES, BIAS, Y, FORMAT == 0, HAS_BIAS)


# ------------------------------------------------------------------------------ int8 dynamic

@triton.jit
def _round_half_even(v):
    """rint(v) as torch.round does it, from floor only (no libdevice under the interpreter):
    v - floor(v) is exact in fp32; a tie goes to the even neighbour."""
    f = tl.floor(v)
    d = v - f
    odd = f - 2.0 * tl.floor(f * 0.5)  # 1.0 when f is odd
    up = (d > 0.5) | ((d == 0.5) & (odd == 1.0))
    return tl.where(up, f + 1.0, f)


@triton.jit
def quantize_rows_kernel(X, XQ, SX, K, BLOCK_K: tl.constexpr):
    """Row m of x: sx = max|x| / 127, xq = clamp(round(x / sx), -127, 127) (sx = 0: xq = 0).
    IEEE division (div_rn) as torch's: Triton's `/` on fp32 is an approximation on the GPU."""
    row = tl.program_id(0).to(tl.int64)
    X += row * K
    XQ += row * K
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + k, mask=k < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    sx = tl.div_rn(tl.max(amax, axis=0), 127.0)
    tl.store(SX + row, sx)
    safe = tl.where(sx > 0.0, sx, 1.0)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + k, mask=k < K, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(_round_half_even(tl.div_rn(x, safe)), -127.0), 127.0)
        tl.store(XQ + k, q.to(tl.int8), mask=k < K)


@triton.jit
def int8_matmul_kernel(XQ, SX, W, SCALES, BIAS, Y, M, N, K, HAS_BIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr):
    """A tile of y = (xq W^T) * sx[m] * scales[n] + bias: int8 x int8 -> int32 (exact)."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    x_rows = XQ + m.to(tl.int64)[:, None] * K
    w_rows = W + n.to(tl.int64)[:, None] * K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + k[None, :], mask=(m < M)[:, None] & (k < K)[None, :], other=0)
        w = tl.load(w_rows + k[None, :], mask=(n < N)[:, None] & (k < K)[None, :], other=0)
        acc = tl.dot(x, tl.trans(w), acc, out_dtype=tl.int32)
    sx = tl.load(SX + m, mask=m < M, other=0.0)
    _store_output(acc.to(tl.float32) * sx[:, None], m, n, M, N, SCALES, BIAS, Y, True, HAS_BIAS)


# ----------------------------------------------------------------------------- launch helpers

def dot_precision(dtype):
    """fp32 x keeps full precision: Triton's default on NVIDIA is TF32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _pow2(n):
    return triton.next_power_of_2(max(int(n), 1))


def k_tile(block_k, fmt, group_size, min_k):
    """(BLOCK_K, GROUP_TILE): int4 tiles shrink to a power-of-two group_size (>= min_k) so a
    tile lies in one group; other group sizes gather scales per element."""
    if fmt != INT4:
        return block_k, False
    if group_size % block_k == 0:
        return block_k, True
    if min_k <= group_size < block_k and group_size == _pow2(group_size):
        return group_size, True
    return block_k, False


def gemv_config(m, fmt, group_size, is_cuda=True):
    """(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_TILE, num_warps) of quant_gemv_kernel: BLOCK_N *
    BLOCK_K = GEMV_TILE weights per step (BLOCK_K 128, or int4's group), all M rows."""
    block_k, group_tile = k_tile(128 if is_cuda else 64, fmt, group_size, 8)
    tile = GEMV_TILE if is_cuda else 1024
    block_m = _pow2(m)
    # 8 warps from 8 rows: at 4 warps ptxas spills a few bytes (fp32 codebook, 16 rows)
    return block_m, max(8, tile // block_k), block_k, group_tile, 8 if block_m >= 8 else 4


def matmul_config(dtype, fmt, group_size, is_cuda=True):
    """(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_TILE, num_warps, num_stages) of quant_matmul_kernel,
    sized with tests/test_compile_checks.py (no spills on sm_90 / sm_80)."""
    if not is_cuda:
        block_m, block_n, block_k, warps, stages = 32, 32, 32, 4, 1
    elif dtype == torch.float32:  # ieee dots: FMA tiles (64 x 64 spills, even at 8 warps)
        block_m, block_n, block_k, warps, stages = 32, 64, 16, 4, 2
    else:
        block_m, block_n, block_k, warps, stages = 64, 128, 64, 4, 3
    block_k, group_tile = k_tile(block_k, fmt, group_size, 16)
    if fmt == INT4 and not group_tile and is_cuda:
        stages = 2  # per-element scales and zeros are pipelined too: 3 stages take 172 KB
    return block_m, block_n, block_k, group_tile, warps, stages


def int8_matmul_config(m, is_cuda=True):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) of int8_matmul_kernel: BLOCK_M 16
    for decode-sized M (the smallest int8 MMA), 128 x 128 tiles otherwise."""
    if not is_cuda:
        return 16 if m <= GEMV_MAX_M else 32, 32, 32, 4, 1
    if m <= GEMV_MAX_M:
        return 16, 64, 128, 4, 3
    return 128, 128, 64, 8, 3


def quantize_rows_config(k, is_cuda=True):
    """(BLOCK_K, num_warps) of quantize_rows_kernel."""
    return min(_pow2(k), 2048 if is_cuda else 256), 4


def split_k(programs, k, block_k, is_cuda, device=None):
    """(SPLIT_K, K_SPLIT): split K so that about GEMV_PROGRAMS_PER_SM programs run per SM (the
    interpreter: INTERPRETER_PROGRAMS), each split a whole number of BLOCK_K chunks."""
    chunks = triton.cdiv(k, block_k)
    if is_cuda:
        target = GEMV_PROGRAMS_PER_SM * torch.cuda.get_device_properties(device) \
            .multi_processor_count
    else:
        target = INTERPRETER_PROGRAMS
    split = max(1, min(chunks, triton.cdiv(target, programs)))
    per_split = triton.cdiv(chunks, split)
    return triton.cdiv(chunks, per_split), per_split * block_k


def _weight_only(x, fmt, w, scales, zeros, table, k, bits, group_size, bias):
    m = x.shape[0]
    n, w_row = w.shape
    y = x.new_empty(m, n)
    if y.numel() == 0:
        return y
    if k == 0:
        return y.copy_(bias.expand(m, n)) if bias is not None else y.zero_()
    has_bias = bias is not None
    bias = bias if has_bias else y
    common = {"FORMAT": fmt, "BITS": bits, "HAS_BIAS": has_bias}
    if m <= GEMV_MAX_M:
        block_m, block_n, block_k, group_tile, warps = gemv_config(m, fmt, group_size, x.is_cuda)
        splits, k_split = split_k(triton.cdiv(n, block_n), k, block_k, x.is_cuda, x.device)
        part = x.new_empty((splits, m, n) if splits > 1 else (0,), dtype=torch.float32)
        quant_gemv_kernel[(triton.cdiv(n, block_n), splits)](
            x, w, scales, zeros, table, bias, y, part, m, n, k, w_row, group_size, k_split,
            GROUP_TILE=group_tile, SPLIT=splits > 1, BLOCK_M=block_m, BLOCK_N=block_n,
            BLOCK_K=block_k, num_warps=warps, **common)
        if splits > 1:
            sum_n = 128 if x.is_cuda else 32
            splitk_sum_kernel[(triton.cdiv(n, sum_n),)](
                part, scales, bias, y, m, n, splits, SCALE_N=fmt == INT8, HAS_BIAS=has_bias,
                BLOCK_M=block_m, BLOCK_N=sum_n, num_warps=4)
        return y
    block_m, block_n, block_k, group_tile, warps, stages = matmul_config(x.dtype, fmt, group_size,
                                                                         x.is_cuda)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    quant_matmul_kernel[grid](
        x, w, scales, zeros, table, bias, y, m, n, k, w_row, group_size, GROUP_TILE=group_tile,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
        DOT_PRECISION=dot_precision(x.dtype), num_warps=warps, num_stages=stages, **common)
    return y


# ------------------------------------------------------------------ the ops (csrc/ops.cpp)

def int8_weight_linear(x, qweight, scales, bias):
    """y = x (qweight * scales[:, None])^T + bias; qweight int8 (N, K), scales fp32 (N,)."""
    return _weight_only(x, INT8, qweight, scales, scales, scales, qweight.shape[1], 8, 1, bias)


def int4_weight_linear(x, packed, scales, zeros, group_size, bias):
    """int4 group-wise: packed uint8 (N, K / 2), scales / zeros fp32 (N, K / group_size)."""
    return _weight_only(x, INT4, packed, scales, zeros, scales, packed.shape[1] * 2, 4,
                        group_size, bias)


def codebook_linear(x, packed, table, bits, in_features, bias):
    """Codebook: packed uint8 (N, ceil(K * bits / 8)) indices into table fp32 (2^bits,)."""
    return _weight_only(x, CODEBOOK, packed, table, table, table, in_features, bits, 1, bias)


def quantize_rows(x):
    """int8 dynamic's activation quantization of x (M, K): (xq int8 (M, K), sx fp32 (M,)),
    as leedl_fast.reference.quant.quantize_rows_int8 defines it."""
    m, k = x.shape
    xq = torch.empty(m, k, dtype=torch.int8, device=x.device)
    sx = torch.empty(m, dtype=torch.float32, device=x.device)
    if m and k:
        block_k, warps = quantize_rows_config(k, x.is_cuda)
        quantize_rows_kernel[(m,)](x, xq, sx, k, BLOCK_K=block_k, num_warps=warps)
    else:
        sx.zero_()
    return xq, sx


def int8_dynamic_linear(x, qweight, scales, bias):
    """x quantized per row (int8, sx fp32), then int8 x int8 -> int32 and the scales."""
    m, k = x.shape
    n = qweight.shape[0]
    y = x.new_empty(m, n)
    if y.numel() == 0:
        return y
    if k == 0:
        return y.copy_(bias.expand(m, n)) if bias is not None else y.zero_()
    xq, sx = quantize_rows(x)
    block_m, block_n, block_k, warps, stages = int8_matmul_config(m, x.is_cuda)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    int8_matmul_kernel[grid](
        xq, sx, qweight, scales, bias if bias is not None else y, y, m, n, k,
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        GROUP_M=8, num_warps=warps, num_stages=stages)
    return y
