"""C++ CPU kernels of the fused optimizers (csrc/cpu/optim.cpp), called directly through
torch.ops.leedl_fast against the reference (leedl_fast/reference/optim.py): every variant of
each op for a few steps over lists of awkward sizes (0-dim, empty, 1, 7, 97, 1023 and one
tensor longer than the kernel's 32K-element parallel grain, so a thread boundary falls inside
it), every dtype and mixed lists, master weights, grad_scale / found_inf, NaN propagation,
opcheck and bad input.

Oracles: fp32 and fp64 results against the reference run on float64 copies (fp32: the kernel
rounds once per operation, so a few steps stay within ~1e-5 relative); every dtype also
against the reference run on the same dtypes, which does the same fp32 operations in the same
order (a couple of ulps of the dtype: torch.sqrt goes through MKL, not correctly rounded)."""
import pytest
import torch

from leedl_fast.reference import optim as reference

ops = torch.ops.leedl_fast

SIZES = [(), (0,), (1,), (7,), (97,), (1023,), (3, 5), (70001,)]
STEPS = 3
LOW = (torch.float16, torch.bfloat16)

# The state lists of each op, in schema order, and which ones start positive (squares, sums).
STATES = {
    "adam": ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
    "sgd": ("momentum_buffers",),
    "adagrad": ("state_sums",),
    "rmsprop": ("square_avgs", "grad_avgs", "momentum_buffers"),
}
POSITIVE = {"exp_avg_sqs", "max_exp_avg_sqs", "state_sums", "square_avgs"}

# (op, hyperparameters): every variant the kernels branch on.
CASES = [
    ("adam", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                  decoupled=False, amsgrad=False, maximize=False)),
    ("adam", dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1,
                  decoupled=False, amsgrad=False, maximize=False)),
    ("adam", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1,
                  decoupled=True, amsgrad=False, maximize=False)),  # AdamW
    ("adam", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05,
                  decoupled=True, amsgrad=True, maximize=False)),
    ("adam", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                  decoupled=False, amsgrad=True, maximize=True)),
    ("sgd", dict(lr=0.05, weight_decay=0.0, momentum=0.0, dampening=0.0, nesterov=False,
                 maximize=False)),
    ("sgd", dict(lr=0.05, weight_decay=0.01, momentum=0.9, dampening=0.1, nesterov=False,
                 maximize=False)),
    ("sgd", dict(lr=0.05, weight_decay=0.01, momentum=0.9, dampening=0.0, nesterov=True,
                 maximize=True)),
    ("adagrad", dict(lr=0.05, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False)),
    ("adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.1, eps=1e-10, maximize=True)),
    ("rmsprop", dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                     centered=False, maximize=False)),
    ("rmsprop", dict(lr=1e-2, alpha=0.9, eps=1e-8, weight_decay=0.1, momentum=0.0,
                     centered=True, maximize=False)),
    ("rmsprop", dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.9,
                     centered=True, maximize=True)),
    ("rmsprop", dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.01, momentum=0.5,
                     centered=False, maximize=False)),
]


def _ids(case):
    op, hp = case
    on = [k for k, v in hp.items() if isinstance(v, bool) and v]
    nz = [k for k in ("weight_decay", "momentum", "lr_decay", "dampening") if hp.get(k)]
    return "-".join([op] + on + nz)


def used_states(op, hp):
    if op == "adam":
        return {"exp_avgs", "exp_avg_sqs"} | ({"max_exp_avg_sqs"} if hp["amsgrad"] else set())
    if op == "sgd":
        return {"momentum_buffers"} if hp["momentum"] != 0 else set()
    if op == "adagrad":
        return {"state_sums"}
    return ({"square_avgs"} | ({"grad_avgs"} if hp["centered"] else set())
            | ({"momentum_buffers"} if hp["momentum"] > 0 else set()))


