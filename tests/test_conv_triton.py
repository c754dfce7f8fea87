"""The convolution family's Triton kernels (kernels/conv.py, kernels/conv_backward.py), called
directly with the op schemas' arguments, against the float64 reference
(leedl_fast/reference/conv.py) and autograd through it for the gradients.

Here (CPU): under the Triton interpreter, at small odd sizes that still cross tile edges (the
interpreter configs use 16-wide channel tiles and 64-row position tiles). fp32 must land within
2e-5 of the reference (relative to the tensor's largest value); fp16 within 2x torch's own fp16
error on the same inputs (3x for gradients; torch's CPU conv runs fp16); fp64 within 1e-10.
bf16 runs only on the GPU: tl.dot on bf16 is silently wrong under the interpreter.
On a GPU (`make test-gpu`, TRITON_INTERPRET=0) the same tests run on CUDA tensors, plus the
@pytest.mark.gpu ones: bf16/fp16 at channel counts that take the vectorized tensor-core paths.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from leedl_fast.reference import conv as ref

from .conftest import HAS_CUDA, INTERPRETED

pytestmark = pytest.mark.skipif(not (INTERPRETED or HAS_CUDA),
                                reason="Triton needs the interpreter or a GPU")
kernels = pytest.importorskip("leedl_fast.kernels.conv", reason="triton is not installed")
DEVICE = "cuda" if HAS_CUDA and not INTERPRETED else "cpu"
ACTS = ("none", "relu", "gelu", "silu")
TORCH_ACT = {"none": lambda t: t, "relu": F.relu, "gelu": F.gelu, "silu": F.silu}


# ------------------------------------------------------------------------------------ helpers

def _layout(t, layout):
    """t in a layout: "nchw", "cl" (channels_last) or "strided" (a non-contiguous slice)."""
    if t is None or layout == "nchw":
        return t
    if layout == "cl":
        return t.contiguous(memory_format=torch.channels_last)
    n, c, h, w = t.shape
    big = torch.zeros(n, 2 * c, h, 2 * w + 1, dtype=t.dtype, device=t.device)
    big[:, ::2, :, 1::2] = t
    return big[:, ::2, :, 1::2]


def make_conv(n, c, h, w, o, k, groups=1, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
              bias=True, residual=False, dtype=torch.float32, layout="nchw"):
    """Inputs of one conv2d_fwd call (weights scaled for unit-size outputs) and its geometry."""
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(n, c, h, w, device=DEVICE).to(dtype)
    weight = (torch.randn(o, c // groups, kh, kw, device=DEVICE) /
              math.sqrt(c // groups * kh * kw)).to(dtype)
    b = torch.randn(o, device=DEVICE).to(dtype) if bias else None
    oh = ref.out_size(h, kh, stride[0], padding[0], padding[1], dilation[0])
    ow = ref.out_size(w, kw, stride[1], padding[2], padding[3], dilation[1])
    r = torch.randn(n, o, oh, ow, device=DEVICE).to(dtype) if residual else None
    geometry = (list(stride), list(padding), list(dilation), groups)
    return (_layout(x, layout), weight, b, _layout(r, layout)), geometry


def _max_err(got, want):
    return (got.double() - want).abs().max().item() if want.numel() else 0.0


def assert_close(got, want, name, tol):
    """|got - want| <= tol * max(1, max |want|): relative to the tensor's scale (dweight and dbias
    are sums over every position, so their entries are large and their errors with them)."""
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert torch.isfinite(got).all(), name
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    err = _max_err(got, want)
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol:.1g} * {scale:.3g}"


def _with_zeros(inputs, geometry):
    """(x, weight, bias, residual) with zeros for an absent bias / residual: the same values, and
    autograd then gives dbias and dresidual (the sum of dz, and dz) for every case."""
    x, w, b, r = inputs
    stride, padding, dilation, _ = geometry
    oh = ref.out_size(x.shape[2], w.shape[2], stride[0], padding[0], padding[1], dilation[0])
    ow = ref.out_size(x.shape[3], w.shape[3], stride[1], padding[2], padding[3], dilation[1])
    b = torch.zeros(w.shape[0], dtype=x.dtype, device=x.device) if b is None else b
    r = torch.zeros(x.shape[0], w.shape[0], oh, ow, dtype=x.dtype, device=x.device) \
        if r is None else r
    return x, w, b, r


def reference(inputs, geometry, act, dout=None):
    """float64 out, z and (with dout) the gradients of (x, weight, bias, residual)."""
    stride, padding, dilation, groups = geometry
    leaves = [t.detach().double().requires_grad_() for t in _with_zeros(inputs, geometry)]
    x, w, b, r = leaves
    z = ref.conv2d_pre(x, w, b, stride, padding, dilation, groups) + r
    out = ref.activation(z, act)
    grads = list(torch.autograd.grad(out, leaves, dout.double())) if dout is not None else None
    return out.detach(), z.detach(), grads


def torch_same_dtype(inputs, geometry, act, dout):
    """torch's own computation in the inputs' dtype (its conv, then the epilogue as separate ops):
    the error the fp16/bf16 rule compares against. Returns (out, grads)."""
    stride, (top, bottom, left, right), dilation, groups = geometry
    leaves = [t.detach().clone().requires_grad_() for t in _with_zeros(inputs, geometry)]
    x, w, b, r = leaves
    y = F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride, 0, dilation, groups)
    y = TORCH_ACT[act](y + r)
    return y.detach(), list(torch.autograd.grad(y, leaves, dout))


def check_conv(inputs, geometry, act, tol=2e-5, mask=(True, True, True, True)):
    """Forward and backward of one case against the reference (fp32/fp64 tolerance)."""
    x, weight, bias, residual = inputs
    out, z = kernels.conv2d_fwd(x, weight, bias, residual, *geometry, act)
    dout = torch.randn(out.shape, device=DEVICE).to(x.dtype)
    want_out, want_z, want_grads = reference(inputs, geometry, act, dout)
    assert out.dtype == x.dtype and out.is_contiguous(memory_format=kernels.memory_format(x))
    assert_close(out, want_out, "out", tol)
    if act in ("gelu", "silu"):
        assert z.stride() == out.stride()
        assert_close(z, want_z, "z", tol)
    else:
        assert z.shape == (0,) and z.dtype == x.dtype
    grads = kernels.conv2d_bwd(dout, x, weight, out, z, *geometry, act, list(mask))
    for name, g, w, keep, like in zip(("dx", "dweight", "dbias", "dresidual"), grads, want_grads,
                                      mask, (x, weight, weight, dout)):
        assert g.dtype == like.dtype, name
        if not keep:
            assert g.shape == (0,), name
            continue
        assert_close(g, w, name, tol)
        if name in ("dx", "dresidual"):
            assert g.is_contiguous(memory_format=kernels.memory_format(like)), name
            assert g.data_ptr() != dout.data_ptr(), f"{name} aliases dout"
    return out, grads


# ------------------------------------------------------------------------------- conv2d shapes
# (name, n, c, h, w, o, kernel, keyword arguments): the odd sizes, every geometry.
CASES = [
    ("1x1-image", 2, 3, 1, 1, 4, 1, {}),
    ("7x9-3x3", 2, 3, 7, 9, 5, 3, {"padding": (1, 1, 1, 1)}),
    ("31x33-3x3", 1, 3, 31, 33, 4, 3, {"padding": (1, 1, 1, 1)}),
    ("31x33-stride2-groups2", 1, 4, 31, 33, 6, 3, {"stride": (2, 2), "padding": (1, 1, 1, 1),
                                                  "groups": 2}),
    ("dilation2", 2, 3, 11, 10, 4, 3, {"dilation": (2, 2), "padding": (2, 2, 2, 2)}),
    ("asymmetric-padding-2x2", 1, 3, 7, 6, 4, 2, {"padding": (0, 1, 0, 1)}),
    ("5x5-stride2x1-asym", 2, 3, 9, 10, 20, 5, {"stride": (2, 1), "padding": (2, 1, 0, 3)}),
    ("1x1-conv-stride2-dil", 2, 20, 7, 9, 20, 1, {"stride": (2, 2), "padding": (0, 1, 0, 1),
                                                  "dilation": (2, 2)}),
    ("channels-over-tiles", 1, 33, 5, 6, 17, 3, {"padding": (1, 1, 1, 1)}),
    ("depthwise", 2, 5, 9, 8, 5, 3, {"groups": 5, "padding": (1, 1, 1, 1)}),
    ("depthwise-x2-5x5", 1, 3, 6, 7, 6, 5, {"groups": 3, "padding": (2, 2, 2, 2)}),
    ("depthwise-stride2-dil2", 1, 20, 10, 11, 20, 3, {"groups": 20, "stride": (2, 2),
                                                      "dilation": (2, 2),
                                                      "padding": (2, 1, 1, 2)}),
    ("single-channel-x4", 2, 1, 8, 9, 4, 3, {"groups": 1, "padding": (1, 1, 1, 1)}),
]


@pytest.mark.parametrize("name, n, c, h, w, o, k, kw", CASES, ids=[case[0] for case in CASES])
def test_conv2d_fp32(name, n, c, h, w, o, k, kw):
    """Every shape, forward and all four gradients; the activation, bias, residual and layout
    rotate with the case so that each runs on several geometries."""
    i = CASES.index(next(case for case in CASES if case[0] == name))
    layout = ("nchw", "cl", "strided")[i % 3]
    inputs, geometry = make_conv(n, c, h, w, o, k, bias=i % 2 == 0, residual=i % 4 < 2,
                                 layout=layout, **kw)
    check_conv(inputs, geometry, ACTS[i % 4])


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias, residual", [(False, False), (True, False), (False, True),
                                            (True, True)])
def test_conv2d_activation_epilogue(act, bias, residual):
    inputs, geometry = make_conv(2, 3, 5, 6, 4, 3, padding=(1, 1, 1, 1), bias=bias,
                                 residual=residual)
    check_conv(inputs, geometry, act)


@pytest.mark.parametrize("flat", [False, True], ids=["tap-loop", "flat-k"])
def test_reduction_walks(flat, monkeypatch):
    """Both ways of walking K = (C/groups)*KH*KW (tap by tap in channel chunks, or flat over
    (tap, channel) for few channels), forced either way, on a non-square kernel: the forward
    and the dweight GEMM use it."""
    monkeypatch.setattr(kernels, "use_flat_k", lambda channels, tile: flat)
    for n, c, o, k, kw in ((2, 3, 5, (2, 3), {"padding": (1, 0, 1, 1)}),
                           (1, 20, 6, (3, 2), {"groups": 2, "stride": (2, 1),
                                               "dilation": (1, 2), "padding": (1, 1, 2, 0)})):
        inputs, geometry = make_conv(n, c, 7, 9, o, k, residual=True, layout="cl", **kw)
        check_conv(inputs, geometry, "gelu")


@pytest.mark.parametrize("depthwise", [False, True])
def test_layouts_mixed(depthwise):
    """x channels_last with an NCHW residual and a sliced dout, and the reverse: every tensor is
    read through its own strides; out and z follow x's format, dx x's, dresidual dout's."""
    c, groups = (4, 4) if depthwise else (4, 2)
    for x_layout, other in (("cl", "strided"), ("strided", "cl")):
        (x, w, b, r), geometry = make_conv(2, c, 7, 8, 8, 3, groups=groups, stride=(1, 2),
                                           padding=(1, 0, 2, 1), residual=True)
        inputs = (_layout(x, x_layout), w, b, _layout(r, other))
        out, z = kernels.conv2d_fwd(*inputs, *geometry, "silu")
        want_out, _, _ = reference(inputs, geometry, "silu")
        assert out.is_contiguous(memory_format=kernels.memory_format(inputs[0]))
        assert_close(out, want_out, "out", 2e-5)
        dout = _layout(torch.randn(out.shape, device=DEVICE), other)
        grads = kernels.conv2d_bwd(dout, inputs[0], w, out, z, *geometry, "silu", [True] * 4)
        want = reference(inputs, geometry, "silu", dout)[2]
        for name, g, ww in zip(("dx", "dweight", "dbias", "dresidual"), grads, want):
            assert_close(g, ww, name, 2e-5)
        assert grads[0].is_contiguous(memory_format=kernels.memory_format(inputs[0]))
        assert grads[3].is_contiguous(memory_format=kernels.memory_format(dout))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("depthwise", [False, True])
