"""Layer norm and RMS norm as the book writes them (BOOK.md §7.1, eq. 7.1).

For one vector x of one example (the last len(normalized_shape) dims), with m and sigma the mean
and the (biased) standard deviation over that vector's own dimensions -- no batch statistics:

    x'_i = (x_i - m) / sqrt(sigma^2 + eps) * gamma_i + beta_i          (layer norm)
    x'_i = x_i / sqrt(mean_j(x_j^2) + eps) * gamma_i                   (RMS norm: no centring)

The "Add & Norm" step of the Transformer block (§7.4) is s = x + residual, then norm(s); the
fused ops return both norm(s) and s (the next block's residual).

Math runs in float32 (float64 for float64 inputs) and the result is cast back to the input dtype.
"""
import torch


def _dims(normalized_shape):
    return tuple(range(-len(normalized_shape), 0))


def _acc(x):
    return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def _affine(y, weight, bias):
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    xa = _acc(x)
    dims = _dims(normalized_shape)
    m = xa.mean(dim=dims, keepdim=True)                       # m: the vector's mean
    var = ((xa - m) ** 2).mean(dim=dims, keepdim=True)       # sigma^2, biased (1/N)
    x_hat = (xa - m) / torch.sqrt(var + eps)
    return _affine(x_hat, weight, bias).to(x.dtype)


def rms_norm(x, normalized_shape, weight=None, eps=None):
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    xa = _acc(x)
    ms = (xa * xa).mean(dim=_dims(normalized_shape), keepdim=True)  # mean square
    return _affine(xa / torch.sqrt(ms + eps), weight, None).to(x.dtype)


def add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5):
    s = x + residual
    return layer_norm(s, normalized_shape, weight, bias, eps), s


def add_rms_norm(x, residual, normalized_shape, weight=None, eps=None):
    s = x + residual
    return rms_norm(s, normalized_shape, weight, eps), s