class Lists:
    """One optimizer's tensors: params, grads, state lists by name, master params, steps."""

    def __init__(self, op, hp, dtypes, sizes=SIZES, master=False, step0=0):
        self.op, self.hp = op, hp
        self.params = [torch.randn(s).to(dt) for s, dt in zip(sizes, dtypes)]
        self.grads = [torch.zeros(s, dtype=dt) for s, dt in zip(sizes, dtypes)]
        sdt = [torch.float32 if master else dt for dt in dtypes]
        self.master = [p.float() for p in self.params] if master else []
        self.states = {}
        for name in STATES[op]:
            if name not in used_states(op, hp):
                self.states[name] = []
                continue
            # positive state: |x| + 0.5 keeps RMSprop's centered variance v - gbar^2 >= 0.25
            make = ((lambda s: torch.rand(s) + 0.5) if name in POSITIVE
                    else (lambda s: 0.1 * torch.randn(s)))
            self.states[name] = [make(s).to(d) for s, d in zip(sizes, sdt)]
        self.steps = [torch.full((1,), float(step0)) for _ in sizes]

    def all_tensors(self):
        out = {"params": self.params, "grads": self.grads, "master_params": self.master}
        out.update(self.states)
        return out

    def copy(self, dtype=None, master=None):
        """A deep copy; with dtype, every float tensor converted (float64 oracle); master=False
        folds the master weights into the params (the oracle of master-weight mode)."""
        new = object.__new__(Lists)
        new.op, new.hp = self.op, self.hp
        conv = (lambda t: t.clone()) if dtype is None else (lambda t: t.to(dtype, copy=True))
        new.params = [conv(p) for p in (self.master if master is False else self.params)]
        new.grads = [conv(g) for g in self.grads]
        new.master = [] if master is False else [conv(m) for m in self.master]
        new.states = {k: [conv(t) for t in v] for k, v in self.states.items()}
        new.steps = [s.clone() for s in self.steps]
        return new

    def args(self, is_first_step=False, grad_scale=None, found_inf=None):
        h, s = self.hp, self.states
        if self.op == "adam":
            return (self.params, self.grads, s["exp_avgs"], s["exp_avg_sqs"],
                    s["max_exp_avg_sqs"], self.master, self.steps, h["lr"], h["beta1"],
                    h["beta2"], h["eps"], h["weight_decay"], h["decoupled"], h["amsgrad"],
                    h["maximize"], grad_scale, found_inf)
        if self.op == "sgd":
            return (self.params, self.grads, s["momentum_buffers"], self.master, h["lr"],
                    h["weight_decay"], h["momentum"], h["dampening"], h["nesterov"],
                    h["maximize"], is_first_step, grad_scale, found_inf)
        if self.op == "adagrad":
            return (self.params, self.grads, s["state_sums"], self.master, self.steps, h["lr"],
                    h["lr_decay"], h["weight_decay"], h["eps"], h["maximize"], grad_scale,
                    found_inf)
        return (self.params, self.grads, s["square_avgs"], s["grad_avgs"],
                s["momentum_buffers"], self.master, h["lr"], h["alpha"], h["eps"],
                h["weight_decay"], h["momentum"], h["centered"], h["maximize"], grad_scale,
                found_inf)

    def step(self, fn, grads, **kw):
        """Set the grads (converted to this copy's dtypes), increment the steps, run fn."""
        for g, new in zip(self.grads, grads):
            g.copy_(new)
        for s in self.steps:
            s.add_(1)
        fn(*self.args(**kw))


def op_fn(op):
    return getattr(ops, f"fused_{op}")


def ref_fn(op):
    return getattr(reference, f"fused_{op}")


def fresh_grads(lists):
    return [torch.randn(p.shape) for p in lists.params]


def assert_near_oracle(got, want, dtype, what):
    """got (kernel, dtype) vs want (float64 reference)."""
    tol = {torch.float32: (2e-5, 2e-6), torch.float64: (1e-12, 1e-12)}[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=tol[0], atol=tol[1],
                               equal_nan=True, msg=lambda m: f"{what}: {m}")


