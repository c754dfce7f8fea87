"""Triton kernels for the recurrent family on the GPU: the per-step path (docs/rnn.md has the math).

A recurrent layer cannot run its steps in parallel: step t needs all of h_{t-1}. The input
projection x_t W_ih^T + b has no such dependence, so the caller does it for every step at once
(one big GEMM, gates_x). What is left is a loop over t, and each step is two pieces of work:

    1. the recurrent product h_{t-1} W_hh^T, a (B, H) x (H, 4H) GEMM  -> cuBLAS (torch.mm), written
       into a preallocated fp32 buffer (fp16/bf16 operands: cuBLAS accumulates in fp32 anyway,
       and keeping its output in fp32 means the gate pre-activations are never rounded);
    2. everything else, which is pointwise: add the input projection, the gate nonlinearities,
       the cell update, h_t, and the values the backward needs  -> ONE Triton launch.

Done with torch ops, piece 2 is about a dozen elementwise kernels per step (chunk, sigmoid x3,
tanh x2, mul/add ...), each a launch and a round trip through memory; fused it reads the
pre-activations once and writes the step's outputs once. At small batch the step is launch-bound
either way: 1 GEMM + 1 launch per step is the floor of a per-step design (a persistent whole-
sequence kernel, csrc/cuda, goes below it).

LSTM (torch's gate order i, f, g, o), forward step:
    i, f, o = sigmoid(pre_i, pre_f, pre_o),  g = tanh(pre_g),  pre = h_{t-1} W_hh^T + gates_x[t]
    c_t = f c_{t-1} + i g,  h_t = o tanh(c_t)
LSTM backward step, with dh = dy_t + dh_next (dh_next = dG_{t+1} W_hh, or dh_n at the last step):
    dc = dc_next + dh o (1 - tanh^2 c_t)
    dG_t = (dc g i(1-i), dc c_{t-1} f(1-f), dc i (1-g^2), dh tanh(c_t) o(1-o)),  dc_next = dc f
GRU (gate order r, z, n), forward step (b_hh is added here: b_hn sits inside r * (.)):
    r = sigmoid(gx_r + h W_hr + b_hr),  z = sigmoid(gx_z + h W_hz + b_hz)
    hn = h W_hn + b_hn,  n = tanh(gx_n + r hn),  h_t = (1 - z) n + z h_{t-1}
GRU backward step, with dh = dy_t + dh_next, dh_next = dh_{t+1} z_{t+1} + dGh_{t+1} W_hh:
    dn = dh (1-z)(1-n^2),  dz = dh (h_{t-1} - n) z(1-z),  dr = dn hn r(1-r)
    dgates_x[t] = (dr, dz, dn);  the recurrent side (dW_hh, db_hh, dh_{t-1}) sees dGh = (dr, dz, dn r)
    and the direct term dh z goes to the next (earlier) step as is.
dW_hh = sum_t dG_t^T h_{t-1} is left to one GEMM over all steps after the loop.

Every kernel computes in the dtype of its fp32 buffers (fp64 for fp64 inputs). Grid: one program
per (batch row, block of BLOCK_H hidden units), so program (b, j) reads and writes only its own
units of every gate -- no synchronization inside a step.

Pointer arguments (one step; every tensor contiguous, rows of a (B, k H) tensor are k H apart):
    HW         (B, 4H) or (B, 3H)  acc dtype   h_{t-1} W_hh^T (no bias), the cuBLAS output
    GX         (B, 4H) or (B, 3H)  input dtype gates_x[t]
    B_HH       (3H,)               input dtype the GRU's b_hh (a dummy when HAS_BIAS is off)
    C_PREV, C  (B, H)              acc dtype   c_{t-1} (c0 cast to acc at t = 0), c_t
    H_PREV     (B, H)              input dtype h_{t-1} (y[t-1], or h0)
    GATES      (B, 4H)             acc dtype   the LSTM's activated i, f, g, o (saved)
    SAVED      (B, 4H)             acc dtype   the GRU's r, z, n, hn (saved)
    H_OUT      (B, H)              input dtype y[t]
    DY         (B, H)              input dtype dy[t]
    DH_REC     (B, H)              acc dtype   the recurrent part of dh_next (cuBLAS output)
    DC         (B, H)              acc dtype   dc_next in, dc_{t-1} out (LSTM)
    DH_DIRECT  (B, H)              acc dtype   dh_{t+1} z_{t+1} in, dh_t z_t out (GRU)
    DG, DGX    (B, 4H) or (B, 3H)  input dtype dG_t = dgates_x[t] (pre-activation grads)
    DGH        (B, 3H)             input dtype the GRU's (dr, dz, dn r) for the recurrent side
"""
import torch
import triton
import triton.language as tl

