"""What every lab's tests share (tests/test_labs_<family>.py): the stage files' folder, the
check of one stage, loading a stage as a module, and the device its Triton kernels run on."""
import importlib.util
from pathlib import Path

import pytest

from leedl_fast.labs import check

from .conftest import HAS_CUDA, INTERPRETED

LABS = Path(__file__).resolve().parents[1] / "docs" / "labs"


def assert_every_stage_listed(lab: Path, stages) -> None:
    """The test's STAGES name every .py file of the lab's folder (a new stage gets checked)."""
    assert sorted(p.name for p in lab.glob("*.py")) == sorted({s[0] for s in stages})


def assert_stage_passes(path: Path, op: str, backend: str) -> None:
    """`leedl-fast check` of one stage file (quick cases, no timings) passes: a Triton stage on
    the CPU under the interpreter, else on the GPU."""
    device = "cpu"
    if backend == "triton" and not INTERPRETED:
        if not HAS_CUDA:
            pytest.skip("Triton needs TRITON_INTERPRET=1 or a CUDA device")
        device = "cuda"
    lines = []
    status = check(str(path), op, backend=backend, device=device, quick=True, bench=False,
                   out=lines.append, timeout=120)
    assert status == 0, "\n".join(lines)


def load_stage(path: Path):
    """A stage file as a module (its kernels and helpers, for the direct tests)."""
    spec = importlib.util.spec_from_file_location(
        f"lab_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def device():
    """Where the stages' Triton kernels run: the CPU under the interpreter, else the GPU."""
    if INTERPRETED:
        return "cpu"
    if not HAS_CUDA:
        pytest.skip("Triton needs TRITON_INTERPRET=1 or a CUDA device")
    return "cuda"
