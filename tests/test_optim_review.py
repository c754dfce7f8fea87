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
