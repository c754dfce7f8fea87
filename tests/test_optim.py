"""leedl_fast.optim against torch.optim: trajectories, state_dict interchange both ways, LR
schedulers, GradScaler (grad_scale / found_inf), master weights, bad input. The fused kernels
themselves are checked against the float64 reference in test_optim_cpu.py and
test_optim_triton.py; here every backend runs the drop-in classes against torch's own."""
import copy
import math

import pytest
import torch

import leedl_fast
from leedl_fast import optim as LO

from .conftest import cpu_backends

SHAPES = [(3, 4), (), (0,), (7,), (97, 3), (1,)]

CASES = {
    "adam": (torch.optim.Adam, LO.Adam, dict(lr=1e-2)),
    "adam-l2-amsgrad": (torch.optim.Adam, LO.Adam, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    "adam-maximize": (torch.optim.Adam, LO.Adam, dict(lr=3e-3, betas=(0.8, 0.9), maximize=True)),
    "adamw": (torch.optim.AdamW, LO.AdamW, dict(lr=1e-2)),
    "adamw-amsgrad": (torch.optim.AdamW, LO.AdamW, dict(lr=1e-2, weight_decay=0.3,
                                                        amsgrad=True)),
    "sgd": (torch.optim.SGD, LO.SGD, dict(lr=1e-2)),
    "sgd-momentum-dampening": (torch.optim.SGD, LO.SGD, dict(lr=1e-2, momentum=0.9,
                                                             dampening=0.3, weight_decay=1e-2)),
    "sgd-nesterov-maximize": (torch.optim.SGD, LO.SGD, dict(lr=1e-2, momentum=0.9, nesterov=True,
                                                            maximize=True)),
    "adagrad": (torch.optim.Adagrad, LO.Adagrad, dict(lr=1e-1, lr_decay=0.01, weight_decay=0.1,
                                                      initial_accumulator_value=0.1)),
    "rmsprop": (torch.optim.RMSprop, LO.RMSprop, dict(lr=1e-2)),
    "rmsprop-centered-momentum": (torch.optim.RMSprop, LO.RMSprop,
                                  dict(lr=1e-2, centered=True, momentum=0.5, weight_decay=0.1,
                                       maximize=True)),
}
STEPS = 4
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-11, atol=1e-13)}


def _params(dtype=torch.float32, shapes=SHAPES):
    return [torch.nn.Parameter(torch.randn(s, dtype=torch.float64).to(dtype)) for s in shapes]


