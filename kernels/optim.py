"""Triton kernels for the fused optimizers: Adam/AdamW, SGD, AdaGrad, RMSProp (docs/optim.md; the
op schemas in csrc/ops.cpp, the math and its order in leedl_fast/reference/optim.py).

An optimizer step is pure streaming: every element of p, g and the state is read once, updated
with a few flops, and written once. Nothing is reused, so the time is bytes / bandwidth. Bytes per
parameter (fp32 everything, no grad_scale; grad_scale adds one grad write, 4 B):

    Adam / AdamW      read p g m v        16 B   write p m v     12 B   = 28 B
      + amsgrad       read v_max           4 B   write v_max      4 B   = 36 B
      bf16 p, g, m, v                      8 B                    6 B   = 14 B
      bf16 p, g + fp32 master, m, v       14 B   (master g m v)  14 B   = 28 B (p written, not read)
    SGD               read p g             8 B   write p          4 B   = 12 B
      + momentum      read b               4 B   write b          4 B   = 20 B (first step: 16 B,
                                                                          the buffer is not read)
    AdaGrad           read p g s          12 B   write p s        8 B   = 20 B
    RMSProp           read p g v          12 B   write p v        8 B   = 20 B
      + centered / + momentum             +4 B read, +4 B write each

On an H100 (~3 TB/s) AdamW on a 1B-parameter fp32 model is ~28 GB, ~9 ms; the flops are free.

Why multi-tensor ("apex-style" multi_tensor_apply). A model is hundreds of tensors, many of them
tiny (biases, norms). One launch per tensor costs ~5 us of launch overhead each (more from Python)
and leaves the GPU idle between small launches; torch's foreach/fused optimizers and apex group
the tensors. Here one launch updates every tensor of a group: the work is cut into chunks of
`chunk` elements, the grid is the number of chunks, and program i looks up (tensor index, chunk
start) in a chunk table and the tensor's addresses in a metadata table:

    META   (n_tensors, NCOL) int64: data_ptr of p, g, state 0..2, master, step; numel
    CHUNKS (n_chunks, 2) int64: tensor index, first element of the chunk

The kernel turns an address into a typed pointer with `addr.to(tl.pointer_type(dtype))`, which
works in the Triton interpreter too (CPU tensors' addresses). Groups: one launch per (param dtype,
grad dtype, state dtype, master dtype, where steps live, host step value, 16-byte alignment), since
the dtypes are compile-time constants of the kernel. In the usual training loop that is one or two
launches per step.

Why the table is cached. Building it costs Python work and a host-to-device copy (a sync on
pageable memory). The table is a pure function of the addresses and numels (and the chunk size),
so it is kept in a small LRU keyed by exactly those -- a freed tensor whose address is reused gets
the right table by construction: a training loop, whose tensors never move, builds it on the
first step and afterwards only launches. That also makes the launch CUDA-graph capturable after a
first eager step (a table built during capture would need a host copy, which capture forbids: the
launcher says so). Entries used in a capture are never evicted, since a graph replays the table's
address.

Steps. steps[i] is the count after the increment. Steps on the CPU (the non-capturable optimizer):
the bias corrections are computed on the host in double precision, as the reference does, and
tensors whose steps differ are launched apart. Steps on the params' device (capturable): the
kernel reads each tensor's step through the table and computes the corrections in fp64 in every
program (a few scalar flops); no host sync, no .item(), graph safe. Likewise grad_scale/found_inf
are read in the kernel: every program loads found_inf first and returns when it is nonzero
(nothing at all is written, as torch's fused optimizers do).

Precision. The math runs in fp32 for fp16/bf16/fp32 tensors (fp64 for fp64), reading each operand
in its stored dtype and rounding on store. Triton's plain `/` and tl.sqrt on fp32 are the GPU's
approximate instructions (div.full / sqrt.approx, ~2 ulp); torch's CUDA kernels use the
IEEE-rounded ones, so fp32 divisions and square roots here use tl.div_rn / tl.sqrt_rn (a few more
instructions each, free in a memory-bound kernel). fp64 `/` and sqrt are IEEE already. Fused
multiply-adds are left on (nvcc contracts torch's kernels too): results match torch to ~1 ulp of
fp32. The hyperparameters arrive as fp64 kernel arguments and are rounded to the math dtype in the
kernel: fp32 math sees exactly the fp32 scalars torch's `tensor * python_float` uses. NaN
propagates as in torch: amsgrad's max uses tl.maximum(..., propagate_nan=ALL).

Vector loads. The addresses come from memory, so the compiler cannot know their alignment; when
every tensor of a group is 16-byte aligned (torch's allocations are; a view at an odd offset
goes to a group of its own) the launcher says so (ALIGNED) and the kernel asserts it with
tl.multiple_of, and each chunk's full BLOCKs are loaded without a mask: 16-byte vector loads
(checked in the PTX: ld.global.v4). Only a tensor's last partial block is masked.
"""
import math
from collections import OrderedDict

