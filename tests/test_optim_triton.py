"""The fused optimizers' Triton kernels (kernels/optim.py), called directly with the op schemas'
arguments, against the reference update equations (leedl_fast/reference/optim.py).

Here (CPU): under the Triton interpreter, with a 32-element BLOCK and ~4 programs per launch, so
that the lists -- 0-dim, empty, 1, 7, 97 elements and a 299-element tensor spanning several
chunks, each chunk several blocks plus a masked tail -- cross every boundary the GPU sizes do.
2-3 steps of every variant. fp32 against the reference run in float64 (1e-5 relative to
max(1, |x|)); fp64 to 1e-12; fp16/bf16 against the reference run on the same low-precision
tensors (its math in fp32, rounded on store as the kernel does) within 2 ulps. Also: lists of
mixed dtypes, fp32 master weights, steps differing across tensors, steps read in the kernel (the
capturable path, forced under the interpreter), grad_scale/found_inf (found_inf: nothing written,
bit for bit), NaN gradients, unaligned views, and the metadata-table cache.
On a GPU (`make test-gpu`, TRITON_INTERPRET=0) the same tests run on CUDA tensors, plus the
@pytest.mark.gpu ones: million-element lists in bf16/fp32 and a CUDA-graph-captured step.
"""
import pytest
import torch

from leedl_fast.reference import optim as ref

from .conftest import HAS_CUDA, INTERPRETED

pytestmark = pytest.mark.skipif(not (INTERPRETED or HAS_CUDA),
                                reason="Triton needs the interpreter or a GPU")
kernels = pytest.importorskip("leedl_fast.kernels.optim", reason="triton is not installed")
DEVICE = "cuda" if HAS_CUDA and not INTERPRETED else "cpu"

SHAPES = [(), (0,), (1,), (7,), (97,), (13, 23)]
EPS = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    """Interpreter-sized launches: 32-element blocks, chunks of up to 3 blocks (299 elements:
    4 chunks, the last one 11 elements); a fresh table cache per test."""
    if INTERPRETED:
        monkeypatch.setattr(kernels, "FORCE_BLOCK", 32)
        monkeypatch.setattr(kernels, "TARGET_PROGRAMS", 4)
    kernels.clear_cache()
    yield
    kernels.clear_cache()


# ------------------------------------------------------------------------------ the cases
# Each op: which tensor lists it takes (in order, after params and grads), and how to fill the
# state (v-like state positive, as the sums of squares are). Keyword hyperparameters per variant.

STATE_LISTS = {
    "adam": ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
    "sgd": ("momentum_buffers",),
    "adagrad": ("state_sums",),
    "rmsprop": ("square_avgs", "grad_avgs", "momentum_buffers"),
}
POSITIVE = {"exp_avg_sqs", "max_exp_avg_sqs", "state_sums", "square_avgs"}
HAS_STEPS = {"adam", "adagrad"}

ADAM = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
        "decoupled_weight_decay": False, "amsgrad": False, "maximize": False}
SGD = {"lr": 1e-2, "weight_decay": 0.0, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
       "maximize": False, "is_first_step": False}
ADAGRAD = {"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0, "eps": 1e-10, "maximize": False}
RMSPROP = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0,
           "centered": False, "maximize": False}

