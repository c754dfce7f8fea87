"""The conv lab (docs/labs/conv.md): every stage file passes `leedl-fast check` (quick cases),
and what the quick cases do not reach is tested directly: the Triton stage in bf16 (the check
skips bf16 under the interpreter; the stage upcasts its tiles there, so it must be right), a
batch and channel count spanning several program tiles, and its compile-check declarations."""
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# `device` is the fixture from labs_common, taken as an argument: F811 does not apply
# ruff: noqa: F811
from .labs_common import (
    assert_every_stage_listed,
    assert_stage_passes,
    device,  # noqa: F401
    load_stage,
)

LAB = Path(__file__).resolve().parents[1] / "docs" / "labs" / "conv"

STAGES = [
    ("stage0_taps.py", "conv2d", "python"),
    ("stage1_im2col.py", "conv2d", "python"),
    ("stage2_implicit_gemm.py", "conv2d", "triton"),
]


def test_every_stage_file_is_listed():
    assert_every_stage_listed(LAB, STAGES)


@pytest.mark.parametrize("name, op, backend", STAGES)
def test_stage_passes_the_check(name, op, backend):
    assert_stage_passes(LAB / name, op, backend)


def _load(name):
    return load_stage(LAB / name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_stage2_several_tiles_and_bf16(device, dtype):
    """B*P*Q = 2*9*8 = 144 pixels (3 tiles of 64) x K = 70 channels (2 tiles of 64), C*R*S =
    13*9 = 117 (4 K-steps of 32, the last partial), stride 2, channels_last x."""
    stage2 = _load("stage2_implicit_gemm.py")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 13, 17, 15, generator=g)
    w = torch.randn(70, 13, 3, 3, generator=g) / 10
    b = torch.randn(70, generator=g)
    xd = x.to(device, dtype).contiguous(memory_format=torch.channels_last)
    y = stage2.conv2d(xd, w.to(device, dtype), b.to(device, dtype), 2, 1).cpu()
    want = F.conv2d(x.to(dtype).double(), w.to(dtype).double(), b.to(dtype).double(), 2, 1)
    assert y.dtype == dtype and y.shape == want.shape == (2, 70, 9, 8)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
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