MAX_BLOCK_H = 512  # hidden units per program (read at call time: tests shrink it)

# tanh's Taylor coefficients, x - x^3/3 + 2x^5/15 - 17x^7/315 + 62x^9/2835 (kernel constants).
_T3 = tl.constexpr(-0.3333333333333333)
_T5 = tl.constexpr(0.13333333333333333)
_T7 = tl.constexpr(-0.05396825396825397)
_T9 = tl.constexpr(0.021869488536155203)


@triton.jit
def _tanh(x):
    """tanh without libdevice (the interpreter has none): (1 - e) / (1 + e) with e = exp(-2|x|),
    which never overflows. Near 0, 1 - e cancels (absolute error ~1 ulp of 1, so a large relative
    error for tiny x): there the Taylor series takes over, below |x| = 1/4 in fp32 and 0.04 in
    fp64 (its truncation error, ~0.009 x^10 relative, stays under the dtype's epsilon)."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(x < 0, -t, t)
    x2 = x * x
    poly = x * (1.0 + x2 * (_T3 + x2 * (_T5 + x2 * (_T7 + x2 * _T9))))
    if x.dtype == tl.float64:
        t = tl.where(tl.abs(x) < 0.04, poly, t)
    else:
        t = tl.where(tl.abs(x) < 0.25, poly, t)
    return t


@triton.jit
def _units(H, BLOCK_H: tl.constexpr):
    """This program's batch row (int64: row * 4H may pass 2**31), its hidden units and mask."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    return row, cols, cols < H


@triton.jit
def _load(PTR, offs, mask, acc):
    return tl.load(PTR + offs, mask=mask, other=0.0).to(acc)


@triton.jit
def lstm_fwd_step_kernel(HW, GX, C_PREV, GATES, C, H_OUT, H, BLOCK_H: tl.constexpr):
    """One LSTM step: gates, cell and hidden state of BLOCK_H units of one batch row."""
    row, cols, mask = _units(H, BLOCK_H)
    acc = HW.dtype.element_ty
    g = row * 4 * H + cols  # gate i of these units in a (B, 4H) row; f, g, o follow at +H
    s = row * H + cols      # these units in a (B, H) state
    i = tl.sigmoid(_load(HW, g, mask, acc) + _load(GX, g, mask, acc))
    f = tl.sigmoid(_load(HW, g + H, mask, acc) + _load(GX, g + H, mask, acc))
    gg = _tanh(_load(HW, g + 2 * H, mask, acc) + _load(GX, g + 2 * H, mask, acc))
    o = tl.sigmoid(_load(HW, g + 3 * H, mask, acc) + _load(GX, g + 3 * H, mask, acc))
    c = f * _load(C_PREV, s, mask, acc) + i * gg
    tl.store(GATES + g, i, mask=mask)
    tl.store(GATES + g + H, f, mask=mask)
    tl.store(GATES + g + 2 * H, gg, mask=mask)
    tl.store(GATES + g + 3 * H, o, mask=mask)
    tl.store(C + s, c, mask=mask)
    tl.store(H_OUT + s, (o * _tanh(c)).to(H_OUT.dtype.element_ty), mask=mask)


@triton.jit
def lstm_bwd_step_kernel(GATES, C, C_PREV, DY, DH_REC, DC, DG, H, BLOCK_H: tl.constexpr):
    """One LSTM step backward: dG_t (pre-activation grads) and dc_{t-1}, in place in DC."""
    row, cols, mask = _units(H, BLOCK_H)
    acc = GATES.dtype.element_ty
    g = row * 4 * H + cols
    s = row * H + cols
    i = _load(GATES, g, mask, acc)
    f = _load(GATES, g + H, mask, acc)
    gg = _load(GATES, g + 2 * H, mask, acc)
    o = _load(GATES, g + 3 * H, mask, acc)
    tc = _tanh(_load(C, s, mask, acc))
    dh = _load(DY, s, mask, acc) + _load(DH_REC, s, mask, acc)
    dc = _load(DC, s, mask, acc) + dh * o * (1.0 - tc * tc)
    out = DG.dtype.element_ty
    tl.store(DG + g, (dc * gg * i * (1.0 - i)).to(out), mask=mask)
    tl.store(DG + g + H, (dc * _load(C_PREV, s, mask, acc) * f * (1.0 - f)).to(out), mask=mask)
    tl.store(DG + g + 2 * H, (dc * i * (1.0 - gg * gg)).to(out), mask=mask)
    tl.store(DG + g + 3 * H, (dh * tc * o * (1.0 - o)).to(out), mask=mask)
    tl.store(DC + s, dc * f, mask=mask)


