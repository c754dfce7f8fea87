"""A character corpus from text that is on every machine: the Python standard library's own
source files (no download). Deterministic: the same files in the same order on every machine
with the same Python version."""
import os
import sysconfig

import torch

_FILES = ("textwrap.py", "string.py", "fractions.py", "heapq.py", "bisect.py", "calendar.py",
          "difflib.py", "argparse.py", "functools.py", "statistics.py")


def char_corpus(max_chars=200_000):
    """(text, vocab): up to max_chars characters of stdlib source, and its sorted characters."""
    root = sysconfig.get_paths()["stdlib"]
    parts, total = [], 0
    for name in _FILES:
        path = os.path.join(root, name)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    text = "".join(parts)[:max_chars]
    if not text:
        raise RuntimeError(f"no standard-library source files found under {root}")
    return text, sorted(set(text))


def encode(text, vocab):
    """Character ids (int64 tensor) of text under vocab."""
    index = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([index[c] for c in text], dtype=torch.int64)


def lm_batches(ids, batch, length, generator=None):
    """One random batch of next-token pairs: x (batch, length), y = x shifted by one."""
    starts = torch.randint(0, len(ids) - length - 1, (batch,), generator=generator)
    x = torch.stack([ids[s:s + length] for s in starts.tolist()])
    y = torch.stack([ids[s + 1:s + length + 1] for s in starts.tolist()])
    return x, y
