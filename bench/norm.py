"""Normalization family: layer_norm, rms_norm and the fused residual-add variants.

Every op here is memory-bound (a handful of FLOPs per element), so the figure of merit is GB/s
against the copy ceiling, and the fused add variants win by not writing and re-reading `x + r`.

Minimum bytes moved (M rows, N width, s bytes per element, fp32 statistics of 4 bytes per row):

    op               mode      bytes
    layer_norm       fwd       2·M·N·s          x read, y written
                               + 2·N·s          weight, bias read
                               + 8·M            mean, rstd written (a training forward saves
                                                them; <1% of the total)
                     bwd       3·M·N·s          dy read, x re-read, dx written
                               + 3·N·s + 8·M    weight read, dweight/dbias written;
                                                mean, rstd read
    rms_norm         fwd       2·M·N·s + N·s + 4·M          (no bias, no mean)
                     bwd       3·M·N·s + 2·N·s + 4·M
    add_layer_norm   fwd       4·M·N·s + 2·N·s + 8·M        x, r read; y, s = x + r written
                     bwd       4·M·N·s + 3·N·s + 8·M        dy, ds read, s re-read,
                                                            one d(x+r) written
    add_rms_norm     fwd       4·M·N·s + N·s + 4·M
                     bwd       4·M·N·s + 2·N·s + 4·M

"fwd+bwd" counts fwd + bwd. In the add variants d input = d residual, so a fused backward writes
that gradient once (both inputs may share it); eager torch writes it, then autograd reuses it.
Cross-block partial sums of dweight/dbias are ignored (they are O(blocks·N), not O(M·N)).

Shapes: CPU runs the three acceptance shapes of the issue in fp32 (a BERT-base activation, a
square LLM-size one, a wide one with few rows); the issue asks for >= 1.3x eager for add_layer_norm
and >= 1.0x for layer_norm and rms_norm, fwd and fwd+bwd, with the default (C++) backend.
GPU sweeps the width at ~2**26 elements per tensor (128 MB in 16-bit, 256 MB in fp32: far beyond
the 50 MB L2 of an H100, so the numbers are DRAM numbers), in fp16, bf16 and fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.harness import Case, candidates

EPS = 1e-5
CPU_SHAPES = [(4096, 768), (4096, 4096), (512, 16384)]
CPU_TARGETS = {"layer_norm": 1.0, "rms_norm": 1.0, "add_layer_norm": 1.3}
GPU_WIDTHS = (256, 512, 1024, 2048, 4096, 8192, 16384)
GPU_ELEMENTS = 2**26
GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# torch.compile costs seconds per (op, mode, shape, dtype) on a cold cache; the GPU suite must fit
# in ten minutes, so the compiled baseline is measured at a spread of widths in bf16 and at one
# width in the other dtypes.
GPU_COMPILE_AT = {(torch.bfloat16, 1024), (torch.bfloat16, 4096), (torch.bfloat16, 16384),
                  (torch.float16, 4096), (torch.float32, 4096)}
QUICK = {"cpu": ((256, 1024), torch.float32), "cuda": ((4096, 1024), torch.bfloat16)}


def norm_bytes(M: int, N: int, s: int, mode: str, *, params: int, stats: int, add: bool) -> int:
    """Minimum bytes moved, per the table in the module docstring.

    params: per-feature vectors (weight and bias = 2, weight only = 1); stats: fp32 values saved per
    row (mean and rstd = 2, rstd = 1); add: fused residual add (one more read and write of M·N)."""
    fwd = (2 + 2 * add) * M * N * s + params * N * s + 4 * stats * M
    bwd = (3 + add) * M * N * s + (1 + params) * N * s + 4 * stats * M
    return fwd if mode == "fwd" else fwd + bwd


def layer_norm(x, w, b):
    return F.layer_norm(x, x.shape[-1:], w, b, EPS)


def rms_norm(x, w):
    return F.rms_norm(x, x.shape[-1:], w, EPS)


def add_layer_norm(x, r, w, b):
    s = x + r
    return F.layer_norm(s, s.shape[-1:], w, b, EPS), s


def add_rms_norm(x, r, w):
    s = x + r
    return F.rms_norm(s, s.shape[-1:], w, EPS), s


def _leedl(op: str):
    """leedl_fast's version of `op` with the same argument order as the eager functions above."""
    try:
        import leedl_fast.functional as LF
    except ImportError:
        return None  # the harness then times the baselines only
    return {
        "layer_norm": lambda x, w, b: LF.layer_norm(x, x.shape[-1:], w, b, EPS),
        "rms_norm": lambda x, w: LF.rms_norm(x, x.shape[-1:], w, EPS),
        "add_layer_norm": lambda x, r, w, b: LF.add_layer_norm(x, r, x.shape[-1:], w, b, EPS),
        "add_rms_norm": lambda x, r, w: LF.add_rms_norm(x, r, x.shape[-1:], w, EPS),
    }[op]


