"""The convolution family's C++ CPU kernels (csrc/cpu/conv*.cpp), called directly through
torch.ops.leedl_fast, against the float64 sliding-window reference (leedl_fast/reference/conv.py)
and, for the backward, autograd through that reference.

Tolerances: fp64 ~1e-10 (same math, other summation order); fp32 ~1e-5 relative to the output's
scale; fp16/bf16 no more than 2x PyTorch's own F.conv2d error in that dtype (3x for gradients)
plus one unit of the dtype's epsilon at the output's scale.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import leedl_fast  # noqa: F401  (loads the ops, their fakes and autograd)
from leedl_fast.reference import conv as ref

ops = torch.ops.leedl_fast
ACTS = ("none", "relu", "gelu", "silu")

# (N, C, H, W, O, (KH, KW), stride, padding (t, b, l, r), dilation, groups)
CASES = {
    "3x3": (2, 4, 7, 9, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "spatial1x1": (1, 3, 1, 1, 5, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1_on_1x1_padded": (2, 3, 1, 1, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "stride2_groups2_31x33": (2, 4, 31, 33, 8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2),
    "depthwise_dil2": (2, 6, 7, 9, 6, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 6),
    "depthwise_mult2_asym": (2, 4, 7, 9, 8, (3, 3), (2, 1), (0, 1, 0, 1), (1, 2), 4),
    "depthwise_31x33": (1, 8, 31, 33, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 8),
    "depthwise_5x5_stride2": (1, 6, 11, 13, 6, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 6),
    "depthwise_2x2_asym": (2, 5, 8, 7, 5, (2, 2), (1, 1), (0, 1, 0, 1), (1, 1), 5),
    "pointwise": (2, 8, 7, 9, 16, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "pointwise_groups2": (2, 8, 7, 9, 6, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2),
    "1x1_stride2": (2, 16, 7, 9, 8, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "2x2_stride2_asym": (2, 4, 7, 9, 6, (2, 2), (2, 2), (0, 1, 0, 1), (1, 1), 2),
    "5x5": (2, 3, 9, 7, 5, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 1),
    "3x1_dil2_stride3": (2, 6, 10, 8, 4, (3, 1), (3, 1), (1, 2, 0, 0), (2, 1), 2),
    "batch1_31x33": (1, 5, 31, 33, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
}


def out_shape(n, h, w, o, k, stride, pad, dil):
    return (n, o, ref.out_size(h, k[0], stride[0], pad[0], pad[1], dil[0]),
            ref.out_size(w, k[1], stride[1], pad[2], pad[3], dil[1]))


def layout(t, kind):
    """t in the named layout: 'nchw', 'cl' (channels_last) or 'sliced' (non-contiguous view)."""
    if kind == "cl":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "sliced":  # same values, every dim strided: a slice of a bigger tensor
        big = torch.zeros(t.shape[0], t.shape[1] + 1, t.shape[2], 2 * t.shape[3], dtype=t.dtype)
        big[:, 1:, :, ::2] = t
        return big[:, 1:, :, ::2]
    return t.contiguous()


def expected_format(x):
    """The rule of the glue's fakes: channels_last iff contiguous as such and not as NCHW."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def make(case, dtype, act="none", bias=True, residual=False, kind="nchw"):
    n, c, h, w, o, k, stride, pad, dil, groups = case
    x = layout(torch.randn(n, c, h, w, dtype=dtype), kind)
    weight = torch.randn(o, c // groups, *k, dtype=dtype) / math.sqrt(c // groups * k[0] * k[1])
    b = torch.randn(o, dtype=dtype) if bias else None
    r = torch.randn(out_shape(n, h, w, o, k, stride, pad, dil), dtype=dtype) if residual else None
    if r is not None and kind != "nchw":  # residual in another layout than x
        r = r.transpose(2, 3).contiguous().transpose(2, 3)
    return x, weight, b, r, (list(stride), list(pad), list(dil), groups, act)


def fwd(x, w, b, r, conv):
    return ops.conv2d_fwd(x, w, b, r, *conv)


def reference(x, w, b, r, conv, dtype=torch.float64):
    stride, pad, dil, groups, act = conv
    cast = (lambda t: None if t is None else t.to(dtype))
    return ref.conv2d(cast(x), cast(w), cast(b), stride, pad, dil, groups, act, cast(r))


def reference_grads(x, w, b, r, conv, dout):
    """Autograd through the float64 reference: (dx, dw, db, dres)."""
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (x, w, b, r)]
    out = reference(*leaves, conv)
    out.backward(dout.double())
    return [None if t is None else t.grad for t in leaves]


