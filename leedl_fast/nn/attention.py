"""MultiheadAttention backed by leedl_fast's fused attention (book §6.3, §7).

A subclass of torch.nn.MultiheadAttention: the constructor, parameters, state_dict keys
(in_proj_weight or q/k/v_proj_weight, in_proj_bias, out_proj.*) and the forward signature are
torch's, so a trained torch module's weights load unchanged. The fused path runs when it can
give exactly torch's result without the Lq x Lk weight matrix:

* need_weights=False (torch's default is True: the averaged weights need the full matrix, which
  a flash kernel never builds -- pass need_weights=False to get the fused path);
* no dropout while training, no bias_k/bias_v, no add_zero_attn.

Anything else runs torch's own implementation (the result is torch's, by construction).
Masks follow torch.nn.MultiheadAttention's convention -- a boolean True means "may NOT attend"
(the opposite of scaled_dot_product_attention's) -- and are converted once here.
"""
import torch
import torch.nn.functional as torch_F

from .. import functional as F


def _as_additive(mask, dtype):
    """A torch-MHA mask (bool: True = masked; or float: added) as an additive float mask."""
    if mask is None or mask.is_floating_point():
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        mask, float("-inf"))


class MultiheadAttention(torch.nn.MultiheadAttention):
    def _fused_ok(self, need_weights):
        return (not need_weights and self.bias_k is None and not self.add_zero_attn
                and (self.dropout == 0.0 or not self.training))

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if not self._fused_ok(need_weights) or (is_causal and attn_mask is None):
            # torch's path; with is_causal and no attn_mask it raises torch's own error.
            return super().forward(query, key, value, key_padding_mask, need_weights,
                                   attn_mask, average_attn_weights, is_causal)
        batched = query.dim() == 3
        if not batched:  # (L, E): one sequence
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if self.batch_first:  # to (L, B, E), torch's internal layout
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        lq, b, e = query.shape
        lk = key.shape[0]
        h, d = self.num_heads, self.head_dim
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = (None, None, None) if self.in_proj_bias is None else \
            self.in_proj_bias.chunk(3)
        # Projections, then (L, B, E) -> (B, H, L, D).
        q = torch_F.linear(query, w_q, b_q).view(lq, b, h, d).permute(1, 2, 0, 3)
        k = torch_F.linear(key, w_k, b_k).view(lk, b, h, d).permute(1, 2, 0, 3)
        v = torch_F.linear(value, w_v, b_v).view(lk, b, h, d).permute(1, 2, 0, 3)

        if is_causal and key_padding_mask is None and lq == lk:
            # attn_mask is the causal mask (torch's contract for the is_causal hint): use the
            # kernel's causal tile skipping instead of reading the mask. Only for Lq == Lk,
            # where torch's top-left and leedl_fast's bottom-right alignments agree.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self._finish(out, lq, b, e, batched)
        mask = _as_additive(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 3:  # (B*H, Lq, Lk)
            mask = mask.view(b, h, lq, lk)
        pad = _as_additive(key_padding_mask, q.dtype)
        if pad is not None:  # (B, Lk) -> (B, 1, 1, Lk)
            pad = pad.view(b, 1, 1, lk)
            mask = pad if mask is None else mask + pad
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self._finish(out, lq, b, e, batched)

    def _finish(self, out, lq, b, e, batched):
        """(B, H, Lq, D) -> output projection, in the caller's layout; no weights."""
        out = out.permute(2, 0, 1, 3).reshape(lq, b, e)
        out = self.out_proj(out)
        if self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        return out, None
