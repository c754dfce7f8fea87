"""Normalization family: every backend against the float64 reference (outputs and gradients),
odd shapes, layouts, edge cases, opcheck, gradcheck, torch.compile, modules and bad input."""
import pytest
import torch
import torch.nn.functional as TF

import leedl_fast
import leedl_fast.functional as F
from leedl_fast.reference import norm as reference

from .conftest import INTERPRETED, cpu_backends, gpu_backends

OPS = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"]
WIDTHS = [1, 7, 97, 1023, 4099, 16384]
# (dtype, atol, rtol) for fp32 against float64; half types use the 2x/3x-of-PyTorch rule below.
FP32_TOL = {"out": (1e-5, 1e-5), "grad": (5e-5, 1e-4)}


def has_bias(op):
    return op in ("layer_norm", "add_layer_norm")


def has_res(op):
    return op.startswith("add_")


def make_inputs(op, shape, norm_ndim, dtype, device="cpu", scale=2.0, shift=0.5):
    nshape = shape[len(shape) - norm_ndim:]
    x = torch.randn(shape, dtype=dtype, device=device) * scale + shift
    inputs = {
        "x": x,
        "residual": torch.randn(shape, dtype=dtype, device=device) if has_res(op) else None,
        "weight": torch.randn(nshape, dtype=dtype, device=device),
        "bias": torch.randn(nshape, dtype=dtype, device=device) if has_bias(op) else None,
        "dy": torch.randn(shape, dtype=dtype, device=device),
        "dres": torch.randn(shape, dtype=dtype, device=device) if has_res(op) else None,
    }
    return nshape, inputs