def scale_of(t):
    return max(1.0, t.abs().max().item()) if t.numel() else 1.0


def assert_near(actual, expected, rel):
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rel,
                               atol=rel * scale_of(expected))


TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


# ---------------------------------------------------------------------------------- forward

@pytest.mark.parametrize("kind", ["nchw", "cl", "sliced"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_backward_shapes(name, kind, dtype):
    case = CASES[name]
    # Cycle the epilogue options over the cases so every combination shows up somewhere.
    i = list(CASES).index(name)
    act, bias, residual = ACTS[i % 4], i % 2 == 0, i % 3 != 1
    x, w, b, r, conv = make(case, dtype, act, bias, residual, kind)
    out, z = fwd(x, w, b, r, conv)
    expected = reference(x, w, b, r, conv)
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=expected_format(x))
    assert_near(out, expected, TOL[dtype])
    if act in ("gelu", "silu"):
        assert z.shape == out.shape and z.is_contiguous(memory_format=expected_format(x))
    else:
        assert z.shape == (0,)
    # Backward against autograd of the reference.
    dout = torch.randn_like(out)
    grads = ops.conv2d_bwd(dout, x, w, out, z, *conv, [True, True, b is not None, r is not None])
    want = reference_grads(x, w, b, r, conv, dout)
    for got, exp, name_ in zip(grads, want, ("dx", "dweight", "dbias", "dresidual")):
        if exp is None:
            assert got.shape == (0,), name_
            continue
        assert got.dtype == dtype, name_
        assert_near(got, exp, TOL[dtype] * 5)
    assert grads[0].is_contiguous(memory_format=expected_format(x))


@pytest.mark.parametrize("kind", ["nchw", "cl"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("case", ["3x3", "depthwise_mult2_asym"])
def test_epilogues(act, bias, residual, kind, case):
    x, w, b, r, conv = make(CASES[case], torch.float64, act, bias, residual, kind)
    out, z = fwd(x, w, b, r, conv)
    assert_near(out, reference(x, w, b, r, conv), 1e-10)
    if act in ("gelu", "silu"):  # z is the pre-activation
        stride, pad, dil, groups, _ = conv
        pre = ref.conv2d(x, w, b, stride, pad, dil, groups, "none", r)
        assert_near(z, pre, 1e-10)
    dout = torch.randn_like(out)
    mask = [True, True, bias, residual]
    grads = ops.conv2d_bwd(dout, x, w, out, z, *conv, mask)
    for got, exp in zip(grads, reference_grads(x, w, b, r, conv, dout)):
        if exp is not None:
            assert_near(got, exp, 1e-9)


def test_relu_backward_uses_out():
    """relu's derivative comes from out > 0; z is not needed (empty)."""
    x, w, b, r, conv = make(CASES["3x3"], torch.float64, "relu", True, False)
    out, z = fwd(x, w, b, r, conv)
    assert z.numel() == 0
    dout = torch.randn_like(out)
    dx, dw, db, dres = ops.conv2d_bwd(dout, x, w, out, torch.empty(0, dtype=x.dtype), *conv,
                                      [False, False, True, True])
    dz = dout * (out > 0)
    assert dx.shape == (0,) and dw.shape == (0,)
    assert_near(dres, dz, 1e-12)
    assert_near(db, dz.sum((0, 2, 3)), 1e-10)


@pytest.mark.parametrize("mask", [[True, False, False, False], [False, True, False, False],
                                  [False, False, True, False], [False, False, False, True]])
def test_output_mask(mask):
    x, w, b, r, conv = make(CASES["stride2_groups2_31x33"], torch.float64, "silu", True, True)
    out, z = fwd(x, w, b, r, conv)
    dout = torch.randn_like(out)
    grads = ops.conv2d_bwd(dout, x, w, out, z, *conv, mask)
    want = reference_grads(x, w, b, r, conv, dout)
    for m, got, exp in zip(mask, grads, want):
        if m:
            assert_near(got, exp, 1e-9)
        else:
            assert got.shape == (0,)


def test_dresidual_does_not_alias_dout():
    x, w, b, r, conv = make(CASES["3x3"], torch.float32, "none", True, True)
    out, z = fwd(x, w, b, r, conv)
    dout = torch.randn_like(out)
    dres = ops.conv2d_bwd(dout, x, w, out, z, *conv, [False, False, False, True])[3]
    assert dres.data_ptr() != dout.data_ptr()
    torch.testing.assert_close(dres, dout)


@pytest.mark.parametrize("kind", ["nchw", "cl"])
@pytest.mark.parametrize("name", ["3x3", "depthwise_dil2", "pointwise"])
def test_empty_batch(name, kind):
    case = (0,) + CASES[name][1:]
    x, w, b, r, conv = make(case, torch.float32, "gelu", True, True, kind)
    out, z = fwd(x, w, b, r, conv)
    assert out.shape == out_shape(0, *case[2:4], *case[4:6], *case[6:9]) == z.shape
    dout = torch.randn_like(out)
    dx, dw, db, dres = ops.conv2d_bwd(dout, x, w, out, z, *conv, [True, True, True, True])
    assert dx.shape == x.shape and dres.shape == out.shape
    assert torch.equal(dw, torch.zeros_like(w)) and torch.equal(db, torch.zeros_like(b))


def test_larger_image_fp32():
    """Blocks of positions/rows well past one tile, several images and groups, stride 2."""
    for case, kind in (((2, 12, 45, 50, 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 3), "nchw"),
                       ((2, 12, 45, 50, 24, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1), "cl"),
                       ((2, 32, 40, 41, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 32), "nchw"),
                       ((2, 32, 40, 41, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 32), "cl"),
                       ((2, 24, 40, 41, 40, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1), "cl")):
        x, w, b, r, conv = make(case, torch.float32, "relu", True, True, kind)
        out, z = fwd(x, w, b, r, conv)
        assert_near(out, reference(x, w, b, r, conv), 2e-5)
        dout = torch.randn_like(out)
        grads = ops.conv2d_bwd(dout, x, w, out, z, *conv, [True, True, True, True])
        for got, exp in zip(grads, reference_grads(x, w, b, r, conv, dout)):
            assert_near(got, exp, 1e-4)


# --------------------------------------------------------------------------- 16-bit dtypes

def torch_conv(x, w, b, r, conv):
    """PyTorch's own result in x's dtype (the yardstick for fp16/bf16)."""
    stride, pad, dil, groups, act = conv
    xp = F.pad(x, (pad[2], pad[3], pad[0], pad[1]))
    y = F.conv2d(xp, w, b, stride, 0, dil, groups)
    if r is not None:
        y = y + r
    return {"none": lambda t: t, "relu": F.relu, "gelu": F.gelu, "silu": F.silu}[act](y)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,act,kind", [("3x3", "gelu", "nchw"),
                                           ("depthwise_mult2_asym", "silu", "cl"),
                                           ("depthwise_31x33", "relu", "nchw"),
                                           ("stride2_groups2_31x33", "none", "cl"),
                                           ("pointwise", "relu", "nchw")])
def test_half_precision(dtype, name, act, kind):
    x, w, b, r, conv = make(CASES[name], dtype, act, True, True, kind)
    out, z = fwd(x, w, b, r, conv)
    assert out.dtype == dtype
    exp = reference(x, w, b, r, conv)
    eps = torch.finfo(dtype).eps
    ours = (out.double() - exp).abs().max().item()
    theirs = (torch_conv(x, w, b, r, conv).double() - exp).abs().max().item()
    assert ours <= 2 * theirs + eps * scale_of(exp), (ours, theirs)
    # Gradients: against autograd of torch in the same dtype.
    dout = torch.randn_like(out)
    grads = ops.conv2d_bwd(dout, x, w, out, z, *conv, [True, True, True, True])
    want = reference_grads(x, w, b, r, conv, dout)
    leaves = [t.detach().requires_grad_() for t in (x, w, b, r)]
    torch_conv(*leaves, conv).backward(dout)
    for got, exp_, t, what in zip(grads, want, leaves, ("dx", "dw", "db", "dres")):
        assert got.dtype == dtype, what
        ours = (got.double() - exp_).abs().max().item()
        theirs = (t.grad.double() - exp_).abs().max().item()
        assert ours <= 3 * theirs + eps * scale_of(exp_), (what, ours, theirs)


# --------------------------------------------------------------------------------- separable

SEPARABLE = [  # (N, C, H, W, O, (KH, KW), stride, padding, dilation)
    (2, 8, 9, 11, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (2, 8, 9, 11, 12, (3, 3), (2, 2), (0, 1, 0, 1), (1, 1)),
    (1, 6, 13, 10, 7, (5, 5), (1, 2), (2, 2, 2, 2), (2, 1)),
    (1, 5, 1, 1, 3, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (2, 16, 31, 33, 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
]


def make_separable(case, dtype, kind, bias=True):
    n, c, h, w, o, k, stride, pad, dil = case
    x = layout(torch.randn(n, c, h, w, dtype=dtype), kind)
    dw = torch.randn(c, 1, *k, dtype=dtype) / k[0]
    pw = torch.randn(o, c, 1, 1, dtype=dtype) / math.sqrt(c)
    dwb = torch.randn(c, dtype=dtype) if bias else None
    pwb = torch.randn(o, dtype=dtype) if bias else None
    return x, dw, dwb, pw, pwb, (list(stride), list(pad), list(dil))


@pytest.mark.parametrize("kind", ["nchw", "cl", "sliced"])
@pytest.mark.parametrize("i", range(len(SEPARABLE)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_separable(i, kind, dtype):
    acts = [("relu", "relu"), ("none", "gelu"), ("silu", "none"), ("gelu", "silu"),
            ("relu", "none")][i]
    x, dw, dwb, pw, pwb, geo = make_separable(SEPARABLE[i], dtype, kind, bias=i != 2)
    out = ops.separable_conv2d_fwd(x, dw, dwb, acts[0], pw, pwb, acts[1], *geo)
    cast = (lambda t: None if t is None else t.double())
    exp = ref.separable_conv2d(x.double(), dw.double(), cast(dwb), acts[0], pw.double(),
                               cast(pwb), acts[1], *geo)
    assert out.dtype == dtype and out.is_contiguous(memory_format=expected_format(x))
    assert_near(out, exp, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_separable_half(dtype):
    x, dw, dwb, pw, pwb, geo = make_separable(SEPARABLE[4], dtype, "cl")
    out = ops.separable_conv2d_fwd(x, dw, dwb, "relu", pw, pwb, "silu", *geo)
    exp = ref.separable_conv2d(x.double(), dw.double(), dwb.double(), "relu", pw.double(),
                               pwb.double(), "silu", *geo)
    stride, pad, dil = geo
    mid = F.relu(F.conv2d(F.pad(x, (pad[2], pad[3], pad[0], pad[1])), dw, dwb, stride, 0, dil,
                          x.shape[1]))
    theirs = (F.silu(F.conv2d(mid, pw, pwb)).double() - exp).abs().max().item()
    ours = (out.double() - exp).abs().max().item()
    assert ours <= 2 * theirs + torch.finfo(dtype).eps * scale_of(exp), (ours, theirs)


def test_separable_empty_batch():
    x, dw, dwb, pw, pwb, geo = make_separable((0,) + SEPARABLE[0][1:], torch.float32, "nchw")
    out = ops.separable_conv2d_fwd(x, dw, dwb, "relu", pw, pwb, "relu", *geo)
    assert out.shape == (0, 5, 9, 11)


# ------------------------------------------------------------------------ conv -> pool fused

POOL_CASES = {  # conv outputs: odd (7 x 9, 9 x 7, 3 x 6) and several bands per image
    "3x3": CASES["3x3"],
    "stride2_groups2_31x33": CASES["stride2_groups2_31x33"],
    "depthwise": (2, 6, 7, 9, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6),
    "depthwise_mult2_asym": CASES["depthwise_mult2_asym"],
    "depthwise_31x33": CASES["depthwise_31x33"],
    "pointwise": CASES["pointwise"],
    "5x5": CASES["5x5"],
    "groups3_45x50": (2, 12, 45, 50, 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 3),
    "bands_64x61": (1, 16, 64, 61, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "depthwise_bands_mult2": (1, 2, 40, 41, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "depthwise_bands_5x5_stride2": (1, 2, 40, 41, 2, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 2),
}


def pool_fwd(x, w, b, conv, pool, k):
    return ops.conv2d_pool_fwd(x, w, b, *conv, pool, k)


def pool_reference(x, w, b, conv, pool, k):
    return getattr(ref, f"{pool}_pool2d")(reference(x, w, b, None, conv), k)


def pooled_shape(case, k):
    n, _, h, w, o, ks, stride, pad, dil, _ = case
    _, _, oh, ow = out_shape(n, h, w, o, ks, stride, pad, dil)
    return (n, o, oh // k, ow // k)


@pytest.mark.parametrize("kind", ["nchw", "cl", "sliced"])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("name", list(POOL_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pool_shapes(name, pool, k, kind, dtype):
    case = POOL_CASES[name]
    i = list(POOL_CASES).index(name) + k
    x, w, b, _, conv = make(case, dtype, ACTS[i % 4], i % 2 == 0, False, kind)
    out = pool_fwd(x, w, b, conv, pool, k)
    assert out.dtype == dtype and out.shape == pooled_shape(case, k)
    assert out.is_contiguous(memory_format=expected_format(x))
    assert_near(out, pool_reference(x, w, b, conv, pool, k), TOL[dtype])


@pytest.mark.parametrize("kind", ["nchw", "cl"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("name", ["3x3", "depthwise_mult2_asym", "depthwise_31x33"])
def test_pool_epilogues(act, bias, pool, kind, name):
    x, w, b, _, conv = make(POOL_CASES[name], torch.float32, act, bias, False, kind)
    for k in (2, 3):
        assert_near(pool_fwd(x, w, b, conv, pool, k), pool_reference(x, w, b, conv, pool, k),
                    TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,act,kind,pool,k", [
    ("3x3", "gelu", "nchw", "max", 2),
    ("stride2_groups2_31x33", "none", "cl", "avg", 3),
    ("depthwise_mult2_asym", "silu", "cl", "max", 3),
    ("depthwise_31x33", "relu", "nchw", "avg", 2),
    ("pointwise", "relu", "cl", "avg", 2),
])
def test_pool_half_precision(dtype, name, act, kind, pool, k):
    x, w, b, _, conv = make(POOL_CASES[name], dtype, act, True, False, kind)
    out = pool_fwd(x, w, b, conv, pool, k)
    assert out.dtype == dtype and out.is_contiguous(memory_format=expected_format(x))
    exp = pool_reference(x, w, b, conv, pool, k)
    torch_pool = F.max_pool2d if pool == "max" else F.avg_pool2d
    theirs = (torch_pool(torch_conv(x, w, b, None, conv), k).double() - exp).abs().max().item()
    ours = (out.double() - exp).abs().max().item()
    assert ours <= 2 * theirs + torch.finfo(dtype).eps * scale_of(exp), (ours, theirs)


@pytest.mark.parametrize("kind", ["nchw", "cl"])
@pytest.mark.parametrize("name", ["3x3", "depthwise", "pointwise"])
def test_pool_empty_batch_and_nan(name, kind):
    case = POOL_CASES[name]
    x, w, b, _, conv = make((0,) + case[1:], torch.float32, "relu", True, False, kind)
    out = pool_fwd(x, w, b, conv, "max", 2)
    assert out.shape == pooled_shape((0,) + case[1:], 2)
    assert out.is_contiguous(memory_format=expected_format(x))
    # max pooling propagates NaN, as torch's does.
    x, w, b, _, conv = make(case, torch.float32, "relu", True, False, kind)
    x[0, 0, 3, 4] = float("nan")
    want = F.max_pool2d(torch_conv(x, w, b, None, conv), 2)
    torch.testing.assert_close(pool_fwd(x, w, b, conv, "max", 2), want, equal_nan=True,
                               rtol=1e-5, atol=1e-5)


def pool_args(**over):
    args = {"x": torch.randn(2, 4, 7, 9), "weight": torch.randn(6, 4, 3, 3), "bias": None,
            "stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1,
            "activation": "relu", "pool": "max", "pool_size": 2}
    args.update(over)
    return list(args.values())


@pytest.mark.parametrize("over,message", [
    ({"pool": "min"}, "pool must be"),
    ({"pool_size": 4}, "pool_size must be 2 or 3"),
    ({"pool_size": 1}, "pool_size must be 2 or 3"),
    ({"padding": [0, 0, 0, 0], "x": torch.randn(2, 4, 4, 9), "pool_size": 3},
     "smaller than the 3 x 3 pooling window"),
    ({"bias": torch.randn(5)}, "bias"),
    ({"weight": torch.randn(6, 3, 3, 3)}, "channels"),
    ({"activation": "tanh"}, "activation"),
    ({"x": torch.randint(0, 5, (2, 4, 7, 9))}, "float"),
])
def test_bad_input_pool(over, message):
    with pytest.raises(RuntimeError, match=message):
        ops.conv2d_pool_fwd(*pool_args(**over))


# ---------------------------------------------------------------------------------- opcheck

def test_opcheck_conv2d():
    for name, kind, act in (("3x3", "nchw", "gelu"), ("depthwise_mult2_asym", "cl", "relu"),
                            ("pointwise", "cl", "none")):
        x, w, b, r, conv = make(CASES[name], torch.float64, act, True, True, kind)
        x.requires_grad_(), w.requires_grad_()
        torch.library.opcheck(ops.conv2d_fwd.default, (x, w, b, r, *conv))
        out, z = fwd(x.detach(), w.detach(), b, r, conv)
        dout = torch.randn_like(out)
        torch.library.opcheck(ops.conv2d_bwd.default,
                              (dout, x.detach(), w.detach(), out, z, *conv,
                               [True, True, True, True]))


def test_opcheck_separable():
    for kind in ("nchw", "cl"):
        x, dw, dwb, pw, pwb, geo = make_separable(SEPARABLE[1], torch.float32, kind)
        torch.library.opcheck(ops.separable_conv2d_fwd.default,
                              (x, dw, dwb, "relu", pw, pwb, "gelu", *geo))


def test_opcheck_pool():
    for name, kind, act, pool, k in (("3x3", "nchw", "gelu", "max", 2),
                                     ("depthwise_mult2_asym", "cl", "relu", "avg", 3),
                                     ("depthwise", "nchw", "silu", "avg", 2),
                                     ("pointwise", "cl", "none", "max", 3)):
        x, w, b, _, conv = make(POOL_CASES[name], torch.float32, act, True, False, kind)
        torch.library.opcheck(ops.conv2d_pool_fwd.default, (x, w, b, *conv, pool, k))


# ------------------------------------------------------------------------------- bad input

def conv_args(**over):
    args = {"x": torch.randn(2, 4, 7, 9), "weight": torch.randn(6, 4, 3, 3), "bias": None,
            "residual": None, "stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1],
            "groups": 1, "activation": "none"}
    args.update(over)
    return list(args.values())


@pytest.mark.parametrize("over,message", [
    ({"weight": torch.randn(6, 3, 3, 3)}, "channels"),
    ({"weight": torch.randn(6, 2, 3, 3), "groups": 3}, "groups"),
    ({"residual": torch.randn(3, 6, 7, 9)}, "residual"),
    ({"bias": torch.randn(5)}, "bias"),
    ({"weight": torch.randn(6, 4, 3, 3, dtype=torch.float64)}, "dtype"),
    ({"activation": "tanh"}, "activation"),
    ({"stride": [0, 1]}, "stride"),
    ({"padding": [1, 1]}, "padding"),
    ({"weight": torch.randn(6, 4, 11, 3)}, "bigger than the padded input"),
    ({"x": torch.randn(4, 7, 9)}, "4-D"),
    ({"x": torch.randint(0, 5, (2, 4, 7, 9))}, "float"),
])
def test_bad_input_fwd(over, message):
    with pytest.raises(RuntimeError, match=message):
        ops.conv2d_fwd(*conv_args(**over))


def test_bad_input_bwd_and_separable():
    x, w = torch.randn(2, 4, 7, 9), torch.randn(6, 4, 3, 3)
    out, z = ops.conv2d_fwd(x, w, None, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, "gelu")
    with pytest.raises(RuntimeError, match="dout"):
        ops.conv2d_bwd(out[:1], x, w, out, z, [1, 1], [1, 1, 1, 1], [1, 1], 1, "gelu",
                       [True] * 4)
    with pytest.raises(RuntimeError, match="needs z"):
        ops.conv2d_bwd(out, x, w, out, torch.empty(0), [1, 1], [1, 1, 1, 1], [1, 1], 1, "gelu",
                       [True] * 4)
    dw, pw = torch.randn(4, 1, 3, 3), torch.randn(5, 4, 1, 1)
    with pytest.raises(RuntimeError, match="dw_weight"):
        ops.separable_conv2d_fwd(x, torch.randn(3, 1, 3, 3), None, "none", pw, None, "none",
                                 [1, 1], [1, 1, 1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="pw_weight"):
        ops.separable_conv2d_fwd(x, dw, None, "none", torch.randn(5, 3, 1, 1), None, "none",
                                 [1, 1], [1, 1, 1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="pw_bias"):
        ops.separable_conv2d_fwd(x, dw, None, "none", pw, torch.randn(4), "none",
                                 [1, 1], [1, 1, 1, 1], [1, 1])
