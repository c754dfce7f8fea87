"""The recurrent family: leedl_fast.nn.LSTM / GRU (C++ whole-sequence kernels on CPU) against
torch.nn.LSTM / GRU with the same weights and against the float64 reference (the book's cell,
§5.5); the raw ops (opcheck, gradcheck), torch.compile, bad input."""
import contextlib

import pytest
import torch

import leedl_fast
from leedl_fast.reference import rnn as ref

from .conftest import cpu_backends

fwd_op = torch.ops.leedl_fast.lstm_sequence_fwd
bwd_op = torch.ops.leedl_fast.lstm_sequence_bwd

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def pair(input_size, hidden, dtype=torch.float32, **kw):
    theirs = torch.nn.LSTM(input_size, hidden, dtype=dtype, **kw)
    ours = leedl_fast.nn.LSTM(input_size, hidden, dtype=dtype, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def run(module, x, hx):
    """Outputs and every gradient (input, h0, c0, parameters) of a weighted sum of outputs."""
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(t.detach().clone().requires_grad_() for t in hx)
    out, (h_n, c_n) = module(x, hx)
    loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum() \
        + 2 * h_n.sum() - 3 * c_n.sum()
    leaves = [x, *(hx or ()), *module.parameters()]
    return [out, h_n, c_n, *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, True), (3, False), (1, True)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_matches_torch_lstm(dtype, layers, bidirectional, batch_first):
    ours, theirs = pair(9, 13, dtype, num_layers=layers, bidirectional=bidirectional,
                        batch_first=batch_first)
    x = torch.randn(4, 6, 9, dtype=dtype)  # (T, B) or (B, T)
    dirs = 2 if bidirectional else 1
    hx = tuple(torch.randn(layers * dirs, 6 if not batch_first else 4, 13, dtype=dtype)
               for _ in range(2))
    for h in (None, hx):
        for g, w in zip(run(ours, x, h), run(theirs, x, h)):
            torch.testing.assert_close(g, w, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("hidden", [1, 7, 100])
@pytest.mark.parametrize("steps", [1, 5])
def test_odd_sizes_against_the_float64_reference(hidden, steps):
    ours, _ = pair(5, hidden, num_layers=2, bidirectional=True)
    x = torch.randn(steps, 3, 5)
    got = run(ours, x, None)
    weights = [[p.detach().double() for p in ours._layer_weights(layer, d)]
               for layer in range(2) for d in range(2)]
    xd = x.double().requires_grad_()
    h0 = torch.zeros(4, 3, hidden, dtype=torch.float64)
    out, (h_n, c_n) = ref.lstm(xd, (h0, h0), weights, 2, bidirectional=True)
    torch.testing.assert_close(got[0].double(), out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(got[1].double(), h_n, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(got[2].double(), c_n, atol=2e-5, rtol=2e-5)
    loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum() \
        + 2 * h_n.sum() - 3 * c_n.sum()
    (dx,) = torch.autograd.grad(loss, [xd])
    torch.testing.assert_close(got[3].double(), dx, atol=1e-4, rtol=1e-4)


def test_unbatched_input_and_no_bias():
    ours, theirs = pair(4, 6, bias=False, num_layers=2)
    x = torch.randn(5, 4)
    hx = (torch.randn(2, 6), torch.randn(2, 6))
    for g, w in zip(run(ours, x, hx), run(theirs, x, hx)):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_twice_torchs_error(dtype):
    ours, theirs = pair(16, 32, dtype, num_layers=2)
    ref64, _ = pair(16, 32, torch.float64, num_layers=2)
    ref64.load_state_dict({k: v.double() for k, v in theirs.state_dict().items()})
    x = torch.randn(12, 4, 16, dtype=dtype)
    want = ref64(x.double())[0]
    ours_err = (ours(x)[0].double() - want).abs().max().item()
    torch_err = (theirs(x)[0].double() - want).abs().max().item()
    assert ours(x)[0].dtype == dtype
    assert ours_err <= 2 * torch_err + torch.finfo(dtype).eps


def test_book_numeric_example():
    """BOOK.md §5.5.5: one cell, g and h linear, c from 0; the outputs of the five steps."""
    w_ih = torch.zeros(4, 3, dtype=torch.float64)
    w_ih[0, 1], w_ih[1, 1], w_ih[2, 0], w_ih[3, 2] = 100, 100, 1, 100  # rows: z_i, z_f, z, z_o
    b = torch.tensor([-10.0, 10.0, 0.0, -10.0], dtype=torch.float64)
    w_hh = torch.zeros(4, 1, dtype=torch.float64)
    xs = torch.tensor([[3, 1, 0], [4, 1, 0], [2, 0, 0], [1, 0, 1], [3, -1, 0]],
                      dtype=torch.float64)
    h = c = torch.zeros(1, 1, dtype=torch.float64)
    cells, outs = [], []
    for x in xs:
        h, c = ref.lstm_cell(x[None], h, c, w_ih, w_hh, b, None, g=lambda z: z,
                             h_act=lambda z: z)
        cells.append(c.item())
        outs.append(h.item())
    torch.testing.assert_close(torch.tensor(cells), torch.tensor([3, 7, 7, 7, 0.0]),
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.tensor(outs), torch.tensor([0, 0, 0, 7, 0.0]),
                               atol=1e-3, rtol=0)


def _raw_args(steps=4, batch=3, hidden=5, dtype=torch.float64, grad=False):
    args = (torch.randn(steps, batch, 4 * hidden, dtype=dtype),
            torch.randn(4 * hidden, hidden, dtype=dtype) * 0.5,
            torch.randn(batch, hidden, dtype=dtype), torch.randn(batch, hidden, dtype=dtype))
    return tuple(a.requires_grad_(grad) for a in args)


def test_gradcheck_raw_op():
    def f(*args):
        y, h_n, c_n, _, _ = fwd_op(*args)
        return y, h_n, c_n
    assert torch.autograd.gradcheck(f, _raw_args(grad=True))


def test_opcheck():
    args = _raw_args(dtype=torch.float32, grad=True)
    torch.library.opcheck(fwd_op.default, args)
    y, h_n, c_n, cells, gates = fwd_op(*args)
    torch.library.opcheck(bwd_op.default, (torch.randn_like(y), torch.randn_like(h_n),
                                           torch.randn_like(c_n), gates, cells, y.detach(),
                                           args[2].detach(), args[3].detach(),
                                           args[1].detach()))


def test_compile_fullgraph():
    ours, _ = pair(8, 16, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 7, 8, requires_grad=True)
    eager, _ = ours(x)
    g_eager = torch.autograd.grad(eager.sum(), [x, *ours.parameters()])
    compiled, _ = torch.compile(ours, fullgraph=True)(x)
    g_compiled = torch.autograd.grad(compiled.sum(), [x, *ours.parameters()])
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(g_compiled, g_eager):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_thread_counts(threads):
    """The persistent team splits the hidden units; any team size gives the same result."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours, theirs = pair(20, 70)
        x = torch.randn(6, 5, 20)
        for g, w in zip(run(ours, x, None), run(theirs, x, None)):
            torch.testing.assert_close(g, w, atol=2e-5, rtol=2e-5)
    finally:
        torch.set_num_threads(old)


def test_state_dict_keys_are_torchs():
    ours, theirs = pair(3, 4, num_layers=2, bidirectional=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())


@pytest.mark.parametrize("call, exc, words", [
    (lambda m: m(torch.randn(5, 2, 7)), ValueError, "input_size"),
    (lambda m: m(torch.randn(5, 2, 3).double()), TypeError, "dtype"),
    (lambda m: m(torch.randn(2, 5, 2, 3)), ValueError, "2-D"),
    (lambda m: m(torch.randn(0, 2, 3)), ValueError, "empty"),
    (lambda m: m(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(1, 2, 4))),
     ValueError, "h_0"),
    (lambda m: m(torch.randn(5, 2, 3), (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4))),
     ValueError, "h_0"),
    (lambda m: m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4).double())),
     TypeError, "c_0"),
    (lambda m: m(torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])),
     NotImplementedError, "PackedSequence"),
    (lambda m: m(torch.randn(5, 2, 3).to("meta")), ValueError, "device"),
])
def test_bad_input(call, exc, words):
    m = leedl_fast.nn.LSTM(3, 4)
    with pytest.raises(exc, match=words):
        call(m)


def test_proj_size_is_refused():
    with pytest.raises(NotImplementedError, match="proj_size"):
        leedl_fast.nn.LSTM(3, 4, proj_size=2)


def test_raw_op_bad_shapes():
    g, w, h0, c0 = _raw_args()
    with pytest.raises(RuntimeError, match="4 \\* hidden"):
        fwd_op(g[..., :-1], w, h0, c0)
    with pytest.raises(RuntimeError, match="h0"):
        fwd_op(g, w, h0[:1], c0)
    with pytest.raises(RuntimeError, match="dtype"):
        fwd_op(g, w.float(), h0, c0)


# -------------------------------------------------------------------------------------- GRU

gru_fwd = torch.ops.leedl_fast.gru_sequence_fwd
gru_bwd = torch.ops.leedl_fast.gru_sequence_bwd


def gru_pair(input_size, hidden, dtype=torch.float32, **kw):
    theirs = torch.nn.GRU(input_size, hidden, dtype=dtype, **kw)
    ours = leedl_fast.nn.GRU(input_size, hidden, dtype=dtype, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def gru_run(module, x, h0):
    x = x.detach().clone().requires_grad_()
    h0 = None if h0 is None else h0.detach().clone().requires_grad_()
    out, h_n = module(x, h0)
    loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum() + 2 * h_n.sum()
    leaves = [x, *([h0] if h0 is not None else []), *module.parameters()]
    return [out, h_n, *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, True), (3, False)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_matches_torch(dtype, layers, bidirectional, batch_first, bias):
    ours, theirs = gru_pair(9, 13, dtype, num_layers=layers, bidirectional=bidirectional,
                            batch_first=batch_first, bias=bias)
    x = torch.randn(4, 6, 9, dtype=dtype)
    dirs = 2 if bidirectional else 1
    h0 = torch.randn(layers * dirs, 6 if not batch_first else 4, 13, dtype=dtype)
    for h in (None, h0):
        for g, w in zip(gru_run(ours, x, h), gru_run(theirs, x, h)):
            torch.testing.assert_close(g, w, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("hidden, steps", [(1, 1), (7, 5), (100, 3)])
def test_gru_odd_sizes_against_the_float64_reference(hidden, steps):
    ours, _ = gru_pair(5, hidden, bidirectional=True)
    x = torch.randn(steps, 3, 5)
    out, h_n = ours(x)
    xd = x.double()
    w = [[p.detach().double() for p in ours._layer_weights(0, d)] for d in range(2)]
    h0 = torch.zeros(3, hidden, dtype=torch.float64)
    y0, h0_n = ref.gru_layer(xd, h0, *w[0])
    y1, h1_n = ref.gru_layer(xd, h0, *w[1], reverse=True)
    torch.testing.assert_close(out.double(), torch.cat([y0, y1], -1), atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(h_n.double(), torch.stack([h0_n, h1_n]), atol=2e-5, rtol=2e-5)


def test_gru_unbatched_and_threads():
    old = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            ours, theirs = gru_pair(20, 70, num_layers=2)
            x, h0 = torch.randn(6, 20), torch.randn(2, 70)
            for g, w in zip(gru_run(ours, x, h0), gru_run(theirs, x, h0)):
                torch.testing.assert_close(g, w, atol=2e-5, rtol=2e-5)
    finally:
        torch.set_num_threads(old)


def _gru_raw_args(dtype=torch.float64, grad=False, bias=True):
    args = (torch.randn(4, 3, 15, dtype=dtype), torch.randn(15, 5, dtype=dtype) * 0.5,
            torch.randn(15, dtype=dtype) if bias else None, torch.randn(3, 5, dtype=dtype))
    return tuple(a if a is None else a.requires_grad_(grad) for a in args)


@pytest.mark.parametrize("bias", [True, False])
def test_gru_gradcheck_and_opcheck(bias):
    def f(*args):
        y, h_n, _ = gru_fwd(*args)
        return y, h_n
    assert torch.autograd.gradcheck(f, _gru_raw_args(grad=True, bias=bias))
    args = _gru_raw_args(torch.float32, grad=True, bias=bias)
    torch.library.opcheck(gru_fwd.default, args)
    y, h_n, saved = gru_fwd(*args)
    torch.library.opcheck(gru_bwd.default, (torch.randn_like(y), torch.randn_like(h_n), saved,
                                            y.detach(), args[3].detach(), args[1].detach(),
                                            bias))


def test_gru_compile_fullgraph():
    ours, _ = gru_pair(8, 16, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 7, 8, requires_grad=True)
    eager, _ = ours(x)
    g_eager = torch.autograd.grad(eager.sum(), [x, *ours.parameters()])
    compiled, _ = torch.compile(ours, fullgraph=True)(x)
    g_compiled = torch.autograd.grad(compiled.sum(), [x, *ours.parameters()])
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(g_compiled, g_eager):
        torch.testing.assert_close(a, b)


def test_gru_bad_input():
    m = leedl_fast.nn.GRU(3, 4, num_layers=2)
    with pytest.raises(ValueError, match="input_size"):
        m(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match="h_0"):
        m(torch.randn(5, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(TypeError, match="Tensor h_0"):
        m(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4),))
    with pytest.raises(RuntimeError, match="3 \\* hidden"):
        gru_fwd(torch.randn(4, 3, 14), torch.randn(15, 5), None, torch.randn(3, 5))


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_cells_match_torch(kind, bias, batched):
    theirs = getattr(torch.nn, kind)(6, 11, bias=bias)
    ours = getattr(leedl_fast.nn, kind)(6, 11, bias=bias)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(*((5,) if batched else ()), 6)
    state = torch.randn(*((5,) if batched else ()), 11)
    hx = (state, state * 0.5) if kind == "LSTMCell" else state
    for h in (None, hx):
        got, want = [], []
        for module, sink in ((ours, got), (theirs, want)):
            leaves = [x.clone().requires_grad_(), *module.parameters()]
            out = module(leaves[0], h)
            outs = out if isinstance(out, tuple) else (out,)
            loss = sum((o * (i + 1)).sum() for i, o in enumerate(outs))
            sink.extend([*outs, *torch.autograd.grad(loss, leaves)])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=2e-5, rtol=2e-5)


def test_accelerate_swaps_recurrent_modules_keeping_parameters():
    model = torch.nn.Sequential()
    model.add_module("lstm", torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True))
    model.add_module("cell", torch.nn.GRUCell(4, 5))
    x = torch.randn(7, 3, 4)
    want = model.lstm(x)[0]
    params = list(model.parameters())
    keys = list(model.state_dict())
    leedl_fast.accelerate(model)
    assert isinstance(model.lstm, leedl_fast.nn.LSTM)
    assert isinstance(model.cell, leedl_fast.nn.GRUCell)
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), params))
    torch.testing.assert_close(model.lstm(x)[0], want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_modules_on_every_cpu_backend(backend, kind):
    """The same module through the C++ kernels, the Triton per-step path (interpreter) and the
    reference, against torch's module: outputs and every gradient."""
    theirs = getattr(torch.nn, kind)(5, 9, num_layers=2, bidirectional=True)
    ours = getattr(leedl_fast.nn, kind)(5, 9, num_layers=2, bidirectional=True)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 3, 5)
    results = []
    for module, name in ((ours, backend), (theirs, None)):
        leaves = [x.clone().requires_grad_(), *module.parameters()]
        with leedl_fast.backend(name) if name else contextlib.nullcontext():
            out, state = module(leaves[0])
            states = state if isinstance(state, tuple) else (state,)
            loss = out.sum() + sum((s * (i + 2)).sum() for i, s in enumerate(states))
            results.append([out, *states, *torch.autograd.grad(loss, leaves)])
    for g, w in zip(*results):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=2e-5)


def test_double_backward_raises_instead_of_being_silently_wrong():
    m = leedl_fast.nn.LSTM(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(g.pow(2).sum(), m.weight_hh_l0)


def test_cells_reset_parameters_like_torch():
    cell = leedl_fast.nn.GRUCell(3, 5)
    torch.manual_seed(0)
    cell.reset_parameters()
    ref_cell = torch.nn.GRUCell(3, 5)
    torch.manual_seed(0)
    ref_cell.reset_parameters()
    for a, b in zip(cell.parameters(), ref_cell.parameters()):
        torch.testing.assert_close(a, b)
