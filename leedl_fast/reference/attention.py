"""Scaled dot-product attention as the book writes it (BOOK.md §6-7): the oracle for the fused
attention kernels (run in float64) and the `reference` backend.

For queries q_i, keys k_j and values v_j (rows of Q, K, V):

    a_ij  = (q_i . k_j) * scale                 attention score, scale = 1/sqrt(d) by default
    a'_ij = exp(a_ij) / sum_j' exp(a_ij')       softmax over the keys the query may see
    o_i   = sum_j a'_ij v_j

Which keys a query may see:
* `attn_mask`: boolean (True = may attend) or additive (added to a_ij), broadcastable to
  (..., Lq, Lk), as torch's scaled_dot_product_attention.
* `is_causal` (masked self-attention of the decoder, §7.5): key j is visible to query i iff
  j <= i + (Lk - Lq) -- aligned to the bottom-right corner when Lq != Lk, so the last query sees
  every key (decoding with a KV cache), as FlashAttention >= 2.1 and
  torch.nn.attention.bias.causal_lower_right.
* `window=(left, right)` (truncated self-attention, §6): with the same bottom-right offset
  o = Lk - Lq, key j is visible iff i + o - left <= j <= i + o + right; None on a side means
  unbounded. `is_causal` is window (None, 0).
A query that sees no key at all gets output 0 (and zero gradients), never NaN.

GQA/MQA (`enable_gqa`): Hq query heads share Hk = Hq / g key/value heads; query head h reads
key/value head h // g (torch's convention: repeat_interleave).
"""
import math

import torch


def visible(lq, lk, is_causal=False, window=None, device=None):
    """Boolean (Lq, Lk) matrix of the keys each query may see under is_causal / window, or None
    when every key is visible."""
    left, right = (None, None) if window is None else window
    # A bound that reaches past both sequences excludes nothing (and i + 2**63 - 1 would
    # overflow int64).
    left, right = (None if w is None or w >= lq + lk else w for w in (left, right))
    if is_causal:
        right = 0 if right is None else min(right, 0)
    if left is None and right is None:
        return None
    i = torch.arange(lq, device=device).unsqueeze(1) + (lk - lq)  # bottom-right aligned
    j = torch.arange(lk, device=device).unsqueeze(0)
    ok = torch.ones(lq, lk, dtype=torch.bool, device=device)
    if left is not None:
        ok &= j >= i - left
    if right is not None:
        ok &= j <= i + right
    return ok


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False, *, window=None):
    if dropout_p != 0.0:
        raise NotImplementedError("reference attention has no dropout: pass dropout_p=0.0")
    acc = torch.float64 if query.dtype == torch.float64 else torch.float32
    q, k, v = query.to(acc), key.to(acc), value.to(acc)
    if enable_gqa and q.shape[-3] != k.shape[-3]:
        group = q.shape[-3] // k.shape[-3]
        k = k.repeat_interleave(group, dim=-3)
        v = v.repeat_interleave(group, dim=-3)
    lq, lk = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

    a = (q @ k.transpose(-2, -1)) * scale                       # a_ij
    keep = visible(lq, lk, is_causal, window, q.device)         # (Lq, Lk) or None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            keep = attn_mask if keep is None else keep & attn_mask
        else:
            a = a + attn_mask.to(acc)
    if keep is not None:
        a = a.masked_fill(~keep, float("-inf"))
    # A query that sees no key: softmax over an all -inf row is NaN; give it a zero row instead
    # (and keep the NaN out of the backward by softmaxing zeros there).
    seen = torch.isfinite(a).any(dim=-1, keepdim=True) if keep is not None or \
        attn_mask is not None else None
    if seen is not None:
        a = torch.where(seen, a, torch.zeros((), dtype=acc, device=a.device))
    p = torch.softmax(a, dim=-1)                                # a'_ij
    if seen is not None:
        p = torch.where(seen, p, torch.zeros((), dtype=acc, device=a.device))
    return (p @ v).to(query.dtype)                              # o_i
