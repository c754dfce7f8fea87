"""End to end: the book's models (leedl_fast.models), a whole training step (forward + backward +
optimizer) and a whole inference, where a user sees the speed (issue 8).

Candidates, each its own copy of the same initial weights:
    torch eager            the model built from torch.nn (`nn=torch.nn`), torch.optim.AdamW
    torch.compile          the same, the model wrapped in torch.compile (the optimizer eager)
    leedl_fast:<backend>   the model built from leedl_fast.nn (what accelerate() gives a torch
                           model), leedl_fast.optim.AdamW; for inference in eval mode and passed
                           through leedl_fast.accelerate, which folds each conv -> BN -> ReLU ->
                           pool block into one fused conv (ImageCNN)
    leedl_fast + compile   the leedl_fast model wrapped in torch.compile
The first call of each is checked against eager's (the loss or the logits), so a fast but wrong
model shows up as MISMATCH. GPU rows note each candidate's peak allocated memory; the GPU runs
in bf16 autocast with fp32 weights (the usual mixed-precision recipe), the CPU in fp32.

After the timings: the quantized variants of the tiny models, trained briefly, with their size
reduction and quality change (bench/model_quant.py).

Throughput: tokens/s or images/s = the shape's batch x length (or batch) / time.
"""
from __future__ import annotations

import contextlib

import torch

from bench.harness import COMPILE, EAGER, Case, leedl_backends, with_backend

LEEDL_COMPILE = "leedl_fast + compile"


def _models():
    import leedl_fast.models as M

    return M


def _make_gpt(size, nn):
    M = _models()
    return M.GPT(getattr(M.GPTConfig, size)(dropout=0.0), nn=nn)


def _make_tagger(size, nn):
    M = _models()
    return M.LSTMTagger(getattr(M.TaggerConfig, size)(dropout=0.0), nn=nn)


def _make_cnn(size, nn):
    M = _models()
    return M.ImageCNN(getattr(M.CNNConfig, size)(), nn=nn)


def _make_bert(size, nn):
    M = _models()
    return M.BERT(getattr(M.BERTConfig, size)(dropout=0.0), nn=nn)


# model -> (builder, inputs(batch, length, device) -> (args, targets), loss(out, targets))
def _gpt_inputs(model, batch, length, device):
    vocab = model.config.vocab_size
    x = torch.randint(0, vocab, (batch, length), device=device)
    return (x,), x.roll(-1, dims=1)


def _tagger_inputs(model, batch, length, device):
    c = model.config
    return (torch.randint(1, c.vocab_size, (batch, length), device=device),), \
        torch.randint(0, c.num_tags, (batch, length), device=device)


def _cnn_inputs(model, batch, length, device):
    c = model.config
    return (torch.randn(batch, c.in_channels, c.image_size, c.image_size, device=device),), \
        torch.randint(0, c.num_classes, (batch,), device=device)


def _bert_inputs(model, batch, length, device):
    x = torch.randint(0, model.config.vocab_size, (batch, length), device=device)
    return (x,), x


def _logits(out):
    return out[0] if isinstance(out, tuple) else out


def _loss(out, targets):
    logits = _logits(out)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                             targets.reshape(-1))


MODELS = {
    "gpt": (_make_gpt, _gpt_inputs),
    "lstm_tagger": (_make_tagger, _tagger_inputs),
    "image_cnn": (_make_cnn, _cnn_inputs),
    "bert": (_make_bert, _bert_inputs),
}


def _builder(name, size, mode, batch, length, device):
    def build():
        import leedl_fast
        import leedl_fast.optim as LO

        make, inputs = MODELS[name]
        gpu = device.startswith("cuda")
        torch.manual_seed(0)
        reference = make(size, torch.nn).to(device)
        args, targets = inputs(reference, batch, length, device)
        state = reference.state_dict()

        def autocast():
            return torch.autocast("cuda", torch.bfloat16) if gpu else contextlib.nullcontext()

        def candidate(nn, optimizer_cls, compiled):
            model = reference if nn is torch.nn and not compiled else make(size, nn).to(device)
            model.load_state_dict(state)
            if mode == "infer":
                model.eval()
                if nn is not torch.nn:  # what a user does for inference: fold BN into convs
                    leedl_fast.accelerate(model)
            run = torch.compile(model) if compiled else model
            if mode == "infer":

                def infer():
                    with torch.no_grad(), autocast():
                        return _logits(run(*args)).float()
                return infer
            model.train()
            opt = optimizer_cls(model.parameters(), lr=1e-4)

            def train_step():
                opt.zero_grad(set_to_none=True)
                with autocast():
                    loss = _loss(run(*args), targets)
                loss.backward()
                opt.step()
                return loss.detach()
            return train_step

        fns = {EAGER: candidate(torch.nn, torch.optim.AdamW, False),
               COMPILE: candidate(torch.nn, torch.optim.AdamW, True)}
        for backend in leedl_backends(device):
            if backend != "reference":
                fns[f"leedl_fast:{backend}"] = with_backend(
                    candidate(leedl_fast.nn, LO.AdamW, False), backend)
        fns[LEEDL_COMPILE] = candidate(leedl_fast.nn, LO.AdamW, True)
        return fns

    return build


def cases(device: str, quick: bool) -> list[Case]:
    gpu = device.startswith("cuda")
    ours = "leedl_fast:triton" if gpu else "leedl_fast:cpu"
    if quick:
        grid = [("gpt", "tiny", "train", 2, 32, None)]
    elif gpu:
        grid = [("gpt", "base", "train", 8, 512, (ours, 1.3)), ("gpt", "base", "infer", 8, 512,
                                                                None),
                ("bert", "base", "train", 8, 512, None), ("bert", "base", "infer", 8, 512, None),
                ("lstm_tagger", "base", "train", 64, 50, None),
                ("lstm_tagger", "base", "infer", 64, 50, None),
                ("image_cnn", "base", "train", 64, 1, None),
                ("image_cnn", "base", "infer", 64, 1, None)]
    else:  # CPU: the two goals, and the rest at sizes a 2-core run can afford
        grid = [("gpt", "base", "train", 1, 128, (ours, 1.1)),
                ("gpt", "base", "infer", 1, 128, None),
                ("lstm_tagger", "base", "infer", 16, 50, (ours, 1.3)),
                ("lstm_tagger", "base", "train", 16, 50, None),
                ("image_cnn", "base", "infer", 8, 1, None),
                ("image_cnn", "base", "train", 8, 1, None),
                ("bert", "base", "infer", 1, 128, None)]
    dtype = torch.bfloat16 if gpu else torch.float32
    return [Case(family="models", op=name, mode=mode, shape=(batch, length), dtype=dtype,
                 device=device, nbytes=0, build=_builder(name, size, mode, batch, length, device),
                 target=target, memory=True)
            for name, size, mode, batch, length, target in grid]


def tables(device: str, quick: bool) -> list[dict]:
    """The quantized variants: size reduction and quality change (bench/model_quant.py)."""
    from bench import model_quant

    return [model_quant.table(device, quick)]
