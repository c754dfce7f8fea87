"""Stage 2: a whole LSTM layer -- all steps' input projections in one GEMM, then the recurrence.

x_t w_ih^T does not depend on the previous step, only h_{t-1} w_hh^T does. Stages 0 and 1 still
computed x_t w_ih^T inside the loop: T skinny (B, I) x (I, 4H) products, each too small to keep a
GPU (or the CPU's cores) busy, each a launch. Here:

    gates_x = x.view(T*B, I) w_ih^T           one big GEMM, before the loop (T*B rows: efficient)
    for t in 0..T-1:                          the part that is really sequential
        gh = h_{t-1} w_hh^T                   torch.mm
        fused kernel: z = gates_x[t] + gh + b_ih + b_hh -> gates -> c_t, h_t = y[t]

Per step: 1 GEMM + 1 launch instead of 2 GEMMs + 1 launch (stage 1) or 2 GEMMs + ~12 launches
(stage 0). The kernel writes h_t straight into y[t] (no torch.stack copy at the end) and keeps c
in an fp32 buffer it updates in place (16-bit inputs: c is never rounded between steps).

    leedl-fast check docs/labs/rnn/stage2_hoisted_projection.py --op lstm_layer --backend triton
"""
import torch
import triton
import triton.language as tl

BLOCK_H = 256    # hidden units per program
NUM_WARPS = 4


@triton.jit
def _tanh(x):
    """tanh(x) = 2 sigmoid(2x) - 1 (the interpreter has no libdevice tanh)."""
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _gate(GX, GH, B_IH, B_HH, units, ok, k, HIDDEN):
    """Pre-activation of gate k (0..3 = i, f, g, o) for `units` of one row, in fp32."""
    col = k * HIDDEN + units
    return (tl.load(GX + col, mask=ok).to(tl.float32) + tl.load(GH + col, mask=ok).to(tl.float32)
            + tl.load(B_IH + col, mask=ok).to(tl.float32)
            + tl.load(B_HH + col, mask=ok).to(tl.float32))


@triton.jit
def lstm_step_kernel(GX, GH, B_IH, B_HH, C, Y, HIDDEN, BLOCK_H: tl.constexpr):
    """One step. GX = gates_x[t] and GH = h_{t-1} w_hh^T: (B, 4H) contiguous, gate order i, f,
    g, o; B_IH, B_HH (4H,); C (B, H) fp32, c_{t-1} in, c_t out (in place); Y = y[t] (B, H)
    contiguous, h_t out. Grid: (B, cdiv(H, BLOCK_H))."""
    row = tl.program_id(0).to(tl.int64)
    units = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = units < HIDDEN
    GX += row * 4 * HIDDEN
    GH += row * 4 * HIDDEN
    z_i = _gate(GX, GH, B_IH, B_HH, units, ok, 0, HIDDEN)
    z_f = _gate(GX, GH, B_IH, B_HH, units, ok, 1, HIDDEN)
    z_g = _gate(GX, GH, B_IH, B_HH, units, ok, 2, HIDDEN)
    z_o = _gate(GX, GH, B_IH, B_HH, units, ok, 3, HIDDEN)
    c = tl.load(C + row * HIDDEN + units, mask=ok)
    c = tl.sigmoid(z_f) * c + tl.sigmoid(z_i) * _tanh(z_g)
    h = tl.sigmoid(z_o) * _tanh(c)
    tl.store(C + row * HIDDEN + units, c, mask=ok)
    tl.store(Y + row * HIDDEN + units, h.to(Y.dtype.element_ty), mask=ok)


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """x (T, B, I), h0 and c0 (B, H) -> y (T, B, H), h_n, c_n."""
    steps, batch, n_in = x.shape
    hidden = h0.shape[1]
    # All steps' input projections: one (T*B, I) x (I, 4H) GEMM. reshape copies a strided x
    # once if it has to; the rows of gates_x for step t are [t*B, (t+1)*B).
    gates_x = torch.mm(x.reshape(steps * batch, n_in), w_ih.t()).view(steps, batch, 4 * hidden)
    y = torch.empty((steps, batch, hidden), device=x.device, dtype=x.dtype)
    c = c0.to(torch.float32, copy=True).contiguous()   # the cell state, updated in place
    w_hh_t = w_hh.t()
    grid = (batch, triton.cdiv(hidden, BLOCK_H))
    h = h0
    for t in range(steps):
        gh = torch.mm(h, w_hh_t)                         # the sequential part: (B, H) x (H, 4H)
        lstm_step_kernel[grid](gates_x[t], gh, b_ih, b_hh, c, y[t], hidden, BLOCK_H=BLOCK_H,
                               num_warps=NUM_WARPS)
        h = y[t]                                         # a view: no copy
    return y, y[-1].clone(), c.to(c0.dtype)


COMPILE_CHECKS = [
    {"kernel": "lstm_step_kernel",
     "signature": {"GX": f"*{t}", "GH": f"*{t}", "B_IH": f"*{t}", "B_HH": f"*{t}",
                   "C": "*fp32", "Y": f"*{t}", "HIDDEN": "i32"},
     "constexprs": {"BLOCK_H": BLOCK_H}, "num_warps": NUM_WARPS}
    for t in ("fp32", "bf16")
]