# op name -> (eager function, bytes keywords)
OPS = {
    "layer_norm": (layer_norm, dict(params=2, stats=2, add=False)),
    "rms_norm": (rms_norm, dict(params=1, stats=1, add=False)),
    "add_layer_norm": (add_layer_norm, dict(params=2, stats=2, add=True)),
    "add_rms_norm": (add_rms_norm, dict(params=1, stats=1, add=True)),
}


def _builder(op: str, mode: str, shape: tuple[int, int], dtype: torch.dtype, device: str,
             compile: bool):
    """Deferred input creation (see `Case.build`): random x and residual, weight near 1, bias
    near 0, and for fwd+bwd random output gradients."""
    eager, spec = OPS[op]

    def build():
        gen = torch.Generator(device=device).manual_seed(0)
        M, N = shape

        def rand(*size, scale=1.0, shift=0.0):
            return (torch.randn(*size, generator=gen, device=device, dtype=torch.float32) * scale
                    + shift).to(dtype)

        inputs = [rand(M, N)]
        if spec["add"]:
            inputs.append(rand(M, N))
        inputs.append(rand(N, scale=0.1, shift=1.0))
        if spec["params"] == 2:
            inputs.append(rand(N, scale=0.1))
        grads = ()
        if mode == "fwd+bwd":
            for t in inputs:
                t.requires_grad_(True)
            grads = tuple(rand(M, N) for _ in range(2 if spec["add"] else 1))
        return candidates(eager, _leedl(op), tuple(inputs), mode, device, leaves=tuple(inputs),
                          grads=grads, compile=compile)

    return build


def cases(device: str, quick: bool) -> list[Case]:
    """Every (op, mode, shape, dtype) to measure on `device` ("cpu" or "cuda")."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if quick:
        grid = [(QUICK[kind][0], QUICK[kind][1], True)]
    elif kind == "cpu":
        grid = [(shape, torch.float32, True) for shape in CPU_SHAPES]
    else:
        grid = [((GPU_ELEMENTS // n, n), dtype, (dtype, n) in GPU_COMPILE_AT)
                for dtype in GPU_DTYPES for n in GPU_WIDTHS]
    out = []
    for op, (_, spec) in OPS.items():
        for mode in ("fwd", "fwd+bwd"):
            for shape, dtype, compile in grid:
                elem = torch.empty((), dtype=dtype).element_size()
                target = None
                if kind == "cpu" and not quick and op in CPU_TARGETS:
                    target = ("leedl_fast:cpu", CPU_TARGETS[op])
                out.append(Case(
                    family="norm", op=op, mode=mode, shape=shape, dtype=dtype, device=device,
                    nbytes=norm_bytes(*shape, elem, mode, **spec),
                    build=_builder(op, mode, shape, dtype, device, compile), target=target))
    return out