@triton.jit
def gru_fwd_step_kernel(HW, B_HH, GX, H_PREV, SAVED, H_OUT, H, HAS_BIAS: tl.constexpr,
                        BLOCK_H: tl.constexpr):
    """One GRU step: r, z, n, hn (saved) and h_t of BLOCK_H units of one batch row."""
    row, cols, mask = _units(H, BLOCK_H)
    acc = HW.dtype.element_ty
    g = row * 3 * H + cols  # gate r in a (B, 3H) row; z, n at +H, +2H
    v = row * 4 * H + cols  # r in a (B, 4H) saved row; z, n, hn follow
    s = row * H + cols
    hr = _load(HW, g, mask, acc)
    hz = _load(HW, g + H, mask, acc)
    hn = _load(HW, g + 2 * H, mask, acc)
    if HAS_BIAS:
        hr += _load(B_HH, cols, mask, acc)
        hz += _load(B_HH, cols + H, mask, acc)
        hn += _load(B_HH, cols + 2 * H, mask, acc)
    r = tl.sigmoid(_load(GX, g, mask, acc) + hr)
    z = tl.sigmoid(_load(GX, g + H, mask, acc) + hz)
    n = _tanh(_load(GX, g + 2 * H, mask, acc) + r * hn)
    h = (1.0 - z) * n + z * _load(H_PREV, s, mask, acc)
    tl.store(SAVED + v, r, mask=mask)
    tl.store(SAVED + v + H, z, mask=mask)
    tl.store(SAVED + v + 2 * H, n, mask=mask)
    tl.store(SAVED + v + 3 * H, hn, mask=mask)
    tl.store(H_OUT + s, h.to(H_OUT.dtype.element_ty), mask=mask)


@triton.jit
def gru_bwd_step_kernel(SAVED, H_PREV, DY, DH_REC, DH_DIRECT, DGX, DGH, H,
                        BLOCK_H: tl.constexpr):
    """One GRU step backward: dgates_x[t], the recurrent-side grads dGh_t and, in place in
    DH_DIRECT, the direct term dh_t z_t of dh_{t-1} (cuBLAS adds dGh_t W_hh after this)."""
    row, cols, mask = _units(H, BLOCK_H)
    acc = SAVED.dtype.element_ty
    g = row * 3 * H + cols
    v = row * 4 * H + cols
    s = row * H + cols
    r = _load(SAVED, v, mask, acc)
    z = _load(SAVED, v + H, mask, acc)
    n = _load(SAVED, v + 2 * H, mask, acc)
    hn = _load(SAVED, v + 3 * H, mask, acc)
    dh = _load(DY, s, mask, acc) + _load(DH_REC, s, mask, acc) + _load(DH_DIRECT, s, mask, acc)
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (_load(H_PREV, s, mask, acc) - n) * z * (1.0 - z)
    dr = dn * hn * r * (1.0 - r)
    out = DGX.dtype.element_ty
    tl.store(DGX + g, dr.to(out), mask=mask)
    tl.store(DGX + g + H, dz.to(out), mask=mask)
    tl.store(DGX + g + 2 * H, dn.to(out), mask=mask)
    tl.store(DGH + g, dr.to(out), mask=mask)
    tl.store(DGH + g + H, dz.to(out), mask=mask)
    tl.store(DGH + g + 2 * H, (dn * r).to(out), mask=mask)
    tl.store(DH_DIRECT + s, dh * z, mask=mask)


# ----------------------------------------------------------------------------- launch helpers

