"""The recurrent family's GPU per-step path (kernels/rnn.py, registered by leedl_fast/_ops/rnn_gpu.py).

Here (CPU): the Triton launchers under the interpreter on CPU tensors (forced with
`leedl_fast.backend("triton")`), fp32 (and fp64 for gradcheck; bf16 is unreliable in the
interpreter), against the C++ CPU ops and against torch.nn.LSTM / GRU in float64, at tiny odd sizes.
On a GPU (`make test-gpu`): fp16/bf16/fp32 against torch.nn.LSTM / GRU with the rule "error vs
float64 at most 2x torch's own error in that dtype" (3x for gradients), and opcheck.
"""
import re
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import leedl_fast
from leedl_fast._ops import rnn_gpu
from leedl_fast._ops._registry import _GPU_IMPLS, call

from .conftest import INTERPRETED, gpu_backends

kernels = pytest.importorskip("leedl_fast.kernels.rnn", reason="triton is not installed")

interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs CPU tensors through the Triton "
                                 "interpreter (TRITON_INTERPRET=1)")

OPS = ("lstm_sequence_fwd", "lstm_sequence_bwd", "gru_sequence_fwd", "gru_sequence_bwd")
SIZES = [(t, b, h) for t in (1, 3) for b in (1, 3) for h in (1, 7, 33)]  # (T, B, H)
TOL = {"atol": 2e-5, "rtol": 2e-5}


def triton(op, *args):
    with leedl_fast.backend("triton"):
        return call(op, *args)


def dispatch(op, *args):
    """Through the dispatcher: the C++ kernel for CPU tensors, the registered GPU one for CUDA."""
    return getattr(torch.ops.leedl_fast, op)(*args)


def assert_all_close(got, want, **tol):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, (k, g.shape, w.shape, g.dtype, w.dtype)
        assert g.is_contiguous(), k
        torch.testing.assert_close(g, w, **(tol or TOL), msg=lambda m, k=k: f"output {k}: {m}")


def lstm_args(steps, batch, hidden, dtype=torch.float32, device="cpu"):
    return (torch.randn(steps, batch, 4 * hidden, dtype=dtype, device=device),
            torch.randn(4 * hidden, hidden, dtype=dtype, device=device) * 0.5,
            torch.randn(batch, hidden, dtype=dtype, device=device),
            torch.randn(batch, hidden, dtype=dtype, device=device))


def gru_args(steps, batch, hidden, bias, dtype=torch.float32, device="cpu"):
    return (torch.randn(steps, batch, 3 * hidden, dtype=dtype, device=device),
            torch.randn(3 * hidden, hidden, dtype=dtype, device=device) * 0.5,
            torch.randn(3 * hidden, dtype=dtype, device=device) if bias else None,
            torch.randn(batch, hidden, dtype=dtype, device=device))


def check_lstm_ops(steps, batch, hidden):
    args = lstm_args(steps, batch, hidden)
    want = dispatch("lstm_sequence_fwd", *args)
    got = triton("lstm_sequence_fwd", *args)
    assert_all_close(got, want)
    _, w_hh, h0, c0 = args
    grads = (torch.randn(steps, batch, hidden), torch.randn(batch, hidden),
             torch.randn(batch, hidden))
    saved = lambda out: (out[4], out[3], out[0], h0, c0, w_hh)
    assert_all_close(triton("lstm_sequence_bwd", *grads, *saved(got)),
                     dispatch("lstm_sequence_bwd", *grads, *saved(want)))


def check_gru_ops(steps, batch, hidden, bias):
    args = gru_args(steps, batch, hidden, bias)
    want = dispatch("gru_sequence_fwd", *args)
    got = triton("gru_sequence_fwd", *args)
    assert_all_close(got, want)
    _, w_hh, _, h0 = args
    grads = (torch.randn(steps, batch, hidden), torch.randn(batch, hidden))
    assert_all_close(triton("gru_sequence_bwd", *grads, got[2], got[0], h0, w_hh, bias),
                     dispatch("gru_sequence_bwd", *grads, want[2], want[0], h0, w_hh, bias))


# ------------------------------------------------------------------- the raw ops vs the C++ ops

@interpreted
@pytest.mark.parametrize("steps, batch, hidden", SIZES)
def test_lstm_ops_match_cpu(steps, batch, hidden):
    check_lstm_ops(steps, batch, hidden)


@interpreted
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("steps, batch, hidden", SIZES)
def test_gru_ops_match_cpu(steps, batch, hidden, bias):
    check_gru_ops(steps, batch, hidden, bias)


