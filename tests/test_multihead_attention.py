"""leedl_fast.nn.MultiheadAttention: torch's constructor, state_dict and forward; outputs match
torch.nn.MultiheadAttention (need_weights=False runs the fused path)."""
import pytest
import torch

import leedl_fast

from .conftest import cpu_backends

BACKENDS = cpu_backends()


def pair(**kw):
    theirs = torch.nn.MultiheadAttention(32, 4, **kw).eval()
    ours = leedl_fast.nn.MultiheadAttention(32, 4, **kw).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def compare(ours, theirs, backend, *args, **kw):
    want, _ = theirs(*args, need_weights=False, **kw)
    with leedl_fast.backend(backend):
        got, weights = ours(*args, need_weights=False, **kw)
    assert weights is None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_self_attention_with_masks(backend, batch_first):
    ours, theirs = pair(batch_first=batch_first)
    x = torch.randn(3, 9, 32) if batch_first else torch.randn(9, 3, 32)
    compare(ours, theirs, backend, x, x, x)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[0, 6:] = True  # True = padding (torch MHA convention)
    compare(ours, theirs, backend, x, x, x, key_padding_mask=pad)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(9)
    compare(ours, theirs, backend, x, x, x, attn_mask=causal, is_causal=True)
    compare(ours, theirs, backend, x, x, x, attn_mask=causal.isinf(), key_padding_mask=pad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_hint_with_different_lengths_follows_the_mask(backend):
    # torch aligns is_causal top-left when Lq != Lk; the module must then use the given mask.
    ours, theirs = pair(batch_first=True)
    q, kv = torch.randn(2, 4, 32), torch.randn(2, 6, 32)
    top_left = torch.ones(4, 6, dtype=torch.bool).triu(1)
    compare(ours, theirs, backend, q, kv, kv, attn_mask=top_left, is_causal=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_attention_kdim_vdim_and_unbatched(backend):
    ours, theirs = pair(kdim=24, vdim=20, batch_first=True)
    q, k, v = torch.randn(2, 5, 32), torch.randn(2, 11, 24), torch.randn(2, 11, 20)
    compare(ours, theirs, backend, q, k, v)
    ours, theirs = pair()
    x = torch.randn(7, 32)
    compare(ours, theirs, backend, x, x, x)


def test_need_weights_runs_torchs_path():
    ours, theirs = pair()
    x = torch.randn(6, 2, 32)
    got, w = ours(x, x, x)
    want, w_want = theirs(x, x, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(w, w_want)


def test_torch_compile_fullgraph():
    ours, _ = pair(batch_first=True)
    x = torch.randn(2, 8, 32)
    with leedl_fast.backend("reference"):
        eager, _ = ours(x, x, x, need_weights=False)
        compiled = torch.compile(ours, fullgraph=True)
        out, _ = compiled(x, x, x, need_weights=False)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)


def test_torch_compile_fullgraph_cpp_kernel_forward_and_backward():
    """The default CPU path (the C++ kernels) under torch.compile(fullgraph=True), with grads."""
    ours, _ = pair(batch_first=True)
    x = torch.randn(2, 8, 32, requires_grad=True)
    mask = torch.rand(8, 8) > 0.3
    eager, _ = ours(x, x, x, need_weights=False, attn_mask=mask)
    g_eager = torch.autograd.grad(eager.sum(), [x, *ours.parameters()])
    compiled = torch.compile(ours, fullgraph=True)
    out, _ = compiled(x, x, x, need_weights=False, attn_mask=mask)
    g_out = torch.autograd.grad(out.sum(), [x, *ours.parameters()])
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_out, g_eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
