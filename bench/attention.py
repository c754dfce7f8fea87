"""Attention family: leedl_fast's flash attention (Triton on CUDA tensors, C++ on CPU tensors)
against torch SDPA, the textbook's matmul-softmax-matmul, and that compiled.

FLOPs (useful work, as FlashAttention counts it): forward 4·B·H·Lq·Lk·D (QK^T and PV), backward
2.5x that (five matmuls: S is recomputed), fwd+bwd 3.5x; halved for causal; with a window w the
key length is min(Lk, w + 1). Minimum bytes: read Q, K, V, write O (and the LSE), e per element;
the backward also reads O, dO and writes dQ, dK, dV. At D = 64..128 and L >= 1k the op is
compute-bound on an H100 and on a CPU alike, so TFLOP/s is the column to read.

Baseline ("torch eager" column): torch SDPA. On a GPU without a mask it is pinned to SDPA's
flash backend (the issue's goals are against it), and SDPA's memory-efficient and cuDNN
backends get columns of their own; with an explicit mask, the backend torch picks
(memory-efficient). On CPU, SDPA's C++ flash kernel (with or without a mask). SDPA has no sliding window: it gets the window as an explicit
boolean mask and computes every score, which is what a user without leedl_fast would run.
Other columns: "naive eager" (the book's equations, the L x L matrix materialized) and
torch.compile of it, at lengths where the L x L matrix fits.

CPU cases (fp32, the issue's acceptance shapes): B=4, H=8, L=1024, D=64 with and without the
causal mask, and the window 256 at L=4096 (forward only: SDPA's masked fwd+bwd there takes
seconds per call).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.harness import COMPILE, EAGER, Case, step, with_backend

# Sequence lengths per head dim (the goals are at hdim 128; 64 is sampled), kept small
# enough that `make bench-gpu` (norm + attention) fits its 10 minutes.
GPU_SEQS = {128: (512, 2048, 8192, 16384), 64: (2048, 8192)}
TOKENS = 16384  # batch x sequence held constant: B = TOKENS // L
HEADS = {64: 32, 128: 16}  # head dim -> heads (a 2048-wide model)
WINDOW = 256
WINDOW_SEQ = 8192


def _flops(b, h, lq, lk, d, mode, is_causal, window):
    if window is not None:
        lk = min(lk, window[0] + 1)
    fwd = 4 * b * h * lq * lk * d // (2 if is_causal and window is None else 1)
    return {"fwd": fwd, "fwd+bwd": fwd * 7 // 2}[mode]


def _builder(b, h, l, d, dtype, mode, is_causal, window, device, compiled):
    def build():
        import leedl_fast.functional as LF

        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(b, h, l, d, device=device, dtype=dtype, generator=gen)
                   for _ in range(3))
        leaves = ()
        grads = ()
        if mode == "fwd+bwd":
            for t in (q, k, v):
                t.requires_grad_(True)
            leaves = (q, k, v)
            grads = (torch.randn(b, h, l, d, device=device, dtype=dtype, generator=gen),)
        def pinned(sdpa_backend):  # torch SDPA restricted to one of its backends
            def sdpa(q, k, v):
                from torch.nn.attention import sdpa_kernel

                with sdpa_kernel([sdpa_backend]):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
            return sdpa

        others = {}
        if window is None and device != "cpu":
            from torch.nn.attention import SDPBackend

            # The goals are against SDPA's flash backend: that is the baseline column;
            # SDPA's other GPU backends are timed beside it.
            torch_sdpa = pinned(SDPBackend.FLASH_ATTENTION)
            others = {"sdpa efficient": pinned(SDPBackend.EFFICIENT_ATTENTION),
                      "sdpa cudnn": pinned(SDPBackend.CUDNN_ATTENTION)}
        elif window is None:
            def torch_sdpa(q, k, v):
                return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        else:  # SDPA has no window: an explicit boolean mask (lower-right aligned, Lq == Lk)
            i = torch.arange(l, device=device)
            mask = (i[None, :] <= i[:, None]) & (i[None, :] >= i[:, None] - window[0])

            def torch_sdpa(q, k, v):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        def leedl(q, k, v):
            return LF.scaled_dot_product_attention(q, k, v, is_causal=is_causal and not window,
                                                   window=window)

        def naive(q, k, v):  # the book's equations (§6): the L x L scores materialized
            s = (q @ k.transpose(-2, -1)) * d ** -0.5
            if is_causal:
                s = s.masked_fill(torch.ones(l, l, dtype=torch.bool, device=device)
                                  .triu(1), float("-inf"))
            return torch.softmax(s.float(), -1).to(q.dtype) @ v

        backend = "cpu" if device == "cpu" else "triton"
        fns = {EAGER: step(torch_sdpa, (q, k, v), mode, leaves, grads),
               f"leedl_fast:{backend}": with_backend(step(leedl, (q, k, v), mode, leaves, grads),
                                                     backend)}
        for name, fn in others.items():
            fns[name] = step(fn, (q, k, v), mode, leaves, grads)
        if l <= 2048 and window is None:
            fns["naive eager"] = step(naive, (q, k, v), mode, leaves, grads)
            if compiled:
                fns[COMPILE] = step(torch.compile(naive, fullgraph=True, dynamic=False),
                                    (q, k, v), mode, leaves, grads)
        return fns

    return build


def _case(device, b, h, l, d, dtype, mode, causal, window, target, compiled):
    op = "attention" + ("_causal" if causal and window is None else "") + \
        (f"_window{window[0]}" if window else "")
    elem = torch.empty((), dtype=dtype).element_size()
    nbytes = (4 if mode == "fwd" else 11) * b * h * l * d * elem
    return Case(family="attention", op=op, mode=mode, shape=(b, h, l, d), dtype=dtype,
                device=device, nbytes=nbytes,
                build=_builder(b, h, l, d, dtype, mode, causal, window, device, compiled),
                target=target, flops=_flops(b, h, l, l, d, mode, causal, window))


def _cpu_cases(quick: bool) -> list[Case]:
    if quick:
        return [_case("cpu", 1, 4, 512, 64, torch.float32, "fwd", True, None, None, False)]
    out = []
    for causal in (False, True):
        for mode in ("fwd", "fwd+bwd"):
            target = ("leedl_fast:cpu", 1.0) if mode == "fwd" and not causal else None
            out.append(_case("cpu", 4, 8, 1024, 64, torch.float32, mode, causal, None, target,
                             compiled=not causal))
    out.append(_case("cpu", 4, 8, 4096, 64, torch.float32, "fwd", True, (WINDOW, 0),
                     ("leedl_fast:cpu", 3.0), False))
    return out


def cases(device: str, quick: bool) -> list[Case]:
    if not device.startswith("cuda"):
        return _cpu_cases(quick)
    dtype = torch.bfloat16
    grid = [(l, d, causal, None) for d, seqs in GPU_SEQS.items() for l in seqs
            for causal in (False, True)]
    grid.append((WINDOW_SEQ, 128, True, (WINDOW, 0)))
    if quick:
        grid = [(2048, 128, True, None)]
    out = []
    for l, d, causal, window in grid:
        b, h = max(1, TOKENS // l), HEADS[d]
        for mode in ("fwd", "fwd+bwd"):
            target = None
            if d == 128 and l >= 2048 and window is None:
                target = ("leedl_fast:triton", 1.2 if mode == "fwd" else 1.0)
            out.append(_case(device, b, h, l, d, dtype, mode, causal, window, target,
                             compiled=True))
    return out
