"""Stage 1: the two matrix products in torch, everything else in ONE Triton kernel.

The products x w_ih^T and h w_hh^T are GEMMs: leave them to torch (cuBLAS / oneDNN). What stage 0
did after them -- 12 elementwise kernels, each with a (B, H) or (B, 4H) temporary in memory -- is
pointwise: hidden unit u of batch row b needs only the four pre-activations of u in row b and
c[b, u]. So one kernel does it all: each program owns BLOCK_H hidden units of one batch row, reads
the 4 gate slices of both products, the 2 biases and c once, keeps everything in registers, and
writes h_new and c_new once.

After the products: ~50 (B, H)-sized reads and writes in stage 0, 11 here (8 gate slices, c in,
h and c out); 12 launches -> 1.

    leedl-fast check docs/labs/rnn/stage1_fused_gates.py --op lstm_cell --backend triton
    leedl-fast check docs/labs/rnn/stage1_fused_gates.py --op lstm_layer --backend triton
"""
import torch
import triton
import triton.language as tl

BLOCK_H = 256    # hidden units per program
NUM_WARPS = 4


@triton.jit
def _tanh(x):
    """tanh(x) = 2 sigmoid(2x) - 1 (the interpreter has no libdevice tanh); its absolute error is
    ~1 ulp of 1, all that the c and h updates need."""
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def lstm_gates_kernel(GX, GH, B_IH, B_HH, C, H_OUT, C_OUT, HIDDEN, stride_c_b, stride_c_h,
                      BLOCK_H: tl.constexpr):
    """GX = x w_ih^T and GH = h w_hh^T: (B, 4H) contiguous, gate order i, f, g, o; B_IH, B_HH
    (4H,); C (B, H) with strides (stride_c_b, stride_c_h); H_OUT, C_OUT (B, H) contiguous.
    Grid: (B, cdiv(H, BLOCK_H)); the math in fp32."""
    row = tl.program_id(0).to(tl.int64)
    units = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = units < HIDDEN
    gx = GX + row * 4 * HIDDEN + units   # gate k of unit u sits at column k * HIDDEN + u
    gh = GH + row * 4 * HIDDEN + units

    z_i = (tl.load(gx, mask=ok).to(tl.float32) + tl.load(gh, mask=ok).to(tl.float32)
           + tl.load(B_IH + units, mask=ok).to(tl.float32)
           + tl.load(B_HH + units, mask=ok).to(tl.float32))
    z_f = (tl.load(gx + HIDDEN, mask=ok).to(tl.float32)
           + tl.load(gh + HIDDEN, mask=ok).to(tl.float32)
           + tl.load(B_IH + HIDDEN + units, mask=ok).to(tl.float32)
           + tl.load(B_HH + HIDDEN + units, mask=ok).to(tl.float32))
    z_g = (tl.load(gx + 2 * HIDDEN, mask=ok).to(tl.float32)
           + tl.load(gh + 2 * HIDDEN, mask=ok).to(tl.float32)
           + tl.load(B_IH + 2 * HIDDEN + units, mask=ok).to(tl.float32)
           + tl.load(B_HH + 2 * HIDDEN + units, mask=ok).to(tl.float32))
    z_o = (tl.load(gx + 3 * HIDDEN, mask=ok).to(tl.float32)
           + tl.load(gh + 3 * HIDDEN, mask=ok).to(tl.float32)
           + tl.load(B_IH + 3 * HIDDEN + units, mask=ok).to(tl.float32)
           + tl.load(B_HH + 3 * HIDDEN + units, mask=ok).to(tl.float32))
    c = tl.load(C + row * stride_c_b + units * stride_c_h, mask=ok).to(tl.float32)

    c_new = tl.sigmoid(z_f) * c + tl.sigmoid(z_i) * _tanh(z_g)
    h_new = tl.sigmoid(z_o) * _tanh(c_new)
    tl.store(C_OUT + row * HIDDEN + units, c_new.to(C_OUT.dtype.element_ty), mask=ok)
    tl.store(H_OUT + row * HIDDEN + units, h_new.to(H_OUT.dtype.element_ty), mask=ok)


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """x (B, I), h and c (B, H), w_ih (4H, I), w_hh (4H, H), b_ih and b_hh (4H,) -> (h, c)."""
    batch, hidden = h.shape
    gx = torch.mm(x, w_ih.t())   # (B, 4H); torch.mm takes any strides
    gh = torch.mm(h, w_hh.t())
    h_new = torch.empty((batch, hidden), device=x.device, dtype=x.dtype)
    c_new = torch.empty((batch, hidden), device=x.device, dtype=c.dtype)
    grid = (batch, triton.cdiv(hidden, BLOCK_H))
    lstm_gates_kernel[grid](gx, gh, b_ih, b_hh, c, h_new, c_new, hidden, c.stride(0),
                            c.stride(1), BLOCK_H=BLOCK_H, num_warps=NUM_WARPS)
    return h_new, c_new


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """x (T, B, I), h0 and c0 (B, H) -> y (T, B, H), h_n, c_n: the fused cell, step by step."""
    h, c, ys = h0, c0, []
    for x_t in x:
        h, c = lstm_cell(x_t, h, c, w_ih, w_hh, b_ih, b_hh)
        ys.append(h)
    return torch.stack(ys), h, c


COMPILE_CHECKS = [
    {"kernel": "lstm_gates_kernel",
     "signature": {"GX": f"*{t}", "GH": f"*{t}", "B_IH": f"*{t}", "B_HH": f"*{t}", "C": f"*{t}",
                   "H_OUT": f"*{t}", "C_OUT": f"*{t}", "HIDDEN": "i32", "stride_c_b": "i32",
                   "stride_c_h": "i32"},
     "constexprs": {"BLOCK_H": BLOCK_H}, "num_warps": NUM_WARPS}
    for t in ("fp32", "bf16")
]