def _clone(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def _set_grads(params_lists, shapes, dtype, scale=1.0):
    grads = [torch.randn(s, dtype=torch.float64).to(dtype) * scale for s in shapes]
    for params in params_lists:
        for p, g in zip(params, grads):
            p.grad = g.clone()


def _run_steps(opts, params_lists, backend, steps, shapes=SHAPES, dtype=torch.float32):
    for _ in range(steps):
        _set_grads(params_lists, shapes, dtype)
        opts[0].step()
        with leedl_fast.backend(backend):
            opts[1].step()


def _assert_params_close(got, want, **tol):
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_torch(case, dtype, backend):
    torch_cls, ours_cls, kw = CASES[case]
    ref = _params(dtype)
    mine = _clone(ref)
    opts = torch_cls(ref, **kw), ours_cls(mine, **kw)
    _run_steps(opts, (ref, mine), backend, STEPS, dtype=dtype)
    _assert_params_close(mine, ref, **TOL[dtype])
    # the state: same keys, same values
    want, got = opts[0].state_dict(), opts[1].state_dict()
    assert got["state"].keys() == want["state"].keys()
    for pid, st in want["state"].items():
        assert set(got["state"][pid]) == set(st)
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(got["state"][pid][key], value, **TOL[dtype])


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("case", ["adam", "adamw-amsgrad"])
def test_bf16_params_match_torch_fused(case, backend):
    """bf16 params and state, fp32 math: torch's fused Adam does the same (its foreach path
    rounds every intermediate to bf16 instead). The same fp32 values rounded the same way; an
    operation order that differs from torch's can flip a rounding: 2 bf16 ulps allowed. (SGD
    and Adagrad are not compared here: torch 2.13's fused CPU SGD drifts from its own
    single-tensor path by tens of bf16 ulps on tensors longer than a vector; the kernels'
    bf16 paths are checked against the reference in test_optim_cpu/triton.py.)"""
    torch_cls, ours_cls, kw = CASES[case]
    ref = _params(torch.bfloat16)
    mine = _clone(ref)
    opts = torch_cls(ref, fused=True, **kw), ours_cls(mine, **kw)
    _run_steps(opts, (ref, mine), backend, STEPS, dtype=torch.bfloat16)
    _assert_params_close(mine, ref, rtol=2 ** -6, atol=1e-6)
    assert opts[1].state[mine[0]]["exp_avg"].dtype == torch.bfloat16


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("case", ["adam", "sgd-momentum-dampening", "rmsprop-centered-momentum"])
def test_master_weights_follow_the_fp32_trajectory(case, backend):
    """bf16 params with master_weights: the fp32 masters follow torch's fp32 trajectory for the
    same (bf16) gradients, and each param is its master rounded."""
    torch_cls, ours_cls, kw = CASES[case]
    mine = _params(torch.bfloat16)
    ref = [torch.nn.Parameter(p.detach().float()) for p in mine]
    opts = torch_cls(ref, **kw), ours_cls(mine, master_weights=True, **kw)
    for _ in range(STEPS):
        _set_grads((mine,), SHAPES, torch.bfloat16)
        for r, p in zip(ref, mine):
            r.grad = p.grad.float()
        opts[0].step()
        with leedl_fast.backend(backend):
            opts[1].step()
    for p, r in zip(mine, ref):
        master = opts[1].state[p]["master_param"]
        assert master.dtype == torch.float32
        torch.testing.assert_close(master, r.detach(), **TOL[torch.float32])
        assert torch.equal(p.detach(), master.to(torch.bfloat16))
    # the fp32 state survives a state_dict round trip (torch would cast it to bf16)
    again = ours_cls(_clone(mine), master_weights=True, **kw)
    again.load_state_dict(opts[1].state_dict())
    for p, q in zip(mine, again.param_groups[0]["params"]):
        for key, value in opts[1].state[p].items():
            assert again.state[q][key].dtype == value.dtype
            assert torch.equal(again.state[q][key], value)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("case", ["adam-l2-amsgrad", "adamw", "sgd-nesterov-maximize", "adagrad",
                                  "rmsprop-centered-momentum"])
def test_state_dict_interchange_both_ways(case, backend):
    torch_cls, ours_cls, kw = CASES[case]
    for first, second in ((torch_cls, ours_cls), (ours_cls, torch_cls)):
        a = _params()
        opt_a = first(a, **kw)
        with leedl_fast.backend(backend):
            _run_steps((opt_a, opt_a), (a,), backend, 1)
        saved = copy.deepcopy(opt_a.state_dict())
        b = _clone(a)
        opt_b = second(b, **kw)
        opt_b.load_state_dict(saved)
        # both continue from the same point: the same trajectory
        ours, theirs = (opt_b, opt_a) if second is ours_cls else (opt_a, opt_b)
        pa, pb = (b, a) if second is ours_cls else (a, b)
        _run_steps((theirs, ours), (pb, pa), backend, 3)
        _assert_params_close(pa, pb, **TOL[torch.float32])


@pytest.mark.parametrize("backend", cpu_backends())
def test_param_groups_and_schedulers(backend):
    """Two groups with their own hyperparameters, a param without a grad, and torch's
    schedulers (and ours) driving lr: the same trajectory as torch."""
    ref = _params()
    mine = _clone(ref)

    def build(cls, ps):
        opt = cls([{"params": ps[:3]}, {"params": ps[3:], "lr": 3e-2, "weight_decay": 0.1}],
                  lr=1e-2)
        return opt, [torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5),
                     LO.warmup_cosine(opt, warmup_steps=2, total_steps=8)]

    (t_opt, t_sched), (m_opt, m_sched) = build(torch.optim.AdamW, ref), build(LO.AdamW, mine)
    for _ in range(6):
        _set_grads((ref, mine), SHAPES, torch.float32)
        ref[1].grad = mine[1].grad = None  # no grad: skipped, no state
        t_opt.step()
        with leedl_fast.backend(backend):
            m_opt.step()
        for s in t_sched + m_sched:
            s.step()
        assert [g["lr"] for g in m_opt.param_groups] == [g["lr"] for g in t_opt.param_groups]
    _assert_params_close(mine, ref, **TOL[torch.float32])
    assert mine[1] not in m_opt.state and len(m_opt.state) == len(t_opt.state)