def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def step_config(hidden):
    """(BLOCK_H, num_warps) of every step kernel for `hidden` units: up to MAX_BLOCK_H units per
    program, 128 per warp (4 per thread: one 16-byte fp32 access per gate), at most 4 warps."""
    block = max(16, min(MAX_BLOCK_H, triton.next_power_of_2(max(hidden, 1))))
    return block, max(1, min(4, block // 128))


def _fresh(t, dtype):
    """A new contiguous copy of t in dtype (never the caller's tensor: the kernels write it)."""
    return torch.empty(t.shape, dtype=dtype, device=t.device).copy_(t)


_MIXED_PRODUCTS = ("out_dtype into out", "out_dtype, then copy", "rounded, then copy")
_MIXED_START = {}  # device type -> the first of _MIXED_PRODUCTS that ran there


def _product_into(out, a, b):
    """out = a @ b by torch (cuBLAS on the GPU), in out's dtype. fp16/bf16 operands with an fp32
    `out` use torch.mm's out_dtype (CUDA, torch >= 2.8: fp32 accumulate and output, written in
    place); where that is missing (the CPU, older torch) the first way that runs is kept, the
    last resort rounding the product to the operands' dtype."""
    if a.dtype == out.dtype:
        torch.mm(a, b, out=out)
        return
    device = out.device.type
    first = _MIXED_START.get(device, 0)
    for k in range(first, len(_MIXED_PRODUCTS)):
        try:
            if k == 0:
                torch.mm(a, b, out_dtype=out.dtype, out=out)
            elif k == 1:
                out.copy_(torch.mm(a, b, out_dtype=out.dtype))
            else:
                out.copy_(torch.mm(a, b))
        except (RuntimeError, NotImplementedError, TypeError):
            if k == len(_MIXED_PRODUCTS) - 1:
                raise
            continue
        _MIXED_START[device] = k
        return


def _h_prev_all(h0, y):
    """(T, B, H): h_{t-1} for every step (h0, y[0], ..., y[T-2]) for the dW_hh GEMM."""
    return torch.cat((h0.unsqueeze(0), y[:-1]))[: y.shape[0]]


def lstm_sequence_fwd(gates_x, w_hh, h0, c0):
    """gates_x (T, B, 4H), w_hh (4H, H), h0/c0 (B, H), one dtype. Returns y (T, B, H), h_n, c_n
    (B, H) in that dtype, cells (T, B, H) and the activated gates (T, B, 4H) in fp32 (fp64)."""
    steps, batch, _ = gates_x.shape
    hidden = w_hh.shape[1]
    dtype, acc = gates_x.dtype, _acc_dtype(gates_x.dtype)
    gates_x = gates_x.contiguous()
    y = gates_x.new_empty(steps, batch, hidden)
    cells = gates_x.new_empty(steps, batch, hidden, dtype=acc)
    gates = gates_x.new_empty(steps, batch, 4 * hidden, dtype=acc)
    h_prev = h0.contiguous()
    c_prev = c0.to(acc).contiguous()  # only read
    if steps == 0:
        return y, _fresh(h0, dtype), _fresh(c0, dtype), cells, gates
    if batch * hidden:
        w_t = w_hh.t()  # (H, 4H) view: cuBLAS reads it transposed, no copy
        hw = gates_x.new_empty(batch, 4 * hidden, dtype=acc)
        block, warps = step_config(hidden)
        grid = (batch, triton.cdiv(hidden, block))
        for t in range(steps):
            _product_into(hw, h_prev, w_t)
            lstm_fwd_step_kernel[grid](hw, gates_x[t], c_prev, gates[t], cells[t], y[t], hidden,
                                       BLOCK_H=block, num_warps=warps)
            h_prev, c_prev = y[t], cells[t]
    return y, y[-1].clone(), cells[-1].to(dtype, copy=True), cells, gates


def lstm_sequence_bwd(dy, dh_n, dc_n, gates, cells, y, h0, c0, w_hh):
    """Grads of lstm_sequence_fwd: dgates_x (T, B, 4H) (pre-activation), dw_hh (4H, H), dh0, dc0
    (B, H), all in h0's dtype. gates/cells are the forward's fp32 (fp64) saved tensors."""
    steps, batch, _ = gates.shape
    hidden = w_hh.shape[1]
    dtype, acc = h0.dtype, _acc_dtype(h0.dtype)
    gates, cells = gates.to(acc).contiguous(), cells.to(acc).contiguous()
    dy, y, h0 = dy.contiguous(), y.contiguous(), h0.contiguous()
    dgates = h0.new_empty(steps, batch, 4 * hidden)
    dh = _fresh(dh_n, acc)  # dh_next's recurrent part: dh_n, then dG_{t+1} W_hh (cuBLAS)
    dc = _fresh(dc_n, acc)  # dc_next, updated in place by each step
    if steps and batch * hidden:
        c0 = c0.to(acc).contiguous()
        block, warps = step_config(hidden)
        grid = (batch, triton.cdiv(hidden, block))
        for t in range(steps - 1, -1, -1):
            lstm_bwd_step_kernel[grid](gates[t], cells[t], cells[t - 1] if t else c0, dy[t], dh,
                                       dc, dgates[t], hidden, BLOCK_H=block, num_warps=warps)
            _product_into(dh, dgates[t], w_hh)
    rows = steps * batch
    dw = torch.mm(dgates.reshape(rows, 4 * hidden).t(), _h_prev_all(h0, y).reshape(rows, hidden))
    return dgates, dw, dh.to(dtype), dc.to(dtype)


def gru_sequence_fwd(gates_x, w_hh, b_hh, h0):
    """gates_x (T, B, 3H) (x W_ih^T + b_ih), w_hh (3H, H), b_hh (3H,) or None, h0 (B, H). Returns
    y (T, B, H), h_n (B, H) in the input dtype and saved (T, B, 4H) = r, z, n, hn in fp32 (fp64)."""
    steps, batch, _ = gates_x.shape
    hidden = w_hh.shape[1]
    dtype, acc = gates_x.dtype, _acc_dtype(gates_x.dtype)
    gates_x = gates_x.contiguous()
    y = gates_x.new_empty(steps, batch, hidden)
    saved = gates_x.new_empty(steps, batch, 4 * hidden, dtype=acc)
    h_prev = h0.contiguous()
    if steps == 0:
        return y, _fresh(h0, dtype), saved
    if batch * hidden:
        w_t = w_hh.t()
        hw = gates_x.new_empty(batch, 3 * hidden, dtype=acc)
        bias = hw if b_hh is None else b_hh.contiguous()  # a dummy pointer when there is none
        block, warps = step_config(hidden)
        grid = (batch, triton.cdiv(hidden, block))
        for t in range(steps):
            _product_into(hw, h_prev, w_t)
            gru_fwd_step_kernel[grid](hw, bias, gates_x[t], h_prev, saved[t], y[t], hidden,
                                      HAS_BIAS=b_hh is not None, BLOCK_H=block, num_warps=warps)
            h_prev = y[t]
    return y, y[-1].clone(), saved


def gru_sequence_bwd(dy, dh_n, saved, y, h0, w_hh, has_bias):
    """Grads of gru_sequence_fwd: dgates_x (T, B, 3H), dw_hh (3H, H), db_hh ((3H,), or (0,)
    without bias), dh0 (B, H), all in h0's dtype."""
    steps, batch, _ = saved.shape
    hidden = w_hh.shape[1]
    dtype, acc = h0.dtype, _acc_dtype(h0.dtype)
    saved = saved.to(acc).contiguous()
    dy, y, h0 = dy.contiguous(), y.contiguous(), h0.contiguous()
    dgates_x = h0.new_empty(steps, batch, 3 * hidden)
    dgates_h = h0.new_empty(steps, batch, 3 * hidden)  # (dr, dz, dn r) for dW_hh, db_hh, dh
    direct = _fresh(dh_n, acc)  # dh_{t+1} z_{t+1} (dh_n to start), updated in place
    rec = torch.zeros(batch, hidden, dtype=acc, device=h0.device)  # dGh_{t+1} W_hh (cuBLAS)
    if steps and batch * hidden:
        block, warps = step_config(hidden)
        grid = (batch, triton.cdiv(hidden, block))
        for t in range(steps - 1, -1, -1):
            gru_bwd_step_kernel[grid](saved[t], y[t - 1] if t else h0, dy[t], rec, direct,
                                      dgates_x[t], dgates_h[t], hidden, BLOCK_H=block,
                                      num_warps=warps)
            _product_into(rec, dgates_h[t], w_hh)
    rows = steps * batch
    flat = dgates_h.reshape(rows, 3 * hidden)
    dw = torch.mm(flat.t(), _h_prev_all(h0, y).reshape(rows, hidden))
    db = flat.sum(0, dtype=acc).to(dtype) if has_bias else h0.new_empty(0)
    return dgates_x, dw, db, (direct + rec).to(dtype)
