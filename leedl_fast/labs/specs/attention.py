"""Lab ops of the attention family (BOOK.md §6, eq. 6.3-6.4; masked self-attention §7.5.1):
scaled dot-product attention, forward and backward.

    attention(q, k, v, causal, scale) -> o        o = softmax(q k^T * scale [+ causal mask]) v
    attention_backward(q, k, v, do, causal, scale) -> (dq, dk, dv)

q (B, H, Lq, D), k and v (B, H, Lk, D); Lq may differ from Lk (cross-attention, §7.6). `causal`
follows torch's scaled_dot_product_attention(is_causal=True): query i sees keys j <= i (the mask
is aligned to the top-left corner, torch.ones(Lq, Lk).tril()), so every query sees key 0.
Note: leedl_fast's own causal mask is aligned to the bottom-right corner when Lq != Lk (the KV
cache convention, docs/attention.md); `ours` and `reference` below pass torch's top-left mask
explicitly in that case.
"""
import torch

from leedl_fast.labs.spec import Case, OpSpec, randn, register, tensor_bytes

# (B, H, Lq, Lk, D, causal): one query and one key; odd lengths across every tile edge; both
# head dims; Lq < Lk and Lq > Lk with the causal mask (its top-left alignment matters there).
_SHAPES = [(1, 1, 1, 1, 16, False), (2, 3, 7, 7, 16, True), (1, 2, 33, 33, 64, False),
           (1, 2, 33, 33, 64, True), (2, 2, 130, 130, 64, True), (1, 2, 7, 130, 16, True),
           (1, 2, 130, 33, 64, True), (2, 1, 33, 130, 64, False)]
# Under the Triton interpreter every tile is numpy work: keep the quick cases small.
_QUICK = [(1, 1, 1, 1, 16, False), (1, 2, 7, 7, 16, True), (1, 2, 7, 33, 16, True),
          (1, 2, 33, 7, 64, True), (2, 1, 33, 33, 64, False)]


def _label(s):
    b, h, lq, lk, d, causal = s
    return f"{b}x{h}x{lq}x{lk}x{d}{' causal' if causal else ''}"


def _inputs(shape, transposed=False):
    """Inputs of one case; `transposed`: q, k, v are (B, L, H, D) tensors viewed as (B, H, L, D)
    (what a fused QKV projection gives: the L stride is H * D, the head stride D)."""
    b, h, lq, lk, d, causal = shape

    def make(device, dtype, g):
        def t(length):
            if transposed:
                return randn((b, length, h, d), device, dtype, g).transpose(1, 2)
            return randn((b, h, length, d), device, dtype, g)
        return {"q": t(lq), "k": t(lk), "v": t(lk), "causal": causal, "scale": d ** -0.5}
    return make


def _shape_dict(s):
    return dict(zip(("b", "h", "lq", "lk", "d", "causal"), (*s[:5], int(s[5]))))


def _cases(quick, make=_inputs):
    shapes = _QUICK if quick else _SHAPES
    cases = [Case(f"{_label(s)} fp32", make(s), torch.float32, _shape_dict(s)) for s in shapes]
    mid = (1, 2, 33, 33, 64, True) if quick else (2, 2, 130, 130, 64, True)
    cases.append(Case(f"{_label(mid)} fp32 q,k,v from (B,L,H,D)", make(mid, True),
                      torch.float32, _shape_dict(mid)))
    for dtype, tag in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        cases.append(Case(f"{_label(mid)} {tag}", make(mid), dtype, _shape_dict(mid)))
    return cases


_DEFAULT = {"b": 4, "h": 8, "lq": 1024, "lk": 1024, "d": 64, "causal": 1}


def _shaped(shape, make=_inputs):
    s = (shape["b"], shape["h"], shape["lq"], shape["lk"], shape["d"], bool(shape["causal"]))
    return Case(f"{_label(s)} fp16", make(s), torch.float16, _shape_dict(s))


def _bench(quick, make=_inputs):
    s = (1, 4, 256, 256, 64, True) if quick else (4, 8, 1024, 1024, 64, True)
    return [Case(f"{_label(s)} fp16", make(s), torch.float16, _shape_dict(s))]


def _top_left_mask(q, k):
    """torch's is_causal mask, (Lq, Lk) booleans, True = may attend: key j <= query i."""
    return torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()


def _oracle(q, k, v, causal, scale):
    s = (q @ k.transpose(-2, -1)) * scale
    if causal:
        s = s.masked_fill(~_top_left_mask(q, k), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def _torch(q, k, v, causal, scale):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                            scale=scale)


