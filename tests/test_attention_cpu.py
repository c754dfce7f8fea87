"""The C++ CPU attention kernels (csrc/cpu/attention.cpp) through torch.ops.leedl_fast, against
the float64 reference: forward (out and lse) and backward, at sizes that cross the kernel's
query blocks (64/128) and key tiles (512), every visibility rule, masks, GQA, layouts, dtypes;
gradcheck, opcheck, torch.compile, bad input."""
import math
import sys

import pytest
import torch
import torch.nn.functional as TF

import leedl_fast
import leedl_fast.functional as F
from leedl_fast.reference import attention as ref

fwd_op = torch.ops.leedl_fast.attention_fwd
bwd_op = torch.ops.leedl_fast.attention_bwd


def _window(left, right):
    return None if left < 0 and right < 0 else (None if left < 0 else left,
                                                 None if right < 0 else right)


def reference(q, k, v, do, mask=None, scale=None, causal=False, left=-1, right=-1):
    """float64 reference outputs (out, lse, dq, dk, dv) for the raw op's arguments."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    leaves = [t.detach().to(torch.float64, copy=True).requires_grad_() for t in (q, k, v)]
    if mask is not None and mask.is_floating_point():
        mask = mask.double()
    out = ref.scaled_dot_product_attention(*leaves, attn_mask=mask, is_causal=causal,
                                           scale=scale, enable_gqa=True,
                                           window=_window(left, right))
    grads = torch.autograd.grad(out, leaves, do.double())
    # lse_i = log sum_j exp(s_ij) over the visible keys (+inf when there are none)
    s = leaves[0].detach() @ leaves[1].detach().repeat_interleave(
        q.shape[1] // k.shape[1], 1).transpose(-2, -1) * scale
    keep = ref.visible(q.shape[2], k.shape[2], causal, _window(left, right))
    if mask is not None:
        if mask.dtype == torch.bool:
            keep = mask if keep is None else keep & mask
        else:
            s = s + mask
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, -1)
    lse = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
    return (out.detach(), lse, *grads)


def check(b=2, hq=2, hk=2, lq=37, lk=37, d=16, dtype=torch.float32, mask=None, scale=None,
          causal=False, left=-1, right=-1, layout=None, tol=2e-5):
    shapes = ((b, hq, lq, d), (b, hk, lk, d), (b, hk, lk, d))
    if layout == "blhd":  # (B, L, H, D) storage seen as (B, H, L, D): the usual projection
        q, k, v = (torch.randn(s[0], s[2], s[1], s[3], dtype=dtype).transpose(1, 2)
                   for s in shapes)
    else:
        q, k, v = (torch.randn(*s, dtype=dtype) for s in shapes)
    sc = 1 / math.sqrt(d) if scale is None else scale
    out, lse = fwd_op(q, k, v, mask, sc, causal, left, right)
    do = torch.randn_like(out)
    dq, dk, dv = bwd_op(do, q, k, v, out, lse, mask, sc, causal, left, right)
    want = reference(q, k, v, do, mask, sc, causal, left, right)
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for name, got, w in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), want):
        assert got.shape == w.shape, name
        assert name == "lse" or got.dtype == dtype, name
        assert not torch.isnan(got).any(), name
        torch.testing.assert_close(got.double(), w, atol=tol, rtol=tol,
                                   msg=lambda m: f"{name}: {m}")
    return out, lse, dq, dk, dv


@pytest.mark.parametrize("lq, lk", [(1, 1), (7, 7), (37, 37), (130, 130), (7, 600),
                                    (600, 7), (129, 1030)])
def test_lengths_across_blocks(lq, lk):
    check(lq=lq, lk=lk)


@pytest.mark.parametrize("lq, lk", [(37, 37), (130, 130), (20, 300), (300, 20)])
def test_causal_bottom_right(lq, lk):
    _, lse, *_ = check(lq=lq, lk=lk, causal=True)
    if lq > lk:  # the first lq - lk queries see no key
        assert torch.isinf(lse[..., : lq - lk]).all()


@pytest.mark.parametrize("left, right", [(3, 0), (0, 5), (4, 4), (-1, 2), (20, -1), (0, 0),
                                         (100, 0)])
def test_sliding_window(left, right):
    check(lq=300, lk=310, left=left, right=right)


def test_window_with_causal_and_far_apart_lengths():
    check(lq=5, lk=700, left=64, right=3, causal=True)


@pytest.mark.parametrize("d", [1, 24, 80, 96, 128, 256, 320])
def test_head_dims(d):
    check(lq=40, lk=45, d=d)


def test_gqa_and_mqa():
    check(hq=6, hk=2, lq=70, lk=90)
    check(hq=4, hk=1, lq=70, lk=90, causal=True)


def test_transposed_layout():
    check(lq=70, lk=70, layout="blhd", causal=True)


def test_scale():
    check(scale=0.05)
    check(scale=-0.3)


def _bool_mask(b, lq, lk):
    mask = torch.rand(b, 1, lq, lk) > 0.4
    mask[:, :, 2] = False  # a fully masked query row: output 0, lse +inf, zero gradients
    return mask


@pytest.mark.parametrize("kind", ["bool", "padding", "additive", "additive-neg-inf",
                                  "broadcast-2d", "fp16-additive"])
def test_masks(kind):
    b, lq, lk = 2, 70, 530
    if kind == "bool":
        mask = _bool_mask(b, lq, lk)
    elif kind == "padding":  # key padding (B, 1, 1, Lk)
        mask = torch.ones(b, 1, 1, lk, dtype=torch.bool)
        mask[1, ..., 500:] = False
    elif kind == "additive":
        mask = torch.randn(1, 2, lq, lk)
    elif kind == "additive-neg-inf":
        mask = torch.randn(b, 2, lq, lk).masked_fill(torch.rand(b, 2, lq, lk) > 0.7,
                                                     float("-inf"))
    elif kind == "broadcast-2d":
        mask = torch.rand(lq, lk) > 0.2
    else:
        mask = torch.randn(lq, lk).half()
    out, lse, dq, *_ = check(b=b, lq=lq, lk=lk, mask=mask)
    if kind == "bool":
        assert (out[:, :, 2] == 0).all() and (dq[:, :, 2] == 0).all()
        assert torch.isinf(lse[:, :, 2]).all()


def test_mask_with_window_and_gqa():
    check(hq=4, hk=2, lq=150, lk=150, mask=_bool_mask(2, 150, 150), left=30, right=0)


def test_strided_mask_view():
    full = torch.rand(2, 2, 40, 90) > 0.3
    check(lq=40, lk=45, mask=full[..., ::2])  # the key dim has stride 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_twice_torchs_error(dtype):
    """fp16/bf16: error vs float64 at most 2x torch SDPA's own (3x for gradients)."""
    q, k, v = (torch.randn(2, 4, 150, 64, dtype=dtype) for _ in range(3))
    do = torch.randn_like(q)
    out, lse = fwd_op(q, k, v, None, 0.125, True, -1, -1)
    got = (out, *bwd_op(do, q, k, v, out, lse, None, 0.125, True, -1, -1))
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    theirs = TF.scaled_dot_product_attention(*leaves, is_causal=True, scale=0.125)
    theirs = (theirs.detach(), *torch.autograd.grad(theirs, leaves, do))
    want = reference(q, k, v, do, None, 0.125, True)
    want = (want[0], *want[2:])
    for i, (g, t, w) in enumerate(zip(got, theirs, want)):
        assert g.dtype == dtype
        ours_err = (g.double() - w).abs().max().item()
        torch_err = (t.double() - w).abs().max().item()
        floor = torch.finfo(dtype).eps * w.abs().max().item()
        assert ours_err <= (2 if i == 0 else 3) * torch_err + floor, (i, ours_err, torch_err)


