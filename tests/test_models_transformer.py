"""GPT and BERT (leedl_fast/models/transformer.py) at the tiny size: the leedl_fast build against
the torch.nn build with the same weights, KV-cache generation, padding masks, state_dict,
torch.compile, accelerate, quantization, training, and the two example scripts."""
import copy
import os
import subprocess
import sys

import pytest
import torch

import leedl_fast
import leedl_fast.quant as Q
from leedl_fast.data.corpus import char_corpus, encode, lm_batches
from leedl_fast.models.transformer import BERT, GPT, BERTConfig, GPTConfig, causal_mask, mask_tokens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL, ATOL = 1e-4, 1e-5  # fp32, fused kernels vs torch's: both near 1e-6 of float64


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast as two, and far faster when other jobs
    share the cores (OpenMP threads then wait on each other)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pair(kind, **overrides):
    """(leedl_fast build, torch.nn build) with the same weights, dropout 0."""
    torch.manual_seed(0)
    if kind == "gpt":
        cfg = GPTConfig.tiny(**overrides)
        fast, ref = GPT(cfg), GPT(cfg, nn=torch.nn)
    else:
        cfg = BERTConfig.tiny(**overrides)
        fast, ref = BERT(cfg), BERT(cfg, nn=torch.nn)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def inputs(kind, batch=3, length=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (batch, length), generator=g)
    if kind == "gpt":
        return (ids,)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 40:] = 0
    mask[2, 7:] = 0
    return ids, mask


CASES = [("gpt", {}), ("gpt", {"window": 8}), ("bert", {})]
IDS = ["gpt", "gpt-window8", "bert"]


# ----------------------------------------------------------------------------- structure

def test_causal_mask_matches_reference_visibility():
    from leedl_fast.reference.attention import visible
    for lq, lk, w in [(5, 5, None), (3, 9, None), (6, 6, 2), (2, 11, 4), (1, 7, 3)]:
        window = (None, 0) if w is None else (w - 1, 0)
        assert torch.equal(causal_mask(lq, lk, w), visible(lq, lk, window=window))


def test_configs():
    base = GPTConfig.base()
    assert (base.vocab_size, base.context, base.d_model, base.heads, base.layers) == \
        (50257, 1024, 768, 12, 12)
    with torch.device("meta"):
        n = sum(p.numel() for p in GPT(base).parameters())  # tied head counted once
    assert abs(n - 124.4e6) < 0.1e6
    tiny = GPTConfig.tiny()
    assert (tiny.context, tiny.d_model, tiny.heads, tiny.layers) == (64, 64, 4, 2)
    with torch.device("meta"):
        n = sum(p.numel() for p in BERT(BERTConfig.base()).parameters())
    assert abs(n - 110e6) < 1e6


def test_tied_heads():
    gpt = GPT(GPTConfig.tiny())
    assert gpt.lm_head.weight is gpt.tok_emb.weight
    assert GPT(GPTConfig.tiny(tie_weights=False)).lm_head.weight is not None
    bert = BERT(BERTConfig.tiny())
    assert bert.mlm_decoder.weight is bert.tok_emb.weight


@pytest.mark.parametrize("kind,overrides", CASES, ids=IDS)
def test_forward_backward(kind, overrides):
    fast, _ = pair(kind, **overrides)
    args = inputs(kind)
    ids = args[0]
    if kind == "gpt":
        logits, loss = fast(ids, ids.roll(-1, 1))
    else:
        x, labels = mask_tokens(ids, 99, 99, generator=torch.Generator().manual_seed(0))
        logits, loss = fast(x, args[1], labels)
    assert logits.shape == (*ids.shape, 100)
    loss.backward()
    for name, p in fast.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ------------------------------------------------------------- leedl_fast vs torch.nn

@pytest.mark.parametrize("kind,overrides", CASES, ids=IDS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_matches_torch_build(kind, overrides, train):
    fast, ref = pair(kind, **overrides)
    fast.train(train), ref.train(train)
    args = inputs(kind)
    out_fast, out_ref = fast(*args), ref(*args)
    torch.testing.assert_close(out_fast, out_ref, rtol=RTOL, atol=ATOL)
    if train:  # the gradients too
        out_fast.square().mean().backward()
        out_ref.square().mean().backward()
        grads = dict(ref.named_parameters())
        for name, p in fast.named_parameters():
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-3, atol=1e-6,
                                       msg=name)