def test_output_mask(act, depthwise):
    """Every output alone: the others come back as (0,) tensors; with no activation, dresidual
    alone is still a fresh tensor (outputs never alias inputs)."""
    c, groups = (3, 3) if depthwise else (3, 1)
    inputs, geometry = make_conv(1, c, 6, 5, 6, 3, groups=groups, stride=(2, 2),
                                 padding=(1, 1, 1, 1), residual=True)
    for keep in range(4):
        check_conv(inputs, geometry, act, mask=[i == keep for i in range(4)])


def test_float64():
    for kw in ({"padding": (1, 0, 0, 1), "stride": (2, 1)}, {"groups": 3, "dilation": (2, 1),
                                                            "padding": (2, 2, 1, 1)}):
        inputs, geometry = make_conv(2, 3, 7, 8, 6, 3, residual=True, dtype=torch.float64,
                                     layout="cl", **kw)
        check_conv(inputs, geometry, "gelu", tol=1e-10)


def test_empty_batch():
    (x, w, b, r), geometry = make_conv(2, 3, 5, 5, 4, 3, padding=(1, 1, 1, 1), residual=True)
    x, r = x[:0], r[:0]
    out, z = kernels.conv2d_fwd(x, w, b, r, *geometry, "gelu")
    assert out.shape == (0, 4, 5, 5) and z.shape == (0, 4, 5, 5)
    dx, dw, db, dres = kernels.conv2d_bwd(torch.randn_like(out), x, w, out, z, *geometry, "gelu",
                                          [True] * 4)
    assert dx.shape == x.shape and dres.shape == out.shape
    assert dw.shape == w.shape and not dw.any() and db.shape == (4,) and not db.any()