@pytest.mark.parametrize("b, hq, lq, lk", [(0, 2, 5, 5), (2, 2, 0, 5), (2, 2, 5, 0)])
def test_empty(b, hq, lq, lk):
    q = torch.randn(b, hq, lq, 8)
    k = v = torch.randn(b, hq, lk, 8)
    out, lse = fwd_op(q, k, v, None, 0.3, False, -1, -1)
    assert out.shape == q.shape and (out == 0).all() and torch.isinf(lse).all()
    dq, dk, dv = bwd_op(torch.ones_like(out), q, k, v, out, lse, None, 0.3, False, -1, -1)
    assert dq.shape == q.shape and dk.shape == k.shape and (dq == 0).all() and (dk == 0).all()


def test_gradcheck_float64():
    q = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 9, 5, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 9, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.randn(6, 9, dtype=torch.float64)
    for args in ((None, 0.4, False, -1, -1), (None, 0.4, True, 2, -1), (mask, 0.7, False, -1, 1)):
        def f(q, k, v, args=args):
            return fwd_op(q, k, v, *args)[0]
        assert torch.autograd.gradcheck(f, (q, k, v))


def test_opcheck():
    q = torch.randn(2, 9, 4, 16).transpose(1, 2).requires_grad_()  # non-contiguous
    k = torch.randn(2, 2, 11, 16, requires_grad=True)
    v = torch.randn(2, 2, 11, 16, requires_grad=True)
    mask = torch.rand(9, 11) > 0.3
    for args in ((None, 0.25, True, -1, -1), (mask, 0.25, False, 3, 2)):
        torch.library.opcheck(fwd_op.default, (q, k, v, *args))
        out, lse = fwd_op(q, k, v, *args)
        torch.library.opcheck(bwd_op.default, (torch.randn_like(out), q.detach(), k.detach(),
                                               v.detach(), out.detach(), lse.detach(), *args))


