"""Review findings for leedl_fast.optim: each test is a defect found in review (it failed before
its fix). The step's per-param cache (`_checked`) must not hand the kernels state that no longer
fits its param; master copies are never zeros; and the rest below."""
import pytest
import torch

import leedl_fast
from leedl_fast import optim as LO

from .conftest import cpu_backends


def _step(opt, backend):
    with leedl_fast.backend(backend):
        opt.step()


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("cls", [LO.Adam, LO.AdamW, LO.Adagrad, LO.RMSprop, LO.SGD])
def test_param_resized_through_data_after_a_step(cls, backend):
    """`p.data = <another size>` keeps the Parameter and its state dict: the cached check
    skipped _prepare and the kernels got 5-element state for a 50-element param (on the GPU,
    whose Triton launcher does not re-validate, an out-of-bounds write)."""
    p = torch.nn.Parameter(torch.randn(5))
    opt = cls([p], lr=1e-2, **({"momentum": 0.9} if cls is LO.SGD else {}))
    p.grad = torch.randn(5)
    _step(opt, backend)
    p.data = torch.randn(50)
    p.grad = torch.randn(50)
    before = p.detach().clone()
    _step(opt, backend)
    for key, value in opt.state[p].items():
        if key != "step" and isinstance(value, torch.Tensor):
            assert value.numel() == p.numel(), key
    assert torch.isfinite(p).all() and not torch.equal(p.detach(), before)


@pytest.mark.parametrize("backend", cpu_backends())
def test_module_double_after_a_step_gets_state_in_the_new_dtype(backend):
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    opt = LO.Adam(m.parameters(), lr=1e-2)
    m(torch.randn(2, 4)).sum().backward()
    _step(opt, backend)
    m.double()
    opt.zero_grad()
    m(torch.randn(2, 4, dtype=torch.float64)).sum().backward()
    _step(opt, backend)
    for p in m.parameters():
        assert opt.state[p]["exp_avg"].dtype == torch.float64
        assert opt.state[p]["exp_avg_sq"].dtype == torch.float64


@pytest.mark.parametrize("backend", cpu_backends())
def test_param_dtype_changed_under_its_grad_is_refused(backend):
    """p.data = p.data.half() leaves an fp32 grad on an fp16 param: a clear TypeError (the
    cached path skipped the check; the Triton launcher would have read the grad as it is)."""
    p = torch.nn.Parameter(torch.randn(6))
    opt = LO.SGD([p], lr=1e-2, momentum=0.9)
    p.grad = torch.randn(6)
    _step(opt, backend)
    p.data = p.data.half()
    assert p.grad.dtype == torch.float32
    with pytest.raises(TypeError, match="dtype"):
        _step(opt, backend)


@pytest.mark.parametrize("backend", cpu_backends())
def test_master_copy_of_a_resized_param_is_the_param_not_zeros(backend):
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.bfloat16))
    opt = LO.Adam([p], lr=1e-3, master_weights=True)
    p.grad = torch.randn(5, dtype=torch.bfloat16)
    _step(opt, backend)
    p.data = torch.randn(40, dtype=torch.bfloat16) + 10  # far from 0
    p.grad = torch.zeros(40, dtype=torch.bfloat16)
    before = p.detach().clone()
    _step(opt, backend)
    assert opt.state[p]["master_param"].numel() == 40
    torch.testing.assert_close(p.detach(), before, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("backend", cpu_backends())
def test_sgd_checkpoint_with_a_none_momentum_buffer(backend):
    """torch < 2.0's SGD saved {"momentum_buffer": None} for every param (momentum 0): loaded
    into a momentum SGD, torch starts a buffer; the fused step passed None to the kernel."""
    ref = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(2)]
    mine = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opts = torch.optim.SGD(ref, lr=1e-2, momentum=0.9), LO.SGD(mine, lr=1e-2, momentum=0.9)
    saved = {"state": {0: {"momentum_buffer": None}, 1: {"momentum_buffer": None}},
             "param_groups": [dict(opts[0].state_dict()["param_groups"][0])]}
    for opt in opts:
        opt.load_state_dict(saved)
    for _ in range(3):
        for a, b in zip(ref, mine):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        opts[0].step()
        _step(opts[1], backend)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("backend", cpu_backends())
def test_adagrad_master_sum_starts_at_the_fp32_initial_value(backend):
    """With master weights the state is fp32, but torch's __init__ made the sum in bf16: it
    started at bf16(0.1) = 0.10009765625, not 0.1 (a 1e-3 error in every step's size)."""
    p = torch.nn.Parameter(torch.randn(4, dtype=torch.bfloat16))
    q = torch.nn.Parameter(torch.randn(4, dtype=torch.bfloat16))
    opt = LO.Adagrad([p], lr=0.1, initial_accumulator_value=0.1, master_weights=True)
    opt.add_param_group({"params": [q]})  # the lazily made state too
    p.grad = torch.zeros_like(p)
    q.grad = torch.zeros_like(q)
    _step(opt, backend)
    want = torch.full((4,), 0.1, dtype=torch.float32)
    for t in (p, q):
        assert opt.state[t]["sum"].dtype == torch.float32
        torch.testing.assert_close(opt.state[t]["sum"], want, rtol=0, atol=0)


def test_load_state_dict_releases_the_replaced_state():
    """The step's check cache kept references to every state tensor it had seen: after
    load_state_dict, a param that does not step again (frozen, grad None) kept its old state
    alive -- a second copy of the optimizer state."""
    import gc
    import weakref

    p = torch.nn.Parameter(torch.randn(1000))
    opt = LO.Adam([p], lr=1e-2)
    p.grad = torch.randn(1000)
    opt.step()
    saved = {"state": {0: {k: v.clone() for k, v in opt.state[p].items()}},
             "param_groups": opt.state_dict()["param_groups"]}
    old = weakref.ref(opt.state[p]["exp_avg"])
    opt.load_state_dict(saved)
    gc.collect()
    assert old() is None
    p.grad = torch.randn(1000)
    opt.step()  # and the cache is rebuilt
    assert opt.state[p]["exp_avg"].numel() == 1000


@pytest.mark.parametrize("cls", [LO.Adam, LO.AdamW, LO.RMSprop])
def test_graph_capture_without_capturable_is_refused(cls, monkeypatch):
    """Captured with capturable=False, the step counts stay on the host: their increment runs
    once, at capture, and the bias corrections are baked into the graph (every replay uses
    step 1's). torch's optimizers refuse this capture; ours went on silently. (Simulated: no
    GPU here.)"""
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    opt = cls([p], lr=1e-2)
    opt.step()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="capturable is False"):
        opt.step()
    capturable = cls([p], lr=1e-2, capturable=True)
    capturable.step()  # allowed
    sgd = LO.SGD([p], lr=1e-2, momentum=0.9)
    sgd.step()  # no step counts: torch's SGD does not check either
