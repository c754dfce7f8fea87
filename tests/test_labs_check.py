"""`leedl-fast check` itself: it passes a correct kernel and leedl_fast's own, and fails planted
bugs with a clear report -- a wrong result, an unwritten output element, a wrong stride, a crash,
a hang, an exception -- without dying itself."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leedl_fast.labs import all_specs, check

BUGS = str(Path(__file__).with_name("lab_planted_bugs.py"))


def _check(func, **kw):
    lines = []
    kw.setdefault("timeout", 20)
    status = check(BUGS, "layer_norm", func=func, quick=True, bench=False, out=lines.append, **kw)
    return status, "\n".join(lines)


def test_a_correct_kernel_passes():
    status, report = _check("correct")
    assert status == 0, report
    assert "RESULT: PASS" in report and "FAIL" not in report


@pytest.mark.parametrize("func, needle", [
    ("wrong_result", "of tolerance"),
    ("unwritten_element", "never written"),
    ("wrong_stride", "strided x"),
    ("raises", "RuntimeError: not implemented yet"),
])
def test_planted_bugs_fail_with_a_clear_report(func, needle):
    status, report = _check(func)
    assert status == 1, report
    assert "RESULT: FAIL" in report and needle in report, report


def test_wrong_stride_fails_only_the_strided_case():
    _, report = _check("wrong_stride")
    failing = [line for line in report.splitlines() if line.startswith("  FAIL")]
    assert failing and all("strided" in line for line in failing), report


def test_a_crash_is_reported_and_the_checker_goes_on():
    status, report = _check("crash")
    assert status == 1
    assert "CRASH" in report and "SIGSEGV" in report, report
    assert "PASS    4x7 fp32" in report  # the narrow cases before and after still ran


def test_a_hang_is_killed_and_reported():
    status, report = _check("hang", timeout=3)
    assert status == 1
    assert "TIMEOUT" in report and "no result in 3 s" in report, report


def test_missing_function_and_unknown_op_cannot_start():
    lines = []
    assert check(BUGS, "layer_norm", func="nope", quick=True, out=lines.append) == 2
    assert "has no function 'nope'" in "\n".join(lines)
    assert check(BUGS, "no_such_op", quick=True, out=lines.append) == 2
    assert check("/no/such/file.py", "layer_norm", quick=True, out=lines.append) == 2


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# (backend, device): Triton on the CPU only under the interpreter (tests/conftest.py turns it on
# for `make test`; `make test-gpu` turns it off and checks Triton and CUDA on the GPU instead)
BACKENDS = [("cpu", "cpu"), ("reference", "cpu")] + \
    ([("triton", "cpu")] if INTERPRETED else []) + \
    ([("triton", "cuda"), ("cuda", "cuda")] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("op", sorted(all_specs()))
def test_leedl_fast_own_kernel_passes(op, backend, device):
    """Each of leedl_fast's own kernels for the op (Triton under the interpreter on the CPU)."""
    lines = []
    status = check("leedl_fast", op, backend=backend, device=device, quick=True, bench=False,
                   out=lines.append, timeout=120)
    assert status == 0, "\n".join(lines)


def test_triton_on_the_cpu_needs_the_interpreter_from_the_environment(monkeypatch):
    """The package never sets TRITON_INTERPRET (triton reads it once, at import): the check
    refuses to start and says what to export."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    lines = []
    assert check(BUGS, "layer_norm", func="correct", backend="triton", quick=True,
                 out=lines.append) == 2
    assert "export TRITON_INTERPRET=1" in "\n".join(lines)


def test_cli_with_timings_exits_zero_and_prints_the_table():
    env = {**os.environ, "LEEDL_FAST_LAB_QUICK": "1"}
    r = subprocess.run([sys.executable, "-m", "leedl_fast.cli", "check", BUGS, "--op",
                        "layer_norm", "--func", "correct"], capture_output=True, text=True, check=False,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for word in ("reference", "torch", "leedl_fast", "yours", "bound", "% roofline"):
        assert word in r.stdout