@pytest.mark.parametrize("backend", cpu_backends())
def test_add_param_group_midway(backend):
    ref = _params()
    mine = _clone(ref)
    opts = torch.optim.SGD(ref[:4], lr=1e-2, momentum=0.9), LO.SGD(mine[:4], lr=1e-2,
                                                                    momentum=0.9)
    _run_steps(opts, (ref, mine), backend, 2)
    opts[0].add_param_group({"params": ref[4:], "lr": 1e-3, "nesterov": True})
    opts[1].add_param_group({"params": mine[4:], "lr": 1e-3, "nesterov": True})
    _run_steps(opts, (ref, mine), backend, 2)
    _assert_params_close(mine, ref, **TOL[torch.float32])


def test_warmup_schedules():
    opt = LO.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lin = LO.warmup_linear(opt, warmup_steps=4, total_steps=12)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        lin.step()
    assert seen[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert seen[4:] == pytest.approx([(12 - t) / 8 for t in range(4, 12)])
    opt = LO.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    cos = LO.warmup_cosine(opt, warmup_steps=2, total_steps=6, min_factor=0.1)
    seen = []
    for _ in range(7):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        cos.step()
    want = [1.0, 2.0] + [2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4)))
                         for k in range(5)]
    assert seen == pytest.approx(want)
    with pytest.raises(ValueError, match="warmup_steps"):
        LO.warmup_linear(opt, warmup_steps=5, total_steps=3)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("case", ["adam", "sgd-momentum-dampening", "adagrad"])
def test_grad_scaler_unscales_and_skips_inf_steps(case, backend):
    """torch.amp.GradScaler hands grad_scale/found_inf to the fused step: the same result as
    torch's fused optimizer with the same scaler, an inf step skipped (step count unchanged)."""
    torch_cls, ours_cls, kw = CASES[case]
    ref = _params()
    mine = _clone(ref)
    opts = torch_cls(ref, fused=True, **kw), ours_cls(mine, **kw)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1)
               for _ in opts]
    for step in range(4):
        coef = [torch.randn(s) for s in SHAPES]
        if step == 2:
            coef[0][0, 0] = float("inf")
        before = [p.detach().clone() for p in mine]
        for params, opt, scaler in zip((ref, mine), opts, scalers):
            opt.zero_grad()
            loss = sum((p * c).sum() for p, c in zip(params, coef))
            scaler.scale(loss).backward()
            with leedl_fast.backend(backend):
                scaler.step(opt)
            scaler.update()
        if step == 2:  # skipped: nothing moved
            assert all(torch.equal(a, b) for a, b in zip(before, mine))
        else:  # the unscaled grads are written back, as torch's fused step does
            _assert_params_close([p.grad for p in mine], [p.grad for p in ref], rtol=0, atol=0)
            torch.testing.assert_close(mine[0].grad, coef[0])
    _assert_params_close(mine, ref, **TOL[torch.float32])
    assert scalers[0].get_scale() == scalers[1].get_scale()
    if "step" in opts[0].state[ref[0]]:
        assert float(opts[1].state[mine[0]]["step"]) == float(opts[0].state[ref[0]]["step"]) == 3


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("case", ["adam-l2-amsgrad", "sgd-nesterov-maximize", "adagrad",
                                  "rmsprop-centered-momentum"])
def test_nan_gradients_propagate_as_torch(case, backend):
    torch_cls, ours_cls, kw = CASES[case]
    ref = _params()
    mine = _clone(ref)
    opts = torch_cls(ref, **kw), ours_cls(mine, **kw)
    for step in range(3):
        _set_grads((ref, mine), SHAPES, torch.float32)
        if step == 1:
            ref[4].grad[5, 1] = mine[4].grad[5, 1] = float("nan")
        opts[0].step()
        with leedl_fast.backend(backend):
            opts[1].step()
    for a, b in zip(mine, ref):
        assert torch.equal(a.isnan(), b.isnan())
    assert mine[4].isnan().any()
    _assert_params_close(mine, ref, equal_nan=True, **TOL[torch.float32])


@pytest.mark.parametrize("backend", cpu_backends())
def test_non_contiguous_params(backend):
    """A transposed view as a parameter: handled (one tensor at a time), same result."""
    base = torch.randn(6, 5)
    ref = [torch.nn.Parameter(base.clone().t()), torch.nn.Parameter(torch.randn(4))]
    mine = [torch.nn.Parameter(base.clone().t()), torch.nn.Parameter(ref[1].detach().clone())]
    assert not mine[0].is_contiguous()
    opts = torch.optim.Adam(ref, lr=1e-2), LO.Adam(mine, lr=1e-2)
    _run_steps(opts, (ref, mine), backend, 3, shapes=[(5, 6), (4,)])
    _assert_params_close(mine, ref, **TOL[torch.float32])


