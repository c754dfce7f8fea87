"""Learning-rate schedules with warm-up (BOOK.md §3.4, eq. 3.26): η_t rises from 0 over the
first `warmup_steps`, then decays. σ (Adam's second moment) is an unreliable statistic in the
first steps, so small steps first gather statistics. Both return a torch LambdaLR, so they
work with any optimizer (torch's or leedl_fast's) and save/load like any torch scheduler.
"""
import math

import torch


def _check(warmup_steps, total_steps):
    if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps > 0, got "
                         f"warmup_steps={warmup_steps}, total_steps={total_steps}")


def _warmup(step, warmup_steps):
    return (step + 1) / warmup_steps if step < warmup_steps else None


def warmup_linear(optimizer, warmup_steps, total_steps, last_epoch=-1):
    """η_t = η (t + 1) / warmup for t < warmup, then linear decay to 0 at total_steps."""
    _check(warmup_steps, total_steps)

    def factor(step):
        w = _warmup(step, warmup_steps)
        if w is not None:
            return w
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch)


def warmup_cosine(optimizer, warmup_steps, total_steps, min_factor=0.0, last_epoch=-1):
    """η_t = η (t + 1) / warmup for t < warmup, then a half cosine from η down to
    min_factor · η at total_steps (the Transformer/GPT recipe)."""
    _check(warmup_steps, total_steps)

    def factor(step):
        w = _warmup(step, warmup_steps)
        if w is not None:
            return w
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch)
