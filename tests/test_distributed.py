"""leedl_fast inside PyTorch's own distributed engine, on CPU: 2 processes, gloo, loopback only,
every run bounded in time (tests/distributed_worker.py holds the scenarios).

* DDP, compiled DDP and FSDP2 (`fully_shard`, parameters as DTensor shards) training of a tiny
  GPT built from leedl_fast modules with leedl_fast.optim.AdamW match single-process training
  with the same global batch, step by step (and SGD with Nesterov momentum under FSDP2);
* every leedl_fast.nn module (Conv2d, DepthwiseSeparableConv2d, LayerNorm, RMSNorm, LSTM, GRU,
  MultiheadAttention, LSTMCell, GRUCell) trains under DDP and under FSDP2 and matches too;
* torch.distributed.checkpoint saves the sharded model and optimizer state (the Adam moments
  are DTensors), and a fresh model loading it continues the same trajectory;
* a rank given bad input raises its own clear error, and the other rank does not hang: it
  sees the peer's process exit, or, if the peer stays alive, the collective's timeout.

Tolerances: the losses agree to 1e-5 relative (only the gradient reduction order differs). The
parameters after 4 AdamW steps at lr 1e-3 agree to 2e-4 absolute: Adam divides by sqrt(v), so an
element whose gradient is near zero moves by up to lr on rounding noise alone.
"""
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 300  # seconds per scenario (the compiled one compiles on each rank)
LOSS_RTOL, PARAM_ATOL = 1e-5, 2e-4

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or
                                not torch.distributed.is_gloo_available(),
                                reason="torch built without distributed / gloo")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(scenario, world, tmp):
    """(returncode, result dict or None, {rank: error text}, seconds)."""
    out = tmp / f"{scenario}_{world}.pt"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tests.distributed_worker", scenario,
                           str(world), str(out), str(_free_port())], cwd=ROOT,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    seconds = time.perf_counter() - start
    errors = {r: Path(f"{out}.rank{r}.err").read_text()
              for r in range(world) if Path(f"{out}.rank{r}.err").exists()}
    result = torch.load(out) if out.exists() else None
    if proc.returncode == 0:
        assert result is not None and not errors, proc.stderr[-3000:]
    return proc.returncode, result, errors, seconds, proc.stderr


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def single(tmp):
    """The single-process runs every multi-process run is compared with."""
    cache = {}

    def get(scenario):
        if scenario not in cache:
            code, result, errors, _, stderr = run(scenario, 1, tmp)
            assert code == 0, f"{errors}\n{stderr[-3000:]}"
            cache[scenario] = result
        return cache[scenario]
    return get


def _assert_same_training(got, want):
    assert len(got["losses"]) == len(want["losses"])
    for step, (a, b) in enumerate(zip(got["losses"], want["losses"])):
        assert abs(a - b) <= LOSS_RTOL * abs(b), f"step {step}: loss {a} vs single process {b}"
    assert got["params"].keys() == want["params"].keys()
    for name, p in got["params"].items():
        torch.testing.assert_close(p, want["params"][name], atol=PARAM_ATOL, rtol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("scenario, reference", [
    ("ddp", "ddp"), ("fsdp", "ddp"), ("ddp_compile", "ddp"), ("fsdp_sgd", "ddp_sgd"),
    ("modules_ddp", "modules_ddp"), ("modules_fsdp", "modules_ddp")])
def test_two_processes_match_one(scenario, reference, tmp, single):
    code, result, errors, _, stderr = run(scenario, 2, tmp)
    assert code == 0, f"{errors}\n{stderr[-3000:]}"
    _assert_same_training(result, single(reference))


def test_dcp_checkpoint_resumes_the_same_trajectory(tmp):
    code, result, errors, _, stderr = run("dcp", 2, tmp)
    assert code == 0, f"{errors}\n{stderr[-3000:]}"
    assert result["state_types"] == ["DTensor"]  # the moments are saved sharded
    for a, b in zip(result["resumed"], result["straight"]):
        assert abs(a - b) <= 1e-6 * abs(b), (result["resumed"], result["straight"])
    for name, p in result["params_resumed"].items():
        torch.testing.assert_close(p, result["params"][name], atol=1e-6, rtol=0)


def test_bad_input_on_one_rank_raises_there_and_does_not_hang(tmp):
    code, _, errors, seconds, _ = run("bad_input", 2, tmp)
    assert code != 0
    assert "ValueError: GPT: positions up to 1000 exceed the context of 64" in errors[1]
    assert 0 in errors  # rank 0 was released (the peer's process closed the connection)
    assert seconds < 120


def test_a_live_silent_rank_is_ended_by_the_collective_timeout(tmp):
    code, _, errors, seconds, _ = run("bad_input_alive", 2, tmp)
    assert code != 0
    assert errors[1].startswith("ValueError: GPT: positions up to 1000")
    assert "Timed out" in errors[0] or "timeout" in errors[0].lower(), errors[0]
    assert seconds < 120