import torch
import triton
import triton.language as tl

# Metadata table columns (one int64 row per tensor; numel last). constexpr: the kernels read them.
COL_P, COL_G, COL_S0, COL_S1, COL_S2, COL_MASTER, COL_STEP, COL_NUMEL = \
    (tl.constexpr(c) for c in range(8))
NCOL = tl.constexpr(8)

NUM_WARPS = 8
FORCE_BLOCK = None         # tests set a small BLOCK to cross chunks and blocks at small sizes
TARGET_PROGRAMS = 1024     # aim for about this many programs (~8 per SM on an H100) ...
MAX_CHUNK_BLOCKS = 32      # ... but no more than 32 BLOCKs (16K-64K elements) each
ALIGN_BYTES = 16
CACHE_SIZE = 64            # metadata tables kept (several optimizers / param groups per process)
# Where the step counts are read: None = by their device (CPU: host; else in the kernel). Tests
# force True to run the capturable path under the interpreter, where everything is on the CPU.
STEPS_IN_KERNEL = None

_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
             torch.float64: tl.float64}


def launch_config(itemsize):
    """(BLOCK, num_warps) for a group whose widest tensor has `itemsize` bytes per element.
    Each thread owns 16 bytes of the widest tensor per block (one 16-byte vector load; narrower
    tensors get 8- or 4-byte vectors), so every tensor of a block shares one register layout: a
    mixed group (bf16 params + fp32 master) needs no layout conversion through shared memory,
    which a fixed BLOCK showed (4 KiB of shared memory, 160 registers at 1024 x 4 warps).
    fp32: 1024, bf16/fp16: 2048, fp64: 512 elements."""
    if FORCE_BLOCK is not None:
        return FORCE_BLOCK, NUM_WARPS
    return 16 // itemsize * 32 * NUM_WARPS, NUM_WARPS


def chunk_size(total, block):
    """Elements per program for a group of `total` elements: a multiple of `block`, about
    TARGET_PROGRAMS programs, at most MAX_CHUNK_BLOCKS blocks."""
    blocks = triton.cdiv(total, block)
    return block * min(MAX_CHUNK_BLOCKS, max(1, triton.cdiv(blocks, TARGET_PROGRAMS)))


# ------------------------------------------------------------------------------ shared helpers
# SCALARS. The hyperparameters are fp64 kernel arguments, the derived ones (1 - beta, 1 - lr wd,
# ...) computed on the host in double as the reference's Python does. For fp32 math each kernel
# rounds them once to fp32: exactly the fp32 scalars torch's `fp32_tensor * python_float` uses.
# For fp64 math they are used as they are. Under the interpreter the arguments arrive as Python
# floats, and anything the kernel computes from them (`1 - alpha`, a helper's return value)
# becomes an fp32 tensor there -- fp64 math would be rounded through fp32 -- hence the host-side
# derived scalars and the inline (not helper) casts.

@triton.jit
def _pointer(row, COL: tl.constexpr, DT: tl.constexpr, ALIGNED: tl.constexpr):
    """The typed pointer in column COL of a tensor's metadata row."""
    ptr = tl.load(row + COL).to(tl.pointer_type(DT))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def _chunk(META, CHUNKS, chunk, BLOCK: tl.constexpr):
    """This program's tensor row, first element and end (exclusive)."""
    pid = tl.program_id(0).to(tl.int64)
    index = tl.load(CHUNKS + 2 * pid)
    start = tl.multiple_of(tl.load(CHUNKS + 2 * pid + 1), BLOCK)
    row = META + index * NCOL
    end = tl.minimum(start + chunk, tl.load(row + COL_NUMEL))
    return row, start, end


