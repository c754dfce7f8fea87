"""The RNN lab (docs/labs/rnn.md): every stage file passes `leedl-fast check` for each op it
defines (quick cases); the book's worked LSTM example (BOOK.md §5.5.5) comes out of every stage
(the page's Python snippet runs as written); stage 3's kernel is tested with several batch and
hidden blocks, which the quick cases do not reach."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# `device` is the fixture from labs_common, taken as an argument: F811 does not apply
# ruff: noqa: F811
from .labs_common import (
    assert_every_stage_listed,
    assert_stage_passes,
    device,  # noqa: F401
    load_stage,
)

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "docs" / "labs" / "rnn"

STAGES = [
    ("stage0_naive.py", "lstm_cell", "python"),
    ("stage0_naive.py", "lstm_layer", "python"),
    ("stage1_fused_gates.py", "lstm_cell", "triton"),
    ("stage1_fused_gates.py", "lstm_layer", "triton"),
    ("stage2_hoisted_projection.py", "lstm_layer", "triton"),
    ("stage3_fused_step.py", "lstm_layer", "triton"),
]


def test_every_stage_file_is_listed():
    assert_every_stage_listed(LAB, STAGES)


@pytest.mark.parametrize("name, op, backend", STAGES)
def test_stage_passes_the_check(name, op, backend):
    assert_stage_passes(LAB / name, op, backend)


def _load(name):
    return load_stage(LAB / name)


# BOOK.md §5.5.5: one cell, x = (x1, x2, x3); z = x1 (here eps * x1: tanh(eps z) / eps ~ z, the
# book's linear g and h), z_i = 100 x2 - 10, z_f = 100 x2 + 10, z_o = 100 x3 - 10; c0 = 0.
EPS = 1e-3
BOOK_X = [(3, 1, 0), (4, 1, 0), (2, 0, 0), (1, 0, 1), (3, -1, 0)]
BOOK_C = [3, 7, 7, 7, 0]        # the book's table (gates rounded to 0 / 1)
BOOK_A = [0, 0, 0, 7, 0]


def _book_inputs(device):
    w_ih = torch.tensor([[0, 100, 0], [0, 100, 0], [EPS, 0, 0], [0, 0, 100]])
    b_ih = torch.tensor([-10.0, 10, 0, -10])
    x = torch.tensor(BOOK_X, dtype=torch.float32).view(5, 1, 3)
    zeros = torch.zeros(1, 1)
    return [t.to(device) for t in (x, zeros, zeros, w_ih.float(), torch.zeros(4, 1), b_ih,
                                   torch.zeros(4))]


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # sigmoid(-110) = 1 / (1 + inf)
@pytest.mark.parametrize("name", sorted({s[0] for s in STAGES}))
def test_the_books_example(device, name):
    stage = _load(name)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _book_inputs("cpu" if name.startswith("stage0")
                                                     else device)
    y, _, _ = stage.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    assert torch.allclose(y.flatten().cpu() / EPS, torch.tensor(BOOK_A, dtype=torch.float32),
                          atol=1e-3)
    if hasattr(stage, "lstm_cell"):  # the cell's c, step by step
        h, c = h0, c0
        for t, want in enumerate(BOOK_C):
            h, c = stage.lstm_cell(x[t], h, c, w_ih, w_hh, b_ih, b_hh)
            assert abs(float(c) / EPS - want) < 1e-3, (t, float(c) / EPS)


def test_the_pages_snippet_runs():
    """docs/labs/rnn.md's runnable ```python block (the book's example, the one that starts with
    "# BOOK.md"; the others are excerpts) runs as written."""
    page = (ROOT / "docs" / "labs" / "rnn.md").read_text()
    snippets = re.findall(r"```python\n(# BOOK\.md.*?)```", page, re.DOTALL)
    assert len(snippets) == 1, "no runnable ```python block in docs/labs/rnn.md"
    for code in snippets:
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("batch, hidden", [(20, 40), (3, 70)])
def test_stage3_several_blocks(device, monkeypatch, batch, hidden):
    """Blocks of 16 rows, 16 units and 16 inputs: several programs along the batch and the
    hidden units, several chunks of the recurrent product's sum."""
    stage3 = _load("stage3_fused_step.py")
    monkeypatch.setattr(stage3, "BLOCK_H", 16)
    monkeypatch.setattr(stage3, "BLOCK_K", 16)
    g = torch.Generator().manual_seed(batch * 100 + hidden)
    steps, n_in = 4, 9
    s = hidden ** -0.5
    inputs = [torch.randn(steps, batch, n_in, generator=g), torch.randn(batch, hidden,
                                                                        generator=g),
              torch.randn(batch, hidden, generator=g),
              torch.randn(4 * hidden, n_in, generator=g) * s,
              torch.randn(4 * hidden, hidden, generator=g) * s,
              torch.randn(4 * hidden, generator=g) * s, torch.randn(4 * hidden, generator=g) * s]
    got = stage3.lstm_layer(*[t.to(device) for t in inputs])
    from leedl_fast.reference.rnn import lstm_layer

    want = lstm_layer(*[t.double() for t in inputs])
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu().double(), b, atol=5e-5, rtol=1e-5)