def test_dweight_is_deterministic():
    """The M reduction is split into chunks whose fp32 partials are summed afterwards (no
    atomics): the same inputs give bitwise the same dweight and dbias."""
    for groups in (1, 4):
        inputs, geometry = make_conv(2, 4, 11, 9, 8, 3, groups=groups, padding=(1, 1, 1, 1),
                                     layout="cl")
        out, z = kernels.conv2d_fwd(*inputs, *geometry, "relu")
        dout = torch.randn_like(out)
        runs = [kernels.conv2d_bwd(dout, inputs[0], inputs[1], out, z, *geometry, "relu",
                                   [False, True, True, False]) for _ in range(2)]
        assert torch.equal(runs[0][1], runs[1][1]) and torch.equal(runs[0][2], runs[1][2])



def test_int32_index_limits_raise_before_launch(monkeypatch):
    """Offsets inside one image and the batch's position index are int32 in the kernels: sizes
    past them raise a clear ValueError instead of wrapping into out-of-bounds reads and writes.
    Expanded (stride-0) inputs: nothing big is allocated, and no kernel may launch."""
    from leedl_fast.kernels import conv_backward

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("a kernel was launched past the int32 limits")

    for module in (kernels, conv_backward):
        for name in dir(module):
            if name.endswith("_kernel"):
                monkeypatch.setattr(module, name, NoLaunch())
    geometry = ([1, 1], [0, 0, 0, 0], [1, 1], 1)
    w = torch.zeros(4, 4, 1, 1, device=DEVICE)
    one = torch.zeros(1, 1, 1, 1, device=DEVICE)
    big_image = one.expand(1, 4, 2**15, 2**14)  # the output: 4 x 2**29 = 2**31 per image
    with pytest.raises(ValueError, match="one image"):
        kernels.conv2d_fwd(big_image, w, None, None, *geometry, "none")
    with pytest.raises(ValueError, match="one image"):
        kernels.separable_conv2d_fwd(big_image, torch.zeros(4, 1, 1, 1, device=DEVICE), None,
                                     "none", w, None, "none", *geometry[:3])
    many = one.expand(2**11, 4, 2**10, 2**10)  # 2**31 positions, 2**22 elements per image
    with pytest.raises(ValueError, match="positions"):
        kernels.conv2d_fwd(many, w, None, None, *geometry, "none")
    with pytest.raises(ValueError, match="positions"):
        kernels.conv2d_pool_fwd(many, w, None, *geometry, "relu", "max", 2)
    half = one.expand(2**10, 4, 2**10, 2**10)  # 2**30: the backward's chunk ends reach 2**31
    with pytest.raises(ValueError, match="positions"):
        kernels.conv2d_bwd(half, half, w, half, half.new_empty(0), *geometry, "relu",
                           [True, True, True, False])