def test_bad_input_is_refused_with_a_clear_error():
    p = torch.nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match="differentiable"):
        LO.Adam([p], differentiable=True)
    opt = LO.Adam([p])
    p.grad = torch.randn(4, 4).to_sparse()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype torch.float64"):
        LO.fused_sgd([p.detach()], [torch.randn(4, 4, dtype=torch.float64)], [], [], 0.1, 0.0,
                     0.0, 0.0, False, False, False)
    c = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    c.grad = torch.randn(3, dtype=torch.complex64)
    with pytest.raises(TypeError, match="complex"):
        LO.SGD([c], lr=0.1).step()
    # the validated functional entries name the argument
    q, g = torch.randn(5), torch.randn(5)
    with pytest.raises(ValueError, match="exp_avg_sqs has 0 tensors"):
        LO.fused_adam([q], [g], [torch.zeros(5)], [], [], [], [torch.ones(())], 1e-3, 0.9,
                      0.999, 1e-8, 0.0, False, False, False)
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] has 4 elements"):
        LO.fused_adam([q], [g], [torch.zeros(4)], [torch.zeros(5)], [], [], [torch.ones(())],
                      1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False)
    with pytest.raises(TypeError, match=r"steps\[0\]"):
        LO.fused_adam([q], [g], [torch.zeros(5)], [torch.zeros(5)], [], [],
                      [torch.ones((), dtype=torch.int64)], 1e-3, 0.9, 0.999, 1e-8, 0.0, False,
                      False, False)
    with pytest.raises(TypeError, match="master_params need float16/bfloat16"):
        LO.fused_sgd([q], [g], [], [torch.zeros(5)], 0.1, 0.0, 0.0, 0.0, False, False, False)
    with pytest.raises(TypeError, match="found_inf"):
        LO.fused_sgd([q], [g], [], [], 0.1, 0.0, 0.0, 0.0, False, False, False,
                     found_inf=torch.zeros(2))
    with pytest.raises(ValueError, match="momentum_buffers"):
        LO.fused_rmsprop([q], [g], [torch.zeros(5)], [], [], [], 0.1, 0.9, 1e-8, 0.0, 0.5,
                         False, False)


def test_functional_entries_match_the_reference():
    """The validated entries run the op (the dispatcher picks the CPU kernel) like the
    float64 reference."""
    from leedl_fast.reference import optim as reference

    shapes = [(33,), (2, 3)]
    p = [torch.randn(s) for s in shapes]
    g = [torch.randn(s) for s in shapes]
    s = [torch.rand(s) for s in shapes]
    steps = [torch.full((), 3.0), torch.full((), 5.0)]  # steps may differ per tensor
    p64, g64, s64 = ([t.double() for t in ts] for ts in (p, g, s))
    LO.fused_adagrad(p, g, s, [], steps, 0.1, 0.05, 0.01, 1e-10, False)
    reference.fused_adagrad(p64, g64, s64, [], steps, 0.1, 0.05, 0.01, 1e-10, False)
    _assert_params_close(p, [t.float() for t in p64], rtol=1e-6, atol=1e-7)
    _assert_params_close(s, [t.float() for t in s64], rtol=1e-6, atol=1e-7)


def test_capturable_and_fused_flags_are_kept():
    p = torch.nn.Parameter(torch.randn(3))
    for cls in (LO.Adam, LO.AdamW):
        opt = cls([p], fused=True)
        p.grad = torch.randn(3)
        opt.step()
        assert opt.state_dict()["param_groups"][0]["fused"] is True
        assert opt.state[p]["step"].device == p.device and opt.state[p]["step"].dtype == \
            torch.float32


def test_compiled_step_matches_eager():
    """torch.compile(fullgraph=True) of the step: the fused op traces as one node."""
    ref = _params()
    mine = _clone(ref)
    opts = torch.optim.AdamW(ref, lr=1e-2), LO.AdamW(mine, lr=1e-2)
    compiled = torch.compile(opts[1].step, fullgraph=True)
    for _ in range(3):
        _set_grads((ref, mine), SHAPES, torch.float32)
        opts[0].step()
        compiled()
    _assert_params_close(mine, ref, **TOL[torch.float32])