VARIANTS = {
    "adam": ("adam", ADAM),
    "adam-l2": ("adam", {**ADAM, "weight_decay": 0.1}),
    "adamw": ("adam", {**ADAM, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    "amsgrad": ("adam", {**ADAM, "amsgrad": True, "weight_decay": 0.01,
                         "decoupled_weight_decay": True}),
    "adam-maximize": ("adam", {**ADAM, "maximize": True, "beta1": 0.0}),
    "sgd": ("sgd", SGD),
    "sgd-momentum": ("sgd", {**SGD, "momentum": 0.9, "weight_decay": 0.1}),
    "sgd-dampening": ("sgd", {**SGD, "momentum": 0.9, "dampening": 0.3}),
    "sgd-nesterov": ("sgd", {**SGD, "momentum": 0.9, "nesterov": True, "maximize": True}),
    "sgd-first-step": ("sgd", {**SGD, "momentum": 0.9, "dampening": 0.5, "is_first_step": True}),
    "adagrad": ("adagrad", ADAGRAD),
    "adagrad-decay": ("adagrad", {**ADAGRAD, "lr_decay": 0.1, "weight_decay": 0.1,
                                  "maximize": True}),
    "rmsprop": ("rmsprop", RMSPROP),
    "rmsprop-centered": ("rmsprop", {**RMSPROP, "centered": True}),
    "rmsprop-momentum": ("rmsprop", {**RMSPROP, "momentum": 0.9, "weight_decay": 0.1}),
    "rmsprop-all": ("rmsprop", {**RMSPROP, "momentum": 0.5, "centered": True, "maximize": True}),
}


def used(op, name, hp):
    """Whether the op reads state list `name` with these hyperparameters."""
    return {"max_exp_avg_sqs": hp.get("amsgrad"), "momentum_buffers": hp.get("momentum", 0) != 0,
            "grad_avgs": hp.get("centered")}.get(name, True)


def make_state(op, hp, shapes, dtypes, master=False, step_device="cpu", first_step=1.0):
    """{list name: tensors} for one call: params, grads, the used state lists (unused ones
    empty), master_params (fp32 copies of the params when master), steps."""
    def like(fill):
        return [fill(s).to(DEVICE, torch.float32 if master else dt) for s, dt in
                zip(shapes, dtypes)]

    params = [torch.randn(s).to(DEVICE, dt) for s, dt in zip(shapes, dtypes)]
    lists = {"params": params,
             "grads": [torch.randn(s).to(DEVICE, dt) for s, dt in zip(shapes, dtypes)]}
    for name in STATE_LISTS[op]:
        if not used(op, name, hp):
            lists[name] = []
        elif name in POSITIVE:
            lists[name] = like(lambda s: torch.rand(s) + 0.5)
        else:
            lists[name] = like(lambda s: 0.1 * torch.randn(s))
    lists["master_params"] = []
    if master:  # the fp32 master is the truth, the params its rounding
        lists["master_params"] = [p.float() + 1e-3 * torch.randn_like(p.float()) for p in params]
        for p, m in zip(params, lists["master_params"]):
            p.copy_(m)
    if op in HAS_STEPS:
        lists["steps"] = [torch.full((1,), first_step, device=step_device) for _ in shapes]
    return lists


def call(fn_module, op, lists, hp, **kw):
    names = ["params", "grads", *STATE_LISTS[op], "master_params"] + \
        (["steps"] if op in HAS_STEPS else [])
    getattr(fn_module, f"fused_{op}")(*[lists[n] for n in names], **hp, **kw)


def clone(lists, dtype=None):
    """Copies of every list (steps shared: the ops only read them); dtype: cast to it."""
    return {n: list(ts) if n == "steps" else
            [t.clone() if dtype is None else t.to(dtype) for t in ts] for n, ts in lists.items()}


def next_step(lists):
    for s in lists.get("steps", []):
        s.add_(1)  # the caller's increment (shared by the kernel's and the reference's lists)


def assert_close(got, want, name, dtype):
    assert got.shape == want.shape, name
    if got.numel() == 0:
        return
    g, w = got.double(), want.double().to(got.device)
    assert torch.equal(torch.isnan(g), torch.isnan(w)), f"{name}: NaNs differ"
    g, w = torch.nan_to_num(g), torch.nan_to_num(w)
    err = (g - w).abs()
    if dtype in EPS:  # 2 ulps of each element (and of the list's mean size near zero)
        tol = 2 * EPS[dtype] * (w.abs() + w.abs().mean())
    elif dtype == torch.float64:
        tol = 1e-12 * w.abs().clamp(min=1)
    else:
        tol = 1e-5 * w.abs().clamp(min=1)
    bad = err > tol
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {err.numel()} elements off, max error "
                           f"{err.max().item():.3g}, e.g. got {g[bad][:3].tolist()} want "
                           f"{w[bad][:3].tolist()}")


def compare(lists, expect, what=None):
    """Every list (or those named in `what`) against the expected one, by the kernel's dtype."""
    for name, ts in lists.items():
        if name == "steps" or (what is not None and name not in what):
            continue
        for i, (got, want) in enumerate(zip(ts, expect[name])):
            assert_close(got, want, f"{name}[{i}] ({got.dtype})", got.dtype)


def run_steps(op, hp, lists, steps=3, oracle_dtype=torch.float64, **kw):
    """`steps` updates by the kernel and by the reference (on float64 copies, or on same-dtype
    copies with oracle_dtype=None); returns the reference's lists."""
    expect = clone(lists, oracle_dtype)
    for k in range(steps):
        if k:
            next_step(lists)
        step_hp = {**hp, "is_first_step": hp["is_first_step"] and k == 0} \
            if "is_first_step" in hp else hp
        call(kernels, op, lists, step_hp, **kw)
        call(ref, op, expect, step_hp, **kw)
    return expect


# ------------------------------------------------------------------------------ every variant

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_fp32_against_float64(variant):
    op, hp = VARIANTS[variant]
    lists = make_state(op, hp, SHAPES, [torch.float32] * len(SHAPES))
    compare(lists, run_steps(op, hp, lists))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", ["adamw", "amsgrad", "sgd-nesterov", "sgd-first-step",
                                     "adagrad-decay", "rmsprop-all"])