def run(fn_module, op, nshape, inputs, eps=1e-5, cast=None):
    """Forward + backward of one op through `fn_module` (leedl_fast.functional, the reference or
    torch's eager equivalents); returns [out, (residual_out), dx, (dresidual), dweight, (dbias)]."""
    leaves = {k: (v if cast is None else v.to(cast)).detach().requires_grad_()
              for k, v in inputs.items() if v is not None and k in ("x", "residual", "weight",
                                                                      "bias")}
    x, r, w, b = (leaves.get(k) for k in ("x", "residual", "weight", "bias"))
    args = (x, r) if has_res(op) else (x,)
    kwargs = {"weight": w, "eps": eps}
    if has_bias(op):
        kwargs["bias"] = b
    outs = getattr(fn_module, op)(*args, nshape, **kwargs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads_in = [inputs["dy"], inputs["dres"]][:len(outs)]
    grads_in = [g if cast is None else g.to(cast) for g in grads_in]
    torch.autograd.backward(outs, grads_in)
    result = list(outs) + [x.grad]
    if r is not None:
        result.append(r.grad)
    result += [w.grad] + ([b.grad] if b is not None else [])
    return [t.detach() for t in result]


class _TorchEager:
    """torch's own ops in the input dtype: the yardstick for half-precision error."""
    layer_norm = staticmethod(TF.layer_norm)
    rms_norm = staticmethod(TF.rms_norm)

    @staticmethod
    def add_layer_norm(x, r, nshape, weight=None, bias=None, eps=1e-5):
        s = x + r
        return TF.layer_norm(s, nshape, weight, bias, eps), s

    @staticmethod
    def add_rms_norm(x, r, nshape, weight=None, eps=None):
        s = x + r
        return TF.rms_norm(s, nshape, weight, eps), s


def check_against_reference(op, backend, shape, norm_ndim=1, dtype=torch.float32, device="cpu",
                            relative_to_torch=False, floor=0.0, **make_kw):
    nshape, inputs = make_inputs(op, shape, norm_ndim, dtype, device, **make_kw)
    with leedl_fast.backend(backend):
        got = run(F, op, nshape, inputs)
    want = run(reference, op, nshape, inputs, cast=torch.float64)
    n_out = 2 if has_res(op) else 1
    if dtype in (torch.float32, torch.float64) and not relative_to_torch:
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == dtype and g.shape == w.shape
            atol, rtol = FP32_TOL["out" if i < n_out else "grad"]
            torch.testing.assert_close(g.double(), w, atol=atol, rtol=rtol,
                                       msg=lambda m: f"{op} {backend} output {i}: {m}")
        return
    # Half types (and ill-conditioned inputs): error vs float64 at most 2x PyTorch's own in the
    # same dtype for outputs, 3x for gradients.
    torch_ref = run(_TorchEager, op, nshape, inputs)
    for i, (g, t, w) in enumerate(zip(got, torch_ref, want)):
        assert g.dtype == dtype
        ours = (g.double() - w).abs().max().item()
        theirs = (t.double() - w).abs().max().item()
        ulp = torch.finfo(dtype).eps * w.abs().max().item()  # one ulp at the output's scale
        factor = 2 if i < n_out else 3
        assert ours <= factor * theirs + max(ulp, floor), \
            f"{op} {backend} {dtype} output {i}: error {ours:.3g} vs torch's {theirs:.3g}"


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("op", OPS)
def test_widths_fp32(op, width, backend):
    rows = 3 if width > 4096 else 17
    check_against_reference(op, backend, (rows, width))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", OPS)
def test_half_precision(op, dtype, backend):
    check_against_reference(op, backend, (19, 1023), dtype=dtype)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("op", OPS)
def test_leading_dims_and_multidim_normalized_shape(op, backend):
    check_against_reference(op, backend, (2, 3, 5, 12), norm_ndim=2)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("op", OPS)
def test_large_mean_is_stable(op, backend):
    # mean 1e4, std 1: E[x^2] - E[x]^2 would lose every digit in fp32 (variance error ~ ulp(1e8)
    # = 8, outputs off by O(1)); a centred variance keeps the error at fp32's conditioning limit,
    # ~ulp(1e4) * rstd * |weight| ~ 1e-3 * 1 * 4, like torch's own kernel.
    conditioning = torch.finfo(torch.float32).eps * 1e4 * 4
    check_against_reference(op, backend, (9, 768), scale=1.0, shift=1e4, relative_to_torch=True,
                            floor=conditioning)


@pytest.mark.parametrize("backend", [b for b in cpu_backends() if b == "triton"])
@pytest.mark.parametrize("op", OPS)
def test_triton_looped_variant(op, backend, monkeypatch):
    # Force rows wider than one block down the looped kernels at interpreter-friendly sizes.
    from leedl_fast.kernels import norm as kernels

    monkeypatch.setattr(kernels, "FWD_MAX_FUSED", 64)
    monkeypatch.setattr(kernels, "BWD_MAX_FUSED", 64)
    monkeypatch.setattr(kernels, "LOOP_BLOCK_N", 32)
    assert not kernels.fwd_config(1023)[1]
    check_against_reference(op, backend, (5, 1023))
    check_against_reference(op, backend, (70, 97))  # more rows than programs: row loop


def _last_level_cache_bytes():
    try:  # as csrc/cpu/memory.h reads it
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            return int(f.read().strip().rstrip("K")) * 1024
    except (OSError, ValueError):
        return 32 << 20


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", OPS)
def test_cpu_large_outputs(op, dtype):
    # A working set past the last-level cache takes the streaming-store paths (fp32 stores from
    # registers; bf16 rows streamed from a buffer) and outputs >= 32 MiB the huge-page
    # allocation (csrc/cpu/memory.h); rows of width 1000 (not a multiple of 8) start misaligned.
    # dweight/dbias sum thousands of rows in fp32: judged against torch's own error, not 1e-5.
    elem = torch.empty((), dtype=dtype).element_size()
    rows = max(2200, 2 * _last_level_cache_bytes() // (1000 * elem * 2) + 1)  # x + out > 2 LLC
    check_against_reference(op, "cpu", (rows, 1000), dtype=dtype, relative_to_torch=True)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_input(op, backend):
    nshape, inputs = make_inputs(op, (6, 64), 1, torch.float32)
    base = torch.randn(64, 12)
    inputs["x"] = base.t()[::2]  # (6, 64), strided in both dims
    assert not inputs["x"].is_contiguous()
    with leedl_fast.backend(backend):
        got = run(F, op, nshape, inputs)
    want = run(reference, op, nshape, inputs, cast=torch.float64)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("op", OPS)
def test_empty_batch(op, backend):
    nshape, inputs = make_inputs(op, (0, 33), 1, torch.float32)
    with leedl_fast.backend(backend):
        got = run(F, op, nshape, inputs)
    assert got[0].shape == (0, 33)
    assert torch.count_nonzero(got[-1]) == 0  # no rows: zero parameter gradients


@pytest.mark.parametrize("backend", cpu_backends())
def test_strided_weight_and_zero_width_rows(backend):
    x = torch.randn(5, 8)
    w, b = torch.randn(16)[::2], torch.randn(24)[::3]  # non-contiguous parameter views
    with leedl_fast.backend(backend):
        y = F.layer_norm(x, (8,), w, b)
        empty = F.rms_norm(torch.randn(4, 0), (0,), eps=0.0)  # eps 0 and no columns
    torch.testing.assert_close(y, TF.layer_norm(x, (8,), w, b), atol=1e-5, rtol=1e-5)
    assert empty.shape == (4, 0)


@pytest.mark.parametrize("backend", cpu_backends())
def test_no_weight_no_bias(backend):
    x = torch.randn(4, 50, requires_grad=True)
    with leedl_fast.backend(backend):
        y = F.layer_norm(x, (50,))
        z = F.rms_norm(x, [50])
        (y.sum() + (z * z).sum()).backward()
    want = TF.layer_norm(x.double(), (50,))
    torch.testing.assert_close(y.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z.double(), TF.rms_norm(x.double(), (50,),
                                                      eps=torch.finfo(torch.float32).eps),
                               atol=1e-5, rtol=1e-5)
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------- op-level checks

def _op_cases():
    x = torch.randn(5, 37)
    w, b = torch.randn(37), torch.randn(37)
    r = torch.randn(5, 37)
    for wt, bs in ((w, b), (None, None), (w, None)):
        yield "layer_norm_fwd", (x, wt, bs, 1e-5)
        yield "rms_norm_fwd", (x, wt, 1e-6)
        yield "add_layer_norm_fwd", (x, r, wt, bs, 1e-5)
        yield "add_rms_norm_fwd", (x, r, wt, 1e-6)
    _, mean, rstd = torch.ops.leedl_fast.layer_norm_fwd(x, w, b, 1e-5)
    _, rrstd = torch.ops.leedl_fast.rms_norm_fwd(x, w, 1e-5)
    dy = torch.randn(5, 37)
    for dres in (None, torch.randn(5, 37)):
        yield "layer_norm_bwd", (dy, x, w, mean, rstd, dres, True)
        yield "layer_norm_bwd", (dy, x, None, mean, rstd, dres, False)
        yield "rms_norm_bwd", (dy, x, w, rrstd, dres)


@pytest.mark.parametrize("case", list(enumerate(_op_cases())), ids=lambda c: f"{c[0]}-{c[1][0]}")
def test_opcheck(case):
    _, (name, args) = case
    fwd = name.endswith("_fwd")
    args = tuple(a.clone().requires_grad_(fwd) if isinstance(a, torch.Tensor) and a.dim() else a
                 for a in args)
    torch.library.opcheck(getattr(torch.ops.leedl_fast, name).default, args)


@pytest.mark.parametrize("backend", [b for b in cpu_backends() if b != "reference"])
@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64(op, backend):
    nshape, inputs = make_inputs(op, (4, 6), 1, torch.float64)
    leaves = [inputs[k].requires_grad_() for k in ("x", "residual", "weight", "bias")
              if inputs[k] is not None]

    def fn(*tensors):
        it = iter(tensors)
        x = next(it)
        r = next(it) if has_res(op) else None
        w = next(it)
        kw = {"weight": w, "eps": 1e-5}
        if has_bias(op):
            kw["bias"] = next(it)
        args = (x, r) if has_res(op) else (x,)
        return getattr(F, op)(*args, nshape, **kw)

    with leedl_fast.backend(backend):
        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------ modules and compile

@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_module_matches_torch_and_loads_its_state_dict(cls):
    kwargs = {"elementwise_affine": True}
    theirs = getattr(torch.nn, cls)((4, 8), eps=1e-5, **kwargs)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours = getattr(leedl_fast.nn, cls)((4, 8), eps=1e-5, **kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 4, 8)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_module_options():
    m = leedl_fast.nn.LayerNorm(16, bias=False)
    assert m.bias is None and list(m.state_dict()) == ["weight"]
    m = leedl_fast.nn.LayerNorm(16, elementwise_affine=False)
    assert list(m.state_dict()) == []
    x = torch.randn(2, 16)
    torch.testing.assert_close(m(x), TF.layer_norm(x, (16,)), atol=1e-5, rtol=1e-5)


def test_accelerate_swaps_modules_and_keeps_weights():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.RMSNorm(8))
    x = torch.randn(5, 8)
    before = model(x)
    keys = list(model.state_dict())
    leedl_fast.accelerate(model)
    assert isinstance(model[1], leedl_fast.nn.LayerNorm)
    assert isinstance(model[2], leedl_fast.nn.RMSNorm)
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


class _AddNormBlock(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = leedl_fast.nn.LayerNorm(d)
        self.rms = leedl_fast.nn.RMSNorm(d)

    def forward(self, x, r):
        y, s = F.add_layer_norm(x, r, self.ln.normalized_shape, self.ln.weight, self.ln.bias)
        return self.rms(self.ln(y) + s)


def test_torch_compile_fullgraph():
    block = _AddNormBlock(32)
    x, r = torch.randn(2, 5, 32, requires_grad=True), torch.randn(2, 5, 32)
    eager = block(x, r)
    eager.sum().backward()
    g_eager = x.grad.clone()
    x.grad = None
    compiled = torch.compile(block, fullgraph=True)
    out = compiled(x, r)
    out.sum().backward()
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, g_eager, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, exc, words", [
    (lambda x: F.layer_norm(x, (33,)), ValueError, "normalized_shape"),
    (lambda x: F.layer_norm(x, ()), ValueError, "normalized_shape"),
    (lambda x: F.layer_norm(x, "32"), TypeError, "normalized_shape"),
    (lambda x: F.layer_norm(x, (32,), torch.ones(31)), ValueError, "weight"),
    (lambda x: F.rms_norm(x, (32,), torch.ones(4, 8)), ValueError, "weight"),
    (lambda x: F.layer_norm(x, (32,), None, torch.ones(32, device="meta")), ValueError, "bias"),
    (lambda x: F.layer_norm(x.long(), (32,)), TypeError, "floating point"),
    (lambda x: F.layer_norm(x, (32,), torch.ones(32, dtype=torch.int32)), TypeError, "weight"),
    (lambda x: F.layer_norm(x, (32,), eps=-1.0), ValueError, "eps"),
    (lambda x: F.rms_norm(x, (32,), eps=float("nan")), ValueError, "eps"),
    (lambda x: F.add_layer_norm(x, x[:, :16], (32,)), ValueError, "residual"),
    (lambda x: F.add_rms_norm(x, x.double(), (32,)), TypeError, "residual"),
    (lambda x: F.add_layer_norm(x, x.to("meta"), (32,)), ValueError, "residual"),
    (lambda x: F.layer_norm([1.0], (1,)), TypeError, "input"),
])
def test_bad_input_raises_clear_error(call, exc, words):
    x = torch.randn(4, 32)
    with pytest.raises(exc, match=words):
        call(x)