# ------------------------------------------------------------------------------------ GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_gpu_trajectory_matches_torch(case, dtype):
    torch_cls, ours_cls, kw = CASES[case]
    shapes = SHAPES + [(1 << 20,), (4097, 33)]
    ref = [p.cuda() for p in _params(dtype, shapes)]
    ref = [torch.nn.Parameter(p) for p in ref]
    mine = _clone(ref)
    flags = dict(fused=True) if dtype == torch.bfloat16 and case.startswith("adam") else {}
    if dtype == torch.bfloat16 and not flags:
        pytest.skip("bf16 is compared with torch's fused Adam only (its other paths round "
                    "every intermediate to bf16)")
    opts = torch_cls(ref, **flags, **kw), ours_cls(mine, **kw)
    for _ in range(STEPS):
        grads = [torch.randn(s, device="cuda", dtype=torch.float64).to(dtype) for s in shapes]
        for params in (ref, mine):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        opts[0].step()
        opts[1].step()
    tol = dict(rtol=2 ** -6, atol=1e-6) if dtype == torch.bfloat16 else TOL[torch.float32]
    _assert_params_close(mine, ref, **tol)


@pytest.mark.gpu
def test_gpu_capturable_adam_replays_in_a_cuda_graph():
    """capturable=True: the step counts live on the GPU and the step is captured once in a CUDA
    graph, then replayed; the trajectory equals torch's capturable Adam run eagerly."""
    shapes = [(257, 31), (1000,), ()]
    ref = [torch.nn.Parameter(p.cuda()) for p in _params(torch.float32, shapes)]
    mine = _clone(ref)
    grads = [torch.zeros(s, device="cuda") for s in shapes]
    for p, g in zip(mine, grads):
        p.grad = g
    opts = torch.optim.Adam(ref, lr=1e-2, capturable=True), LO.Adam(mine, lr=1e-2,
                                                                     capturable=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up: state, JIT and the pointer tables exist before capture
            for g in grads:
                g.normal_()
            for p, g in zip(ref, grads):
                p.grad = g.clone()
            opts[0].step()
            opts[1].step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opts[1].step()
    for _ in range(3):
        for g in grads:
            g.normal_()
        for p, g in zip(ref, grads):
            p.grad = g.clone()
        opts[0].step()
        graph.replay()
    torch.cuda.synchronize()
    _assert_params_close(mine, ref, **TOL[torch.float32])
    assert float(opts[1].state[mine[0]]["step"]) == 5


def test_increment_steps_op():
    """The step counter op: +1 on every tensor, nothing when found_inf != 0, checks first."""
    op = torch.ops.leedl_fast.increment_steps.default
    steps = [torch.tensor(3.0), torch.zeros(()), torch.full((1,), 7.0)]
    op(steps, None)
    assert [float(s) for s in steps] == [4.0, 1.0, 8.0]
    op(steps, torch.ones(1))
    op(steps, torch.full((1,), float("nan")))
    assert [float(s) for s in steps] == [4.0, 1.0, 8.0]
    op(steps, torch.zeros(1))
    assert [float(s) for s in steps] == [5.0, 2.0, 9.0]
    with pytest.raises(RuntimeError, match=r"steps\[1\] must be a 1-element float32"):
        op([torch.zeros(()), torch.zeros((), dtype=torch.float64)], None)
    with pytest.raises(RuntimeError, match=r"steps\[0\] must be a 1-element float32"):
        op([torch.zeros(2)], None)
    torch.library.opcheck(op, ([torch.tensor(1.0), torch.tensor(2.0)], None))
    torch.library.opcheck(op, ([torch.tensor(1.0)], torch.ones(1)))


def test_step_counts_follow_torch_placement_after_a_load():
    """A fused (device-step) checkpoint loaded into a non-fused optimizer: every count ends on
    the host, as torch would create it, so one list never mixes devices."""
    ref = _params()
    opt = LO.Adam(ref, fused=True)
    _run_steps((opt, opt), (ref, ref), "cpu", 1)
    saved = opt.state_dict()
    mine = _clone(ref)
    again = LO.Adam(mine)
    again.load_state_dict(saved)
    _run_steps((again, again), (mine, mine), "cpu", 1)
    assert all(s["step"].device.type == "cpu" and s["step"].dtype == torch.float32
               for s in again.state.values())