def test_compile_fullgraph_functional_forward_and_backward():
    def f(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, window=(8, 0), enable_gqa=True)

    q = torch.randn(2, 4, 33, 16, requires_grad=True)
    k = torch.randn(2, 2, 33, 16, requires_grad=True)
    v = torch.randn(2, 2, 33, 16, requires_grad=True)
    eager = f(q, k, v)
    g_eager = torch.autograd.grad(eager.sum(), (q, k, v))
    compiled = torch.compile(f, fullgraph=True)(q, k, v)
    g_compiled = torch.autograd.grad(compiled.sum(), (q, k, v))
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(g_compiled, g_eager):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("call, words", [
    (lambda q: fwd_op(q[0], q, q, None, 1.0, False, -1, -1), "4-D"),
    (lambda q: fwd_op(q, q.double(), q, None, 1.0, False, -1, -1), "dtype"),
    (lambda q: fwd_op(q, q, q.long(), None, 1.0, False, -1, -1), "floating point"),
    (lambda q: fwd_op(q, q[..., :8], q[..., :8], None, 1.0, False, -1, -1), "head dim"),
    (lambda q: fwd_op(q, q[:1], q[:1], None, 1.0, False, -1, -1), "batch"),
    (lambda q: fwd_op(q, q[:, :2], q[:, :2], None, 1.0, False, -1, -1), "multiple"),
    (lambda q: fwd_op(q, q, q, torch.ones(4, 5, 5, dtype=torch.bool), 1.0, False, -1, -1),
     "expand|size"),
    (lambda q: fwd_op(q, q, q, torch.ones(5, 5, dtype=torch.int32), 1.0, False, -1, -1),
     "attn_mask"),
    (lambda q: bwd_op(q, q, q, q, q, torch.zeros(2, 3, 4), None, 1.0, False, -1, -1), "lse"),
])
def test_bad_input_to_the_raw_op(call, words):
    q = torch.randn(2, 3, 5, 16)
    with pytest.raises(RuntimeError, match=words):
        call(q)


def test_default_backend_matches_reference_backend_through_functional():
    q, k, v = (torch.randn(2, 3, 50, 32) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v, window=(5, 5))
    with leedl_fast.backend("reference"):
        want = F.scaled_dot_product_attention(q, k, v, window=(5, 5))
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("lk", [1, 40])
def test_inputs_are_left_untouched(lk):
    """(A length-1 K transposes to a view of itself: the kernel must not scale it in place.)"""
    q, k, v = torch.randn(2, 2, 5, 16), torch.randn(2, 2, lk, 16), torch.randn(2, 2, lk, 16)
    saved = [t.clone() for t in (q, k, v)]
    out, lse = fwd_op(q, k, v, None, 0.3, False, -1, -1)
    bwd_op(torch.ones_like(out), q, k, v, out, lse, None, 0.3, False, -1, -1)
    for t, s in zip((q, k, v), saved):
        assert torch.equal(t, s)


@pytest.mark.parametrize("threads", [2, 4])
@pytest.mark.parametrize("kw", [{}, {"causal": True}, {"left": 300, "right": 0},
                                {"mask": torch.rand(1, 1, 90, 1600) > 0.2}])
def test_backward_split_over_key_chunks(threads, kw):
    """Fewer (batch, key head) pairs than threads: the backward splits the keys into chunks,
    each with its own dQ part."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check(b=1, hq=2, hk=1, lq=90, lk=1600, **kw)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_single_row_operands_with_a_free_row_stride(dtype):
    """A (B, H, 1, D) view whose row stride is < D counts as contiguous in torch; the kernels
    must not hand that stride to the BLAS as a leading dimension."""
    q = torch.randn(2, 3, 16, 1, dtype=dtype).mT  # (2, 3, 1, 16), stride(2) == 1
    k = torch.randn(2, 3, 10, 16, dtype=dtype)
    v = torch.randn_like(k)
    kt = torch.randn(2, 3, 16, 1, dtype=dtype).mT  # Lk = 1 with the same free stride
    for args in ((q, k, v), (k, kt, kt.clone())):
        out, lse = fwd_op(*args, None, 0.25, False, -1, -1)
        do = torch.randn_like(out)
        got = (out, lse, *bwd_op(do, *args, out, lse, None, 0.25, False, -1, -1))
        want = reference(*args, do, None, 0.25)
        for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
            torch.testing.assert_close(g.double(), w, atol=2e-5, rtol=2e-5,
                                       msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("left, right", [(sys.maxsize, 0), (-1, sys.maxsize),
                                         (sys.maxsize, sys.maxsize), (2**62, 3)])
def test_huge_window_bounds_mean_unbounded(left, right):
    check(lq=40, lk=70, left=left, right=right)