def test_backend_name_is_checked():
    with pytest.raises(ValueError, match="backend"):
        with leedl_fast.backend("fast"):
            pass


def test_kernel_level_checks_are_clear():
    with pytest.raises(RuntimeError, match="2-D"):
        torch.ops.leedl_fast.layer_norm_fwd(torch.randn(2, 3, 4), None, None, 1e-5)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.leedl_fast.rms_norm_fwd(torch.randn(8, 4).t(), None, 1e-5)


@pytest.mark.skipif(not INTERPRETED, reason="interpreter off: CPU tensors cannot run Triton")
def test_forced_cuda_backend_on_cpu_is_a_clear_error():
    with pytest.raises((NotImplementedError, RuntimeError), match="cuda"):
        with leedl_fast.backend("cuda"):
            F.layer_norm(torch.randn(2, 8), (8,))


# ------------------------------------------------------------------------------------ GPU

@pytest.mark.gpu
@pytest.mark.parametrize("backend", gpu_backends() or ["triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("width", [1, 97, 768, 4099, 8192, 16384, 32768])
@pytest.mark.parametrize("op", OPS)
def test_gpu_against_reference(op, width, dtype, backend):
    rows = 4 if width > 8192 else 65
    check_against_reference(op, backend, (rows, width), dtype=dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
def test_gpu_many_rows_non_contiguous(op):
    # More rows than the backward launches programs, and a strided input.
    check_against_reference(op, "triton", (5000, 512), device="cuda")
    nshape, inputs = make_inputs(op, (3, 1000), 1, torch.float32, "cuda")
    inputs["x"] = torch.randn(1000, 6, device="cuda").t()[::2]
    got = run(F, op, nshape, inputs)
    want = run(reference, op, nshape, inputs, cast=torch.float64)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, atol=5e-5, rtol=1e-4)
