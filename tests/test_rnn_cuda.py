"""The persistent whole-sequence CUDA C++ LSTM/GRU kernels (csrc/cuda/rnn.cuh, bound in rnn.cu,
reached through leedl_fast._ops.rnn_cuda).

Here (CPU): the module imports and lists the four ops; the fallback plumbing (no extension,
float64, weights that do not fit -> leedl_fast.kernels.rnn with the same arguments); and the
kernels themselves under a host emulation (tests/rnn_cuda_emulation.cpp, g++ with the CUDA
headers: every GPU thread an OS thread, the barriers std::barrier, once under ThreadSanitizer).
On a GPU (`make test-gpu`): fp32/fp16/bf16 at hidden 64/256/1024, batch 1/16/64, 1 and 37 steps
against the C++ CPU ops and against torch.nn.LSTM / GRU (error vs float64 at most 2x torch's own,
3x for gradients), the fallback at a hidden size too big for the chip, empty and
non-contiguous inputs.
"""
import contextlib
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from leedl_fast._ops import rnn_cuda

ROOT = Path(__file__).resolve().parents[1]
OPS = ("lstm_sequence_fwd", "lstm_sequence_bwd", "gru_sequence_fwd", "gru_sequence_bwd")


def test_module_imports_and_lists_the_four_ops():
    assert set(rnn_cuda.CUDA_IMPLS) == set(OPS)
    assert all(callable(fn) for fn in rnn_cuda.CUDA_IMPLS.values())


# ------------------------------------------------------------------------ fallback plumbing

def _fake_per_step(monkeypatch):
    """Replace leedl_fast.kernels.rnn by a module that records its calls."""
    calls = []
    fake = types.ModuleType("leedl_fast.kernels.rnn")
    for op in OPS:
        setattr(fake, op, lambda *args, _op=op: calls.append((_op, args)) or "per-step")
    monkeypatch.setitem(sys.modules, "leedl_fast.kernels.rnn", fake)
    package = sys.modules.get("leedl_fast.kernels")
    if package is not None:  # `from leedl_fast.kernels import rnn` reads the attribute first
        monkeypatch.setattr(package, "rnn", fake, raising=False)
    return calls


def _op_args(op, dtype):
    t = lambda *shape: torch.zeros(*shape, dtype=dtype)
    f = lambda *shape: torch.zeros(*shape)
    return {"lstm_sequence_fwd": (t(2, 3, 8), t(8, 2), t(3, 2), t(3, 2)),
            "lstm_sequence_bwd": (t(2, 3, 2), t(3, 2), t(3, 2), f(2, 3, 8), f(2, 3, 2),
                                  t(2, 3, 2), t(3, 2), t(3, 2), t(8, 2)),
            "gru_sequence_fwd": (t(2, 3, 6), t(6, 2), None, t(3, 2)),
            "gru_sequence_bwd": (t(2, 3, 2), t(3, 2), f(2, 3, 8), t(2, 3, 2), t(3, 2),
                                 t(6, 2), False)}[op]


@pytest.mark.parametrize("op", OPS)
def test_without_the_extension_every_op_runs_the_per_step_path(op, monkeypatch):
    calls = _fake_per_step(monkeypatch)
    monkeypatch.setattr(rnn_cuda, "_ext", lambda: None)
    args = _op_args(op, torch.float32)
    assert rnn_cuda.CUDA_IMPLS[op](*args) == "per-step"
    assert len(calls) == 1 and calls[0][0] == op
    assert all(a is b for a, b in zip(calls[0][1], args))  # the same arguments, untouched
    assert not rnn_cuda.fits(op, 2, 3, torch.float32)


@pytest.mark.parametrize("op", OPS)
def test_does_not_fit_and_float64_run_the_per_step_path(op, monkeypatch):
    calls = _fake_per_step(monkeypatch)
    ext_calls = []
    result = []  # what the fake extension returns: [] means "does not fit"
    fake_ext = types.SimpleNamespace(**{
        name: (lambda *args, _name=name: ext_calls.append(_name) or list(result)) for name in OPS})
    monkeypatch.setattr(rnn_cuda, "_ext", lambda: fake_ext)

    assert rnn_cuda.CUDA_IMPLS[op](*_op_args(op, torch.float16)) == "per-step"
    assert ext_calls == [op] and [c[0] for c in calls] == [op]
    result[:] = [torch.ones(1), torch.zeros(1)]  # it ran: its outputs come back as a tuple
    out = rnn_cuda.CUDA_IMPLS[op](*_op_args(op, torch.bfloat16))
    assert isinstance(out, tuple) and out[0] is result[0] and len(calls) == 1
    assert rnn_cuda.CUDA_IMPLS[op](*_op_args(op, torch.float64)) == "per-step"  # no fp64 kernel
    assert ext_calls == [op, op] and len(calls) == 2


