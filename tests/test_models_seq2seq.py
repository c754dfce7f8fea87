"""Seq2SeqTransformer (BOOK.md §7) at the tiny size: forward + backward, the leedl_fast build
against the torch.nn build and against torch's own Transformer layers (weights copied),
state_dict round trip, torch.compile(fullgraph=True), accelerate() on torch-built models,
training, greedy and beam-search decoding, int8 weight-only quantization, and the example."""
import copy
import io
import math
import os
import subprocess
import sys
from typing import ClassVar

import pytest
import torch

import leedl_fast
import leedl_fast.quant as Q
from leedl_fast.data import sequences
from leedl_fast.data.sequences import BOS, EOS, PAD
from leedl_fast.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 13
# fp32: the fused kernels against torch's own ops, same weights.
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """A tiny model gains nothing from a second thread, and on a busy 2-core machine two
    OpenMP threads ran a training step 15x slower than one (oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(**overrides):
    values = {"src_vocab": VOCAB, "tgt_vocab": VOCAB, "dropout": 0.0, "max_len": 16}
    return Seq2SeqConfig.tiny(**{**values, **overrides})


def _batch(n=6, generator=None):
    """Reverse-task batch with lengths 1..7: several rows padded on both sides."""
    return sequences.reverse_task(n, 1, 7, VOCAB, generator)


def _run(model, b):
    return model(b.src, b.tgt_in, b.src_pad_mask, b.tgt_pad_mask)


def _pair(nn_other=torch.nn):
    """The leedl_fast build and a build from `nn_other` with the same weights."""
    model = Seq2SeqTransformer(_config())
    other = Seq2SeqTransformer(_config(), nn=nn_other)
    other.load_state_dict(model.state_dict())
    return model, other


def _with_torch_layers(model):
    """The same model with torch.nn.TransformerEncoderLayer / DecoderLayer (post-LN, ReLU,
    batch_first) in place of ours, weights copied: the submodule names match, so the state
    dict loads unchanged. An oracle written by someone else."""
    c = model.config
    twin = copy.deepcopy(model)
    twin.encoder_layers = torch.nn.ModuleList(torch.nn.TransformerEncoderLayer(
        c.d_model, c.num_heads, c.dim_feedforward, c.dropout, batch_first=True)
        for _ in range(c.num_encoder_layers))
    twin.decoder_layers = torch.nn.ModuleList(torch.nn.TransformerDecoderLayer(
        c.d_model, c.num_heads, c.dim_feedforward, c.dropout, batch_first=True)
        for _ in range(c.num_decoder_layers))
    twin.load_state_dict(model.state_dict())
    return twin


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _loss(logits, b):
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), b.tgt_out.flatten(),
                                             ignore_index=PAD)


# ------------------------------------------------------------------------------------ data

def test_sequence_tasks():
    g = torch.Generator().manual_seed(0)
    for task, transform in ((sequences.copy_task, lambda x: x),
                            (sequences.reverse_task, lambda x: x[::-1]),
                            (sequences.sort_task, sorted)):
        b = task(9, 2, 5, VOCAB, g)
        assert b.src.shape == (9, 5) and b.tgt_in.shape == b.tgt_out.shape == (9, 6)
        assert torch.equal(b.src_pad_mask, b.src == PAD)
        assert torch.equal(b.tgt_pad_mask, b.tgt_in == PAD)
        assert (b.tgt_in[:, 0] == BOS).all()
        for i in range(9):
            x = sequences.strip_special(b.src[i])
            y = sequences.strip_special(b.tgt_out[i])
            assert 2 <= len(x) <= 5 and y == list(transform(x))
            assert sequences.strip_special(b.tgt_in[i])[1:] == y  # BOS, then the target
            assert b.tgt_out[i, len(x)] == EOS and min(x) >= sequences.FIRST_TOKEN
    with pytest.raises(ValueError, match="vocab"):
        sequences.copy_task(2, 1, 3, 3)


# ---------------------------------------------------------------------- model vs oracles

def test_forward_backward():
    model = Seq2SeqTransformer(_config(dropout=0.1)).train()
    b = _batch()
    logits = _run(model, b)
    assert logits.shape == (*b.tgt_in.shape, VOCAB)
    _loss(logits, b).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_matches_torch_nn_build(mode):
    """Same weights, same masks: leedl_fast.nn modules against torch.nn's, outputs and grads."""
    model, oracle = _pair()
    getattr(model, mode)(), getattr(oracle, mode)()
    b = _batch()
    out, want = _run(model, b), _run(oracle, b)
    torch.testing.assert_close(out, want, rtol=RTOL, atol=ATOL)
    _loss(out, b).backward()
    _loss(want, b).backward()
    got, expected = _grads(model), _grads(oracle)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=RTOL, atol=1e-5, msg=name)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_matches_torch_transformer_layers(mode):
    """Our layers are torch's TransformerEncoderLayer / DecoderLayer (post-LN), ours fused."""
    model = Seq2SeqTransformer(_config())
    twin = _with_torch_layers(model)
    getattr(model, mode)(), getattr(twin, mode)()
    b = _batch()
    with torch.no_grad():  # eval + no_grad also runs torch's native encoder fast path
        torch.testing.assert_close(_run(model, b), _run(twin, b), rtol=RTOL, atol=ATOL)


