"""The attention lab (docs/labs/attention.md): every stage file passes `leedl-fast check` (quick
cases), and what the quick cases do not reach is tested directly: with 16-wide tiles, many key
tiles per row (the two-pass statistics and the online-softmax rescaling, with scores large enough
that the running max changes from tile to tile), and stage 2's causal tile skipping (keys past a
query block are never read)."""
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

LAB = Path(__file__).resolve().parents[1] / "docs" / "labs" / "attention"

STAGES = [
    ("stage0_naive.py", "python"),
    ("stage1_two_pass.py", "triton"),
    ("stage2_flash.py", "triton"),
]


def test_every_stage_file_is_listed():
    assert_every_stage_listed(LAB, STAGES)


@pytest.mark.parametrize("name, backend", STAGES)
def test_stage_passes_the_check(name, backend):
    assert_stage_passes(LAB / name, "attention", backend)


def _load(name):
    return load_stage(LAB / name)


def _oracle(q, k, v, causal, scale):
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-2, -1) * scale
    if causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("name", ["stage1_two_pass.py", "stage2_flash.py"])
@pytest.mark.parametrize("lq, lk, d, causal", [(33, 33, 16, True), (7, 70, 64, True),
                                               (50, 20, 16, True), (40, 57, 16, False)])
def test_many_key_tiles(device, monkeypatch, name, lq, lk, d, causal):
    """16 x 16 tiles: up to 5 key tiles per row; scores of size ~10 (scale 1), so the row max
    jumps between tiles and every rescaling by exp(m_old - m_new) matters."""
    stage = _load(name)
    monkeypatch.setattr(stage, "config", lambda q: (16, 16, 4, 1))
    g = torch.Generator().manual_seed(lq * 1000 + lk)
    q, k, v = (torch.randn(2, 2, n, d, generator=g) * s for n, s in ((lq, 3.0), (lk, 1.0),
                                                                        (lk, 1.0)))
    o = stage.attention(q.to(device), k.to(device), v.to(device), causal, 1.0).cpu()
    torch.testing.assert_close(o.double(), _oracle(q, k, v, causal, 1.0), atol=2e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # the later blocks do see the NaN keys
def test_flash_never_reads_keys_past_a_causal_query_block(device, monkeypatch):
    """Keys at or past the end of query block 0 are NaN: with causal tiles skipped, block 0's
    queries never load them (stage 1 would: 0 * NaN = NaN in its p v product)."""
    stage2 = _load("stage2_flash.py")
    monkeypatch.setattr(stage2, "config", lambda q: (16, 16, 4, 1))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 50, 16, generator=g) for _ in range(3))
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[:, :, 16:] = float("nan")
    v_bad[:, :, 16:] = float("nan")
    o = stage2.attention(q.to(device), k_bad.to(device), v_bad.to(device), True, 0.25).cpu()
    torch.testing.assert_close(o[:, :, :16].double(), _oracle(q, k, v, True, 0.25)[:, :, :16],
                               atol=2e-5, rtol=1e-4)
