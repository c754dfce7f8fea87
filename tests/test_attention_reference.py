"""The attention oracle (leedl_fast.reference.attention) against torch's own SDPA in float64, and
its masking rules (causal bottom-right, sliding window, fully masked rows) against masks built
element by element. The fused kernels of the attention family are tested against this oracle."""
import pytest
import torch
import torch.nn.functional as TF

from leedl_fast.reference import attention as ref


def qkv(b=2, hq=4, hk=4, lq=7, lk=7, d=16, dv=None, dtype=torch.float64):
    q = torch.randn(b, hq, lq, d, dtype=dtype, requires_grad=True)
    k = torch.randn(b, hk, lk, d, dtype=dtype, requires_grad=True)
    v = torch.randn(b, hk, lk, dv or d, dtype=dtype, requires_grad=True)
    return q, k, v


def grads(out, inputs, seed=0):
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, g)


def assert_same(ours, theirs, inputs):
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)
    for a, b in zip(grads(ours, inputs), grads(theirs, inputs)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def mask_by_loops(lq, lk, is_causal=False, window=None):
    left, right = window or (None, None)
    m = torch.zeros(lq, lk, dtype=torch.bool)
    for i in range(lq):
        for j in range(lk):
            rel = j - (i + lk - lq)  # key position relative to the query's diagonal
            ok = not (is_causal and rel > 0)
            ok &= left is None or rel >= -left
            ok &= right is None or rel <= right
            m[i, j] = ok
    return m


@pytest.mark.parametrize("lq, lk", [(7, 7), (5, 13), (13, 5), (1, 9)])
def test_matches_torch_sdpa(lq, lk):
    q, k, v = qkv(lq=lq, lk=lk, dv=12)
    assert_same(ref.scaled_dot_product_attention(q, k, v),
                TF.scaled_dot_product_attention(q, k, v), (q, k, v))


def test_scale_and_gqa():
    q, k, v = qkv(hq=8, hk=2)
    assert_same(ref.scaled_dot_product_attention(q, k, v, scale=0.3, enable_gqa=True),
                TF.scaled_dot_product_attention(q, k, v, scale=0.3, enable_gqa=True), (q, k, v))


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_broadcast_masks(kind):
    q, k, v = qkv(lq=6, lk=9)
    if kind == "bool":
        mask = torch.rand(2, 1, 6, 9) > 0.3
        mask[..., 0] = True  # every query sees a key: torch's math path gives NaN otherwise
    else:
        mask = torch.randn(1, 4, 1, 9, dtype=torch.float64)
    assert_same(ref.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                TF.scaled_dot_product_attention(q, k, v, attn_mask=mask), (q, k, v))


@pytest.mark.parametrize("lq, lk", [(7, 7), (4, 11)])
def test_causal_is_bottom_right(lq, lk):
    q, k, v = qkv(lq=lq, lk=lk)
    assert torch.equal(ref.visible(lq, lk, is_causal=True), mask_by_loops(lq, lk, True))
    lower_right = mask_by_loops(lq, lk, is_causal=True)
    assert_same(ref.scaled_dot_product_attention(q, k, v, is_causal=True),
                TF.scaled_dot_product_attention(q, k, v, attn_mask=lower_right), (q, k, v))


@pytest.mark.parametrize("window", [(2, 0), (0, 3), (1, 1), (None, 2), (3, None)])
@pytest.mark.parametrize("lq, lk", [(9, 9), (5, 12)])
def test_sliding_window(window, lq, lk):
    m = mask_by_loops(lq, lk, window=window)
    assert torch.equal(ref.visible(lq, lk, window=window), m)
    assert torch.equal(ref.visible(lq, lk, is_causal=True, window=window),
                       mask_by_loops(lq, lk, True, window))
    q, k, v = qkv(lq=lq, lk=lk)
    keep = m.any(-1, keepdim=True)
    ours = ref.scaled_dot_product_attention(q, k, v, window=window)
    theirs = TF.scaled_dot_product_attention(q, k, v, attn_mask=m | ~keep)  # avoid NaN rows
    torch.testing.assert_close(ours * keep, theirs * keep, atol=1e-10, rtol=1e-10)


def test_fully_masked_rows_are_zero_with_zero_grads():
    q, k, v = qkv(lq=12, lk=4)
    mask = torch.ones(12, 4, dtype=torch.bool)
    mask[3] = False
    out = ref.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.all(out[:, :, 3] == 0)
    dq, dk, dv = grads(out, (q, k, v))
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))
    assert torch.all(dq[:, :, 3] == 0)
    # A window that leaves the first queries without keys (lq > lk, bottom-right aligned).
    out = ref.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.all(out[:, :, :8] == 0) and torch.isfinite(out).all()


def test_dropout_is_refused():
    q, k, v = qkv()
    with pytest.raises(NotImplementedError, match="dropout"):
        ref.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