def test_the_fallback_validates_its_arguments(monkeypatch):
    """The per-step path is reached through rnn_gpu's checks: bad shapes are a clear error, not
    an out-of-bounds launch."""
    monkeypatch.setattr(rnn_cuda, "_ext", lambda: None)
    with pytest.raises(ValueError, match="gates_x's last dim"):
        rnn_cuda.lstm_sequence_fwd(torch.randn(2, 3, 12), torch.randn(8, 2), torch.randn(3, 2),
                                   torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"b_hh must be \(3H,\)"):
        rnn_cuda.gru_sequence_fwd(torch.randn(2, 3, 6), torch.randn(6, 2), torch.randn(5),
                                  torch.randn(3, 2))


# -------------------------------------------------------------------------- host emulation

def _cuda_include():
    nvcc = shutil.which("nvcc")
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
             nvcc and str(Path(nvcc).resolve().parents[1]), "/usr/local/cuda"]
    for home in filter(None, homes):
        if (Path(home) / "include" / "cuda_runtime.h").is_file():
            return Path(home) / "include"
    return None


def _build_emulation(tmp_path, sanitize):
    cxx, include = shutil.which("g++"), _cuda_include()
    if cxx is None or include is None:
        pytest.skip("needs g++ and the CUDA headers (cuda_runtime.h)")
    exe = tmp_path / "rnn_cuda_emulation"
    cmd = [cxx, "-std=c++20", "-O1", "-g", "-Wall", "-Wno-unknown-pragmas", "-pthread",
           f"-I{include}", f"-I{ROOT / 'csrc' / 'cuda'}", str(ROOT / "tests" /
                                                            "rnn_cuda_emulation.cpp"),
           "-o", str(exe)] + (["-fsanitize=thread"] if sanitize else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode:
        if sanitize and "sanitize" in proc.stderr:
            pytest.skip(f"this g++ cannot build with ThreadSanitizer:\n{proc.stderr[-2000:]}")
        pytest.fail(f"building the emulation failed:\n{' '.join(cmd)}\n{proc.stderr[-6000:]}",
                    pytrace=False)
    return exe


def test_kernels_under_host_emulation(tmp_path):
    """Every kernel, fp32/fp16/bf16, several blocks, partial blocks, batch passes and K chunks,
    against float64; plus the fit plans on H100/A100 (hidden 1024 in 16 bits fits, 2048 not)."""
    exe = _build_emulation(tmp_path, sanitize=False)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def test_kernels_race_free_under_thread_sanitizer(tmp_path):
    """ThreadSanitizer sees every shared/global access between the emulated barriers: a missing
    __syncthreads or grid sync is a reported race. One small case with 3 blocks."""
    exe = _build_emulation(tmp_path, sanitize=True)
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    proc = subprocess.run([str(exe), "2", "5", "7", "3"], capture_output=True, text=True,
                          timeout=600, env=env, check=False)
    if "FATAL: ThreadSanitizer" in proc.stderr:  # e.g. an unsupported memory layout (ASLR)
        pytest.skip(f"ThreadSanitizer cannot run here:\n{proc.stderr[-1000:]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


# ------------------------------------------------------------------------------------- GPU

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HIDDEN = [64, 256, 1024]
BATCH = [1, 16, 64]
STEPS = [1, 37]
# (dtype, tensor cores): fp16/bf16 run on tensor cores by default, on CUDA cores when turned off
PATHS = [(torch.float32, False), (torch.float16, True), (torch.float16, False),
         (torch.bfloat16, True), (torch.bfloat16, False)]
PATH_IDS = ["fp32", "fp16-tensor-cores", "fp16-cuda-cores", "bf16-tensor-cores",
            "bf16-cuda-cores"]
# max |got - want| / max(1, max |want|) against the C++ CPU op on the same inputs. CUDA cores:
# both compute in fp32 (summation order differs), 16-bit outputs are rounded once at the end.
# Tensor cores: the step's h (dG backward) is rounded to the dtype as the product's operand.
CPU_TOL = {(torch.float32, False): 1e-4, (torch.float16, False): 4e-3,
           (torch.bfloat16, False): 3e-2, (torch.float16, True): 1.5e-2,
           (torch.bfloat16, True): 8e-2}


def _ext_or_fail():
    if rnn_cuda._ext() is None:
        pytest.fail("leedl_fast._C_cuda is not built: install on the GPU machine with "
                    "`pip install -e . --no-build-isolation --no-deps` (setup.py builds it where "
                    "torch has CUDA and nvcc exists)", pytrace=False)


@pytest.fixture
def kernel_only(monkeypatch):
    """Fail instead of falling back: for shapes the persistent kernel must run itself."""
    _ext_or_fail()

    def no_fallback(op, *args):
        raise AssertionError(f"{op} fell back to the per-step path")

    monkeypatch.setattr(rnn_cuda, "_fallback", no_fallback)


@contextlib.contextmanager
def tensor_cores(enabled):
    old = rnn_cuda.use_tensor_cores(enabled)
    try:
        yield
    finally:
        rnn_cuda.use_tensor_cores(old)


def rel_err(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape,
                                                                 got.dtype, want.dtype)
    if not want.numel():
        return 0.0
    diff = (got.double().cpu() - want.double().cpu()).abs().max().item()
    return diff / max(1.0, want.double().abs().max().item())


def lstm_inputs(steps, batch, hidden, dtype, device="cuda"):
    # W_hh ~ N(0, 1/H): pre-activations of order 1, so the sequence neither saturates nor dies
    return (torch.randn(steps, batch, 4 * hidden, device=device).to(dtype),
            (torch.randn(4 * hidden, hidden, device=device) / hidden ** 0.5).to(dtype),
            torch.randn(batch, hidden, device=device).to(dtype),
            torch.randn(batch, hidden, device=device).to(dtype))


def gru_inputs(steps, batch, hidden, dtype, bias, device="cuda"):
    return (torch.randn(steps, batch, 3 * hidden, device=device).to(dtype),
            (torch.randn(3 * hidden, hidden, device=device) / hidden ** 0.5).to(dtype),
            torch.randn(3 * hidden, device=device).to(dtype) if bias else None,
            torch.randn(batch, hidden, device=device).to(dtype))


def cpu(args):
    return [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]


def assert_outputs_close(got, want, tol, what):
    assert len(got) == len(want), what
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.is_cuda and g.is_contiguous(), (what, k)
        err = rel_err(g, w)
        assert err <= tol, f"{what} output {k}: relative error {err:.2e} > {tol:.0e}"


def _expect_kernel(monkeypatch, fwd, bwd, hidden, batch, dtype):
    """Where rnn_cuda.fits() says the persistent kernels fit, falling back is a failure."""
    if rnn_cuda.fits(fwd, hidden, batch, dtype) and rnn_cuda.fits(bwd, hidden, batch, dtype):
        monkeypatch.setattr(rnn_cuda, "_fallback", _no_fallback)


@pytest.mark.gpu
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("batch", BATCH)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("dtype, cores", PATHS, ids=PATH_IDS)
def test_lstm_matches_the_cpu_op(dtype, cores, hidden, batch, steps, monkeypatch):
    _ext_or_fail()
    tol = CPU_TOL[dtype, cores]
    with tensor_cores(cores):
        _expect_kernel(monkeypatch, "lstm_sequence_fwd", "lstm_sequence_bwd", hidden, batch,
                       dtype)
        args = lstm_inputs(steps, batch, hidden, dtype)
        got = rnn_cuda.lstm_sequence_fwd(*args)
        want = torch.ops.leedl_fast.lstm_sequence_fwd(*cpu(args))
        assert_outputs_close(got, want, tol, "lstm_sequence_fwd")
        _, w_hh, h0, c0 = args
        grads = (torch.randn_like(got[0]), torch.randn_like(h0), torch.randn_like(c0))
        got_b = rnn_cuda.lstm_sequence_bwd(*grads, got[4], got[3], got[0], h0, c0, w_hh)
        want_b = torch.ops.leedl_fast.lstm_sequence_bwd(*cpu(grads), want[4], want[3],
                                                        want[0], *cpu((h0, c0, w_hh)))
        assert_outputs_close(got_b, want_b, tol, "lstm_sequence_bwd")


@pytest.mark.gpu
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("batch", BATCH)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("dtype, cores", PATHS, ids=PATH_IDS)
def test_gru_matches_the_cpu_op(dtype, cores, hidden, batch, steps, bias, monkeypatch):
    _ext_or_fail()
    tol = CPU_TOL[dtype, cores]
    with tensor_cores(cores):
        _expect_kernel(monkeypatch, "gru_sequence_fwd", "gru_sequence_bwd", hidden, batch,
                       dtype)
        args = gru_inputs(steps, batch, hidden, dtype, bias)
        got = rnn_cuda.gru_sequence_fwd(*args)
        want = torch.ops.leedl_fast.gru_sequence_fwd(*cpu(args))
        assert_outputs_close(got, want, tol, "gru_sequence_fwd")
        _, w_hh, _, h0 = args
        grads = (torch.randn_like(got[0]), torch.randn_like(h0))
        got_b = rnn_cuda.gru_sequence_bwd(*grads, got[2], got[0], h0, w_hh, bias)
        want_b = torch.ops.leedl_fast.gru_sequence_bwd(*cpu(grads), want[2], want[0],
                                                       *cpu((h0, w_hh)), bias)
        assert_outputs_close(got_b, want_b, tol, "gru_sequence_bwd")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_tensor_cores_switch(dtype, kernel_only):
    """On sm_80+ the 16-bit default runs the tensor-core product: its results differ from the
    CUDA-core product's (the operand rounding) but stay close; turning it off is honoured."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("tensor-core kernels need sm_80+")
    args = lstm_inputs(9, 16, 256, dtype)
    with tensor_cores(True):
        on = rnn_cuda.lstm_sequence_fwd(*args)
    with tensor_cores(False):
        off = rnn_cuda.lstm_sequence_fwd(*args)
    assert not torch.equal(on[3], off[3])  # cells, fp32
    for a, b in zip(on, off):
        assert rel_err(a, b) <= CPU_TOL[dtype, True]


def _no_fallback(op, *args):
    raise AssertionError(f"{op} fell back to the per-step path although rnn_cuda.fits() said "
                         "the persistent kernel fits")


# -------------------------------------------------------------- against torch.nn.LSTM / GRU

INPUT_SIZE = 48


def _layer(kind, module, x, h0, c0, grads):
    """One layer through rnn_cuda's ops, as leedl_fast's modules run it: the input projection
    by torch, the recurrence by the op. Returns outputs, then the gradients of
    sum(y * dy) + sum(h_n * dh_n) [+ sum(c_n * dc_n)] w.r.t. x, w_hh, b_ih, b_hh, h0 [, c0]."""
    w_ih, w_hh, b_ih, b_hh = (module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0,
                              module.bias_hh_l0)
    with torch.no_grad():
        if kind == "lstm":
            gates_x = F.linear(x, w_ih, b_ih + b_hh)
            y, h_n, c_n, cells, gates = rnn_cuda.lstm_sequence_fwd(gates_x, w_hh, h0, c0)
            dgx, dw_hh, dh0, dc0 = rnn_cuda.lstm_sequence_bwd(*grads, gates, cells, y, h0, c0,
                                                              w_hh)
            db = dgx.sum((0, 1))
            return [y, h_n, c_n, dgx @ w_ih, dw_hh, db, db, dh0, dc0]
        gates_x = F.linear(x, w_ih, b_ih)
        y, h_n, saved = rnn_cuda.gru_sequence_fwd(gates_x, w_hh, b_hh, h0)
        dgx, dw_hh, db_hh, dh0 = rnn_cuda.gru_sequence_bwd(*grads, saved, y, h0, w_hh, True)
        return [y, h_n, dgx @ w_ih, dw_hh, dgx.sum((0, 1)), db_hh, dh0]


def _torch_layer(kind, module, x, h0, c0, grads):
    x, h0 = x.detach().requires_grad_(), h0.detach().requires_grad_()
    params = [module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0]
    if kind == "lstm":
        c0 = c0.detach().requires_grad_()
        y, (h_n, c_n) = module(x, (h0[None], c0[None]))
        outs, leaves = [y, h_n[0], c_n[0]], [x, *params, h0, c0]
    else:
        y, h_n = module(x, h0[None])
        outs, leaves = [y, h_n[0]], [x, *params, h0]
    return [o.detach() for o in outs] + list(torch.autograd.grad(outs, leaves, grads))


@pytest.mark.gpu
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("batch", BATCH)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_within_twice_torchs_error(kind, dtype, hidden, batch, steps):
    """Outputs within 2x (gradients 3x) of torch.nn.LSTM/GRU's own error vs float64 in that
    dtype, plus a floor: fp32 (torch's error can be ~0) and one ulp of the largest value."""
    _ext_or_fail()
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    ref = cls(INPUT_SIZE, hidden, device="cuda", dtype=torch.float64)
    module = cls(INPUT_SIZE, hidden, device="cuda", dtype=dtype)
    module.load_state_dict(ref.state_dict())
    x = torch.randn(steps, batch, INPUT_SIZE, device="cuda", dtype=torch.float64)
    h0, c0, dh_n, dc_n = (torch.randn(batch, hidden, device="cuda", dtype=torch.float64)
                          for _ in range(4))
    dy = torch.randn(steps, batch, hidden, device="cuda", dtype=torch.float64)
    grads = (dy, dh_n, dc_n) if kind == "lstm" else (dy, dh_n)
    low = lambda ts: [t.to(dtype) for t in ts]
    want = _torch_layer(kind, ref, x, h0, c0, grads)
    theirs = _torch_layer(kind, module, *low((x, h0, c0)), low(grads))
    ours = _layer(kind, module, *low((x, h0, c0)), low(grads))
    n_out = 3 if kind == "lstm" else 2
    for k, (o, t, w) in enumerate(zip(ours, theirs, want)):
        assert o.dtype == dtype and o.shape == w.shape, k
        scale = 1 + w.abs().max().item()
        floor = (1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps) * scale
        factor = 2 if k < n_out else 3
        err_o = (o.double() - w).abs().max().item()
        err_t = (t.double() - w).abs().max().item()
        assert err_o <= factor * err_t + floor, (k, err_o, err_t, floor)


# ------------------------------------------------------------------- fit, fallback, edges

TOO_BIG = 4096  # hidden size whose W_hh slice never fits one block's shared memory

@pytest.mark.gpu
def test_the_issues_range_fits_on_chip():
    """hidden <= 1024 in fp16/bf16 keeps W_hh in shared memory on A100/H100-class GPUs (>= 100
    SMs, >= 160 KiB per block); hidden 4096 fits nowhere (2048 does not fit on H100 either:
    tests/rnn_cuda_emulation.cpp checks the H100 and A100 plans)."""
    _ext_or_fail()
    props = torch.cuda.get_device_properties(0)
    for op in OPS:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            assert not rnn_cuda.fits(op, TOO_BIG, 16, dtype), (op, dtype)
        if props.multi_processor_count >= 100 and props.major >= 8:
            for dtype in (torch.float16, torch.bfloat16):
                for hidden in HIDDEN:
                    assert rnn_cuda.fits(op, hidden, 64, dtype), (op, dtype, hidden)
    assert not rnn_cuda.fits("lstm_sequence_fwd", 64, 16, torch.float64)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_too_big_for_the_chip_falls_back_to_the_per_step_path(dtype, monkeypatch):
    _ext_or_fail()
    pytest.importorskip("leedl_fast.kernels.rnn", reason="the per-step path needs triton")
    hidden, batch, steps = TOO_BIG, 2, 3
    tol = CPU_TOL[dtype, dtype != torch.float32]  # the per-step path's products run in dtype
    calls = []
    fallback = rnn_cuda._fallback
    monkeypatch.setattr(rnn_cuda, "_fallback",
                        lambda op, *args: calls.append(op) or fallback(op, *args))
    args = lstm_inputs(steps, batch, hidden, dtype)
    got = rnn_cuda.lstm_sequence_fwd(*args)
    want = torch.ops.leedl_fast.lstm_sequence_fwd(*cpu(args))
    assert_outputs_close(got, want, tol, "lstm_sequence_fwd (fallback)")
    _, w_hh, h0, c0 = args
    grads = (torch.randn_like(got[0]), torch.randn_like(h0), torch.randn_like(c0))
    got_b = rnn_cuda.lstm_sequence_bwd(*grads, got[4], got[3], got[0], h0, c0, w_hh)
    want_b = torch.ops.leedl_fast.lstm_sequence_bwd(*cpu(grads), want[4], want[3], want[0],
                                                    *cpu((h0, c0, w_hh)))
    assert_outputs_close(got_b, want_b, tol, "lstm_sequence_bwd (fallback)")
    gargs = gru_inputs(steps, batch, hidden, dtype, True)
    got = rnn_cuda.gru_sequence_fwd(*gargs)
    assert_outputs_close(got, torch.ops.leedl_fast.gru_sequence_fwd(*cpu(gargs)), tol,
                         "gru_sequence_fwd (fallback)")
    assert calls == ["lstm_sequence_fwd", "lstm_sequence_bwd", "gru_sequence_fwd"]


@pytest.mark.gpu
@pytest.mark.parametrize("steps, batch", [(0, 3), (3, 0), (0, 0)])
def test_empty_sequences_match_the_cpu_op(steps, batch, kernel_only):
    hidden = 5
    args = lstm_inputs(steps, batch, hidden, torch.float32)
    got = rnn_cuda.lstm_sequence_fwd(*args)
    want = torch.ops.leedl_fast.lstm_sequence_fwd(*cpu(args))
    assert_outputs_close(got, want, 0, "lstm_sequence_fwd")
    _, w_hh, h0, c0 = args
    grads = (torch.randn_like(got[0]), torch.randn_like(h0), torch.randn_like(c0))
    got_b = rnn_cuda.lstm_sequence_bwd(*grads, got[4], got[3], got[0], h0, c0, w_hh)
    want_b = torch.ops.leedl_fast.lstm_sequence_bwd(*cpu(grads), want[4], want[3], want[0],
                                                    *cpu((h0, c0, w_hh)))
    assert_outputs_close(got_b, want_b, 0, "lstm_sequence_bwd")
    for bias in (True, False):
        gargs = gru_inputs(steps, batch, hidden, torch.float32, bias)
        got = rnn_cuda.gru_sequence_fwd(*gargs)
        want = torch.ops.leedl_fast.gru_sequence_fwd(*cpu(gargs))
        assert_outputs_close(got, want, 0, "gru_sequence_fwd")
        _, w_hh, _, h0 = gargs
        grads = (torch.randn_like(got[0]), torch.randn_like(h0))
        got_b = rnn_cuda.gru_sequence_bwd(*grads, got[2], got[0], h0, w_hh, bias)
        want_b = torch.ops.leedl_fast.gru_sequence_bwd(*cpu(grads), want[2], want[0],
                                                       *cpu((h0, w_hh)), bias)
        assert_outputs_close(got_b, want_b, 0, "gru_sequence_bwd")


@pytest.mark.gpu
def test_non_contiguous_inputs(kernel_only):
    """Transposed (batch-first) gates_x and a transposed w_hh give the contiguous results."""
    steps, batch, hidden = 5, 3, 97
    gx, w_hh, h0, c0 = lstm_inputs(steps, batch, hidden, torch.float32)
    gx_t = gx.transpose(0, 1).contiguous().transpose(0, 1)
    w_t = w_hh.t().contiguous().t()
    assert not gx_t.is_contiguous() and not w_t.is_contiguous()
    want = rnn_cuda.lstm_sequence_fwd(gx, w_hh, h0, c0)
    got = rnn_cuda.lstm_sequence_fwd(gx_t, w_t, h0, c0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=0, rtol=0)


@pytest.mark.gpu
def test_inputs_are_left_untouched(kernel_only):
    steps, batch, hidden = 4, 2, 33
    args = lstm_inputs(steps, batch, hidden, torch.float16)
    y, h_n, c_n, cells, gates = rnn_cuda.lstm_sequence_fwd(*args)
    grads = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n))
    bwd_args = (*grads, gates, cells, y, args[2], args[3], args[1])
    copies = [a.clone() for a in (*args, *bwd_args)]
    rnn_cuda.lstm_sequence_bwd(*bwd_args)
    rnn_cuda.lstm_sequence_fwd(*args)
    for a, c in zip((*args, *bwd_args), copies):
        assert torch.equal(a, c)


@pytest.mark.gpu
def test_long_sequence_and_large_batch(kernel_only):
    """Many grid barriers (T = 300) and many batch passes per step (B = 200), fp32."""
    steps, batch, hidden = 300, 200, 128
    args = lstm_inputs(steps, batch, hidden, torch.float32)
    got = rnn_cuda.lstm_sequence_fwd(*args)
    want = torch.ops.leedl_fast.lstm_sequence_fwd(*cpu(args))
    assert_outputs_close(got, want, 1e-4, "lstm_sequence_fwd")
    gargs = gru_inputs(steps, batch, hidden, torch.float32, True)
    got = rnn_cuda.gru_sequence_fwd(*gargs)
    want = torch.ops.leedl_fast.gru_sequence_fwd(*cpu(gargs))
    assert_outputs_close(got, want, 1e-4, "gru_sequence_fwd")
