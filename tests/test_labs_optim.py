"""The optim lab (docs/labs/optim.md): every stage file passes `leedl-fast check --op adam_step`
(quick cases), and stage 2's `adam_step_multi` updates a whole list -- mixed sizes, an empty
tensor, two dtypes -- exactly as one single-tensor step per tensor would."""
import math
from pathlib import Path

import pytest
import torch

from leedl_fast.labs import get

# `device` is the fixture from labs_common, taken as an argument: F811 does not apply
# ruff: noqa: F811
from .labs_common import (
    assert_every_stage_listed,
    assert_stage_passes,
    device,  # noqa: F401
    load_stage,
)

LAB = Path(__file__).resolve().parents[1] / "docs" / "labs" / "optim"

STAGES = [
    ("stage0_naive.py", "python"),
    ("stage1_fused.py", "triton"),
    ("stage2_multi_tensor.py", "triton"),
]
HYPER = {"step": 3, "lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1}


def test_every_stage_file_is_listed():
    assert_every_stage_listed(LAB, STAGES)


@pytest.mark.parametrize("name, backend", STAGES)
def test_stage_passes_the_check(name, backend):
    assert_stage_passes(LAB / name, "adam_step", backend)


def _load(name):
    return load_stage(LAB / name)


def _state(shape, dtype, g):
    return [(torch.randn(shape, generator=g, dtype=torch.float64) * s + a).to(dtype)
            for s, a in ((1.0, 0.0), (0.1, 0.0), (0.05, 0.0), (0.0, 0.01))]


def test_multi_tensor_matches_one_step_per_tensor(device):
    """One call over fp32 and bf16 tensors of 1, 0, 1023, 1025 and 3 x 700 elements (one launch
    per dtype) against the float64 oracle applied tensor by tensor."""
    stage2 = _load("stage2_multi_tensor.py")
    oracle = get("adam_step").oracle
    g = torch.Generator().manual_seed(0)
    shapes = [((1,), torch.float32), ((0,), torch.float32), ((1023,), torch.bfloat16),
              ((1025,), torch.float32), ((3, 700), torch.bfloat16)]
    tensors = [_state(shape, dtype, g) for shape, dtype in shapes]
    lists = [[t[k].to(device, copy=True) for t in tensors] for k in range(4)]
    stage2.adam_step_multi(*lists, **HYPER)
    for i, (p, grad, m, v) in enumerate(tensors):
        want = oracle(p.double(), grad.double(), m.double(), v.double(), **HYPER)
        low = p.dtype == torch.bfloat16
        for got, ref in zip((lists[0][i], lists[2][i], lists[3][i]), want):
            tol = {"atol": 1e-2, "rtol": 1e-2} if low else {"atol": 1e-6, "rtol": 1e-5}
            torch.testing.assert_close(got.cpu().double(), ref, **tol)


def test_multi_tensor_block_table_covers_every_element():
    stage2 = _load("stage2_multi_tensor.py")
    sizes = [1, 1024, 1025, 3000]
    ts = [torch.zeros(n) for n in sizes]
    addrs, blocks = stage2._tables(ts, ts, ts, ts)
    assert addrs[:, 4].tolist() == sizes
    assert blocks.shape[0] == sum(math.ceil(n / stage2.BLOCK) for n in sizes)
    assert blocks[:, 0].tolist() == [0, 1, 2, 2, 3, 3, 3]
    assert blocks[:, 1].tolist() == [0, 0, 0, 1024, 0, 1024, 2048]
