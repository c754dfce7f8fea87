"""Synthetic sequence-to-sequence tasks for the Transformer (BOOK.md §7), no downloads: copy,
reverse or sort a random sequence of tokens. Small enough to learn in a minute on a CPU, and
each needs attention for a different reason: copy aligns output i with input i, reverse with
input L-1-i (position information matters), sort with wherever the next-smallest token is
(content matters).

Token ids: PAD = 0, BOS = 1, EOS = 2; the task's tokens are 3 .. vocab-1.
"""
from typing import NamedTuple

import torch

PAD, BOS, EOS = 0, 1, 2
FIRST_TOKEN = 3


class Seq2SeqBatch(NamedTuple):
    """A padded batch. Masks are True at padding (torch.nn.MultiheadAttention's convention)."""
    src: torch.Tensor           # (N, S)      the input tokens, PAD after the end
    tgt_in: torch.Tensor        # (N, T)      BOS, then the target: what the decoder reads
    tgt_out: torch.Tensor       # (N, T)      the target, then EOS: what it should predict
    src_pad_mask: torch.Tensor  # (N, S)      bool
    tgt_pad_mask: torch.Tensor  # (N, T)      bool, for tgt_in (and tgt_out: same positions)


def _make(transform, n, min_len, max_len, vocab, generator):
    if not FIRST_TOKEN < vocab:
        raise ValueError(f"vocab must exceed {FIRST_TOKEN} (PAD, BOS, EOS are 0, 1, 2), "
                         f"got {vocab}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=generator)
    tokens = torch.randint(FIRST_TOKEN, vocab, (n, max_len), generator=generator)
    src = torch.full((n, max_len), PAD, dtype=torch.long)
    tgt_in = torch.full((n, max_len + 1), PAD, dtype=torch.long)
    tgt_out = torch.full((n, max_len + 1), PAD, dtype=torch.long)
    for i, length in enumerate(lengths.tolist()):
        x = tokens[i, :length]
        y = transform(x)
        src[i, :length] = x
        tgt_in[i, 0] = BOS
        tgt_in[i, 1:length + 1] = y
        tgt_out[i, :length] = y
        tgt_out[i, length] = EOS
    return Seq2SeqBatch(src, tgt_in, tgt_out, src == PAD, tgt_in == PAD)


def copy_task(n, min_len, max_len, vocab, generator=None):
    """n examples whose target is the source itself."""
    return _make(lambda x: x, n, min_len, max_len, vocab, generator)


def reverse_task(n, min_len, max_len, vocab, generator=None):
    """n examples whose target is the source reversed."""
    return _make(lambda x: x.flip(0), n, min_len, max_len, vocab, generator)


def sort_task(n, min_len, max_len, vocab, generator=None):
    """n examples whose target is the source sorted ascending."""
    return _make(lambda x: x.sort().values, n, min_len, max_len, vocab, generator)


def strip_special(tokens):
    """The task tokens of one decoded row (a 1-D tensor), up to the first EOS, as a list."""
    out = []
    for t in tokens.tolist():
        if t == EOS:
            break
        if t != PAD:
            out.append(t)
    return out