def test_variant_16bit_against_same_dtype_reference(variant, dtype):
    op, hp = VARIANTS[variant]
    lists = make_state(op, hp, SHAPES, [dtype] * len(SHAPES))
    compare(lists, run_steps(op, hp, lists, oracle_dtype=None))


@pytest.mark.parametrize("variant", ["adamw", "sgd-momentum", "adagrad-decay", "rmsprop-all"])
def test_fp64_math(variant):
    op, hp = VARIANTS[variant]
    lists = make_state(op, hp, SHAPES, [torch.float64] * len(SHAPES))
    compare(lists, run_steps(op, hp, lists, steps=2))


# ------------------------------------------------------------------------------ lists

@pytest.mark.parametrize("variant", ["amsgrad", "sgd-momentum", "adagrad", "rmsprop-all"])
def test_mixed_dtypes_in_one_list(variant):
    """fp32, bf16, fp16 and fp64 tensors in one call: one launch per dtype group."""
    op, hp = VARIANTS[variant]
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.bfloat16,
              torch.float32]
    lists = make_state(op, hp, SHAPES, dtypes)
    compare(lists, run_steps(op, hp, lists, oracle_dtype=None))
    assert len(kernels._TABLES) == 4  # four groups, one table each


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["amsgrad", "sgd-momentum", "adagrad-decay", "rmsprop-all"])
def test_master_params(variant, dtype):
    """16-bit params with fp32 master weights and fp32 state: the master and state match the
    float64 reference to fp32 precision, params are exactly the master rounded."""
    op, hp = VARIANTS[variant]
    lists = make_state(op, hp, SHAPES, [dtype] * len(SHAPES), master=True)
    expect = run_steps(op, hp, lists, steps=2)
    compare(lists, expect, what=[*STATE_LISTS[op], "master_params"])
    for p, m in zip(lists["params"], lists["master_params"]):
        assert p.dtype == dtype and torch.equal(p, m.to(dtype))


@pytest.mark.parametrize("in_kernel", [False, True])
@pytest.mark.parametrize("variant", ["adamw", "amsgrad", "adagrad-decay"])
def test_steps_differ_across_tensors(monkeypatch, variant, in_kernel):
    """Each tensor its own step count; host bias corrections (grouped by step value) or read in
    the kernel (the capturable path: forced under the interpreter, where all is on the CPU)."""
    op, hp = VARIANTS[variant]
    monkeypatch.setattr(kernels, "STEPS_IN_KERNEL", in_kernel)
    lists = make_state(op, hp, SHAPES, [torch.float32] * len(SHAPES),
                       step_device=DEVICE if in_kernel else "cpu")
    for i, s in enumerate(lists["steps"]):
        s.fill_(1 + 3 * (i % 3))  # 1, 4, 7, 1, 4, 7
    compare(lists, run_steps(op, hp, lists))
    # host steps: one launch (table) per distinct step value; in the kernel: one for all
    assert len(kernels._TABLES) == (1 if in_kernel else 3)


def test_steps_in_kernel_16bit(monkeypatch):
    monkeypatch.setattr(kernels, "STEPS_IN_KERNEL", True)
    op, hp = VARIANTS["amsgrad"]
    lists = make_state(op, hp, SHAPES, [torch.bfloat16] * len(SHAPES), step_device=DEVICE)
    compare(lists, run_steps(op, hp, lists, oracle_dtype=None))


def test_empty_lists_and_empty_tensors():
    for variant in ("adam", "sgd-momentum", "adagrad", "rmsprop-all"):
        op, hp = VARIANTS[variant]
        call(kernels, op, make_state(op, hp, [], []), hp)  # no tensors at all
        lists = make_state(op, hp, [(0,), (0, 3)], [torch.float32] * 2)
        call(kernels, op, lists, hp)  # only empty tensors: nothing to launch
        assert not kernels._TABLES