# ------------------------------------------------------------------------- fp16 / bf16 rule

def check_half(inputs, geometry, act, out_factor=2.0, grad_factor=3.0):
    """Error vs float64 at most out_factor x torch's own error in the same dtype (grad_factor
    for the gradients), plus one ulp of the tensor's scale for ties at tiny sizes."""
    x, weight, bias, residual = inputs
    out, z = kernels.conv2d_fwd(x, weight, bias, residual, *geometry, act)
    dout = torch.randn(out.shape, device=DEVICE).to(x.dtype)
    grads = kernels.conv2d_bwd(dout, x, weight, out, z, *geometry, act, [True] * 4)
    want_out, _, want_grads = reference(inputs, geometry, act, dout)
    theirs_out, theirs_grads = torch_same_dtype(inputs, geometry, act, dout)
    eps = torch.finfo(x.dtype).eps
    rows = [("out", out, theirs_out, want_out, out_factor)]
    rows += [(name, g, t, w, grad_factor) for name, g, t, w in zip(
        ("dx", "dweight", "dbias", "dresidual"), grads, theirs_grads, want_grads)]
    for name, ours, theirs, want, factor in rows:
        assert ours.dtype == x.dtype and torch.isfinite(ours).all(), name
        ours_err, torch_err = _max_err(ours, want), _max_err(theirs, want)
        limit = factor * torch_err + eps * max(1.0, want.abs().max().item())
        assert ours_err <= limit, f"{name}: error {ours_err:.3g} > {factor} x torch's " \
                                  f"{torch_err:.3g}"


