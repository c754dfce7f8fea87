"""Fused optimizer family: one optimizer step over a model's whole parameter list, leedl_fast.optim
against torch.optim with fused=True (the "torch eager" row of each table: torch's strongest
step, where it has one) and with foreach=True ("torch foreach"). RMSprop has no fused torch
kernel, so its baseline row is foreach.

Parameter lists (shapes only; random values): GPT-small (GPT-2's 148 tensors, 124M params; a
25M-param model with the same 148-tensor layout on CPU), the book's image CNN (conv-BN blocks and
an MLP head), the slot-filling LSTM (embedding, 2-layer bidirectional LSTM, classifier), and 1e8
params in one tensor (launch overhead gone: pure bandwidth).

Counting (docs/optim.md): a step reads and writes every param and state element once and reads
the grad: Adam/AdamW fp32 moves 16 B read + 12 B written = 28 B per param (amsgrad +8);
SGD with momentum, Adagrad and plain RMSprop 12 + 8 = 20 B. The GB/s column is those bytes over
the step time, % ceil compares them with the measured copy bandwidth (the issue's GPU goal: >= 90%).

Each candidate owns its params and state and shares the (read-only) grads; a call is one step,
so the timed iterations keep stepping the same model -- as training does.
"""
from __future__ import annotations

import torch

from bench.harness import EAGER, Case, leedl_backends, no_grad, with_backend

FOREACH = "torch foreach"


def gpt_shapes(vocab=50257, d=768, layers=12, ctx=1024):
    """GPT-2's parameter list: token and position embeddings, 12 blocks of (ln, qkv, proj, ln,
    fc, proj) weights and biases, the final ln: 148 tensors (124M params at the default size)."""
    block = [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,),
             (d, 4 * d), (d,)]
    return [(vocab, d), (ctx, d)] + block * layers + [(d,), (d,)]


def cnn_shapes(classes=11):
    """The book's food-classification CNN (ch4): five conv3x3-BN blocks, then a 3-layer MLP."""
    out, cin = [], 3
    for cout in (64, 128, 256, 512, 512):
        out += [(cout, cin, 3, 3), (cout,), (cout,), (cout,)]  # conv w, b; BN weight, bias
        cin = cout
    return out + [(1024, 512 * 4 * 4), (1024,), (512, 1024), (512,), (classes, 512), (classes,)]


def lstm_shapes(vocab=10000, emb=256, hidden=512, layers=2, classes=128):
    """Slot filling (ch5): embedding, bidirectional LSTM layers (torch's weight_ih/hh, bias_ih/hh
    per direction), a per-token classifier."""
    out, cin = [(vocab, emb)], emb
    for _ in range(layers):
        out += [(4 * hidden, cin), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)] * 2
        cin = 2 * hidden
    return out + [(classes, 2 * hidden), (classes,)]


# optimizer name -> (torch class, leedl class name, kwargs, bytes per param at 4-byte elements)
OPTIMIZERS = {
    "adam": ("Adam", dict(lr=1e-3, weight_decay=0.0), 28),
    "adamw": ("AdamW", dict(lr=1e-3, weight_decay=0.01), 28),
    "sgd": ("SGD", dict(lr=1e-2, momentum=0.9), 20),
    "adagrad": ("Adagrad", dict(lr=1e-2), 20),
    "rmsprop": ("RMSprop", dict(lr=1e-3), 20),
}
HAS_FUSED = {"adam", "adamw", "sgd", "adagrad"}


def _builder(opt, shapes, device, dtype, baseline):
    def build():
        import leedl_fast.optim as LO

        name, kwargs, _ = OPTIMIZERS[opt]
        torch.manual_seed(0)
        init = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
        grads = [torch.randn(s, device=device, dtype=dtype) * 1e-2 for s in shapes]

        def make(cls, **flags):
            params = [torch.nn.Parameter(t.clone()) for t in init]
            for p, g in zip(params, grads):
                p.grad = g
            optimizer = cls(params, **kwargs, **flags)

            def step():
                optimizer.step()
                return params
            return step

        torch_cls = getattr(torch.optim, name)
        fns = {}
        if baseline == "fused":
            fns[EAGER] = make(torch_cls, fused=True)
            fns[FOREACH] = make(torch_cls, foreach=True)
        else:
            fns[EAGER] = make(torch_cls, foreach=True)
        for backend in leedl_backends(device):
            if backend != "reference":  # the reference is a per-tensor Python loop
                fns[f"leedl_fast:{backend}"] = with_backend(make(getattr(LO, name)), backend)
        return {k: no_grad(f) for k, f in fns.items()}

    return build


def cases(device: str, quick: bool) -> list[Case]:
    gpu = device.startswith("cuda")
    ours = "leedl_fast:triton" if gpu else "leedl_fast:cpu"
    gpt = gpt_shapes() if gpu else gpt_shapes(vocab=8192, d=384)
    lists = {"gpt": gpt, "cnn": cnn_shapes(), "lstm": lstm_shapes(), "flat": [(100_000_000,)]}
    if quick:
        grid = [("adam", "gpt", gpt_shapes(vocab=512, d=64, layers=2, ctx=64), torch.float32,
                 "fused", None)]
    else:
        grid = []
        for key, shapes in lists.items():
            target = None
            if key == "gpt":  # the goals (docs/optim.md)
                target = (ours, 1.1 if gpu else 1.0)
            grid.append(("adam", key, shapes, torch.float32, "fused", target))
        if not gpu:  # the CPU goal against foreach, in a case of its own
            grid.append(("adam", "gpt", lists["gpt"], torch.float32, "foreach", (ours, 1.5)))
        for opt in ("adamw", "sgd", "adagrad", "rmsprop"):
            grid.append((opt, "gpt", lists["gpt"], torch.float32,
                         "fused" if opt in HAS_FUSED else "foreach", None))
        if gpu:
            grid.append(("adamw", "gpt", lists["gpt"], torch.bfloat16, "fused", None))
    out = []
    for opt, key, shapes, dtype, baseline, target in grid:
        numel = sum(torch.Size(s).numel() for s in shapes)
        elem = torch.empty((), dtype=dtype).element_size()
        nbytes = OPTIMIZERS[opt][2] * numel * elem // 4
        out.append(Case(family="optim", op=f"{opt} step", mode=f"vs {baseline}",
                        shape=(len(shapes), numel), dtype=dtype, device=device, nbytes=nbytes,
                        build=_builder(opt, shapes, device, dtype, baseline), target=target))
    return out
