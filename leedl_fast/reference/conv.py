"""Convolution as the book defines it (BOOK.md §4, §17.4): a filter of size k x k x C_in/groups
slides over the zero-padded image; at each stride-spaced position its receptive field (dilated
by `dilation`) is multiplied elementwise with the filter and summed -- one output value per
filter (output channel) and position:

    z[n, o, i, j] = bias[o] + residual[n, o, i, j]
                  + sum_{c, p, q} x_pad[n, g*Cg + c, i*s_h + p*d_h, j*s_w + q*d_w] * w[o, c, p, q]

with g = o // (O / groups) the filter's group and Cg = C_in / groups; then out = act(z).
Depthwise convolution is groups = C_in (one k x k filter per channel, §17.4); the separable
block follows it with a pointwise (1 x 1) convolution that mixes channels.

Written as the sliding window itself (a loop over the k x k filter taps, each tap one
batched product of shifted views) -- no F.conv2d -- so it is an independent oracle. Math runs
in float32 (float64 for float64 inputs); results are cast back to the input dtype.
"""
import math

import torch

ACTIVATIONS = ("none", "relu", "gelu", "silu")


def _acc(x):
    return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def activation(z, name):
    if name == "none":
        return z
    if name == "relu":
        return torch.clamp_min(z, 0)
    if name == "gelu":  # exact: z * Phi(z)
        return 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
    if name == "silu":
        return z * torch.sigmoid(z)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def activation_grad(z, name):
    """d act(z) / dz."""
    if name == "none":
        return torch.ones_like(z)
    if name == "relu":
        return (z > 0).to(z.dtype)
    if name == "gelu":
        cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
        return cdf + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def out_size(size, kernel, stride, pad_before, pad_after, dilation):
    """Output positions along one spatial dim: the windows that fit in the padded input."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_pre(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
               groups=1):
    """z = conv(x, weight) + bias, in the accumulation dtype (float32 / float64).
    padding is (top, bottom, left, right)."""
    xa, wa = _acc(x), _acc(weight)
    n, _c, h, w = xa.shape
    o, cg, kh, kw = wa.shape
    top, bottom, left, right = padding
    xp = torch.nn.functional.pad(xa, (left, right, top, bottom))  # zero padding
    oh = out_size(h, kh, stride[0], top, bottom, dilation[0])
    ow = out_size(w, kw, stride[1], left, right, dilation[1])
    og = o // groups
    z = xa.new_zeros(n, groups, og, oh, ow)
    xg = xp.reshape(n, groups, cg, xp.shape[-2], xp.shape[-1])
    wg = wa.reshape(groups, og, cg, kh, kw)
    for p in range(kh):  # one filter tap at a time: the window's (p, q) element everywhere
        r0 = p * dilation[0]
        rows = slice(r0, r0 + stride[0] * (oh - 1) + 1, stride[0])
        for q in range(kw):
            c0 = q * dilation[1]
            cols = slice(c0, c0 + stride[1] * (ow - 1) + 1, stride[1])
            patch = xg[..., rows, cols]  # (n, groups, cg, oh, ow)
            z += torch.einsum("ngcij,goc->ngoij", patch, wg[..., p, q])
    z = z.reshape(n, o, oh, ow)
    if bias is not None:
        z = z + _acc(bias).view(1, o, 1, 1)
    return z


def conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
           groups=1, activation_name="none", residual=None):
    """The fused op's math: act(conv(x) + bias + residual), cast to x's dtype."""
    z = conv2d_pre(x, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        z = z + _acc(residual)
    return activation(z, activation_name).to(x.dtype)


def separable_conv2d(x, dw_weight, dw_bias, dw_activation, pw_weight, pw_bias, activation_name,
                     stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1)):
    """§17.4: depthwise k x k (groups = C) -> dw_activation -> pointwise 1 x 1 -> activation."""
    c = x.shape[1]
    mid = activation(conv2d_pre(x, dw_weight, dw_bias, stride, padding, dilation, c),
                     dw_activation)
    out = conv2d_pre(mid, pw_weight, pw_bias)
    return activation(out, activation_name).to(x.dtype)


def separable_parameter_count(k, in_channels, out_channels):
    """(17.5): standard k*k*I*O against separable k*k*I + I*O (no biases)."""
    return k * k * in_channels * out_channels, k * k * in_channels + in_channels * out_channels


def max_pool2d(x, kernel, stride=None):
    """Max over each kernel x kernel window (no padding), the book's pooling."""
    stride = stride or kernel
    windows = x.unfold(2, kernel, stride).unfold(3, kernel, stride)
    return windows.amax(dim=(-2, -1))


def avg_pool2d(x, kernel, stride=None):
    stride = stride or kernel
    windows = _acc(x).unfold(2, kernel, stride).unfold(3, kernel, stride)
    return windows.mean(dim=(-2, -1)).to(x.dtype)