def _with_top_left(fn, q, k, v, causal, scale):
    """Call an SDPA-signature fn with torch's causal semantics (leedl_fast aligns its causal
    mask bottom-right; the two agree when Lq == Lk)."""
    if causal and q.shape[-2] != k.shape[-2]:
        return fn(q, k, v, attn_mask=_top_left_mask(q, k), scale=scale)
    return fn(q, k, v, is_causal=causal, scale=scale)


def _ours(q, k, v, causal, scale):
    import leedl_fast.functional as F

    return _with_top_left(F.scaled_dot_product_attention, q, k, v, causal, scale)


def _reference(q, k, v, causal, scale):
    from leedl_fast.reference.attention import scaled_dot_product_attention

    return _with_top_left(scaled_dot_product_attention, q, k, v, causal, scale)


def _nbytes(i):
    """Flash-style minimum: read q, k, v once, write o once (o has q's shape and dtype)."""
    return tensor_bytes(i["q"], i["k"], i["v"]) + tensor_bytes(i["q"])


def _flops(i):
    """Two matmuls, q k^T and p v: 2 * 2 * B*H*Lq*Lk*D; the causal mask skips about half."""
    b, h, lq, d = i["q"].shape
    f = 4 * b * h * lq * i["k"].shape[-2] * d
    return f // 2 if i["causal"] else f


register(OpSpec(
    name="attention", family="attention", args=("q", "k", "v", "causal", "scale"),
    outputs=("o",),
    doc="scaled dot-product attention, eq. 6.3-6.4 (§6; masked self-attention §7.5.1): o = "
        "softmax(q k^T * scale) v over the keys; q (B, H, Lq, D), k and v (B, H, Lk, D), any "
        "strides; causal as torch's is_causal (query i sees keys j <= i); o (B, H, Lq, D) in q's "
        "dtype",
    cases=_cases, bench_cases=_bench,
    oracle=_oracle, torch_fn=_torch, ours=_ours, reference=_reference,
    nbytes=_nbytes, flops=_flops,
    tol={"out": (2e-5, 1e-4)},
    default_shape=_DEFAULT, shape_case=_shaped,
))


# --- attention_backward ------------------------------------------------------------------------

def _bwd_inputs(shape, transposed=False):
    forward = _inputs(shape, transposed)
    b, h, lq, _, d, _ = shape

    def make(device, dtype, g):
        i = forward(device, dtype, g)
        return {"q": i["q"], "k": i["k"], "v": i["v"],
                "do": randn((b, h, lq, d), device, dtype, g), "causal": i["causal"],
                "scale": i["scale"]}
    return make


def _grads(fn, q, k, v, do, causal, scale):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    return torch.autograd.grad(fn(q, k, v, causal, scale), (q, k, v), do)


def _bwd_oracle(q, k, v, do, causal, scale):
    return _grads(_oracle, q, k, v, do, causal, scale)


def _bwd_torch(q, k, v, do, causal, scale):
    return _grads(_torch, q, k, v, do, causal, scale)


def _bwd_ours(q, k, v, do, causal, scale):
    return _grads(_ours, q, k, v, do, causal, scale)


def _bwd_reference(q, k, v, do, causal, scale):
    return _grads(_reference, q, k, v, do, causal, scale)


def _bwd_nbytes(i):
    """Read q, k, v, do and write dq, dk, dv (a flash backward also reads o and a row statistic,
    which it could recompute)."""
    return 2 * tensor_bytes(i["q"], i["k"], i["v"]) + tensor_bytes(i["do"])


register(OpSpec(
    name="attention_backward", family="attention",
    args=("q", "k", "v", "do", "causal", "scale"), outputs=("dq", "dk", "dv"),
    doc="the gradients of attention for an upstream gradient do (B, H, Lq, D): with P = "
        "softmax(q k^T * scale) and delta_i = sum_j P_ij (do v^T)_ij: dv = P^T do, dS = P * "
        "(do v^T - delta), dq = dS k * scale, dk = dS^T q * scale",
    cases=lambda quick: _cases(quick, _bwd_inputs),
    bench_cases=lambda quick: _bench(quick, _bwd_inputs),
    oracle=_bwd_oracle, torch_fn=_bwd_torch, ours=_bwd_ours, reference=_bwd_reference,
    nbytes=_bwd_nbytes, flops=lambda i: 5 * _flops(i) // 2,
    tol={"out": (5e-5, 1e-4)},
    default_shape=_DEFAULT, shape_case=lambda shape: _shaped(shape, _bwd_inputs),
))