HALF_CASES = [
    ("3x3-groups2-cl", 2, 4, 9, 11, 6, 3, {"groups": 2, "padding": (1, 1, 1, 1)}, "cl"),
    ("5x5-stride2", 1, 3, 12, 13, 20, 5, {"stride": (2, 2), "padding": (2, 1, 2, 1)}, "nchw"),
    ("depthwise-x2", 2, 4, 9, 8, 8, 3, {"groups": 4, "dilation": (2, 2),
                                        "padding": (2, 2, 2, 2)}, "strided"),
]


@pytest.mark.parametrize("name, n, c, h, w, o, k, kw, layout", HALF_CASES,
                         ids=[case[0] for case in HALF_CASES])
def test_conv2d_fp16(name, n, c, h, w, o, k, kw, layout):
    i = [case[0] for case in HALF_CASES].index(name)
    inputs, geometry = make_conv(n, c, h, w, o, k, residual=True, dtype=torch.float16,
                                 layout=layout, **kw)
    check_half(inputs, geometry, ("gelu", "silu", "relu")[i])


# ------------------------------------------------------------------------ conv2d_pool_fwd
# pool(act(conv(x) + bias)), inference: the M tiles hold whole windows (2x2: 4 rows; 3x3: 16
# rows, 7 masked), so the interpreter's 64-row tiles hold 16 or 4 windows and every case below
# spans several tiles; odd conv outputs check the floor (the last row / column is dropped).
POOLS = (("max", 2), ("avg", 2), ("max", 3), ("avg", 3))


def pool_reference(inputs, geometry, act, pool, size):
    """float64 pool(act(conv(x, weight) + bias)): the reference conv, then its pooling."""
    x, w, b, _ = inputs
    stride, padding, dilation, groups = geometry
    y = ref.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding,
                   dilation, groups, act)
    return getattr(ref, f"{pool}_pool2d")(y, size)


