"""The norm lab (docs/labs/norm.md): every stage file passes `leedl-fast check` (quick cases), and
the parts the quick cases do not reach are tested directly: stage 2's loop over several column
blocks (and its one-pass Welford statistics when |mean| >> std), stage 3's bands of several rows
per program and its determinism."""
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

LAB = Path(__file__).resolve().parents[1] / "docs" / "labs" / "norm"

STAGES = [
    ("stage0_naive.py", "layer_norm", "python"),
    ("stage1_row_per_program.py", "layer_norm", "triton"),
    ("stage2_blocked.py", "layer_norm", "triton"),
    ("stage3_fused_backward.py", "layer_norm_backward", "triton"),
    ("solution_rms_norm.py", "rms_norm", "triton"),
]


def test_every_stage_file_is_listed():
    assert_every_stage_listed(LAB, STAGES)


@pytest.mark.parametrize("name, op, backend", STAGES)
def test_stage_passes_the_check(name, op, backend):
    assert_stage_passes(LAB / name, op, backend)


def _load(name):
    return load_stage(LAB / name)


def _ln64(x, w, b, eps):
    x, w, b = x.double(), w.double(), b.double()
    m = x.mean(-1, keepdim=True)
    return (x - m) / torch.sqrt(((x - m) ** 2).mean(-1, keepdim=True) + eps) * w + b


@pytest.mark.parametrize("n", [16, 100, 129])
def test_stage2_several_blocks_and_a_large_mean(device, monkeypatch, n):
    """16-wide blocks: rows of 1, 7 (a partial last block) and 9 blocks; the rows sit at mean
    1e3 with std 1, where E[x^2] - E[x]^2 in fp32 would lose every digit of the variance."""
    stage2 = _load("stage2_blocked.py")
    monkeypatch.setattr(stage2, "MAX_BLOCK_N", 16)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(5, n, generator=g) + 1e3
    w, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
    y = stage2.layer_norm(x.to(device), w.to(device), b.to(device), 1e-5).cpu()
    torch.testing.assert_close(y.double(), _ln64(x, w, b, 1e-5), atol=2e-4, rtol=1e-4)


def _lnb64(dy, x, w, eps):
    x64 = x.double().requires_grad_()
    w64 = w.double().requires_grad_()
    b64 = torch.zeros_like(w64, requires_grad=True)
    return torch.autograd.grad(_ln64(x64, w64, b64, eps), (x64, w64, b64), dy.double())


def test_stage3_bands_of_rows_and_determinism(device):
    """37 rows, at most 16 programs on the CPU: bands of 3 rows, 13 programs, the last band 1 row
    (the GPU's 4 x #SM programs get 1 row each); two runs give bit-identical dweight and dbias
    (fixed-order sums, no atomics)."""
    stage3 = _load("stage3_fused_backward.py")
    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(37, 50, generator=g), torch.randn(37, 50, generator=g)
    w = torch.randn(50, generator=g)
    runs = [stage3.layer_norm_backward(dy.to(device), x.to(device), w.to(device), 1e-5)
            for _ in range(2)]
    for got, want in zip(runs[0], _lnb64(dy, x, w, 1e-5)):
        torch.testing.assert_close(got.cpu().double(), want, atol=5e-5, rtol=1e-4)
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)
