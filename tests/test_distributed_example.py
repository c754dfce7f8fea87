"""examples/train_gpt_distributed.py end to end, as a user runs it: a plain `python` process, and
`torchrun --nproc-per-node 2` (torch.distributed.run; gloo on loopback, every launch bounded by a
subprocess timeout). The tiny GPT trains a few steps on the char corpus with the same global
batch; the 2-process loss curve must equal the 1-process one to 1e-5 relative (only the
gradient reduction order differs), for DDP and for FSDP2, and a run stopped, checkpointed with
DCP by 2 FSDP2 processes and resumed by 1 DDP process continues the same curve.

About 40 s on the 2-core build machine (--threads 1 per process).
"""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_gpt_distributed.py"
TIMEOUT_S = 180  # per launch; a launch takes ~4-8 s here
STEPS, RTOL = 8, 1e-5
COMMON = ["--size", "tiny", "--steps", str(STEPS), "--global-batch", "8", "--length", "32",
          "--threads", "1", "--backend", "gloo", "--timeout", "120", "--quiet"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or
                                not torch.distributed.is_gloo_available(),
                                reason="torch built without distributed / gloo")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc, *args):
    """Run the example (nproc 1: plain python; else torchrun) and return its RESULT dict."""
    if nproc == 1:
        cmd = [sys.executable, str(EXAMPLE)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(EXAMPLE)]
    proc = subprocess.run(cmd + COMMON + list(args), cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 1, proc.stdout[-2000:]  # rank 0 alone prints it
    return json.loads(results[0][len("RESULT "):])


def assert_same_curve(got, want):
    assert len(got) == len(want), (got, want)
    for step, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= RTOL * abs(b), f"step {step}: loss {a} vs 1 process {b}"


@pytest.fixture(scope="module")
def one_process():
    result = launch(1, "--strategy", "ddp")
    assert result["world_size"] == 1 and result["start_step"] == 0
    assert len(result["losses"]) == STEPS and result["losses"][-1] < result["losses"][0]
    return result


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_follow_the_one_process_loss_curve(strategy, one_process):
    result = launch(2, "--strategy", strategy)
    assert (result["world_size"], result["strategy"], result["backend"]) == (2, strategy, "gloo")
    assert result["tokens_per_s"] > 0 and len(result["step_ms"]) == STEPS
    assert_same_curve(result["losses"], one_process["losses"])


def test_fsdp_in_one_process_is_the_same_training(one_process):
    assert_same_curve(launch(1, "--strategy", "fsdp")["losses"], one_process["losses"])


def test_checkpoint_from_two_fsdp_ranks_resumes_in_one_ddp_process(one_process, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    first = launch(2, "--strategy", "fsdp", "--checkpoint", ckpt, "--stop-at", "5")
    assert_same_curve(first["losses"], one_process["losses"][:5])
    rest = launch(1, "--strategy", "ddp", "--checkpoint", ckpt, "--resume")
    assert rest["start_step"] == 5
    assert_same_curve(rest["losses"], one_process["losses"][5:])
