"""The recurrent models of BOOK.md §5 (leedl_fast/models/rnn.py) at the tiny size: forward and
backward, the leedl_fast build against the torch.nn build (weights copied), state_dict,
torch.compile, accelerate, training, state-carrying generation, int8 quantization, and the two
example scripts end to end."""
import copy
import io
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import leedl_fast
import leedl_fast.quant as Q
from leedl_fast.data.corpus import char_corpus, encode, lm_batches
from leedl_fast.data.text import slot_tagging_dataset, tagging_scores
from leedl_fast.models.rnn import CharLSTM, CharLSTMConfig, LSTMTagger, TaggerConfig
from leedl_fast.optim import AdamW

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL, ATOL = 1e-4, 1e-5  # fp32: the fused kernels against torch's LSTM, same weights


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny LSTMs run faster on one thread (their per-step work is too small to split), and on a
    busy 2-core machine two threads were 15x slower; restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def slots():
    return slot_tagging_dataset(512, torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def chars():
    text, vocab = char_corpus(50_000)
    return encode(text, vocab), vocab


def tagger_pair(dropout=0.0, seed=0):
    """(leedl_fast build, torch.nn build) of the tiny tagger with the same weights."""
    torch.manual_seed(seed)
    config = TaggerConfig.tiny(dropout=dropout)
    ours, ref = LSTMTagger(config), LSTMTagger(config, nn=torch.nn)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def char_pair(seed=0, vocab_size=128):
    torch.manual_seed(seed)
    config = CharLSTMConfig.tiny(vocab_size=vocab_size, num_layers=2)  # 2 layers: stacked states
    ours, ref = CharLSTM(config), CharLSTM(config, nn=torch.nn)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def tagger_inputs(slots, n=12):
    longest = int(slots.lengths[:n].max())
    return slots.tokens[:n, :longest], slots.tags[:n, :longest], slots.lengths[:n]


def char_inputs(chars, batch=4, length=33):
    return lm_batches(chars[0], batch, length, torch.Generator().manual_seed(0))


def run(model, kind, inputs):
    """The model's logits on the test inputs (tagger: tokens; char LM: x)."""
    return model(inputs[0]) if kind == "tagger" else model(inputs[0])[0]


def loss_of(model, kind, inputs):
    logits = run(model, kind, inputs)
    if kind == "tagger":
        return LSTMTagger.loss(logits, inputs[1])
    return F.cross_entropy(logits.flatten(0, 1), inputs[1].flatten())


def pair_and_inputs(kind, slots, chars):
    if kind == "tagger":
        return tagger_pair(), tagger_inputs(slots)
    return char_pair(vocab_size=len(chars[1])), char_inputs(chars)


# --- structure -------------------------------------------------------------------------------

def test_both_builds_have_the_same_state_dict_keys():
    ours, ref = tagger_pair()
    assert type(ours.lstm) is leedl_fast.nn.LSTM and type(ref.lstm) is torch.nn.LSTM
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert "lstm.weight_hh_l1_reverse" in ours.state_dict()  # bidirectional, 2 layers
    ours, ref = char_pair()
    assert list(ours.state_dict()) == list(ref.state_dict())


def test_base_config_is_the_benchmark_size():
    c = TaggerConfig.base()
    assert (c.vocab_size, c.embed_dim, c.hidden_size, c.num_layers, c.bidirectional,
            c.num_tags) == (10_000, 256, 512, 2, True, 128)


@pytest.mark.parametrize("kind", ["tagger", "char"])
def test_forward_backward(kind, slots, chars):
    (model, _), inputs = pair_and_inputs(kind, slots, chars)
    logits = run(model, kind, inputs)
    classes = model.config.num_tags if kind == "tagger" else model.config.vocab_size
    assert logits.shape == (*inputs[0].shape, classes)
    loss_of(model, kind, inputs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.embedding.weight.grad.abs().sum() > 0


def test_tagger_padding(slots):
    """Pad positions: tag -100 (ignored by the loss) and logits zeroed when lengths are given."""
    model, _ = tagger_pair()
    model.eval()
    tokens, tags, lengths = tagger_inputs(slots)
    assert (tags[tokens == 0] == -100).all() and (tags[tokens != 0] >= 0).all()
    logits = model(tokens, lengths)
    pad = torch.arange(tokens.shape[1])[None] >= lengths[:, None]
    assert pad.any() and (logits[pad] == 0).all() and (logits[~pad] != 0).any()


def test_trained_tagger_ignores_the_padding(trained_tagger):
    """No PackedSequence in leedl_fast.nn.LSTM, so the reverse direction reads a sentence's pads
    before its words (models/rnn.py); a trained tagger gives (nearly) the same tags in a padded
    batch as on each sentence alone: measured 98.2% of the tokens after these 60 steps (100% in
    examples/lstm_tagger.py's 150 steps of batch 64)."""
    model, _ = trained_tagger
    val = slot_tagging_dataset(60, torch.Generator().manual_seed(3))
    with torch.no_grad():
        batched = model(val.tokens).argmax(-1)
        alone = [model(val.tokens[i:i + 1, :n]).argmax(-1)[0]
                 for i, n in enumerate(val.lengths.tolist())]
    same = sum((batched[i, :len(a)] == a).sum().item() for i, a in enumerate(alone))
    assert same / val.lengths.sum().item() > 0.97


# --- the leedl_fast build against the torch.nn build -----------------------------------------

@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kind", ["tagger", "char"])
def test_matches_torch_build(kind, mode, slots, chars):
    (ours, ref), inputs = pair_and_inputs(kind, slots, chars)
    ours.train(mode == "train")
    ref.train(mode == "train")
    out, expect = run(ours, kind, inputs), run(ref, kind, inputs)
    torch.testing.assert_close(out, expect, rtol=RTOL, atol=ATOL)
    if mode == "train":
        loss_of(ours, kind, inputs).backward()
        loss_of(ref, kind, inputs).backward()
        for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=RTOL, atol=ATOL, msg=name)


def test_char_state_matches_torch_build(chars):
    """The returned (h, c) and a forward from a given state agree too."""
    (ours, ref), (x, _) = char_pair(vocab_size=len(chars[1])), char_inputs(chars)
    _, state = ours(x[:, :20])
    _, state_ref = ref(x[:, :20])
    for a, b in zip(state, state_ref):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    out, _ = ours(x[:, 20:], state)
    expect, _ = ref(x[:, 20:], state_ref)
    torch.testing.assert_close(out, expect, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ["tagger", "char"])
def test_state_dict_round_trip(kind, slots, chars):
    (ours, ref), inputs = pair_and_inputs(kind, slots, chars)
    ours.eval()
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    fresh = copy.deepcopy(ours)
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    fresh.load_state_dict(state)
    ref.load_state_dict(state)
    ref.eval()
    expect = run(ours, kind, inputs)
    torch.testing.assert_close(run(fresh, kind, inputs), expect, rtol=0, atol=0)
    torch.testing.assert_close(run(ref, kind, inputs), expect, rtol=RTOL, atol=ATOL)


# --- torch.compile and accelerate ------------------------------------------------------------

def test_compile_fullgraph(slots):
    """The whole tagger (embedding, leedl_fast LSTM ops, dropout, classifier, masking) in one
    graph. Eval and no_grad to keep the compile short; test_rnn.py compiles the LSTM's backward."""
    model, _ = tagger_pair()
    model.eval()
    tokens, _, lengths = tagger_inputs(slots)
    with torch.no_grad():
        expect = model(tokens, lengths)
        out = torch.compile(model, fullgraph=True)(tokens, lengths)
    torch.testing.assert_close(out, expect, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ["tagger", "char"])
def test_accelerate_torch_build(kind, slots, chars):
    (_, ref), inputs = pair_and_inputs(kind, slots, chars)
    expect = run(ref, kind, inputs)
    fast = leedl_fast.accelerate(copy.deepcopy(ref))
    assert type(fast.lstm) is leedl_fast.nn.LSTM
    assert list(fast.state_dict()) == list(ref.state_dict())
    torch.testing.assert_close(run(fast, kind, inputs), expect, rtol=RTOL, atol=ATOL)


# --- training --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_tagger():
    """The tiny tagger after 60 AdamW steps on 512 sentences: (model, losses)."""
    torch.set_num_threads(1)
    data = slot_tagging_dataset(512, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = LSTMTagger(TaggerConfig.tiny())
    opt = AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        idx = torch.randint(0, len(data.tokens), (32,), generator=g)
        longest = int(data.lengths[idx].max())
        loss = model.loss(model(data.tokens[idx, :longest]), data.tags[idx, :longest])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


def test_tagger_trains(trained_tagger):
    _, losses = trained_tagger
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    val = slot_tagging_dataset(200, torch.Generator().manual_seed(1))
    model, _ = trained_tagger
    with torch.no_grad():
        pred = model(val.tokens).argmax(-1)
    assert tagging_scores(pred, val.tags, val.lengths, val.tag_names)["token_accuracy"] > 0.9


def test_char_lstm_trains(chars):
    ids, vocab = chars
    torch.manual_seed(0)
    model = CharLSTM(CharLSTMConfig.tiny(vocab_size=len(vocab)))
    opt = AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        x, y = lm_batches(ids, 16, 48, g)
        loss = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


# --- generation and quantization -------------------------------------------------------------

def test_generate_carries_state(chars):
    """Greedy generation carrying (h, c) equals greedy generation that re-reads the whole
    prefix every step; sampling is reproducible from the generator."""
    model, _ = char_pair(vocab_size=len(chars[1]))
    model.eval()
    prompt = chars[0][:2 * 7].view(2, 7)
    carried = model.generate(prompt, 12, temperature=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(12):
            ids = torch.cat([ids, model(ids)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(carried, ids)
    assert torch.equal(model.generate(prompt[0], 12, temperature=0), ids[0])  # unbatched
    a = model.generate(prompt, 10, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (2, 17)


def test_int8_quantized_tagger_keeps_outputs(trained_tagger):
    model, _ = trained_tagger
    val = slot_tagging_dataset(200, torch.Generator().manual_seed(2))
    with torch.no_grad():
        expect = model(val.tokens, val.lengths)
        quantized = Q.quantize_(copy.deepcopy(model), Q.Int8WeightOnly())
        out = quantized(val.tokens, val.lengths)
    assert isinstance(quantized.classifier, Q.QuantizedLinear)
    valid = val.tags != -100
    agree = (out.argmax(-1) == expect.argmax(-1))[valid].float().mean().item()
    assert agree > 0.99, agree
    assert (out - expect).abs().max() < 0.05 * expect.abs().max()


# --- the examples ----------------------------------------------------------------------------

def test_examples_run_end_to_end():
    """Both scripts with a few steps, side by side (one thread each)."""
    runs = {
        "lstm_tagger.py": ["--steps", "40", "--train", "500", "--val", "100"],
        "char_lstm.py": ["--steps", "30", "--chars", "20000", "--generate", "40"],
    }
    procs = {name: subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", name), *args],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, args in runs.items()}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name} failed:\n{out}"
        assert "validation" in out and ("slot F1" in out or "perplexity" in out), out