def test_unaligned_views():
    """Tensors that start 1 element into their storage: no 16-byte vector hints (a group of
    their own), same results."""
    op, hp = VARIANTS["amsgrad"]
    lists = make_state(op, hp, SHAPES, [torch.float32] * len(SHAPES))
    for name in ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
        for i in (3, 5):  # the 7- and 299-element tensors
            t = lists[name][i]
            base = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
            view = base[1:].view(t.shape)
            view.copy_(t)
            lists[name][i] = view
    compare(lists, run_steps(op, hp, lists))
    assert len(kernels._TABLES) == 2  # aligned and unaligned groups


# ------------------------------------------------------------------------------ amp, NaN

@pytest.mark.parametrize("scale", [1024.0, 3.0])
@pytest.mark.parametrize("variant", ["amsgrad", "sgd-nesterov", "adagrad-decay", "rmsprop-all"])
def test_grad_scale(variant, scale):
    """grads divided by grad_scale (IEEE division: 3.0 is not a power of two), written back
    unscaled, used for the update."""
    op, hp = VARIANTS[variant]
    lists = make_state(op, hp, SHAPES, [torch.float32] * len(SHAPES))
    for g in lists["grads"]:
        g.mul_(scale)
    kw = {"grad_scale": torch.full((1,), scale, device=DEVICE),
          "found_inf": torch.zeros(1, device=DEVICE)}
    expect = clone(lists, torch.float32)
    call(kernels, op, lists, hp, **kw)
    call(ref, op, expect, hp, **kw)
    for got, want in zip(lists["grads"], expect["grads"]):  # the same IEEE quotient
        assert torch.equal(got, want)
    compare(lists, expect)


@pytest.mark.parametrize("master", [False, True])
@pytest.mark.parametrize("variant", ["amsgrad", "sgd-momentum", "adagrad", "rmsprop-all"])
def test_found_inf_writes_nothing(monkeypatch, variant, master):
    op, hp = VARIANTS[variant]
    monkeypatch.setattr(kernels, "STEPS_IN_KERNEL", True)  # the capturable path too
    lists = make_state(op, hp, SHAPES, [torch.bfloat16 if master else torch.float32] *
                       len(SHAPES), master=master, step_device=DEVICE)
    before = clone(lists)
    call(kernels, op, lists, hp, grad_scale=torch.full((1,), 8.0, device=DEVICE),
         found_inf=torch.ones(1, device=DEVICE))
    for name, ts in lists.items():
        for got, was in zip(ts, before[name]):
            assert torch.equal(got, was), name


@pytest.mark.parametrize("variant", ["amsgrad", "sgd-momentum", "adagrad", "rmsprop-all"])
def test_nan_grads_propagate(variant):
    """A NaN gradient makes exactly that element's parameter and state NaN, as in torch (the
    amsgrad max keeps the NaN: propagate_nan=ALL)."""
    op, hp = VARIANTS[variant]
    lists = make_state(op, hp, SHAPES, [torch.float32] * len(SHAPES))
    lists["grads"][4][[0, 5, 96]] = float("nan")
    lists["grads"][5][3, 7] = float("nan")
    expect = run_steps(op, hp, lists, steps=2)
    compare(lists, expect)
    assert torch.isnan(lists["params"][4]).sum() == 3
    if op == "adam":
        assert torch.isnan(lists["max_exp_avg_sqs"][4]).sum() == 3


# ------------------------------------------------------------------------------ the table cache

def test_table_cache_reused_and_rebuilt(monkeypatch):
    op, hp = VARIANTS["adamw"]
    lists = make_state(op, hp, SHAPES, [torch.float32] * len(SHAPES))
    expect = clone(lists, torch.float64)
    call(kernels, op, lists, hp)
    call(ref, op, expect, hp)
    assert len(kernels._TABLES) == 1
    table = next(iter(kernels._TABLES.values()))
    next_step(lists)
    call(kernels, op, lists, hp)  # same tensors: the same table, nothing rebuilt
    call(ref, op, expect, hp)
    assert list(kernels._TABLES.values()) == [table]
    # a tensor replaced (new storage): a new table; the results still right
    lists["exp_avgs"][4] = lists["exp_avgs"][4].clone()
    next_step(lists)
    call(kernels, op, lists, hp)
    call(ref, op, expect, hp)
    assert len(kernels._TABLES) == 2
    compare(lists, expect)
    # the LRU keeps CACHE_SIZE tables
    monkeypatch.setattr(kernels, "CACHE_SIZE", 2)
    for _ in range(3):
        lists["params"][3] = lists["params"][3].clone()
        call(kernels, op, lists, hp)
    assert len(kernels._TABLES) == 2