@triton.jit
def _div(a, b):
    """IEEE-rounded a / b (Triton's fp32 `/` is the approximate div.full)."""
    if a.dtype == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def _sqrt(x):
    """IEEE-rounded square root (tl.sqrt on fp32 is sqrt.approx)."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _load(ptr, offs, end, MASKED: tl.constexpr, MATH: tl.constexpr):
    if MASKED:
        x = tl.load(ptr + offs, mask=offs < end, other=0.0)
    else:
        x = tl.load(ptr + offs)
    return x.to(MATH)


@triton.jit
def _to_bf16(x):
    """fp32 -> bf16 rounded to nearest even, NaN -> 0x7FC0 (what torch's conversion does), with
    integer ops: the GPU's cast gives the same bits, but the interpreter's cast truncates (half the
    values 1 ulp low), so this keeps the CPU tests exact. A few integer ops, free here."""
    x = x.to(tl.float32)  # no-op for the fp32 math this is used with
    bits = x.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, rounded)  # NaN
    return rounded.to(tl.int16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _store(ptr, offs, end, x, MASKED: tl.constexpr):
    DT: tl.constexpr = ptr.dtype.element_ty
    if DT == tl.bfloat16:
        x = _to_bf16(x)
    else:
        x = x.to(DT)
    if MASKED:
        tl.store(ptr + offs, x, mask=offs < end)
    else:
        tl.store(ptr + offs, x)


@triton.jit
def _read(P, G, MASTER, offs, end, grad_scale, MASKED: tl.constexpr, MATH: tl.constexpr,
          HAS_MASTER: tl.constexpr, HAS_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr):
    """theta and g in the math dtype; the unscaled grad is written back when grad_scale is
    given (as torch does), before maximize negates it."""
    if HAS_MASTER:
        theta = _load(MASTER, offs, end, MASKED, MATH)
    else:
        theta = _load(P, offs, end, MASKED, MATH)
    g = _load(G, offs, end, MASKED, MATH)
    if HAS_SCALE:
        g = _div(g, grad_scale)
        _store(G, offs, end, g, MASKED)
    if MAXIMIZE:
        g = -g
    return theta, g


@triton.jit
def _write(P, MASTER, offs, end, theta, MASKED: tl.constexpr, HAS_MASTER: tl.constexpr):
    if HAS_MASTER:
        _store(MASTER, offs, end, theta, MASKED)
    _store(P, offs, end, theta, MASKED)


@triton.jit
def _grad_scale(GRAD_SCALE, HAS_SCALE: tl.constexpr, MATH: tl.constexpr):
    if HAS_SCALE:
        return tl.load(GRAD_SCALE).to(MATH)
    else:
        return tl.full((), 1.0, MATH)


# ------------------------------------------------------------------------------ Adam / AdamW
# Per element (the reference's order; omb = 1 - beta; each product rounded as in torch):
#   g /= grad_scale (written back); g = -g if maximize
#   L2: g += wd * theta  |  AdamW: theta *= decay = 1 - lr wd
#   m = m * b1 + omb1 * g;  v = v * b2 + omb2 * g * g;  amsgrad: v = v_max = max(v_max, v)
#   theta -= step_size * m / (sqrt(v) / bc2_sqrt + eps),  step_size = lr / (1 - b1^t),
#   bc2_sqrt = sqrt(1 - b2^t).
# State columns: S0 = exp_avg m, S1 = exp_avg_sq v, S2 = max_exp_avg_sq.

@triton.jit
def _adam_block(P, G, M, V, VMAX, MASTER, offs, end, grad_scale, beta1, beta2, omb1, omb2, eps,
                weight_decay, decay, step_size, bc2_sqrt, MASKED: tl.constexpr,
                MATH: tl.constexpr, HAS_MASTER: tl.constexpr, WEIGHT_DECAY: tl.constexpr,
                AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr):
    theta, g = _read(P, G, MASTER, offs, end, grad_scale, MASKED, MATH, HAS_MASTER, HAS_SCALE,
                     MAXIMIZE)
    if WEIGHT_DECAY == 1:
        g = g + weight_decay * theta
    elif WEIGHT_DECAY == 2:
        theta = theta * decay
    m = _load(M, offs, end, MASKED, MATH) * beta1 + omb1 * g
    v = _load(V, offs, end, MASKED, MATH) * beta2 + omb2 * g * g
    _store(M, offs, end, m, MASKED)
    _store(V, offs, end, v, MASKED)
    if AMSGRAD:
        v = tl.maximum(_load(VMAX, offs, end, MASKED, MATH), v, propagate_nan=tl.PropagateNan.ALL)
        _store(VMAX, offs, end, v, MASKED)
    denom = _div(_sqrt(v), bc2_sqrt) + eps
    _write(P, MASTER, offs, end, theta - _div(step_size * m, denom), MASKED, HAS_MASTER)


@triton.jit
def optim_adam_kernel(META, CHUNKS, GRAD_SCALE, FOUND_INF, chunk, lr: tl.float64, beta1: tl.float64,
                      beta2: tl.float64, omb1: tl.float64, omb2: tl.float64, eps: tl.float64,
                      weight_decay: tl.float64, decay: tl.float64, step_size: tl.float64,
                      bc2_sqrt: tl.float64, log_beta1: tl.float64, log_beta2: tl.float64,
                      P_DT: tl.constexpr, G_DT: tl.constexpr, S_DT: tl.constexpr,
                      M_DT: tl.constexpr, MATH: tl.constexpr, HAS_MASTER: tl.constexpr,
                      WEIGHT_DECAY: tl.constexpr, AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr,
                      HAS_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                      STEP_ON_DEVICE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """WEIGHT_DECAY: 0 none, 1 L2 (Adam), 2 decoupled (AdamW). step_size / bc2_sqrt: the host's
    bias corrections, unless STEP_ON_DEVICE (then from this tensor's step and log(beta))."""
    if HAS_FOUND_INF:  # noqa: SIM102 -- a constexpr test, then a runtime one
        if tl.load(FOUND_INF) != 0:
            return
    row, start, end = _chunk(META, CHUNKS, chunk, BLOCK)
    P = _pointer(row, COL_P, P_DT, ALIGNED)
    G = _pointer(row, COL_G, G_DT, ALIGNED)
    M = _pointer(row, COL_S0, S_DT, ALIGNED)
    V = _pointer(row, COL_S1, S_DT, ALIGNED)
    VMAX = _pointer(row, COL_S2, S_DT, ALIGNED)
    MASTER = _pointer(row, COL_MASTER, M_DT, ALIGNED)
    if STEP_ON_DEVICE:  # fp64, like torch's capturable fused Adam (pow in double)
        t = tl.load(_pointer(row, COL_STEP, tl.float32, False)).to(tl.float64)
        step_size = lr / (1 - tl.exp(t * log_beta1))
        bc2_sqrt = tl.sqrt(1 - tl.exp(t * log_beta2))
    grad_scale = _grad_scale(GRAD_SCALE, HAS_SCALE, MATH)
    if MATH == tl.float32:  # the hyperparameters in the math dtype: see SCALARS above
        decay, omb1, omb2 = tl.cast(decay, MATH), tl.cast(omb1, MATH), tl.cast(omb2, MATH)
        beta1, beta2, eps = tl.cast(beta1, MATH), tl.cast(beta2, MATH), tl.cast(eps, MATH)
        weight_decay = tl.cast(weight_decay, MATH)
        step_size, bc2_sqrt = tl.cast(step_size, MATH), tl.cast(bc2_sqrt, MATH)
    n_full = (end - start) // BLOCK
    for i in range(n_full):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        _adam_block(P, G, M, V, VMAX, MASTER, offs, end, grad_scale, beta1, beta2, omb1, omb2,
                    eps, weight_decay, decay, step_size, bc2_sqrt, False, MATH, HAS_MASTER,
                    WEIGHT_DECAY, AMSGRAD, MAXIMIZE, HAS_SCALE)
    tail = start + n_full * BLOCK
    if tail < end:
        offs = tail + tl.arange(0, BLOCK)
        _adam_block(P, G, M, V, VMAX, MASTER, offs, end, grad_scale, beta1, beta2, omb1, omb2,
                    eps, weight_decay, decay, step_size, bc2_sqrt, True, MATH, HAS_MASTER,
                    WEIGHT_DECAY, AMSGRAD, MAXIMIZE, HAS_SCALE)


# ------------------------------------------------------------------------------ SGD
#   g /= grad_scale; g = -g if maximize; g += wd * theta
#   momentum: b = g on the first step, else b = mu * b + (1 - dampening) * g;
#             g = g + mu * b (nesterov) or b
#   theta -= lr * g.          State column: S0 = momentum buffer.

@triton.jit
def _sgd_block(P, G, B, MASTER, offs, end, grad_scale, lr, weight_decay, momentum, omd,
               MASKED: tl.constexpr, MATH: tl.constexpr, HAS_MASTER: tl.constexpr,
               HAS_WD: tl.constexpr, HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
               FIRST_STEP: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr):
    theta, g = _read(P, G, MASTER, offs, end, grad_scale, MASKED, MATH, HAS_MASTER, HAS_SCALE,
                     MAXIMIZE)
    if HAS_WD:
        g = g + weight_decay * theta
    if HAS_MOMENTUM:
        if FIRST_STEP:
            b = g
        else:
            b = momentum * _load(B, offs, end, MASKED, MATH) + omd * g
        _store(B, offs, end, b, MASKED)
        if NESTEROV:
            g = g + momentum * b
        else:
            g = b
    _write(P, MASTER, offs, end, theta - lr * g, MASKED, HAS_MASTER)


@triton.jit
def optim_sgd_kernel(META, CHUNKS, GRAD_SCALE, FOUND_INF, chunk, lr: tl.float64,
                     weight_decay: tl.float64, momentum: tl.float64, omd: tl.float64,
                     P_DT: tl.constexpr, G_DT: tl.constexpr, S_DT: tl.constexpr, M_DT: tl.constexpr,
                     MATH: tl.constexpr, HAS_MASTER: tl.constexpr, HAS_WD: tl.constexpr,
                     HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, FIRST_STEP: tl.constexpr,
                     MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                     ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    if HAS_FOUND_INF:  # noqa: SIM102 -- a constexpr test, then a runtime one
        if tl.load(FOUND_INF) != 0:
            return
    row, start, end = _chunk(META, CHUNKS, chunk, BLOCK)
    P = _pointer(row, COL_P, P_DT, ALIGNED)
    G = _pointer(row, COL_G, G_DT, ALIGNED)
    B = _pointer(row, COL_S0, S_DT, ALIGNED)
    MASTER = _pointer(row, COL_MASTER, M_DT, ALIGNED)
    grad_scale = _grad_scale(GRAD_SCALE, HAS_SCALE, MATH)
    if MATH == tl.float32:  # see SCALARS above
        omd, lr = tl.cast(omd, MATH), tl.cast(lr, MATH)
        weight_decay, momentum = tl.cast(weight_decay, MATH), tl.cast(momentum, MATH)
    n_full = (end - start) // BLOCK
    for i in range(n_full):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        _sgd_block(P, G, B, MASTER, offs, end, grad_scale, lr, weight_decay, momentum, omd, False,
                   MATH, HAS_MASTER, HAS_WD, HAS_MOMENTUM, NESTEROV, FIRST_STEP, MAXIMIZE,
                   HAS_SCALE)
    tail = start + n_full * BLOCK
    if tail < end:
        offs = tail + tl.arange(0, BLOCK)
        _sgd_block(P, G, B, MASTER, offs, end, grad_scale, lr, weight_decay, momentum, omd, True,
                   MATH, HAS_MASTER, HAS_WD, HAS_MOMENTUM, NESTEROV, FIRST_STEP, MAXIMIZE,
                   HAS_SCALE)


# ------------------------------------------------------------------------------ AdaGrad
#   g /= grad_scale; g = -g if maximize; g += wd * theta
#   s += g * g;  theta -= clr * g / (sqrt(s) + eps),  clr = lr / (1 + (t - 1) lr_decay)
#   State column: S0 = state_sum s.

@triton.jit
def _adagrad_block(P, G, S, MASTER, offs, end, grad_scale, clr, weight_decay, eps,
                   MASKED: tl.constexpr, MATH: tl.constexpr, HAS_MASTER: tl.constexpr,
                   HAS_WD: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr):
    theta, g = _read(P, G, MASTER, offs, end, grad_scale, MASKED, MATH, HAS_MASTER, HAS_SCALE,
                     MAXIMIZE)
    if HAS_WD:
        g = g + weight_decay * theta
    s = _load(S, offs, end, MASKED, MATH) + g * g
    _store(S, offs, end, s, MASKED)
    _write(P, MASTER, offs, end, theta - _div(clr * g, _sqrt(s) + eps), MASKED, HAS_MASTER)


@triton.jit
def optim_adagrad_kernel(META, CHUNKS, GRAD_SCALE, FOUND_INF, chunk, lr: tl.float64,
                         lr_decay: tl.float64, weight_decay: tl.float64, eps: tl.float64,
                         clr: tl.float64, P_DT: tl.constexpr, G_DT: tl.constexpr,
                         S_DT: tl.constexpr, M_DT: tl.constexpr, MATH: tl.constexpr,
                         HAS_MASTER: tl.constexpr, HAS_WD: tl.constexpr, MAXIMIZE: tl.constexpr,
                         HAS_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                         STEP_ON_DEVICE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """clr: the host's decayed learning rate, unless STEP_ON_DEVICE (then from the step, fp64)."""
    if HAS_FOUND_INF:  # noqa: SIM102 -- a constexpr test, then a runtime one
        if tl.load(FOUND_INF) != 0:
            return
    row, start, end = _chunk(META, CHUNKS, chunk, BLOCK)
    P = _pointer(row, COL_P, P_DT, ALIGNED)
    G = _pointer(row, COL_G, G_DT, ALIGNED)
    S = _pointer(row, COL_S0, S_DT, ALIGNED)
    MASTER = _pointer(row, COL_MASTER, M_DT, ALIGNED)
    if STEP_ON_DEVICE:
        t = tl.load(_pointer(row, COL_STEP, tl.float32, False)).to(tl.float64)
        clr = lr / (1 + (t - 1) * lr_decay)
    grad_scale = _grad_scale(GRAD_SCALE, HAS_SCALE, MATH)
    if MATH == tl.float32:  # see SCALARS above
        clr, weight_decay, eps = tl.cast(clr, MATH), tl.cast(weight_decay, MATH), \
            tl.cast(eps, MATH)
    n_full = (end - start) // BLOCK
    for i in range(n_full):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        _adagrad_block(P, G, S, MASTER, offs, end, grad_scale, clr, weight_decay, eps, False,
                       MATH, HAS_MASTER, HAS_WD, MAXIMIZE, HAS_SCALE)
    tail = start + n_full * BLOCK
    if tail < end:
        offs = tail + tl.arange(0, BLOCK)
        _adagrad_block(P, G, S, MASTER, offs, end, grad_scale, clr, weight_decay, eps, True,
                       MATH, HAS_MASTER, HAS_WD, MAXIMIZE, HAS_SCALE)


# ------------------------------------------------------------------------------ RMSProp
#   g /= grad_scale; g = -g if maximize; g += wd * theta
#   v = alpha * v + (1 - alpha) * g * g
#   centered: gbar = gbar + (1 - alpha) * (g - gbar), sigma = sqrt(v - gbar^2) + eps
#   else sigma = sqrt(v) + eps
#   momentum: b = mu * b + g / sigma, theta -= lr * b;  else theta -= lr * g / sigma
#   State columns: S0 = square_avg v, S1 = grad_avg gbar, S2 = momentum buffer b.

@triton.jit
def _rmsprop_block(P, G, V, GBAR, B, MASTER, offs, end, grad_scale, lr, alpha, oma, eps,
                   weight_decay, momentum, MASKED: tl.constexpr, MATH: tl.constexpr,
                   HAS_MASTER: tl.constexpr, HAS_WD: tl.constexpr, CENTERED: tl.constexpr,
                   HAS_MOMENTUM: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr):
    theta, g = _read(P, G, MASTER, offs, end, grad_scale, MASKED, MATH, HAS_MASTER, HAS_SCALE,
                     MAXIMIZE)
    if HAS_WD:
        g = g + weight_decay * theta
    v = alpha * _load(V, offs, end, MASKED, MATH) + oma * g * g
    _store(V, offs, end, v, MASKED)
    if CENTERED:
        gbar = _load(GBAR, offs, end, MASKED, MATH)
        gbar = gbar + oma * (g - gbar)
        _store(GBAR, offs, end, gbar, MASKED)
        sigma = _sqrt(v - gbar * gbar) + eps
    else:
        sigma = _sqrt(v) + eps
    if HAS_MOMENTUM:
        b = momentum * _load(B, offs, end, MASKED, MATH) + _div(g, sigma)
        _store(B, offs, end, b, MASKED)
        theta = theta - lr * b
    else:
        theta = theta - _div(lr * g, sigma)
    _write(P, MASTER, offs, end, theta, MASKED, HAS_MASTER)


@triton.jit
def optim_rmsprop_kernel(META, CHUNKS, GRAD_SCALE, FOUND_INF, chunk, lr: tl.float64,
                         alpha: tl.float64, oma: tl.float64, eps: tl.float64,
                         weight_decay: tl.float64, momentum: tl.float64, P_DT: tl.constexpr,
                         G_DT: tl.constexpr, S_DT: tl.constexpr, M_DT: tl.constexpr,
                         MATH: tl.constexpr, HAS_MASTER: tl.constexpr, HAS_WD: tl.constexpr,
                         CENTERED: tl.constexpr, HAS_MOMENTUM: tl.constexpr, MAXIMIZE: tl.constexpr,
                         HAS_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                         ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    if HAS_FOUND_INF:  # noqa: SIM102 -- a constexpr test, then a runtime one
        if tl.load(FOUND_INF) != 0:
            return
    row, start, end = _chunk(META, CHUNKS, chunk, BLOCK)
    P = _pointer(row, COL_P, P_DT, ALIGNED)
    G = _pointer(row, COL_G, G_DT, ALIGNED)
    V = _pointer(row, COL_S0, S_DT, ALIGNED)
    GBAR = _pointer(row, COL_S1, S_DT, ALIGNED)
    B = _pointer(row, COL_S2, S_DT, ALIGNED)
    MASTER = _pointer(row, COL_MASTER, M_DT, ALIGNED)
    grad_scale = _grad_scale(GRAD_SCALE, HAS_SCALE, MATH)
    if MATH == tl.float32:  # see SCALARS above
        oma, lr, alpha, eps = tl.cast(oma, MATH), tl.cast(lr, MATH), tl.cast(alpha, MATH), \
            tl.cast(eps, MATH)
        weight_decay, momentum = tl.cast(weight_decay, MATH), tl.cast(momentum, MATH)
    n_full = (end - start) // BLOCK
    for i in range(n_full):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        _rmsprop_block(P, G, V, GBAR, B, MASTER, offs, end, grad_scale, lr, alpha, oma, eps,
                       weight_decay, momentum, False, MATH, HAS_MASTER, HAS_WD, CENTERED,
                       HAS_MOMENTUM, MAXIMIZE, HAS_SCALE)
    tail = start + n_full * BLOCK
    if tail < end:
        offs = tail + tl.arange(0, BLOCK)
        _rmsprop_block(P, G, V, GBAR, B, MASTER, offs, end, grad_scale, lr, alpha, oma, eps,
                       weight_decay, momentum, True, MATH, HAS_MASTER, HAS_WD, CENTERED,
                       HAS_MOMENTUM, MAXIMIZE, HAS_SCALE)


# ------------------------------------------------------------------------------ host side

class _Table:
    """A cached metadata + chunk table on the device (one int64 buffer, one copy)."""

    def __init__(self, rows, chunk, device):
        meta = torch.tensor(rows, dtype=torch.int64).reshape(-1, NCOL.value)
        counts = (meta[:, -1] + chunk - 1) // chunk
        index = torch.repeat_interleave(torch.arange(len(rows)), counts)
        first = torch.cumsum(counts, 0) - counts
        starts = (torch.arange(len(index)) - first[index]) * chunk
        chunks = torch.stack([index, starts], 1)
        buf = torch.cat([meta.reshape(-1), chunks.reshape(-1)]).to(device)
        self.meta, self.chunks = buf[:meta.numel()], buf[meta.numel():]
        self.dummy = buf.view(torch.float32)  # the fp32 pointer passed for an absent grad_scale
        self.n_chunks = len(index)
        self.captured = False


_TABLES = OrderedDict()


def _table(rows, chunk, device):
    """The table for these rows (LRU, CACHE_SIZE entries; entries used in a CUDA graph capture
    stay)."""
    key = (str(device), chunk, tuple(rows))
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    table = _TABLES.get(key)
    if table is None:
        if capturing:
            raise RuntimeError(
                "leedl_fast fused optimizer: its tensor table is built on the first call and "
                "needs a host-to-device copy, which CUDA graph capture forbids; run one step "
                "eagerly (as torch's capturable optimizers need a warm-up) before capturing")
        table = _TABLES[key] = _Table(rows, chunk, device)
        evictable = [k for k, t in _TABLES.items() if not t.captured]
        for k in evictable[:max(0, len(evictable) - CACHE_SIZE)]:
            del _TABLES[k]
    else:
        _TABLES.move_to_end(key)
    table.captured |= capturing
    return table


def clear_cache():
    _TABLES.clear()


def _groups(params, grads, states, master_params, steps):
    """{(dtypes..., step_on_device, host step, aligned): [metadata rows]}. states: three lists
    (empty = unused) for the columns S0..S2. Empty tensors are left out (nothing to do)."""
    groups = {}
    in_kernel = STEPS_IN_KERNEL
    device = params[0].device
    for i, p in enumerate(params):
        n = p.numel()
        g = grads[i]
        st = [s[i] if s else None for s in states]
        m = master_params[i] if master_params else None
        # The kernel trusts these addresses: the cheap checks that keep every access in
        # bounds, here where each tensor is visited anyway (the validated entries in
        # leedl_fast/_ops/optim.py check more, once; a direct torch.ops call lands here).
        for name, t, used in (("grads", g, True), *(
                (f"state list {j}", t, bool(states[j])) for j, t in enumerate(st)),
                ("master_params", m, bool(master_params))):
            if not used:
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{i}] must be a tensor, got {type(t).__name__}")
            if t.numel() != n or t.device != device or not t.is_contiguous():
                raise ValueError(f"{name}[{i}] must be a contiguous tensor of params[{i}]'s "
                                 f"{n} elements on {device}, got {t.numel()} elements on "
                                 f"{t.device} (contiguous: {t.is_contiguous()})")
        if p.device != device or not p.is_contiguous():
            raise ValueError(f"params[{i}] must be contiguous and on {device}")
        if n == 0:
            continue
        sdt = {s.dtype for s in st if s is not None}
        if len(sdt) > 1:
            raise TypeError(f"optimizer state of tensor {i}: mixed dtypes {sorted(map(str, sdt))}")
        sdt = sdt.pop() if sdt else p.dtype
        ptrs = [p.data_ptr(), g.data_ptr()] + [0 if s is None else s.data_ptr() for s in st] + \
            [0 if m is None else m.data_ptr()]
        aligned = all(a % ALIGN_BYTES == 0 for a in ptrs)
        on_device, t, step_ptr = False, None, 0
        if steps:
            step = steps[i]
            on_device = step.device.type != "cpu" if in_kernel is None else in_kernel
            if on_device:
                if step.dtype != torch.float32 or step.device != device:
                    raise TypeError(f"steps[{i}]: the kernel reads float32 steps on {device}, "
                                    f"got {step.dtype} on {step.device}")
                step_ptr = step.data_ptr()
            else:
                t = float(step.reshape(-1)[0])
        key = (p.dtype, g.dtype, sdt, None if m is None else m.dtype, on_device, t, aligned)
        groups.setdefault(key, []).append(tuple(ptrs) + (step_ptr, n))
    return groups


def _apply(kernel, params, grads, states, master_params, steps, grad_scale, found_inf, scalars,
           flags, host_step_scalars=None):
    """Launch `kernel` once per group. scalars: fp64 kernel arguments; flags: constexprs;
    host_step_scalars(t): the step-dependent scalars for host steps t (None: in the kernel)."""
    if not params:
        return
    device = params[0].device
    for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is not None and (t.device != device or t.numel() != 1 or t.dtype != torch.float32):
            raise ValueError(f"{name} must be a 1-element float32 tensor on {device}, got "
                             f"{t.numel()} {t.dtype} elements on {t.device}")
    for (pdt, gdt, sdt, mdt, on_device, t, aligned), rows in _groups(
            params, grads, states, master_params, steps).items():
        itemsize = max(d.itemsize for d in (pdt, gdt, sdt, mdt) if d is not None)
        block, warps = launch_config(itemsize)
        chunk = chunk_size(sum(r[-1] for r in rows), block)
        table = _table(rows, chunk, device)
        math_dt = mdt if mdt is not None else pdt
        step_args = {}
        if host_step_scalars is not None:
            step_args = {**host_step_scalars(None if on_device else t),
                         "STEP_ON_DEVICE": on_device}
        kernel[(table.n_chunks,)](
            table.meta, table.chunks,
            table.dummy if grad_scale is None else grad_scale,
            table.dummy if found_inf is None else found_inf, chunk,
            **{k: float(v) for k, v in scalars.items()}, **step_args,
            P_DT=_TL_DTYPE[pdt], G_DT=_TL_DTYPE[gdt], S_DT=_TL_DTYPE[sdt],
            M_DT=_TL_DTYPE[mdt if mdt is not None else pdt],
            MATH=tl.float64 if math_dt == torch.float64 else tl.float32,
            HAS_MASTER=mdt is not None, HAS_SCALE=grad_scale is not None,
            HAS_FOUND_INF=found_inf is not None, ALIGNED=aligned, BLOCK=block, **flags,
            num_warps=warps)


def _log(beta):
    return math.log(beta) if beta > 0 else -math.inf  # 0 ** t = 0 for t >= 1: exp(-inf)


def fused_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, steps, lr,
               beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize,
               grad_scale=None, found_inf=None):
    def step_scalars(t):
        if t is None:
            return {"step_size": 0.0, "bc2_sqrt": 1.0}
        return {"step_size": lr / (1 - beta1 ** t), "bc2_sqrt": math.sqrt(1 - beta2 ** t)}

    _apply(optim_adam_kernel, params, grads,
           [exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else []], master_params, steps,
           grad_scale, found_inf,
           scalars={"lr": lr, "beta1": beta1, "beta2": beta2, "omb1": 1 - beta1,
                    "omb2": 1 - beta2, "eps": eps, "weight_decay": weight_decay,
                    "decay": 1 - lr * weight_decay, "log_beta1": _log(beta1),
                    "log_beta2": _log(beta2)},
           flags={"WEIGHT_DECAY": 0 if weight_decay == 0 else 2 if decoupled_weight_decay else 1,
                  "AMSGRAD": bool(amsgrad), "MAXIMIZE": bool(maximize)},
           host_step_scalars=step_scalars)


def fused_sgd(params, grads, momentum_buffers, master_params, lr, weight_decay, momentum,
              dampening, nesterov, maximize, is_first_step, grad_scale=None, found_inf=None):
    has_momentum = momentum != 0
    _apply(optim_sgd_kernel, params, grads, [momentum_buffers if has_momentum else [], [], []],
           master_params, [], grad_scale, found_inf,
           scalars={"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                    "omd": 1 - dampening},
           flags={"HAS_WD": weight_decay != 0, "HAS_MOMENTUM": has_momentum,
                  "NESTEROV": bool(nesterov), "FIRST_STEP": bool(is_first_step),
                  "MAXIMIZE": bool(maximize)})


def fused_adagrad(params, grads, state_sums, master_params, steps, lr, lr_decay, weight_decay,
                  eps, maximize, grad_scale=None, found_inf=None):
    def step_scalars(t):
        return {"clr": 0.0 if t is None else lr / (1 + (t - 1) * lr_decay)}

    _apply(optim_adagrad_kernel, params, grads, [state_sums, [], []], master_params, steps,
           grad_scale, found_inf,
           scalars={"lr": lr, "lr_decay": lr_decay, "weight_decay": weight_decay, "eps": eps},
           flags={"HAS_WD": weight_decay != 0, "MAXIMIZE": bool(maximize)},
           host_step_scalars=step_scalars)


def fused_rmsprop(params, grads, square_avgs, grad_avgs, momentum_buffers, master_params, lr,
                  alpha, eps, weight_decay, momentum, centered, maximize, grad_scale=None,
                  found_inf=None):
    has_momentum = momentum > 0
    _apply(optim_rmsprop_kernel, params, grads,
           [square_avgs, grad_avgs if centered else [],
            momentum_buffers if has_momentum else []], master_params, [], grad_scale, found_inf,
           scalars={"lr": lr, "alpha": alpha, "oma": 1 - alpha, "eps": eps,
                    "weight_decay": weight_decay, "momentum": momentum},
           flags={"HAS_WD": weight_decay != 0, "CENTERED": bool(centered),
                  "HAS_MOMENTUM": has_momentum, "MAXIMIZE": bool(maximize)})