@interpreted
def test_several_blocks_per_row(monkeypatch):
    """H = 33 over blocks of 16 units: three programs per batch row, the last one masked."""
    monkeypatch.setattr(kernels, "MAX_BLOCK_H", 16)
    assert kernels.step_config(33)[0] == 16
    check_lstm_ops(3, 2, 33)
    check_gru_ops(3, 2, 33, True)


@interpreted
@pytest.mark.parametrize("steps, batch, hidden", [(0, 3, 5), (3, 0, 5), (0, 0, 5), (2, 3, 0)])
def test_empty_sizes_match_cpu(steps, batch, hidden):
    check_lstm_ops(steps, batch, hidden)
    check_gru_ops(steps, batch, hidden, True)
    check_gru_ops(steps, batch, hidden, False)


@interpreted
def test_inputs_untouched_and_non_contiguous_inputs():
    steps, batch, hidden = 3, 3, 7
    gx = torch.randn(batch, steps, 4 * hidden).transpose(0, 1)  # (T, B, 4H), not contiguous
    w = torch.randn(hidden, 4 * hidden).t() * 0.5                # (4H, H), transposed
    h0, c0 = torch.randn(hidden, batch).t(), torch.randn(batch, hidden)
    args = (gx, w, h0, c0)
    copies = [a.clone() for a in args]
    want = dispatch("lstm_sequence_fwd", *[a.contiguous() for a in args])
    got = triton("lstm_sequence_fwd", *args)
    assert_all_close(got, want)
    grads = (torch.randn(steps, batch, hidden), torch.randn(hidden, batch).t(),
             torch.randn(batch, hidden))
    gcopies = [g.clone() for g in grads]
    assert_all_close(triton("lstm_sequence_bwd", *grads, got[4], got[3], got[0], h0, c0, w),
                     dispatch("lstm_sequence_bwd", *grads, want[4], want[3], want[0], h0, c0, w))
    gx3 = torch.randn(batch, steps, 3 * hidden).transpose(0, 1)
    w3, b3 = torch.randn(hidden, 3 * hidden).t() * 0.5, torch.randn(6 * hidden)[::2]
    gargs = (gx3, w3, b3, h0)
    gcopy = [a.clone() for a in gargs]
    gwant = dispatch("gru_sequence_fwd", *[a.contiguous() for a in gargs])
    ggot = triton("gru_sequence_fwd", *gargs)
    assert_all_close(ggot, gwant)
    assert_all_close(triton("gru_sequence_bwd", *grads[:2], ggot[2], ggot[0], h0, w3, True),
                     dispatch("gru_sequence_bwd", *grads[:2], gwant[2], gwant[0], h0, w3, True))
    for a, c in zip(args + grads + gargs, copies + gcopies + gcopy):
        assert torch.equal(a, c)
    # Outputs never alias each other or the inputs (h_n is a copy of y[-1]).
    assert got[1].data_ptr() != got[0][-1].data_ptr()
    assert ggot[1].data_ptr() != ggot[0][-1].data_ptr()


# --------------------------------------------------------- whole layers vs torch.nn, float64

def loss_of(y, h_n, c_n=None):
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    weights = torch.linspace(-1, 1, y.shape[-1], dtype=acc, device=y.device)
    loss = (y.to(acc) * weights).sum() + 2 * h_n.to(acc).sum()
    return loss if c_n is None else loss - 3 * c_n.to(acc).sum()


def ours_lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """One layer through the op (autograd included), the input projection as torch does it."""
    gates_x = F.linear(x, w_ih, b_ih + b_hh)
    y, h_n, c_n, _, _ = call("lstm_sequence_fwd", gates_x, w_hh, h0, c0)
    return y, h_n, c_n


def ours_gru(x, h0, w_ih, w_hh, b_ih, b_hh):
    gates_x = F.linear(x, w_ih, b_ih)
    y, h_n, _ = call("gru_sequence_fwd", gates_x, w_hh, b_hh, h0)
    return y, h_n


def run_layer(kind, module, x, h0, c0, backend=None):
    """Outputs, then the grads of x, h0, (c0,) and every parameter, of loss_of(outputs): through
    `module` (a torch.nn.LSTM / GRU) when backend is None, else through our op with its weights,
    forward and backward inside `leedl_fast.backend(backend)`."""
    inputs = (x, h0) if c0 is None else (x, h0, c0)
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    params = list(module.parameters())
    if backend is None:
        hx = leaves[1][None] if kind == "gru" else (leaves[1][None], leaves[2][None])
        y, h = module(leaves[0], hx)
        outs = (y, h[0]) if kind == "gru" else (y, h[0][0], h[1][0])
        return list(outs) + list(torch.autograd.grad(loss_of(*outs), leaves + params))
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    weights = [getattr(module, n, None) for n in names]
    with leedl_fast.backend(backend):
        outs = (ours_lstm if kind == "lstm" else ours_gru)(*leaves, *weights)
        return list(outs) + list(torch.autograd.grad(loss_of(*outs), leaves + params))