def test_chunks_cover_every_element_once():
    """The chunk table: every element of every tensor in exactly one chunk, chunks a multiple
    of the block."""
    sizes = [1, 7, 97, 299, 1000]
    rows = [(0,) * 7 + (n,) for n in sizes]
    chunk = kernels.chunk_size(sum(sizes), 32)
    assert chunk % 32 == 0
    table = kernels._Table(rows, chunk, torch.device("cpu"))
    chunks = table.chunks.view(-1, 2)
    covered = [torch.zeros(n, dtype=torch.int64) for n in sizes]
    for index, start in chunks.tolist():
        covered[index][start:start + chunk] += 1
    assert all(bool((c == 1).all()) for c in covered)
    assert table.n_chunks == sum(-(-n // chunk) for n in sizes)


# ------------------------------------------------------------------------------ GPU

GPU_SHAPES = [(1024, 1024), (4096,), (1,), (333, 777), (0,), (50257, 8)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["amsgrad", "adamw", "sgd-nesterov", "adagrad-decay",
                                     "rmsprop-all"])
def test_gpu_large_lists(variant, dtype):
    op, hp = VARIANTS[variant]
    lists = make_state(op, hp, GPU_SHAPES, [dtype] * len(GPU_SHAPES))
    compare(lists, run_steps(op, hp, lists, oracle_dtype=None if dtype in EPS else torch.float64))


@pytest.mark.gpu
def test_gpu_master_bf16_large():
    op, hp = VARIANTS["adamw"]
    lists = make_state(op, hp, GPU_SHAPES, [torch.bfloat16] * len(GPU_SHAPES), master=True)
    expect = run_steps(op, hp, lists, steps=2)
    compare(lists, expect, what=["exp_avgs", "exp_avg_sqs", "master_params"])
    for p, m in zip(lists["params"], lists["master_params"]):
        assert torch.equal(p, m.to(torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["adamw", "adagrad-decay"])
def test_gpu_cuda_graph_capture(variant):
    """Steps on the device: one eager step builds the table, then a captured step (the caller's
    step increment + the kernel, grad_scale/found_inf read on the device) replays."""
    op, hp = VARIANTS[variant]
    lists = make_state(op, hp, GPU_SHAPES, [torch.float32] * len(GPU_SHAPES),
                       step_device="cuda", first_step=0.0)
    kw = {"grad_scale": torch.full((1,), 4.0, device="cuda"),
          "found_inf": torch.zeros(1, device="cuda")}
    expect = clone(lists, torch.float64)
    expect["steps"] = [s.clone() for s in lists["steps"]]
    grads = [[torch.randn_like(g) * 4 for g in lists["grads"]] for _ in range(4)]

    def step(ls, k, module):
        for s in ls["steps"]:
            s.add_(1)
        for g, new in zip(ls["grads"], grads[k]):
            g.copy_(new)
        call(module, op, ls, hp, **kw)

    def captured():
        for s in lists["steps"]:
            s.add_(1)
        call(kernels, op, lists, hp, **kw)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step(lists, 0, kernels)  # eager warm-up: compiles and caches the table
    torch.cuda.current_stream().wait_stream(stream)
    step(expect, 0, ref)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured()
    for k in range(1, 4):
        for g, new in zip(lists["grads"], grads[k]):
            g.copy_(new)
        graph.replay()
        step(expect, k, ref)
    torch.cuda.synchronize()
    compare(lists, expect)
    kw["found_inf"].fill_(1)  # the same graph, now skipping: nothing changes
    before = clone(lists)
    graph.replay()
    torch.cuda.synchronize()
    for name in ("params", "grads"):
        for got, was in zip(lists[name], before[name]):
            assert torch.equal(got, was)


def test_launcher_refuses_out_of_bounds_lists():
    """A direct call with a state smaller than its param, a None entry, or a misplaced
    grad_scale is refused before any address reaches the kernel."""
    p, g = torch.randn(50), torch.randn(50)
    step = [torch.ones(())]
    with pytest.raises(ValueError, match=r"state list 0\[0\].*50 elements"):
        kernels.fused_adam([p], [g], [torch.zeros(5)], [torch.zeros(50)], [], [], step, 1e-3,
                           0.9, 0.999, 1e-8, 0.0, False, False, False)
    with pytest.raises(TypeError, match=r"grads\[0\] must be a tensor"):
        kernels.fused_sgd([p], [None], [], [], 0.1, 0.0, 0.0, 0.0, False, False, False)
    with pytest.raises(ValueError, match="grad_scale"):
        kernels.fused_sgd([p], [g], [], [], 0.1, 0.0, 0.0, 0.0, False, False, False,
                          torch.ones(2))