def assert_same_dtype(got, want, what, scale, ulps=2):
    """got vs the reference run on the same dtypes: within `ulps` ulps of the dtype, relative
    to the element or, where an update cancels most of a value, to `scale` (the largest
    magnitude in that list: the size of the terms that cancelled)."""
    fi = torch.finfo(got.dtype)
    torch.testing.assert_close(got, want, rtol=ulps * fi.eps,
                               atol=max(ulps * fi.eps * scale, fi.tiny), equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def _largest(ts):
    finite = [t[t.isfinite()].abs().max().item() for t in ts if t.isfinite().any()]
    return max(finite, default=0.0)


def compare(ours, same, oracle=None):
    """ours vs the reference on the same dtypes (always) and vs the float64 oracle (fp32/fp64
    tensors, when given)."""
    got, want = ours.all_tensors(), same.all_tensors()
    want64 = oracle.all_tensors() if oracle is not None else None
    for name, ts in got.items():
        scale = _largest([t.double() for t in want[name]])
        for i, t in enumerate(ts):
            what = f"{name}[{i}] {tuple(t.shape)} {t.dtype}"
            assert t.dtype == want[name][i].dtype
            assert_same_dtype(t, want[name][i], what, scale)
            if want64 is not None and t.dtype in (torch.float32, torch.float64):
                assert_near_oracle(t, want64[name][i], t.dtype, what + " vs float64")


def run_steps(lists, others, nsteps=STEPS, grad_scale=None):
    """nsteps steps of the kernel on `lists` and of the reference on each of `others`, with the
    same fresh gradients (scaled by grad_scale when given)."""
    for k in range(nsteps):
        # rounded to the params' dtypes first, so every run sees the same values
        grads = [g.to(p.dtype).double() for g, p in zip(fresh_grads(lists), lists.params)]
        if grad_scale is not None:
            grads = [g * float(grad_scale) for g in grads]
        first = k == 0
        lists.step(op_fn(lists.op), grads, is_first_step=first, grad_scale=grad_scale)
        for o in others:
            o.step(ref_fn(o.op), grads, is_first_step=first, grad_scale=grad_scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_against_reference(case, dtype):
    op, hp = case
    ours = Lists(op, hp, [dtype] * len(SIZES))
    same = ours.copy()
    oracle = ours.copy(torch.float64) if dtype not in LOW else None
    run_steps(ours, [same] + ([oracle] if oracle else []))
    compare(ours, same, oracle)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_mixed_dtypes_in_one_list(case):
    op, hp = case
    cycle = [torch.float32, torch.bfloat16, torch.float64, torch.float16]
    dtypes = [cycle[i % 4] for i in range(len(SIZES))]
    ours = Lists(op, hp, dtypes)
    same, oracle = ours.copy(), ours.copy(torch.float64)
    run_steps(ours, [same, oracle])
    compare(ours, same, oracle)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_master_params(case, dtype):
    """fp32 masters and state carry the math; params are the masters rounded."""
    op, hp = case
    ours = Lists(op, hp, [dtype] * len(SIZES), master=True)
    same = ours.copy()
    oracle = ours.copy(torch.float64, master=False)  # float64 params = the masters
    run_steps(ours, [same, oracle])
    for p, m, m64 in zip(ours.params, ours.master, oracle.params):
        assert m.dtype == torch.float32
        assert torch.equal(p, m.to(dtype))
        assert_near_oracle(m, m64, torch.float32, "master_params")
    for name in ours.states:
        for i, (t, t64) in enumerate(zip(ours.states[name], oracle.states[name])):
            assert t.dtype == torch.float32
            assert_near_oracle(t, t64, torch.float32, f"{name}[{i}]")
    compare(ours, same)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_grad_scale(case, dtype):
    """Grads are divided by grad_scale, written back unscaled, and used; found_inf = 0 is a
    normal step."""
    op, hp = case
    ours = Lists(op, hp, [dtype] * len(SIZES))
    same = ours.copy()
    scale, zero = torch.tensor([1024.0]), torch.zeros(1)
    for k in range(2):
        grads = [g * 1024.0 for g in fresh_grads(ours)]
        ours.step(op_fn(op), grads, is_first_step=k == 0, grad_scale=scale, found_inf=zero)
        same.step(ref_fn(op), grads, is_first_step=k == 0, grad_scale=scale, found_inf=zero)
        for i, (g, gs, raw) in enumerate(zip(ours.grads, same.grads, grads)):
            assert torch.equal(g, gs), f"grads[{i}] not written back unscaled"
            torch.testing.assert_close(g.float(), (raw / 1024.0).to(dtype).float())
    compare(ours, same)


@pytest.mark.parametrize("master", [False, True])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_found_inf_skips_everything(case, master):
    op, hp = case
    dtype = torch.bfloat16 if master else torch.float32
    ours = Lists(op, hp, [dtype] * len(SIZES), master=master, step0=2)
    for g, new in zip(ours.grads, fresh_grads(ours)):
        g.copy_(new * 64)
    before = {k: [t.clone() for t in v] for k, v in ours.all_tensors().items()}
    for fi in (torch.ones(1), torch.tensor([float("inf")]), torch.tensor([float("nan")])):
        op_fn(op)(*ours.args(grad_scale=torch.tensor([64.0]), found_inf=fi))
        for name, ts in ours.all_tensors().items():
            for i, (t, t0) in enumerate(zip(ts, before[name])):
                assert torch.equal(t, t0), f"{name}[{i}] changed although found_inf = {fi}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_nan_gradient_propagates(case, dtype):
    op, hp = case
    ours = Lists(op, hp, [dtype] * len(SIZES))
    same = ours.copy()
    grads = fresh_grads(ours)
    big = len(SIZES) - 1
    nan_at = [0, 40000, 70000]  # both threads' halves of the long tensor
    grads[big][nan_at] = float("nan")
    grads[2][0] = float("nan")  # the 1-element tensor
    ours.step(op_fn(op), grads, is_first_step=True)
    same.step(ref_fn(op), grads, is_first_step=True)
    assert ours.params[big][nan_at].isnan().all() and ours.params[2].isnan().all()
    assert ours.params[big].isnan().sum() == len(nan_at)
    compare(ours, same)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_amsgrad_max_propagates_nan(dtype):
    """v_hat = max(v_hat, v) is NaN when either is NaN, as torch.maximum (std::max is not)."""
    hp = dict(CASES[3][1])
    ours = Lists("adam", hp, [dtype] * len(SIZES))
    big = len(SIZES) - 1
    ours.states["max_exp_avg_sqs"][big][[3, 50000]] = float("nan")
    same = ours.copy()
    run_steps(ours, [same], nsteps=1)
    assert ours.states["max_exp_avg_sqs"][big][[3, 50000]].isnan().all()
    assert ours.params[big][[3, 50000]].isnan().all()
    assert ours.params[big].isnan().sum() == 2
    compare(ours, same)


def test_sgd_first_step_sets_buffer_to_gradient():
    hp = dict(lr=0.1, weight_decay=0.0, momentum=0.9, dampening=0.5, nesterov=False,
              maximize=False)
    ours = Lists("sgd", hp, [torch.float32] * len(SIZES))
    p0 = [p.clone() for p in ours.params]
    grads = fresh_grads(ours)
    ours.step(op_fn("sgd"), grads, is_first_step=True)
    for b, g, p, q in zip(ours.states["momentum_buffers"], grads, ours.params, p0):
        assert torch.equal(b, g)  # b <- g, not mu b + (1 - dampening) g
        assert torch.equal(p, q - 0.1 * g)


def test_all_empty_tensors():
    # (a call whose lists are all empty has no tensor to dispatch on: the dispatcher refuses it
    # before any kernel runs; the Python entries return early instead)
    p, g = torch.zeros(0), torch.zeros(0)
    ops.fused_sgd([p], [g], [], [], 0.1, 0.0, 0.0, 0.0, False, False, False, None, None)


def test_unused_state_lists_may_be_full():
    """An unused state list may be passed in full (and is then left alone)."""
    hp = dict(CASES[0][1])
    ours = Lists("adam", hp, [torch.float32] * len(SIZES))
    same = ours.copy()
    unused = [torch.full(p.shape, 7.0) for p in ours.params]
    ours.states["max_exp_avg_sqs"] = unused
    run_steps(ours, [same], nsteps=1)
    assert all(bool((u == 7).all()) for u in unused)
    ours.states["max_exp_avg_sqs"] = []
    compare(ours, same)


# ---------------------------------------------------------------------------------------------
# opcheck
# ---------------------------------------------------------------------------------------------

def _small(op, hp, master=False):
    sizes = [(3, 4), (5,), ()]
    dtype = torch.bfloat16 if master else torch.float32
    lists = Lists(op, hp, [dtype] * 3, sizes=sizes, master=master, step0=1)
    for g in lists.grads:
        g.copy_(torch.randn(g.shape))
    return lists


@pytest.mark.parametrize("master", [False, True])
@pytest.mark.parametrize("case", [CASES[3], CASES[7], CASES[9], CASES[12]], ids=_ids)
def test_opcheck(case, master):
    op, hp = case
    lists = _small(op, hp, master)
    torch.library.opcheck(getattr(ops, f"fused_{op}").default,
                          lists.args(grad_scale=torch.tensor([2.0]), found_inf=torch.zeros(1)))


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

ADAM = CASES[3][1]  # amsgrad + decoupled weight decay: every Adam list in use
SGD_MOM = CASES[6][1]
RMS_ALL = CASES[12][1]  # centered + momentum


def _bad(op, hp, mutate, master=False, dtype=torch.float32):
    lists = Lists(op, hp, [dtype] * 3, sizes=[(4, 6), (5,), ()], master=master)
    mutate(lists)
    return lists


def _set(lists, name, i, t):
    (lists.steps if name == "steps" else lists.all_tensors()[name])[i] = t


BAD = [
    ("adam", ADAM, lambda L: L.grads.pop(), r"grads must have one tensor per param \(3\)"),
    ("adam", ADAM, lambda L: L.states["exp_avgs"].pop(), r"exp_avgs must have one tensor"),
    ("adam", ADAM, lambda L: L.states["max_exp_avg_sqs"].clear(), r"max_exp_avg_sqs must have"),
    ("adam", ADAM, lambda L: L.steps.pop(), r"steps must have one tensor"),
    ("adam", ADAM, lambda L: L.master.append(torch.zeros(1)), r"master_params must have"),
    ("sgd", SGD_MOM, lambda L: L.states["momentum_buffers"].clear(), r"momentum_buffers must"),
    ("rmsprop", RMS_ALL, lambda L: L.states["grad_avgs"].clear(), r"grad_avgs must have"),
    ("rmsprop", RMS_ALL, lambda L: L.states["momentum_buffers"].pop(), r"momentum_buffers must"),
    ("adam", ADAM, lambda L: _set(L, "exp_avg_sqs", 1, torch.zeros(6)),
     r"exp_avg_sqs\[1\] has 6 elements but params\[1\] has 5"),
    ("adagrad", CASES[9][1], lambda L: _set(L, "grads", 0, torch.zeros(4, 5)),
     r"grads\[0\] has 20 elements"),
    ("adam", ADAM, lambda L: _set(L, "params", 0, torch.zeros(6, 4).t()),
     r"params\[0\] must be contiguous"),
    ("sgd", SGD_MOM, lambda L: _set(L, "momentum_buffers", 0, torch.zeros(6, 4).t()),
     r"momentum_buffers\[0\] must be contiguous"),
    ("adam", ADAM, lambda L: _set(L, "grads", 1, torch.zeros(5, dtype=torch.float64)),
     r"grads\[1\] must be Float"),
    ("adam", ADAM, lambda L: _set(L, "exp_avgs", 2, torch.zeros((), dtype=torch.bfloat16)),
     r"exp_avgs\[2\] must be Float"),
    ("adam", ADAM, lambda L: (_set(L, "params", 1, torch.zeros(5, dtype=torch.int32)),
                              _set(L, "grads", 1, torch.zeros(5, dtype=torch.int32))),
     r"params\[1\] must be float32, float64, float16 or bfloat16"),
    ("adagrad", CASES[9][1], lambda L: (_set(L, "params", 0, torch.zeros(4, 6, dtype=torch.cfloat)),
                                        _set(L, "grads", 0, torch.zeros(4, 6, dtype=torch.cfloat))),
     r"params\[0\] is complex"),
    ("adam", ADAM, lambda L: _set(L, "steps", 0, torch.ones(1, dtype=torch.float64)),
     r"steps\[0\] must be a 1-element float32"),
    ("adam", ADAM, lambda L: _set(L, "steps", 0, torch.ones(2)),
     r"steps\[0\] must be a 1-element float32"),
    ("adam", ADAM, lambda L: L.master.extend(p.float() for p in L.params),
     r"with master_params, params\[0\] must be float16 or bfloat16"),
]


@pytest.mark.parametrize("op, hp, mutate, match", BAD,
                         ids=[f"{i}-{b[0]}-{b[3][:24]}" for i, b in enumerate(BAD)])
def test_bad_input(op, hp, mutate, match):
    lists = _bad(op, hp, mutate)
    with pytest.raises(RuntimeError, match=match):
        op_fn(op)(*lists.args())


def test_bad_master_state_dtype():
    def mutate(L):
        L.states["exp_avgs"][1] = L.states["exp_avgs"][1].to(torch.bfloat16)
    lists = _bad("adam", ADAM, mutate, master=True, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"exp_avgs\[1\] must be Float \(float32 with master"):
        op_fn("adam")(*lists.args())
    lists = _bad("adam", ADAM, lambda L: None, master=True, dtype=torch.bfloat16)
    lists.master[0] = lists.master[0].to(torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"master_params\[0\] must be Float"):
        op_fn("adam")(*lists.args())


@pytest.mark.parametrize("which", ["grad_scale", "found_inf"])
def test_bad_scaler(which):
    lists = _bad("sgd", SGD_MOM, lambda L: None)
    kw = {which: torch.ones(2)}
    with pytest.raises(RuntimeError, match=which + " must be a 1-element float32"):
        op_fn("sgd")(*lists.args(**kw))
    kw = {which: torch.ones(1, dtype=torch.float64)}
    with pytest.raises(RuntimeError, match=which + " must be a 1-element float32"):
        op_fn("sgd")(*lists.args(**kw))


def test_sparse_grad_rejected():
    lists = _bad("sgd", SGD_MOM, lambda L: None)
    lists.grads[0] = torch.zeros(4, 6).to_sparse()
    with pytest.raises(RuntimeError, match=r"grads\[0\] must be a dense \(strided\) tensor"):
        op_fn("sgd")(*lists.args())