def test_padding_does_not_leak():
    """Changing what sits in padded source positions changes nothing (key padding mask)."""
    model = Seq2SeqTransformer(_config()).eval()
    b = _batch()
    noisy_src = b.src.masked_fill(b.src_pad_mask, 5)
    with torch.no_grad():
        clean = _run(model, b)
        noisy = model(noisy_src, b.tgt_in, b.src_pad_mask, b.tgt_pad_mask)
    torch.testing.assert_close(noisy, clean, rtol=RTOL, atol=ATOL)


def test_state_dict_round_trip():
    model, oracle = _pair()
    assert list(model.state_dict()) == list(oracle.state_dict())
    assert "positions" not in model.state_dict()  # fixed sinusoids are not saved
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = Seq2SeqTransformer(_config())
    fresh.load_state_dict(torch.load(buf))
    b = _batch()
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(_run(fresh, b), _run(model, b), rtol=0, atol=0)


def test_torch_compile_fullgraph():
    model = Seq2SeqTransformer(_config()).eval()
    b = _batch()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(_run(compiled, b), _run(model, b), rtol=RTOL, atol=ATOL)


def test_accelerate_torch_built_model():
    oracle = Seq2SeqTransformer(_config(), nn=torch.nn)
    fast, report = leedl_fast.accelerate(oracle, inplace=False, return_report=True)
    # Per encoder layer 1 attention + 2 norms, per decoder layer 2 + 3.
    assert len(report.swapped) == 2 * 3 + 2 * 5 and not report.left
    assert type(fast.decoder_layers[0].multihead_attn) is leedl_fast.nn.MultiheadAttention
    b = _batch()
    for mode in ("train", "eval"):
        getattr(fast, mode)(), getattr(oracle, mode)()
        torch.testing.assert_close(_run(fast, b), _run(oracle, b), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_accelerate_torch_transformer_layers(mode):
    """accelerate() on a model made of torch.nn.TransformerEncoderLayer / DecoderLayer."""
    twin = _with_torch_layers(Seq2SeqTransformer(_config(), nn=torch.nn))
    getattr(twin, mode)()
    fast, report = leedl_fast.accelerate(twin, inplace=False, return_report=True)
    assert len(report.swapped) == 16
    assert type(fast.encoder_layers[0].self_attn) is leedl_fast.nn.MultiheadAttention
    b = _batch()
    out, want = _run(fast, b), _run(twin, b)
    torch.testing.assert_close(out, want, rtol=RTOL, atol=ATOL)
    if mode == "train":
        _loss(out, b).backward()
        _loss(want, b).backward()
        got = _grads(fast)
        for name, g in _grads(twin).items():
            torch.testing.assert_close(got[name], g, rtol=RTOL, atol=1e-5, msg=name)


# ------------------------------------------------------------------ training and decoding

@pytest.fixture(scope="module")
def trained():
    """The tiny model trained for 150 steps on reversal (seeded): (model, first, last loss)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = Seq2SeqTransformer(_config())
    opt = leedl_fast.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    steps = 150
    sched = leedl_fast.optim.warmup_cosine(opt, warmup_steps=15, total_steps=steps)
    losses = []
    for _ in range(steps):
        b = sequences.reverse_task(64, 2, 6, VOCAB, g)
        loss = _loss(_run(model, b), b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    return model.eval(), first, last


@pytest.fixture(scope="module")
def held_out():
    return sequences.reverse_task(48, 2, 6, VOCAB, torch.Generator().manual_seed(99))


def test_training_loss_falls(trained):
    _, first, last = trained
    assert last < 0.5 * first, (first, last)


def test_greedy_equals_beam_of_one(trained, held_out):
    model, _, _ = trained
    b = held_out
    greedy = model.greedy_decode(b.src, 8, BOS, EOS, src_pad_mask=b.src_pad_mask)
    beam, score = model.beam_search(b.src, 1, 8, BOS, EOS, src_pad_mask=b.src_pad_mask)
    assert torch.equal(greedy, beam)
    torch.testing.assert_close(
        score, model.sequence_score(b.src, greedy, BOS, EOS, src_pad_mask=b.src_pad_mask),
        rtol=1e-5, atol=1e-5)
    # Outputs: EOS then only padding.
    for row in greedy:
        tokens = row.tolist()
        if EOS in tokens:
            assert all(t == PAD for t in tokens[tokens.index(EOS) + 1:])


@pytest.mark.parametrize("length_penalty", [0.0, 0.6])
def test_beam_search_scores_at_least_greedy(trained, held_out, length_penalty):
    """Beam search keeps greedy's prefix while it ranks among the best, so on a trained model it
    finds an output at least as probable as greedy's. Not a theorem -- beam search is not exact,
    and greedy's prefix can fall out of the beam -- so we allow one row in 48 to lose."""
    model, _, _ = trained
    b = held_out
    greedy = model.greedy_decode(b.src, 8, BOS, EOS, src_pad_mask=b.src_pad_mask)
    tokens, score = model.beam_search(b.src, 4, 8, BOS, EOS, length_penalty,
                                      src_pad_mask=b.src_pad_mask)
    # The returned score is the score of the returned tokens.
    rescored = model.sequence_score(b.src, tokens, BOS, EOS, length_penalty, b.src_pad_mask)
    torch.testing.assert_close(score, rescored, rtol=1e-5, atol=1e-5)
    greedy_score = model.sequence_score(b.src, greedy, BOS, EOS, length_penalty, b.src_pad_mask)
    assert (score >= greedy_score - 1e-5).sum() >= len(score) - 1, (score, greedy_score)
    assert score.mean() >= greedy_score.mean() - 1e-6


class _TableModel(Seq2SeqTransformer):
    """Next-token probabilities from a table keyed by the last token: greedy's first choice (A)
    leads to a flat, never-ending continuation; the runner-up (B) is followed by EOS at 0.9."""
    A, B = 3, 4
    TABLE: ClassVar[dict] = {BOS: {A: 0.5, B: 0.4, EOS: 0.1}, A: {A: 0.36, B: 0.34, EOS: 0.3},
                             B: {EOS: 0.9, A: 0.05, B: 0.05}}

    def encode(self, src, src_pad_mask=None):
        return torch.zeros(src.shape[0], 1, 1)

    def decode(self, tgt_in, memory, src_pad_mask=None, tgt_pad_mask=None):
        probs = torch.full((tgt_in.shape[0], tgt_in.shape[1], 5), 1e-9)
        for i, last in enumerate(tgt_in[:, -1].tolist()):
            for token, p in self.TABLE.get(last, {PAD: 1.0}).items():
                probs[i, -1, token] = p
        return probs.log()

    def forward(self, src, tgt_in, src_pad_mask=None, tgt_pad_mask=None):
        return torch.cat([self.decode(tgt_in[:, :t + 1], None)[:, -1:]
                          for t in range(tgt_in.shape[1])], dim=1)


def test_beam_search_finished_hypotheses():
    """Beam 2 finds B EOS (p 0.36) that greedy misses (A A A A: 0.5 * 0.36^3); the finished
    hypothesis keeps its score while the open ones extend, and its output is padded."""
    model = _TableModel(Seq2SeqConfig.tiny(src_vocab=5, tgt_vocab=5, num_encoder_layers=0,
                                           num_decoder_layers=0))
    src = torch.zeros(1, 1, dtype=torch.long)
    greedy = model.greedy_decode(src, 4, BOS, EOS)
    assert greedy.tolist() == [[model.A] * 4]
    tokens, score = model.beam_search(src, 2, 4, BOS, EOS)
    assert tokens[0, :2].tolist() == [model.B, EOS] and (tokens[0, 2:] == PAD).all()
    torch.testing.assert_close(score, torch.tensor([math.log(0.4 * 0.9)]))
    torch.testing.assert_close(model.sequence_score(src, greedy, BOS, EOS),
                               torch.tensor([math.log(0.5 * 0.36 ** 3)]))


def test_quantized_greedy_mostly_unchanged(trained, held_out):
    model, _, _ = trained
    b = held_out
    want = model.greedy_decode(b.src, 8, BOS, EOS, src_pad_mask=b.src_pad_mask)
    quantized = Q.quantize_(copy.deepcopy(model), Q.Int8WeightOnly())
    assert any(isinstance(m, Q.QuantizedLinear) for m in quantized.modules())
    got = quantized.greedy_decode(b.src, 8, BOS, EOS, src_pad_mask=b.src_pad_mask)
    same_rows = (got == want).all(dim=1).float().mean().item()
    assert same_rows >= 0.9, same_rows


def test_example_runs():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "seq2seq.py"), "--steps", "20",
         "--eval", "16", "--batch", "32"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert "exact-sequence accuracy" in result.stdout
