"""The quant lab (docs/labs/quant.md): every stage file passes `leedl-fast check` (quick cases),
and what the quick cases do not reach is tested directly: the Triton stages in bf16 (the check
skips bf16 under the interpreter), stage 2's split-K (that the quick case really splits, and an
uneven split over several row blocks), and the stages' compile-check declarations."""
import inspect
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

LAB = Path(__file__).resolve().parents[1] / "docs" / "labs" / "quant"

STAGES = [
    ("stage0_dequantize.py", "int8_weight_linear", "python"),
    ("stage1_dequant_tiles.py", "int8_weight_linear", "triton"),
    ("stage2_splitk_gemv.py", "int8_weight_linear", "triton"),
]


def test_every_stage_file_is_listed():
    assert_every_stage_listed(LAB, STAGES)


@pytest.mark.parametrize("name, op, backend", STAGES)
def test_stage_passes_the_check(name, op, backend):
    assert_stage_passes(LAB / name, op, backend)


def _load(name):
    return load_stage(LAB / name)


def _inputs(m, k, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    qweight = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scales = torch.rand(n, generator=g) / 100 + 1e-3
    return torch.randn(m, k, generator=g), qweight, scales, torch.randn(n, generator=g)


def _oracle(x, qweight, scales, bias):
    return x.double() @ (qweight.double() * scales.double()[:, None]).T + bias.double()


def test_the_quick_case_splits_k():
    """The check's first quick case (M 1, K 300, N 67) must exercise stage 2's split-K path."""
    stage2 = _load("stage2_splitk_gemv.py")
    blocks = -(-67 // stage2.BLOCK_N)
    splits, k_per_split = stage2.split_k(blocks, 300, torch.device("cpu"))
    assert splits == 2 and k_per_split == stage2.BLOCK_K


@pytest.mark.parametrize("name", ["stage1_dequant_tiles.py", "stage2_splitk_gemv.py"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_triton_stages_several_blocks_and_half_precision(device, monkeypatch, name, dtype):
    """M 2, K 1000, N 40: several N blocks, K split into uneven slices (stage 2, forced to aim
    at 12 programs: 3 row blocks x 2 rows -> 2 slices of 512 and 488), bias, a strided x."""
    stage = _load(name)
    if name.startswith("stage2"):
        monkeypatch.setattr(stage, "INTERPRETER_PROGRAMS", 12)
    x, qweight, scales, bias = _inputs(2, 1000, 40)
    xd = torch.zeros(2, 2000, dtype=dtype, device=device)[:, ::2]
    xd.copy_(x)
    y = stage.int8_weight_linear(xd, qweight.to(device), scales.to(device),
                                 bias.to(device, dtype)).cpu()
    want = _oracle(x.to(dtype), qweight, scales, bias.to(dtype))
    assert y.dtype == dtype and y.shape == (2, 40)
    tol = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(y.double(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", [s[0] for s in STAGES if s[2] == "triton"])
def test_compile_checks_name_every_kernel_argument(name):
    """Each COMPILE_CHECKS entry names a kernel of the file and types every argument: a
    signature entry for each runtime argument, a constexpr value for each tl.constexpr one."""
    module = _load(name)
    kernels = {entry["kernel"] for entry in module.COMPILE_CHECKS}
    jitted = {k for k, v in vars(module).items() if hasattr(v, "fn") and not k.startswith("_")}
    assert kernels == jitted
    for entry in module.COMPILE_CHECKS:
        fn = getattr(module, entry["kernel"]).fn
        params = inspect.signature(fn).parameters
        constexpr = {p for p, v in params.items() if "constexpr" in str(v.annotation)}
        assert set(entry["constexprs"]) == constexpr
        assert set(entry["signature"]) == set(params) - constexpr