def run_pool(inputs, geometry, act, pool, size):
    x, w, b, _ = inputs
    out = kernels.conv2d_pool_fwd(x, w, b, *geometry, act, pool, size)
    oh = ref.out_size(x.shape[2], w.shape[2], geometry[0][0], *geometry[1][:2], geometry[2][0])
    ow = ref.out_size(x.shape[3], w.shape[3], geometry[0][1], *geometry[1][2:], geometry[2][1])
    assert out.shape == (x.shape[0], w.shape[0], oh // size, ow // size)
    assert out.dtype == x.dtype and out.is_contiguous(memory_format=kernels.memory_format(x))
    return out


def check_pool(inputs, geometry, act, pool, size, tol=2e-5):
    out = run_pool(inputs, geometry, act, pool, size)
    assert_close(out, pool_reference(inputs, geometry, act, pool, size), f"{pool}{size}", tol)


# (name, n, c, h, w, o, kernel, keyword arguments): conv outputs odd and even, both kernels.
POOL_CASES = [
    ("7x9-same", 2, 3, 7, 9, 5, 3, {"padding": (1, 1, 1, 1)}),
    ("17x19-valid-bs1", 1, 3, 19, 21, 4, 3, {}),
    ("stride2", 2, 4, 15, 17, 6, 3, {"stride": (2, 2), "padding": (1, 1, 1, 1)}),
    ("groups2", 2, 4, 9, 11, 6, 3, {"groups": 2, "padding": (1, 1, 1, 1)}),
    ("channels-over-tiles", 1, 33, 7, 8, 17, 3, {"padding": (1, 1, 1, 1)}),
    ("5x5-dilation2-asym", 1, 3, 14, 13, 4, (5, 3), {"dilation": (2, 1),
                                                     "padding": (3, 2, 1, 0)}),
    ("depthwise", 2, 5, 9, 8, 5, 3, {"groups": 5, "padding": (1, 1, 1, 1)}),
    ("depthwise-x2-stride2", 1, 20, 13, 12, 40, 3, {"groups": 20, "stride": (2, 2),
                                                    "padding": (1, 1, 1, 1)}),
]


@pytest.mark.parametrize("pool, size", POOLS, ids=[f"{p}{k}" for p, k in POOLS])
@pytest.mark.parametrize("name, n, c, h, w, o, k, kw", POOL_CASES,
                         ids=[case[0] for case in POOL_CASES])
def test_conv2d_pool_fp32(name, n, c, h, w, o, k, kw, pool, size):
    """Every shape x both pools x both window sizes; the activation, bias and layout rotate."""
    i = [case[0] for case in POOL_CASES].index(name) + POOLS.index((pool, size))
    inputs, geometry = make_conv(n, c, h, w, o, k, bias=i % 2 == 0,
                                 layout=("cl", "nchw", "strided")[i % 3], **kw)
    check_pool(inputs, geometry, ACTS[i % 4], pool, size)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("depthwise", [False, True], ids=["gemm", "depthwise"])
def test_conv2d_pool_epilogue(act, bias, depthwise):
    """Every activation with and without bias, on both kernels, channels_last and NCHW, all
    four pools: max of act (not act of max: gelu and silu are not monotone) and the mean."""
    c, o, groups = (4, 8, 4) if depthwise else (3, 5, 1)
    for layout in ("cl", "nchw"):
        inputs, geometry = make_conv(2, c, 7, 9, o, 3, groups=groups, padding=(1, 1, 1, 1),
                                     bias=bias, layout=layout)
        for pool, size in POOLS:
            check_pool(inputs, geometry, act, pool, size)


def test_conv2d_pool_edges():
    """A conv output exactly one window (1 x 1 pooled), one just under two windows (floor),
    float64, and an empty batch."""
    for size in (2, 3):
        inputs, geometry = make_conv(1, 3, size, 2 * size - 1, 4, 3, padding=(1, 1, 1, 1))
        for pool in ("max", "avg"):
            check_pool(inputs, geometry, "silu", pool, size)
    for groups in (1, 3):
        inputs, geometry = make_conv(2, 3, 8, 9, 6, 3, groups=groups, padding=(1, 0, 0, 1),
                                     dtype=torch.float64, layout="cl")
        for pool, size in POOLS:
            check_pool(inputs, geometry, "gelu", pool, size, tol=1e-10)
    (x, w, b, _), geometry = make_conv(2, 3, 6, 6, 4, 3)
    out = run_pool((x[:0], w, b, None), geometry, "relu", "max", 2)
    assert out.shape == (0, 4, 2, 2)


@pytest.mark.parametrize("depthwise", [False, True], ids=["gemm", "depthwise"])
def test_nan_propagates_through_relu_and_max_pool(depthwise):
    """A NaN input gives NaN outputs wherever it reaches, as torch's relu and max_pool2d: Triton's
    default tl.maximum / tl.max lower to maxnum, which returns the other operand (relu(NaN) = 0,
    a max window with a NaN took its largest number). The interpreter's tl.max drops NaNs too."""
    c, o, groups = (4, 4, 4) if depthwise else (3, 5, 1)
    (x, w, b, _), geometry = make_conv(2, c, 8, 9, o, 3, groups=groups, padding=(1, 1, 1, 1))
    x[0, 1, 4, 4] = float("nan")
    x[1, 0, 2, 6] = float("inf")
    y = F.conv2d(x, w, b, 1, 1, 1, groups)
    out, _ = kernels.conv2d_fwd(x, w, b, None, *geometry, "relu")
    assert torch.equal(out.isnan(), F.relu(y).isnan())
    for size in (2, 3):
        pooled = kernels.conv2d_pool_fwd(x, w, b, *geometry, "relu", "max", size)
        want = F.max_pool2d(F.relu(y), size)
        assert want.isnan().any()
        assert torch.equal(pooled.isnan(), want.isnan()), size
        ok = ~want.isnan()
        assert torch.allclose(pooled[ok], want[ok], rtol=1e-4, atol=1e-4)


_NAN_COMPILE_CHECK = """
import re, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from leedl_fast.kernels import conv

@triton.jit
def relu_and_max(X, Y, Z):
    x = tl.load(X + tl.arange(0, 64))
    tl.store(Y + tl.arange(0, 64), conv._activate(x, 1))
    tl.store(Z, tl.reduce(x, 0, conv._max_propagate_nan))

src = ASTSource(relu_and_max, signature={"X": "*fp32", "Y": "*fp32", "Z": "*fp32"})
ttir = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ttir"]
print(sorted(set(re.findall(r"arith\\.max\\w*f", ttir))))
"""


@pytest.mark.skipif(not INTERPRETED, reason="the compile check runs beside the interpreter")
def test_relu_and_max_pool_keep_nan_when_compiled(tmp_path):
    """The GPU half of the test above, without a GPU: compiled for sm_90, the epilogue's relu and
    the max pool's reduction must lower to arith.maximumf (NaN-propagating; PTX max.NaN.f32),
    never arith.maxnumf (PTX max.f32). A child process: this one runs the interpreter."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia.compiler", reason="no NVIDIA Triton backend")
    script = tmp_path / "nan_check.py"
    script.write_text(_NAN_COMPILE_CHECK)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[-2] == "['arith.maximumf']", proc.stdout


def check_pool_half(inputs, geometry, act, pool, size, factor=2.0):
    """fp16/bf16: error vs float64 at most factor x torch's own (its conv, activation and
    pooling in the dtype), plus one ulp of the output's scale for ties at tiny sizes."""
    x, w, b, _ = inputs
    stride, (top, bottom, left, right), dilation, groups = geometry
    out = run_pool(inputs, geometry, act, pool, size)
    want = pool_reference(inputs, geometry, act, pool, size)
    y = F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride, 0, dilation, groups)
    pool_fn = F.max_pool2d if pool == "max" else F.avg_pool2d
    theirs = pool_fn(TORCH_ACT[act](y), size)
    ours_err, torch_err = _max_err(out, want), _max_err(theirs, want)
    limit = factor * torch_err + torch.finfo(x.dtype).eps * max(1.0, want.abs().max().item())
    assert torch.isfinite(out).all()
    assert ours_err <= limit, f"{pool}{size}: error {ours_err:.3g} > {factor} x torch's " \
                              f"{torch_err:.3g}"