def make_modules(kind, input_size, hidden, bias, dtype, device="cpu"):
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    module = cls(input_size, hidden, bias=bias, dtype=dtype, device=device)
    ref = cls(input_size, hidden, bias=bias, dtype=torch.float64, device=device)
    ref.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    return module, ref


def layer_inputs(kind, steps, batch, input_size, hidden, dtype, device="cpu"):
    x = torch.randn(steps, batch, input_size, dtype=dtype, device=device)
    h0 = torch.randn(batch, hidden, dtype=dtype, device=device)
    c0 = torch.randn(batch, hidden, dtype=dtype, device=device) if kind == "lstm" else None
    return x, h0, c0


@interpreted
@pytest.mark.parametrize("kind, bias", [("lstm", True), ("gru", True), ("gru", False)])
@pytest.mark.parametrize("steps, batch, hidden", [(1, 1, 1), (3, 3, 7), (3, 1, 33)])
def test_layer_matches_torch_in_float64(kind, bias, steps, batch, hidden, monkeypatch):
    module, ref = make_modules(kind, 5, hidden, bias, torch.float32)
    x, h0, c0 = layer_inputs(kind, steps, batch, 5, hidden, torch.float32)
    dbl = lambda t: None if t is None else t.double()
    launched = []
    for name in (f"{kind}_sequence_fwd", f"{kind}_sequence_bwd"):
        launcher = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, f=launcher, n=name: launched.append(n)
                            or f(*a))
    got = run_layer(kind, module, x, h0, c0, backend="triton")
    assert launched == [f"{kind}_sequence_fwd", f"{kind}_sequence_bwd"]  # both ran in Triton
    want = run_layer(kind, ref, dbl(x), dbl(h0), dbl(c0))
    n_out = 2 if kind == "gru" else 3
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == torch.float32
        tol = 2e-5 if k < n_out else 1e-4
        torch.testing.assert_close(g.double(), w, atol=tol, rtol=tol)


@interpreted
def test_gradcheck_float64():
    def lstm(*args):
        with leedl_fast.backend("triton"):
            return call("lstm_sequence_fwd", *args)[:3]

    def gru(*args):
        with leedl_fast.backend("triton"):
            return call("gru_sequence_fwd", *args)[:2]

    # fast_mode: one random direction instead of the full Jacobian (the interpreter is slow).
    args = [a.requires_grad_() for a in lstm_args(2, 2, 3, torch.float64)]
    assert torch.autograd.gradcheck(lstm, args, fast_mode=True)
    args = [a.requires_grad_() for a in gru_args(2, 2, 3, True, torch.float64)]
    assert torch.autograd.gradcheck(gru, args, fast_mode=True)


# ------------------------------------------------------------------------- wiring and checks

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_recurrent_product_of_half_operands_into_fp32(dtype):
    """The cuBLAS product into the fp32 buffer also runs where torch.mm has no out_dtype (CPU)."""
    a, b = torch.randn(3, 5, dtype=dtype), torch.randn(7, 5, dtype=dtype).t()
    out = torch.empty(3, 7)
    for _ in range(2):  # the second call starts from the way the first one found
        kernels._product_into(out, a, b)
        torch.testing.assert_close(out, (a.double() @ b.double()).float(), atol=0.1, rtol=0.02)


def test_registered_with_cuda_as_default(monkeypatch):
    """The CUDA C++ kernels run by default where leedl_fast._C_cuda is built, Triton elsewhere;
    a forced backend wins either way."""
    from leedl_fast import _backend
    from leedl_fast._ops._registry import _pick_gpu_impl

    for op in OPS:
        impls = _GPU_IMPLS[op]
        assert impls["default"] == "cuda"
        assert impls["triton"] is rnn_gpu.TRITON_IMPLS[op]
        assert callable(impls["cuda"])
        for built in (False, True):
            monkeypatch.setattr(_backend, "has_cuda_extension", lambda built=built: built)
            assert _pick_gpu_impl(op, op) is impls["cuda" if built else "triton"]
            with leedl_fast.backend("triton"):
                assert _pick_gpu_impl(op, op) is impls["triton"]


