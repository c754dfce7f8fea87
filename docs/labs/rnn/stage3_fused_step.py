"""Stage 3: one Triton kernel per step -- the recurrent product h_{t-1} w_hh^T fused with the gates.

Stage 2 still launched two kernels per step (torch.mm, then the gates) and sent the (B, 4H)
product through memory between them. At the batch sizes RNNs run at, a step is a few microseconds
of work, so each launch and each round trip is a large part of it. Here a program owns a block of
BLOCK_B batch rows and BLOCK_H hidden units and computes, for its units, all four gates' slices of
the product itself (tl.dot over the H inputs in BLOCK_K chunks, four accumulators), then the gate
math, exactly as stage 2's kernel did. Per step: 1 launch, and the only memory traffic is h_{t-1},
the w_hh rows of the program's units (from L2 after the first step), gates_x[t], c and y[t].

    leedl-fast check docs/labs/rnn/stage3_fused_step.py --op lstm_layer --backend triton
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    """tanh(x) = 2 sigmoid(2x) - 1 (the interpreter has no libdevice tanh)."""
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _preactivation(h_ptrs, W_HH, GX, B_IH, B_HH, rows, units, rows_ok, units_ok, gate, HIDDEN,
                   UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_B, BLOCK_H) fp32 block of gate `gate`'s pre-activation for the program's rows and
    units: h w_hh^T (summed over the H inputs in chunks of BLOCK_K) + gates_x + both biases."""
    w_rows = gate * HIDDEN + units                      # this gate's rows of w_hh (4H, H)
    acc = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    for k0 in range(0, HIDDEN, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < HIDDEN
        h = tl.load(h_ptrs + ks[None, :], mask=rows_ok[:, None] & k_ok[None, :], other=0.0)
        # the (BLOCK_K, BLOCK_H) tile w_hh[w_rows, ks]^T (w_hh row-major)
        w = tl.load(W_HH + w_rows[None, :] * HIDDEN + ks[:, None],
                    mask=units_ok[None, :] & k_ok[:, None], other=0.0)
        if UPCAST:  # the interpreter's tl.dot is wrong on bf16: fp32 there
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(h, w, input_precision=DOT_PRECISION)
    ok = rows_ok[:, None] & units_ok[None, :]
    gx = tl.load(GX + rows[:, None] * 4 * HIDDEN + w_rows[None, :], mask=ok, other=0.0)
    bias = (tl.load(B_IH + w_rows, mask=units_ok, other=0.0).to(tl.float32)
            + tl.load(B_HH + w_rows, mask=units_ok, other=0.0).to(tl.float32))
    return acc + gx.to(tl.float32) + bias[None, :]


@triton.jit
def lstm_fused_step_kernel(H_PREV, W_HH, GX, B_IH, B_HH, C, Y, BATCH, HIDDEN,
                           UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                           BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """One step. H_PREV (B, H) contiguous: h_{t-1}; W_HH (4H, H) contiguous; GX = gates_x[t]
    (B, 4H) contiguous, gate order i, f, g, o; B_IH, B_HH (4H,); C (B, H) fp32, c_{t-1} in, c_t
    out (in place); Y = y[t] (B, H) contiguous, h_t out. Grid: (cdiv(B, BLOCK_B),
    cdiv(H, BLOCK_H))."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    rows_ok = rows < BATCH
    units_ok = units < HIDDEN
    h_ptrs = H_PREV + rows[:, None].to(tl.int64) * HIDDEN
    args = (h_ptrs, W_HH, GX, B_IH, B_HH, rows, units, rows_ok, units_ok)
    z_i = _preactivation(*args, 0, HIDDEN, UPCAST, DOT_PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    z_f = _preactivation(*args, 1, HIDDEN, UPCAST, DOT_PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    z_g = _preactivation(*args, 2, HIDDEN, UPCAST, DOT_PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    z_o = _preactivation(*args, 3, HIDDEN, UPCAST, DOT_PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)

    ok = rows_ok[:, None] & units_ok[None, :]
    cell = C + rows[:, None] * HIDDEN + units[None, :]
    c = tl.sigmoid(z_f) * tl.load(cell, mask=ok, other=0.0) + tl.sigmoid(z_i) * _tanh(z_g)
    h = tl.sigmoid(z_o) * _tanh(c)
    tl.store(cell, c, mask=ok)
    tl.store(Y + rows[:, None] * HIDDEN + units[None, :], h.to(Y.dtype.element_ty), mask=ok)


BLOCK_B, BLOCK_H, BLOCK_K, NUM_WARPS = 16, 32, 64, 4


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """x (T, B, I), h0 and c0 (B, H) -> y (T, B, H), h_n, c_n."""
    steps, batch, n_in = x.shape
    hidden = h0.shape[1]
    gates_x = torch.mm(x.reshape(steps * batch, n_in), w_ih.t()).view(steps, batch, 4 * hidden)
    y = torch.empty((steps, batch, hidden), device=x.device, dtype=x.dtype)
    c = c0.to(torch.float32, copy=True).contiguous()
    w_hh = w_hh.contiguous()
    grid = (triton.cdiv(batch, BLOCK_B), triton.cdiv(hidden, BLOCK_H))
    h = h0.contiguous()
    for t in range(steps):
        lstm_fused_step_kernel[grid](
            h, w_hh, gates_x[t], b_ih, b_hh, c, y[t], batch, hidden,
            UPCAST=not x.is_cuda, DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
            BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K, num_warps=NUM_WARPS)
        h = y[t]
    return y, y[-1].clone(), c.to(c0.dtype)


COMPILE_CHECKS = [
    {"kernel": "lstm_fused_step_kernel",
     "signature": {"H_PREV": f"*{t}", "W_HH": f"*{t}", "GX": f"*{t}", "B_IH": f"*{t}",
                   "B_HH": f"*{t}", "C": "*fp32", "Y": f"*{t}", "BATCH": "i32", "HIDDEN": "i32"},
     "constexprs": {"UPCAST": False, "DOT_PRECISION": "ieee" if t == "fp32" else "tf32",
                    "BLOCK_B": BLOCK_B, "BLOCK_H": BLOCK_H, "BLOCK_K": BLOCK_K},
     "num_warps": NUM_WARPS}
    for t in ("fp32", "bf16")
]
