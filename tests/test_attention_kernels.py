"""The Triton flash-attention forward (kernels/attention.py) against the float64 reference, run
under the Triton interpreter on CPU tensors (GPU: the same tests under `make test-gpu`)."""
import pytest
import torch

from leedl_fast.reference import attention as ref

from .conftest import HAS_CUDA, INTERPRETED

pytestmark = pytest.mark.skipif(not (INTERPRETED or HAS_CUDA),
                                reason="Triton needs the interpreter or a GPU")
DEVICE = "cuda" if HAS_CUDA and not INTERPRETED else "cpu"


def _double(kw):
    m = kw.get("attn_mask")
    if m is not None and m.is_floating_point():
        kw = dict(kw, attn_mask=m.double())
    return kw


def check(b=1, hq=2, hk=2, lq=19, lk=19, d=16, dtype=torch.float32, **kw):
    from leedl_fast.kernels import attention as kernels

    q = torch.randn(b, hq, lq, d, dtype=dtype, device=DEVICE)
    k = torch.randn(b, hk, lk, d, dtype=dtype, device=DEVICE)
    v = torch.randn(b, hk, lk, d, dtype=dtype, device=DEVICE)
    out, lse = kernels.attention_fwd(q, k, v, **kw)
    want = ref.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                            enable_gqa=hq != hk, **_double(kw))
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=2e-5)
    if "attn_mask" in kw:
        return  # the lse check below builds its own masks
    # lse = log sum_j exp(s_ij) over the visible keys; +inf where a query sees none.
    s = (q.double() @ k.double().repeat_interleave(hq // hk, 1).transpose(-2, -1))
    s = s * (kw.get("scale") or d ** -0.5)
    keep = ref.visible(lq, lk, kw.get("is_causal", False), kw.get("window"), s.device)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    want_lse = torch.logsumexp(s, -1)
    want_lse = torch.where(torch.isinf(want_lse), torch.full_like(want_lse, float("inf")),
                           want_lse)
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("lq, lk", [(19, 19), (7, 33), (33, 7), (1, 40)])
def test_lengths(lq, lk):
    check(lq=lq, lk=lk)


@pytest.mark.parametrize("lq, lk", [(19, 19), (9, 37), (37, 9)])
def test_causal_bottom_right(lq, lk):
    check(lq=lq, lk=lk, is_causal=True)  # lq > lk: the first queries see no key -> 0


@pytest.mark.parametrize("window", [(3, 0), (0, 5), (4, 4), (None, 2), (20, None)])
def test_sliding_window(window):
    check(lq=45, lk=50, window=window)


@pytest.mark.parametrize("d", [16, 24, 80])
def test_head_dims(d):
    check(d=d, lq=17, lk=21)


def test_gqa_scale_and_batch():
    check(b=2, hq=6, hk=2, scale=0.2)


def test_non_contiguous_inputs():
    from leedl_fast.kernels import attention as kernels

    x = torch.randn(2, 13, 3, 3, 16, device=DEVICE)  # (B, L, 3, H, D) as a fused QKV projection
    q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))
    out, _ = kernels.attention_fwd(q, k, v)
    want = ref.scaled_dot_product_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=2e-5)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE == "cpu", reason="fp16 tl.dot: checked on the GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gpu(dtype):
    from leedl_fast.kernels import attention as kernels

    q, k, v = (torch.randn(2, 4, 300, 128, dtype=dtype, device="cuda") for _ in range(3))
    out, _ = kernels.attention_fwd(q, k, v, is_causal=True)
    want = ref.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    ours_err = (out.double() - want).abs().max().item()
    torch_err = (theirs.double() - want).abs().max().item()
    assert ours_err <= 2 * torch_err + torch.finfo(dtype).eps


def check_bwd(b=1, hq=2, hk=2, lq=19, lk=19, d=16, **kw):
    from leedl_fast.kernels import attention as kernels

    q, k, v = (torch.randn(b, h, n, d, device=DEVICE) for h, n in ((hq, lq), (hk, lk), (hk, lk)))
    out, lse = kernels.attention_fwd(q, k, v, **kw)
    do = torch.randn_like(out)
    got = kernels.attention_bwd(do, q, k, v, out, lse, **kw)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    want_out = ref.scaled_dot_product_attention(*leaves, enable_gqa=hq != hk, **_double(kw))
    want = torch.autograd.grad(want_out, leaves, do.double())
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g.double(), w, atol=1e-4, rtol=1e-4,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("lq, lk", [(19, 19), (7, 33), (33, 7)])
def test_bwd_lengths(lq, lk):
    check_bwd(lq=lq, lk=lk)


@pytest.mark.parametrize("lq, lk", [(19, 19), (9, 37), (37, 9)])
def test_bwd_causal(lq, lk):
    check_bwd(lq=lq, lk=lk, is_causal=True)  # lq > lk: fully masked rows get zero gradients


@pytest.mark.parametrize("window", [(3, 0), (0, 5), (4, 4), (None, 2), (20, None)])
def test_bwd_sliding_window(window):
    check_bwd(lq=45, lk=50, window=window)


def test_bwd_gqa_head_dim_scale():
    check_bwd(b=2, hq=6, hk=2, d=24, scale=0.3)


def _masks(b, h, lq, lk):
    bool_mask = torch.rand(b, 1, lq, lk, device=DEVICE) > 0.4
    bool_mask[:, :, 2] = False  # a fully masked query row: output 0, zero gradients
    padding = torch.ones(b, 1, 1, lk, dtype=torch.bool, device=DEVICE)
    padding[:, :, :, lk - 5:] = False  # key padding: the last 5 keys are padding
    additive = torch.randn(1, h, lq, lk, device=DEVICE)
    return {"bool": bool_mask, "padding": padding, "additive": additive}


@pytest.mark.parametrize("kind", ["bool", "padding", "additive"])
def test_attn_mask(kind):
    mask = _masks(2, 2, 21, 26)[kind]
    check(b=2, lq=21, lk=26, attn_mask=mask)
    check_bwd(b=2, lq=21, lk=26, attn_mask=mask)


def test_attn_mask_with_causal_window_and_gqa():
    mask = _masks(1, 4, 30, 30)["bool"]
    check(hq=4, hk=2, lq=30, lk=30, attn_mask=mask, window=(6, 0))
    check_bwd(hq=4, hk=2, lq=30, lk=30, attn_mask=mask, is_causal=True)