def test_cuda_entry_falls_back_to_triton(monkeypatch):
    """Without leedl_fast._ops.rnn_cuda (or without the op in its CUDA_IMPLS) the "cuda" entry
    runs the Triton path; with it, it runs that."""
    calls = []
    monkeypatch.setitem(rnn_gpu.TRITON_IMPLS, "gru_sequence_bwd",
                        lambda *a: calls.append("triton") or "triton")
    run = rnn_gpu._cuda_or_triton("gru_sequence_bwd")
    monkeypatch.setattr(rnn_gpu, "_CUDA_MODULE", "leedl_fast._ops.no_such_rnn_module")
    assert run(1) == "triton"
    fake = types.ModuleType("fake_rnn_cuda")
    fake.CUDA_IMPLS = {"lstm_sequence_fwd": lambda *a: "cuda"}
    monkeypatch.setitem(sys.modules, "leedl_fast._ops.no_such_rnn_module", fake)
    assert run(1) == "triton"  # no entry for this op
    fake.CUDA_IMPLS["gru_sequence_bwd"] = lambda *a: "cuda"
    assert run(1) == "cuda"
    assert calls == ["triton", "triton"]


@pytest.mark.parametrize("call_, exc, words", [
    (lambda: rnn_gpu.lstm_sequence_fwd(torch.randn(2, 3, 12), torch.randn(8, 2),
                                       torch.randn(3, 2), torch.randn(3, 2)),
     ValueError, "gates_x's last dim"),
    (lambda: rnn_gpu.lstm_sequence_fwd(torch.randn(2, 3, 8), torch.randn(8, 3), torch.randn(3, 3),
                                       torch.randn(3, 3)), ValueError, "w_hh must be (4H, H)"),
    (lambda: rnn_gpu.lstm_sequence_fwd(torch.randn(2, 3, 8), torch.randn(8, 2), torch.randn(3, 3),
                                       torch.randn(3, 2)), ValueError, "h0 must be (B, H)"),
    (lambda: rnn_gpu.lstm_sequence_fwd(torch.randn(2, 3, 8), torch.randn(8, 2),
                                       torch.randn(3, 2).double(), torch.randn(3, 2)),
     TypeError, "h0 has dtype"),
    (lambda: rnn_gpu.gru_sequence_fwd(torch.randn(2, 3, 6), torch.randn(6, 2), torch.randn(5),
                                      torch.randn(3, 2)), ValueError, "b_hh must be (3H,)"),
    (lambda: rnn_gpu.gru_sequence_fwd(torch.randn(2, 3), torch.randn(6, 2), None,
                                      torch.randn(3, 2)), ValueError, "gates_x must be"),
    (lambda: rnn_gpu.gru_sequence_bwd(torch.randn(2, 3, 2), torch.randn(3, 2),
                                      torch.randn(2, 3, 7), torch.randn(2, 3, 2),
                                      torch.randn(3, 2), torch.randn(6, 2), True),
     ValueError, "disagree on the hidden size"),
    (lambda: rnn_gpu.lstm_sequence_bwd(torch.randn(2, 3, 2), torch.randn(3, 2), torch.randn(3, 2),
                                       torch.randn(2, 3, 8), torch.randn(2, 3, 2),
                                       torch.randn(1, 3, 2), torch.randn(3, 2), torch.randn(3, 2),
                                       torch.randn(8, 2)), ValueError, "y must be (T, B, H)"),
])
def test_bad_input_raises_clear_error(call_, exc, words):
    with pytest.raises(exc, match=re.escape(words)):
        call_()


# ------------------------------------------------------------------------------------- GPU

GPU_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