@pytest.mark.parametrize("name, n, c, h, w, o, k, kw, layout", HALF_CASES,
                         ids=[case[0] for case in HALF_CASES])
def test_conv2d_pool_fp16(name, n, c, h, w, o, k, kw, layout):
    i = [case[0] for case in HALF_CASES].index(name)
    inputs, geometry = make_conv(n, c, h, w, o, k, dtype=torch.float16, layout=layout, **kw)
    for pool, size in POOLS:
        check_pool_half(inputs, geometry, ("gelu", "silu", "relu")[i], pool, size)


# --------------------------------------------------------------------------- separable block

def make_separable(n, c, h, w, o, k, dw_bias=True, pw_bias=True, dtype=torch.float32,
                   layout="nchw"):
    x = _layout(torch.randn(n, c, h, w, device=DEVICE).to(dtype), layout)
    dw = (torch.randn(c, 1, k, k, device=DEVICE) / k).to(dtype)
    pw = (torch.randn(o, c, 1, 1, device=DEVICE) / math.sqrt(c)).to(dtype)
    db = torch.randn(c, device=DEVICE).to(dtype) if dw_bias else None
    pb = torch.randn(o, device=DEVICE).to(dtype) if pw_bias else None
    return x, dw, db, pw, pb


SEPARABLE_CASES = [
    ("3x3", 2, 6, 9, 10, 5, 3, (1, 1), (1, 1, 1, 1), (1, 1), "nchw"),
    ("channels-over-tiles-stride2", 1, 20, 9, 8, 21, 3, (2, 2), (1, 0, 1, 0), (1, 1), "cl"),
    ("5x5-dilation2", 1, 3, 11, 12, 4, 5, (1, 2), (4, 4, 3, 5), (2, 2), "strided"),
    ("1x1-image", 2, 3, 1, 1, 4, 1, (1, 1), (0, 0, 0, 0), (1, 1), "nchw"),
]


@pytest.mark.parametrize("name, n, c, h, w, o, k, stride, padding, dilation, layout",
                         SEPARABLE_CASES, ids=[case[0] for case in SEPARABLE_CASES])
def test_separable_fp32(name, n, c, h, w, o, k, stride, padding, dilation, layout):
    i = [case[0] for case in SEPARABLE_CASES].index(name)
    x, dw, db, pw, pb = make_separable(n, c, h, w, o, k, dw_bias=i % 2 == 0, pw_bias=i < 2,
                                       layout=layout)
    dw_act, act = ACTS[i], ACTS[(i + 2) % 4]
    out = kernels.separable_conv2d_fwd(x, dw, db, dw_act, pw, pb, act, list(stride),
                                       list(padding), list(dilation))
    want = ref.separable_conv2d(*(t.double() if t is not None else None
                                  for t in (x, dw, db)), dw_act, pw.double(),
                                pb.double() if pb is not None else None, act, stride, padding,
                                dilation)
    assert out.dtype == x.dtype and out.is_contiguous(memory_format=kernels.memory_format(x))
    assert_close(out, want, "out", 2e-5)


