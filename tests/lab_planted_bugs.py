"""Planted bugs for tests/test_labs_check.py: each function is layer_norm(x, weight, bias, eps)
with one classic kernel mistake. Not a test module (no test_ prefix)."""
import ctypes

import torch


def correct(x, weight, bias, eps):
    xf = x.float()
    m = xf.mean(-1, keepdim=True)
    v = ((xf - m) ** 2).mean(-1, keepdim=True)
    return ((xf - m) / torch.sqrt(v + eps) * weight.float() + bias.float()).to(x.dtype)


def wrong_result(x, weight, bias, eps):
    """Unbiased variance (1/(N-1)) instead of the book's 1/N: close, but not layer norm."""
    xf = x.float()
    m = xf.mean(-1, keepdim=True)
    v = xf.var(-1, keepdim=True, unbiased=True) if x.shape[-1] > 1 else torch.zeros_like(m)
    return ((xf - m) / torch.sqrt(v + eps) * weight.float() + bias.float()).to(x.dtype)


def unwritten_element(x, weight, bias, eps):
    """Off by one: the last column of every row is never stored."""
    y = torch.empty_like(x)
    r = correct(x, weight, bias, eps)
    y[..., :-1] = r[..., :-1]
    return y


def wrong_stride(x, weight, bias, eps):
    """Assumes contiguous rows: reads x's storage with row stride N."""
    rows = x.numel() // x.shape[-1]
    flat = torch.as_strided(x, (rows, x.shape[-1]), (x.shape[-1], 1))
    return correct(flat, weight, bias, eps).reshape(x.shape)


def crash(x, weight, bias, eps):
    """Dereferences a null pointer on wide rows (a segfault, as an out-of-bounds kernel would)."""
    if x.shape[-1] > 100:
        ctypes.string_at(0)
    return correct(x, weight, bias, eps)


def hang(x, weight, bias, eps):
    """Never finishes on wide rows (a loop whose exit condition is never met)."""
    while x.shape[-1] > 100:
        pass
    return correct(x, weight, bias, eps)


def raises(x, weight, bias, eps):
    raise RuntimeError("not implemented yet")