@pytest.mark.gpu
@pytest.mark.parametrize("backend", gpu_backends() or ["triton"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("kind, bias", [("lstm", True), ("gru", True), ("gru", False)])
@pytest.mark.parametrize("steps, batch, input_size, hidden", [(5, 3, 7, 33), (16, 8, 64, 256)])
def test_gpu_layer_within_twice_torchs_error(kind, bias, dtype, backend, steps, batch,
                                             input_size, hidden):
    """Outputs within 2x (gradients 3x) of torch.nn.LSTM/GRU's own error vs float64 in that
    dtype, plus a floor for fp32 (where torch's error can be ~0: cuDNN vs our cuBLAS + Triton)."""
    module, ref = make_modules(kind, input_size, hidden, bias, dtype, "cuda")
    x, h0, c0 = layer_inputs(kind, steps, batch, input_size, hidden, dtype, "cuda")
    dbl = lambda t: None if t is None else t.double()
    want = run_layer(kind, ref, dbl(x), dbl(h0), dbl(c0))
    theirs = run_layer(kind, module, x, h0, c0)
    ours = run_layer(kind, module, x, h0, c0, backend=backend)
    n_out = 2 if kind == "gru" else 3
    for k, (o, t, w) in enumerate(zip(ours, theirs, want)):
        assert o.dtype == dtype and o.shape == w.shape, k
        factor = 2 if k < n_out else 3
        floor = 1e-5 * (1 + w.abs().max().item()) if dtype == torch.float32 else 0.0
        assert max_err(o, w) <= factor * max_err(t, w) + floor + torch.finfo(dtype).eps, \
            (k, max_err(o, w), max_err(t, w))


def assert_near_float64(got, cpu32, want64):
    """fp32 GPU outputs against float64: at most 4x the C++ CPU op's own fp32 error (plus a
    floor), so a summation order that differs from the CPU's is not taken for a bug."""
    assert len(got) == len(cpu32) == len(want64)
    for k, (g, c, w) in enumerate(zip(got, cpu32, want64)):
        g = g.cpu()
        assert g.shape == w.shape and g.dtype == c.dtype and g.is_contiguous(), k
        floor = 1e-5 * (1 + w.abs().max().item()) if w.numel() else 0.0
        assert max_err(g, w) <= 4 * max_err(c, w) + floor, (k, max_err(g, w), max_err(c, w))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", gpu_backends() or ["triton"])
def test_gpu_ops_match_cpu(backend):
    """fp32 on the GPU, every output (odd sizes, two blocks per row), against the C++ CPU ops in
    float64; the CPU ops in fp32 set the error budget."""
    steps, batch, hidden = 4, 3, 600

    def conv(xs, how):
        return [how(a) if isinstance(a, torch.Tensor) else a for a in xs]

    def f64(xs):
        return conv(xs, torch.Tensor.double)

    def gpu(xs):
        return conv(xs, torch.Tensor.cuda)

    def check(fwd, bwd, args, grads, bwd_saved, bwd_extra):
        want, cpu32 = dispatch(fwd, *f64(args)), dispatch(fwd, *args)
        with leedl_fast.backend(backend):
            got = dispatch(fwd, *gpu(args))
        assert_near_float64(got, cpu32, want)
        want_b = dispatch(bwd, *f64(grads), *bwd_saved(want), *f64(bwd_extra))
        cpu32_b = dispatch(bwd, *grads, *bwd_saved(cpu32), *bwd_extra)
        with leedl_fast.backend(backend):
            got_b = dispatch(bwd, *gpu(grads), *bwd_saved(got), *gpu(bwd_extra))
        assert_near_float64(got_b, cpu32_b, want_b)

    args = lstm_args(steps, batch, hidden)
    grads = [torch.randn(steps, batch, hidden), torch.randn(batch, hidden),
             torch.randn(batch, hidden)]
    _, w_hh, h0, c0 = args
    check("lstm_sequence_fwd", "lstm_sequence_bwd", args, grads,
          lambda o: (o[4], o[3], o[0]), [h0, c0, w_hh])
    for bias in (True, False):
        gargs = gru_args(steps, batch, hidden, bias)
        _, w_hh, _, h0 = gargs
        check("gru_sequence_fwd", "gru_sequence_bwd", gargs, grads[:2],
              lambda o: (o[2], o[0]), [h0, w_hh, bias])


@pytest.mark.gpu
@pytest.mark.parametrize("bias", [True, False])
def test_gpu_opcheck(bias):
    lstm = [a.requires_grad_() for a in lstm_args(3, 2, 5, device="cuda")]
    torch.library.opcheck(torch.ops.leedl_fast.lstm_sequence_fwd.default, lstm)
    gru = [None if a is None else a.requires_grad_()
           for a in gru_args(3, 2, 5, bias, device="cuda")]
    torch.library.opcheck(torch.ops.leedl_fast.gru_sequence_fwd.default, gru)
    with torch.no_grad():
        y, h_n, c_n, cells, gates = torch.ops.leedl_fast.lstm_sequence_fwd(*lstm)
        _, w_hh, h0, c0 = lstm
        torch.library.opcheck(torch.ops.leedl_fast.lstm_sequence_bwd.default,
                              (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n),
                               gates, cells, y, h0.detach(), c0.detach(), w_hh.detach()))
        gy, gh_n, saved = torch.ops.leedl_fast.gru_sequence_fwd(*gru)
        torch.library.opcheck(torch.ops.leedl_fast.gru_sequence_bwd.default,
                              (torch.randn_like(gy), torch.randn_like(gh_n), saved, gy,
                               gru[3].detach(), gru[1].detach(), bias))
