"""Stage 0: attention as the book writes it (BOOK.md §6, eq. 6.3-6.4), in PyTorch.

Three steps, each a full pass over a (B, H, Lq, Lk) tensor in memory:

    s = q k^T * scale          the scores, materialized: B*H*Lq*Lk floats
    p = softmax(s) over keys   reads s, writes p (torch's softmax: max, exp, sum, divide)
    o = p v                    reads p again

Correct and short, and the L x L matrices are the whole cost at long L: at B=4, H=8, L=1024 they
are 4 * 8 * 1024^2 * 4 B = 128 MiB each in fp32, against 16 MiB of q, k, v and o together.

    leedl-fast check docs/labs/attention/stage0_naive.py --op attention
"""
import torch


def attention(q, k, v, causal, scale):
    """q (B, H, Lq, D), k and v (B, H, Lk, D) -> o (B, H, Lq, D) in q's dtype."""
    # fp16/bf16 inputs: compute in fp32 (the sums of exponentials need the range and bits), round
    # once at the end. matmul handles any strides, so transposed layouts need nothing special.
    qf, kf, vf = q.float(), k.float(), v.float()
    s = (qf @ kf.transpose(-2, -1)) * scale                  # (B, H, Lq, Lk)
    if causal:
        # torch's is_causal: query i sees keys j <= i (top-left aligned when Lq != Lk)
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, dim=-1)                             # another (B, H, Lq, Lk) tensor
    return (p @ vf).to(q.dtype)
