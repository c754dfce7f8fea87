"""Stage 0: AdamW written the way the formula reads, one PyTorch op per term (BOOK.md §3.3.3).

Correct, and slow: every operation below is a separate kernel that reads its whole input tensors
from memory and writes a whole new tensor back. One step runs ~20 kernels and makes ~41
tensor-sized reads and writes where 7 (read p, g, m, v; write p, m, v) would do.

    leedl-fast check docs/labs/optim/stage0_naive.py --op adam_step
"""
import torch


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step on one tensor; updates param, exp_avg and exp_avg_sq in place.
    `step` is the step count after the increment (1 on the first step)."""
    # The math runs in fp32 whatever the storage dtype (bf16 state rounded after every op
    # would drift far from torch's result); .float() is free for fp32 tensors.
    p = param.float()
    g = grad.float()
    m = exp_avg.float()
    v = exp_avg_sq.float()

    p = p * (1 - lr * weight_decay)          # decoupled weight decay (AdamW)
    m = beta1 * m                            # first moment: m = beta1 m + (1 - beta1) g
    m = m + (1 - beta1) * g
    g2 = g * g                               # second moment: v = beta2 v + (1 - beta2) g^2
    v = beta2 * v
    v = v + (1 - beta2) * g2
    m_hat = m / (1 - beta1 ** step)          # bias corrections: m and v start at 0
    v_hat = v / (1 - beta2 ** step)
    denom = torch.sqrt(v_hat) + eps
    update = lr * m_hat / denom
    p = p - update

    # Write the results back into the caller's tensors (rounded to their dtype).
    param.copy_(p)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