def check_separable_half(dtype, shape, layout="cl"):
    """fp16/bf16 separable block: error at most 2x that of torch's own dtype pipeline (two
    convs, mid rounded to the dtype)."""
    x, dw, db, pw, pb = make_separable(*shape, dtype=dtype, layout=layout)
    args = ([1, 1], [1, 1, 1, 1], [1, 1])
    out = kernels.separable_conv2d_fwd(x, dw, db, "relu", pw, pb, "gelu", *args)
    want = ref.separable_conv2d(x.double(), dw.double(), db.double(), "relu", pw.double(),
                                pb.double(), "gelu", *args)
    mid = F.relu(F.conv2d(x, dw, db, 1, 1, 1, x.shape[1]))
    theirs = F.gelu(F.conv2d(mid, pw, pb))
    ours_err, torch_err = _max_err(out, want), _max_err(theirs, want)
    assert ours_err <= 2 * torch_err + torch.finfo(dtype).eps * max(1.0, want.abs().max().item())


def test_separable_fp16():
    check_separable_half(torch.float16, (2, 20, 7, 9, 18, 3))


# ------------------------------------------------------------------------------------- GPU only

GPU_SHAPES = [  # (n, c, h, w, o, k, kwargs, layout): aligned channels_last, NCHW, depthwise
    (2, 64, 28, 30, 128, 3, {"padding": (1, 1, 1, 1)}, "cl"),
    (2, 64, 27, 29, 96, 3, {"stride": (2, 2), "padding": (1, 1, 1, 1)}, "nchw"),
    (2, 32, 20, 21, 64, 1, {"groups": 2}, "cl"),
    (2, 64, 28, 28, 64, 3, {"groups": 64, "padding": (1, 1, 1, 1)}, "cl"),
    (1, 32, 30, 31, 32, 7, {"groups": 32, "stride": (2, 2), "padding": (3, 3, 3, 3)}, "nchw"),
]


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE == "cpu", reason="tensor-core paths and bf16: checked on the GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=[f"{s[4]}x{s[1]}-k{s[5]}-{s[7]}-{i}"
                                                   for i, s in enumerate(GPU_SHAPES)])
def test_conv2d_half_gpu(dtype, shape):
    n, c, h, w, o, k, kw, layout = shape
    inputs, geometry = make_conv(n, c, h, w, o, k, residual=True, dtype=dtype, layout=layout,
                                 **kw)
    check_half(inputs, geometry, "gelu")


POOL_GPU_SHAPES = [  # (n, c, h, w, o, k, kwargs, layout): odd conv outputs, both kernels
    (2, 64, 28, 30, 128, 3, {"padding": (1, 1, 1, 1)}, "cl"),
    (2, 64, 27, 29, 96, 3, {"stride": (2, 2), "padding": (1, 1, 1, 1)}, "nchw"),
    (2, 3, 33, 35, 64, 3, {"padding": (1, 1, 1, 1)}, "cl"),
    (2, 64, 29, 28, 64, 3, {"groups": 64, "padding": (1, 1, 1, 1)}, "cl"),
    (1, 32, 30, 31, 32, 5, {"groups": 32, "padding": (2, 2, 2, 2)}, "nchw"),
]


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE == "cpu", reason="tensor-core paths and bf16: checked on the GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", POOL_GPU_SHAPES,
                         ids=[f"{s[4]}x{s[1]}-k{s[5]}-{s[7]}-{i}"
                              for i, s in enumerate(POOL_GPU_SHAPES)])
def test_conv2d_pool_half_gpu(dtype, shape):
    n, c, h, w, o, k, kw, layout = shape
    inputs, geometry = make_conv(n, c, h, w, o, k, dtype=dtype, layout=layout, **kw)
    for (pool, size), act in zip(POOLS, ACTS):
        check_pool_half(inputs, geometry, act, pool, size)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE == "cpu", reason="tensor-core paths: checked on the GPU")
def test_conv2d_pool_fp32_gpu_large():
    for groups in (1, 64):
        inputs, geometry = make_conv(2, 64, 28, 29, 128, 3, groups=groups, padding=(1, 1, 1, 1),
                                     layout="cl")
        for pool, size in POOLS:
            check_pool(inputs, geometry, "silu", pool, size, tol=5e-5)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE == "cpu", reason="tensor-core paths: checked on the GPU")
def test_conv2d_fp32_gpu_large():
    """fp32 on the GPU at benchmark-like channel counts: ieee dots, not TF32 (~1e-3 off)."""
    inputs, geometry = make_conv(2, 64, 28, 28, 128, 3, padding=(1, 1, 1, 1), residual=True,
                                 layout="cl")
    check_conv(inputs, geometry, "silu", tol=5e-5)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE == "cpu", reason="bf16 tl.dot: checked on the GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_separable_half_gpu(dtype):
    check_separable_half(dtype, (2, 64, 28, 28, 128, 3))
    check_separable_half(dtype, (2, 48, 15, 17, 40, 3), layout="nchw")
