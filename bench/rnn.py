"""Recurrent family: leedl_fast.nn.LSTM / GRU (the C++ whole-sequence kernels on CPU) against
torch.nn.LSTM / GRU (oneDNN's fused RNN on CPU, cuDNN on GPU), the book's cell as a Python loop,
and torch.compile of that loop. The GRU is sampled at the first shape only.

FLOPs per layer and direction: 2·T·B·(I + H)·4H for the LSTM's four gates' products (3H: GRU) (the input
projection and the recurrent one, equal when I = H), training 3x that (the backward has two
products per forward product); the pointwise gate math is noise next to it. Bytes: the op is
not bandwidth-bound (the weights are re-read from cache every step), so GB/s is not the column
to read: TFLOP/s is, and the recurrence is latency-bound (T dependent steps of a
B x H x 4H product) as much as compute-bound.

CPU cases (fp32): the issue's acceptance shape (hidden 256, batch 16, sequence 256, one layer),
two layers, and hidden 512 / batch 64 and hidden 1024 / batch 1. torch.compile of the Python
loop is timed at the smallest sequence only (compiling an unrolled 256-step loop takes minutes).
GPU cases (bf16: the persistent kernel keeps W_hh on chip up to hidden 1024 in 16-bit types):
hidden 256-1024, batch 1-64, sequence 256-1024, 1 and 4 layers, against cuDNN, with
leedl_fast's two GPU paths side by side: "triton" (per step: a cuBLAS product and one fused
Triton gate kernel) and "cuda" (the whole sequence in one persistent launch, falling back to the
per-step path where the weights do not fit).
"""
from __future__ import annotations

import torch

from bench.harness import COMPILE, EAGER, Case, no_grad, step, with_backend

# (hidden, batch, sequence, layers); the first is the acceptance shape.
CPU_SHAPES = [(256, 16, 256, 1), (256, 16, 256, 2), (512, 64, 128, 1), (1024, 1, 128, 1)]
COMPILE_SHAPE = (256, 16, 32, 1)
GPU_SHAPES = [(256, 16, 256, 1), (512, 64, 512, 1), (1024, 64, 256, 1), (1024, 1, 1024, 1),
              (512, 16, 256, 4)]
GPU_COMPILE_SHAPE = (256, 16, 128, 1)


def _flops(h, b, t, layers, mode, gates=4):
    fwd = layers * 2 * t * b * (h + h) * gates * h
    return fwd if mode == "fwd" else 3 * fwd


def _python_loop(cells):
    """The book's recurrence as most people write it: an nn.LSTMCell (or GRUCell) per layer,
    stepped in Python."""
    def run(x):
        for cell in cells:
            h = c = x.new_zeros(x.shape[1], cell.hidden_size)
            ys = []
            for t in range(x.shape[0]):
                if isinstance(cell, torch.nn.LSTMCell):
                    h, c = cell(x[t], (h, c))
                else:
                    h = cell(x[t], h)
                ys.append(h)
            x = torch.stack(ys)
        return x
    return run


def _builder(h, b, t, layers, mode, compiled, device="cpu", dtype=torch.float32, kind="LSTM"):
    def build():
        import leedl_fast

        torch.manual_seed(0)
        factory = {"device": device, "dtype": dtype}
        theirs = getattr(torch.nn, kind)(h, h, num_layers=layers, **factory)
        ours = getattr(leedl_fast.nn, kind)(h, h, num_layers=layers, **factory)
        ours.load_state_dict(theirs.state_dict())
        cells = []
        for layer in range(layers):
            cell = getattr(torch.nn, kind + "Cell")(h, h, **factory)
            cell.load_state_dict({k.replace(f"_l{layer}", ""): v for k, v in
                                  theirs.state_dict().items() if k.endswith(f"_l{layer}")})
            cells.append(cell)
        x = torch.randn(t, b, h, **factory)
        leaves, grads = (), ()
        if mode == "fwd+bwd":
            x.requires_grad_(True)
            grads = (torch.randn(t, b, h, **factory),)

        def params(module):
            return (x, *module.parameters()) if mode == "fwd+bwd" else ()

        def first(module):
            return lambda x: module(x)[0]

        loop = _python_loop(cells)
        fns = {EAGER: step(first(theirs), (x,), mode, params(theirs), grads)}
        for backend in (("cpu",) if device == "cpu" else ("triton", "cuda")):
            fns[f"leedl_fast:{backend}"] = with_backend(
                step(first(ours), (x,), mode, params(ours), grads), backend)
        if device == "cpu" or t * layers <= 256:  # (on a GPU: ~6 launches a step, slow to time)
            fns["python loop"] = step(loop, (x,), mode,
                                      (x, *(p for c in cells for p in c.parameters()))
                                      if mode == "fwd+bwd" else leaves, grads)
        if compiled:
            fns[COMPILE] = step(torch.compile(loop, fullgraph=True, dynamic=False), (x,), mode,
                                (x, *(p for c in cells for p in c.parameters()))
                                if mode == "fwd+bwd" else leaves, grads)
        if mode == "fwd":
            fns = {name: no_grad(fn) for name, fn in fns.items()}
        return fns

    return build


def cases(device: str, quick: bool) -> list[Case]:
    gpu = device.startswith("cuda")
    if gpu:
        shapes = [(256, 16, 64, 1)] if quick else GPU_SHAPES + [GPU_COMPILE_SHAPE]
        dtype, compile_shape = torch.bfloat16, GPU_COMPILE_SHAPE
    else:
        shapes = [(64, 4, 16, 1)] if quick else CPU_SHAPES + [COMPILE_SHAPE]
        dtype, compile_shape = torch.float32, COMPILE_SHAPE
    out = []
    grid = [("LSTM", shape) for shape in shapes] + [("GRU", shapes[0])]  # GRU: one shape
    for kind, (h, b, t, layers) in grid:
        for mode in ("fwd", "fwd+bwd"):
            target = None
            if kind == "LSTM" and not gpu and (h, b, t, layers) == CPU_SHAPES[0]:
                target = ("leedl_fast:cpu", 1.3 if mode == "fwd" else 1.0)
            if kind == "LSTM" and gpu and (h, b, t, layers) in GPU_SHAPES:
                target = ("leedl_fast:cuda", 1.5 if mode == "fwd" else 1.2)
            op = kind.lower() + ("" if layers == 1 else f"_{layers}layers")
            elem = torch.empty((), dtype=dtype).element_size()
            gates = 4 if kind == "LSTM" else 3
            out.append(Case(family="rnn", op=op, mode=mode, shape=(h, b, t), dtype=dtype,
                            device=device,
                            nbytes=elem * layers * (2 * t * b * h + 2 * gates * h * h),
                            build=_builder(h, b, t, layers, mode,
                                           kind == "LSTM" and (h, b, t, layers) == compile_shape,
                                           device, dtype, kind),
                            target=target, flops=_flops(h, b, t, layers, mode, gates)))
    return out
