"""The book's models, quantized for inference (issue 8): size reduction and quality change.

Each model is trained briefly at its tiny size on the data that ships with leedl_fast (the
examples' tasks, shorter), then every `leedl_fast.quant` format is applied to a copy with
`quantize_` -- which replaces the nn.Linear layers only: embeddings, convolutions and LSTM
weights stay fp32, so "model bytes" (the whole state_dict) shrinks less than "Linear bytes" --
and the copy is evaluated on the same held-out data as the float model.

    python -m bench.model_quant            # prints the table (about 1-2 min on a 2-core CPU)
    python -m bench models                 # prints it after the timing tables, and saves it

Quality: test accuracy (ImageCNN, shapes), token accuracy (LSTMTagger, slot filling),
masked-character accuracy (BERT, MLM) and validation perplexity (GPT, characters; lower is
better). A Linear whose in_features the format cannot store (int4's group size) stays float.
"""
from __future__ import annotations

import copy
import math
import warnings

import torch

HEADERS = ["model", "weights", "quality", "change", "Linear bytes", "model bytes", "vs fp32"]


def _formats():
    import leedl_fast.quant as Q

    return [("int8 weight-only", Q.Int8WeightOnly()), ("int8 dynamic", Q.Int8Dynamic()),
            ("int4 weight-only g32", Q.Int4WeightOnly(group_size=32)),
            ("4-bit codebook", Q.Codebook(bits=4)), ("2-bit codebook", Q.Codebook(bits=2))]