@pytest.mark.parametrize("kind,overrides", CASES, ids=IDS)
def test_state_dict_round_trip(kind, overrides, tmp_path):
    fast, ref = pair(kind, **overrides)
    assert list(fast.state_dict()) == list(ref.state_dict())
    torch.save(ref.state_dict(), tmp_path / "model.pt")
    fresh = type(fast)(fast.config)
    fresh.load_state_dict(torch.load(tmp_path / "model.pt"))
    args = inputs(kind)
    fast.eval(), fresh.eval()
    torch.testing.assert_close(fresh(*args), fast(*args), rtol=0, atol=0)


@pytest.mark.parametrize("kind,overrides", CASES, ids=IDS)
def test_accelerate_torch_build(kind, overrides):
    _fast, ref = pair(kind, **overrides)
    ref.eval()
    args = inputs(kind)
    expected = ref(*args)
    leedl_fast.accelerate(ref)
    norms = [m for m in ref.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(type(m) is leedl_fast.nn.LayerNorm for m in norms)
    torch.testing.assert_close(ref(*args), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind,overrides", [CASES[1], CASES[2]], ids=IDS[1:])
def test_torch_compile_fullgraph(kind, overrides):
    fast, _ = pair(kind, **overrides)
    fast.eval()
    args = inputs(kind)
    expected = fast(*args)
    torch._dynamo.reset()
    compiled = torch.compile(fast, fullgraph=True)
    torch.testing.assert_close(compiled(*args), expected, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------- GPT

@pytest.mark.parametrize("window", [None, 5], ids=["full", "window5"])
@pytest.mark.parametrize("nn", ["leedl_fast", "torch"])
def test_kv_cache_logits_equal_full_forward(window, nn):
    fast, ref = pair("gpt", window=window)
    model = (fast if nn == "leedl_fast" else ref).eval()
    (ids,) = inputs("gpt", length=40)
    cache = model.new_cache(ids.shape[0])
    chunks = [model(ids[:, a:b], kv_cache=cache) for a, b in [(0, 17), (17, 30), (30, 31),
                                                              (31, 40)]]
    assert cache.length == 40
    torch.testing.assert_close(torch.cat(chunks, 1), model(ids), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("window", [None, 6], ids=["full", "window6"])
def test_generate_with_cache_equals_without(window):
    fast, ref = pair("gpt", window=window)
    fast.eval(), ref.eval()
    (prompt,) = inputs("gpt", batch=2, length=9)
    # 70 new tokens: the sequence outgrows the context of 64, so the cropping path runs too.
    cached = fast.generate(prompt, 70, temperature=0)
    uncached = fast.generate(prompt, 70, temperature=0, use_cache=False)
    assert cached.shape == (2, 79)
    assert torch.equal(cached, uncached)
    assert torch.equal(ref.generate(prompt, 70, temperature=0), cached)
    # Sampling with the same generator: the same tokens with and without the cache.
    a = fast.generate(prompt, 30, top_k=10, generator=torch.Generator().manual_seed(3))
    b = fast.generate(prompt, 30, top_k=10, use_cache=False,
                      generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_window_limits_what_is_seen():
    fast, _ = pair("gpt", window=4, layers=1)
    fast.eval()
    (ids,) = inputs("gpt", batch=1, length=20)
    changed = ids.clone()
    changed[0, :10] = (changed[0, :10] + 1) % 100
    # One layer, window 4: position 15 sees 12..15, so tokens 0..9 cannot reach it.
    torch.testing.assert_close(fast(changed)[:, 13:], fast(ids)[:, 13:], rtol=0, atol=0)
    assert not torch.allclose(fast(changed)[:, 10:13], fast(ids)[:, 10:13])


def test_context_overflow_raises():
    model = GPT(GPTConfig.tiny())
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_quantized_gpt_keeps_predictions():
    model = trained_gpt()
    model.eval()
    ids = val_batch()
    with torch.no_grad():
        expected = model(ids)
        quantized = Q.quantize_(copy.deepcopy(model), Q.Int8WeightOnly())
        got = quantized(ids)
    assert any(isinstance(m, Q.QuantizedLinear) for m in quantized.modules())
    agree = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agree > 0.97, agree
    rel = (got - expected).norm() / expected.norm()
    assert rel < 0.02, rel.item()


# ------------------------------------------------------------------------------ BERT

@pytest.mark.parametrize("nn", ["leedl_fast", "torch"])
def test_bert_padding_content_does_not_matter(nn):
    fast, ref = pair("bert")
    model = (fast if nn == "leedl_fast" else ref).eval()
    ids, mask = inputs("bert")
    other = torch.where(mask.bool(), ids, (ids * 7 + 3) % 100)
    assert not torch.equal(other, ids)
    a, b = model(ids, mask), model(other, mask)
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-6)
    # ... and dropping the padding altogether gives the same outputs too.
    torch.testing.assert_close(model(ids[2:, :7])[0], a[2, :7], rtol=1e-4, atol=1e-5)


def test_mask_tokens_statistics():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (64, 512), generator=g)
    maskable = torch.rand(ids.shape, generator=g) < 0.9
    inputs_, labels = mask_tokens(ids, 99, 50, prob=0.15, generator=g, maskable=maskable)
    chosen = labels != -100
    assert not chosen[~maskable].any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs_[~chosen], ids[~chosen])
    frac = chosen.float().sum() / maskable.sum()
    assert abs(frac - 0.15) < 0.01
    n = chosen.sum()
    masked = (inputs_[chosen] == 99).sum() / n
    same = (inputs_[chosen] == ids[chosen]).sum() / n  # 10% kept + 1/50 of the 10% random
    assert abs(masked - 0.8) < 0.02
    assert abs(same - (0.1 + 0.1 / 50)) < 0.015
    assert ((inputs_ >= 0) & (inputs_ < 50) | (inputs_ == 99)).all()


# -------------------------------------------------------------------------- training

_CACHE = {}


def corpus_ids():
    if "ids" not in _CACHE:
        text, vocab = char_corpus(20_000)
        _CACHE["ids"] = (encode(text, vocab), len(vocab))
    return _CACHE["ids"]


def val_batch():
    ids, _ = corpus_ids()
    return lm_batches(ids, 8, 64, torch.Generator().manual_seed(9))[0]


def train(model, batch_fn, steps=150, lr=3e-3):
    opt = leedl_fast.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = leedl_fast.optim.warmup_cosine(opt, 10, steps, min_factor=0.1)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        _, loss = model(*batch_fn(g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def trained_gpt():
    if "gpt" not in _CACHE:
        ids, vocab = corpus_ids()
        torch.manual_seed(0)
        model = GPT(GPTConfig.tiny(vocab_size=vocab))
        losses = train(model, lambda g: lm_batches(ids, 32, 64, g))
        _CACHE["gpt"] = model, losses
    return _CACHE["gpt"][0]


def test_gpt_trains():
    trained_gpt()
    losses = _CACHE["gpt"][1]
    start, end = losses[0], sum(losses[-5:]) / 5
    assert end < 0.6 * start, (start, end)


def test_bert_trains():
    # A masked LM learns source-code characters slowly (examples/bert.py: loss 4.6 -> 2.8 in
    # 400 steps, and a tiny BERT sits near the unigram entropy, ~3.0, for its first ~200 steps
    # even on a periodic text or a bag-of-tokens task). Within 150 steps it can show that every
    # part learns by fitting a fixed set of 4 masked, padded batches of the corpus.
    ids, vocab = corpus_ids()
    mask_id = vocab
    torch.manual_seed(0)
    model = BERT(BERTConfig.tiny(vocab_size=vocab + 1))
    g = torch.Generator().manual_seed(5)
    fixed = []
    for _ in range(4):
        x, _ = lm_batches(ids, 32, 64, g)
        am = torch.ones_like(x)
        am[:, 56:] = 0
        fixed.append((*mask_tokens(x, mask_id, vocab, 0.15, g, maskable=am), am))
    step = iter(range(10**6))

    def batch(g):
        inp, labels, am = fixed[next(step) % 4]
        return inp, am, labels

    losses = train(model, batch)
    start, end = losses[0], sum(losses[-5:]) / 5
    assert end < 0.6 * start, (start, end)


# -------------------------------------------------------------------------- examples

@pytest.mark.parametrize("script,args", [
    ("gpt.py", ["--steps", "20", "--generate", "20", "--window", "8", "--chars", "20000"]),
    ("bert.py", ["--steps", "20", "--chars", "20000"]),
])
def test_example_runs(script, args):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args,
                          "--threads", "1"], capture_output=True, text=True, timeout=60, check=False,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ("perplexity" if script == "gpt.py" else "accuracy") in out.stdout