def _train(model, batch_fn, steps, lr, loss_fn):
    import leedl_fast.optim as LO

    opt = LO.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = LO.warmup_cosine(opt, max(1, steps // 10), steps, min_factor=0.1)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        loss = loss_fn(model, *batch_fn(g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()


def _image_cnn(device, steps):
    from leedl_fast.data.images import shapes_dataset
    from leedl_fast.models import CNNConfig, ImageCNN

    g = torch.Generator().manual_seed(0)
    x, y = (t.to(device) for t in shapes_dataset(4000, generator=g))
    tx, ty = (t.to(device) for t in shapes_dataset(1000, generator=g))
    model = ImageCNN(CNNConfig.tiny()).to(device)

    def batch(gen):
        idx = torch.randint(0, len(y), (64,), generator=gen).to(device)
        return x[idx], y[idx]

    _train(model, batch, steps, 3e-3,
           lambda m, xb, yb: torch.nn.functional.cross_entropy(m(xb), yb))

    @torch.no_grad()
    def quality(m):
        return (m(tx).argmax(-1) == ty).float().mean().item()
    return "ImageCNN", "test accuracy", model, quality, True


def _lstm_tagger(device, steps):
    from leedl_fast.data.text import slot_tagging_dataset
    from leedl_fast.models import LSTMTagger, TaggerConfig

    train = slot_tagging_dataset(2000, torch.Generator().manual_seed(0))
    val = slot_tagging_dataset(500, torch.Generator().manual_seed(1))
    model = LSTMTagger(TaggerConfig.tiny(dropout=0.0)).to(device)
    tokens, tags = train.tokens.to(device), train.tags.to(device)

    def batch(gen):
        idx = torch.randint(0, len(tokens), (64,), generator=gen).to(device)
        return tokens[idx], tags[idx]

    _train(model, batch, steps, 1e-2, lambda m, xb, yb: m.loss(m(xb), yb))
    vt, vg, lengths = val.tokens.to(device), val.tags.to(device), val.lengths.to(device)
    real = torch.arange(vt.shape[1], device=device) < lengths[:, None]

    @torch.no_grad()
    def quality(m):
        pred = m(vt, lengths)[..., :len(val.tag_names)].argmax(-1)
        return (pred == vg)[real].float().mean().item()
    return "LSTMTagger", "token accuracy", model, quality, True


def _corpus(device):
    from leedl_fast.data.corpus import char_corpus, encode

    text, chars = char_corpus(200_000)
    ids = encode(text, chars)
    split = int(0.9 * len(ids))
    return chars, ids[:split], ids[split:]


def _gpt(device, steps):
    from leedl_fast.data.corpus import lm_batches
    from leedl_fast.models import GPT, GPTConfig

    chars, train_ids, val_ids = _corpus(device)
    model = GPT(GPTConfig.tiny(vocab_size=len(chars))).to(device)
    length = model.config.context

    def batch(gen):
        return tuple(t.to(device) for t in lm_batches(train_ids, 32, length, gen))

    _train(model, batch, steps, 3e-3, lambda m, xb, yb: m(xb, yb)[1])
    g = torch.Generator().manual_seed(1234)
    val = [tuple(t.to(device) for t in lm_batches(val_ids, 32, length, g)) for _ in range(10)]

    @torch.no_grad()
    def quality(m):
        return math.exp(sum(m(xb, yb)[1].item() for xb, yb in val) / len(val))
    return "GPT", "perplexity", model, quality, False


def _bert(device, steps):
    from leedl_fast.data.corpus import lm_batches
    from leedl_fast.models import BERT, BERTConfig
    from leedl_fast.models.transformer import mask_tokens

    chars, train_ids, val_ids = _corpus(device)
    vocab, mask_id = len(chars), len(chars)
    model = BERT(BERTConfig.tiny(vocab_size=vocab + 2)).to(device)
    length = model.config.context

    def batch(gen, ids=train_ids):
        x, _ = lm_batches(ids, 32, length, gen)
        inputs, labels = mask_tokens(x, mask_id, vocab, 0.15, gen)
        return inputs.to(device), labels.to(device)

    _train(model, batch, steps, 1e-3, lambda m, xb, yb: m(xb, None, yb)[1])
    g = torch.Generator().manual_seed(1234)
    val = [batch(g, val_ids) for _ in range(10)]

    @torch.no_grad()
    def quality(m):
        right = total = 0
        for xb, yb in val:
            chosen = yb != -100
            right += (m(xb).argmax(-1)[chosen] == yb[chosen]).sum().item()
            total += chosen.sum().item()
        return right / total
    return "BERT", "masked-char accuracy", model, quality, True


MODELS = {"image_cnn": (_image_cnn, 300), "lstm_tagger": (_lstm_tagger, 100),
          "gpt": (_gpt, 300), "bert": (_bert, 300)}


def _bytes(model):
    """(bytes of the Linear weights and biases, fp32 or quantized; bytes of the state_dict)."""
    import leedl_fast.quant as Q

    linear = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            linear += sum(p.numel() * p.element_size() for p in m.parameters())
        elif isinstance(m, Q.QuantizedLinear):
            linear += m.stored_bytes() + (m.bias.numel() * m.bias.element_size()
                                          if m.bias is not None else 0)
    # each storage once: a tied weight (GPT's and BERT's output head share the token
    # embedding's) has two state_dict keys
    unique = {t.data_ptr(): t for t in model.state_dict().values()}
    total = sum(t.numel() * t.element_size() for t in unique.values())
    return linear, total


def _fmt(value, percent):
    return f"{100 * value:.2f}%" if percent else f"{value:.3f}"


def table(device: str = "cpu", quick: bool = False, models=None) -> dict:
    """{"title", "headers", "rows"}: per model, the float row then one row per format."""
    import leedl_fast.quant as Q

    rows = []
    for name in models or MODELS:
        make, steps = MODELS[name]
        torch.manual_seed(0)
        label, metric, model, quality, percent = make(device, 10 if quick else steps)
        base = quality(model)
        lin0, tot0 = _bytes(model)
        rows.append([label, "fp32", f"{metric} {_fmt(base, percent)}", "-", f"{lin0:,}",
                     f"{tot0:,}", "1.00x"])
        for fmt_name, config in _formats():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                q = Q.quantize_(copy.deepcopy(model), config)
            value = quality(q)
            lin, tot = _bytes(q)
            kept = sum("left these layers in float" in str(w.message) for w in caught)
            change = value - base
            rows.append([label, fmt_name + (" (some Linear kept fp32)" if kept else ""),
                         _fmt(value, percent),
                         f"{100 * change:+.2f} pts" if percent else f"{change:+.3f}",
                         f"{lin:,}", f"{tot:,}", f"{tot0 / tot:.2f}x"])
    title = ("quantized inference (tiny models, briefly trained"
             + ("; quick run: 10 steps, not trained" if quick else "") + f", {device})")
    return {"title": title, "headers": HEADERS, "rows": rows}


if __name__ == "__main__":
    from bench.report import format_text

    t = table("cuda" if torch.cuda.is_available() else "cpu")
    print(f"== {t['title']} ==")
    print(format_text(t["headers"], t["rows"]))
