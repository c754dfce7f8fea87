"""Convolution family: leedl_fast's conv2d (fused bias + activation epilogue), depthwise conv and
the fused depthwise-separable block against torch (mkldnn on CPU, cuDNN on GPU), torch.compile,
and torch's unfused conv -> + bias -> relu.

Counting (docs/conv.md): FLOPs of a conv = 2 * N * O * OH * OW * (C / groups) * KH * KW (the
backward: 2x more, dx and dweight); minimum bytes = x + weight + out (+ residual), each read or
written once. Depthwise convs do k*k multiply-adds per output element: they are memory-bound
(~2.25 FLOP/byte at 3x3 fp32), ordinary 3x3 convs are compute-bound.

Cases: the layers of a small image classifier (the book's food-classification CNN: 3 -> 64 at
224 x 224, 64 -> 128 at 64 x 64), ResNet 3 x 3 64 -> 64 at 56 x 56 (plain, and with bias + ReLU
fused against torch's conv then bias then ReLU; and with a 2 x 2 max pool fused too), a 1 x 1
pointwise conv, MobileNet's depthwise
3 x 3 (C = 256, 56 x 56), and the separable block (depthwise 3 x 3 -> BN -> ReLU -> pointwise ->
BN -> ReLU, eval mode; ours has both BNs folded and runs one fused op). CPU at batch 8 (1 for
224 x 224), fp32; GPU at batch 64 (and 1 for two layers), bf16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as TF

from bench.harness import Case, candidates, no_grad

# (op, C, O, H, W, k, stride, groups, activation): the layer line-up.
LAYERS = [
    ("conv_image224", 3, 64, 224, 224, 3, 1, 1, None),
    ("conv_image64", 64, 128, 64, 64, 3, 1, 1, None),
    ("conv3x3", 64, 64, 56, 56, 3, 1, 1, None),
    ("conv3x3_bias_relu", 64, 64, 56, 56, 3, 1, 1, "relu"),
    ("conv1x1", 256, 256, 28, 28, 1, 1, 1, None),
    ("depthwise3x3", 256, 256, 56, 56, 3, 1, 256, None),
]
SEPARABLE = ("separable_block", 128, 256, 56, 56, 3)


def _flops(n, c, o, oh, ow, k, groups, mode):
    fwd = 2 * n * o * oh * ow * (c // groups) * k * k
    return fwd if mode == "fwd" else 3 * fwd


def _layer_builder(n, c, o, h, w, k, stride, groups, act, mode, device, dtype, channels_last):
    def build():
        import leedl_fast.functional as F

        torch.manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x = torch.randn(n, c, h, w, device=device, dtype=dtype).contiguous(memory_format=fmt)
        weight = torch.randn(o, c // groups, k, k, device=device, dtype=dtype) * (
            (c // groups) * k * k) ** -0.5
        bias = torch.randn(o, device=device, dtype=dtype)
        pad = k // 2
        leaves, grads = (), ()
        if mode == "fwd+bwd":
            for t in (x, weight, bias):
                t.requires_grad_(True)
            leaves = (x, weight, bias)
            oh = (h + 2 * pad - k) // stride + 1
            ow = (w + 2 * pad - k) // stride + 1
            grads = (torch.randn(n, o, oh, ow, device=device, dtype=dtype),)

        if act == "relu":
            def eager(x, weight, bias):  # cuDNN/mkldnn conv, then bias and ReLU as torch ops
                return torch.relu(TF.conv2d(x, weight, None, stride, pad, 1, groups)
                                  + bias.view(1, -1, 1, 1))
        else:
            def eager(x, weight, bias):
                return TF.conv2d(x, weight, bias, stride, pad, 1, groups)

        def ours(x, weight, bias):
            return F.conv2d(x, weight, bias, stride, pad, 1, groups, activation=act)

        fns = candidates(eager, ours, (x, weight, bias), mode, device, leaves, grads)
        if act == "relu" and mode == "fwd":  # torch's best eager: the bias inside the conv
            fns["torch conv(bias) -> relu"] = lambda: torch.relu(
                TF.conv2d(x, weight, bias, stride, pad, 1, groups))
        return fns if mode != "fwd" else {k_: no_grad(f) for k_, f in fns.items()}

    return build


def _pool_builder(n, c, o, h, w, k, device, dtype):
    """conv -> ReLU -> 2 x 2 max pool, inference: torch's three ops (cuDNN/mkldnn conv with the
    bias, relu, max_pool2d) against the fused conv2d(pool=...)."""
    def build():
        import leedl_fast.functional as F

        torch.manual_seed(0)
        x = torch.randn(n, c, h, w, device=device, dtype=dtype)
        weight = torch.randn(o, c, k, k, device=device, dtype=dtype) * (c * k * k) ** -0.5
        bias = torch.randn(o, device=device, dtype=dtype)

        def eager(x, weight, bias):
            return TF.max_pool2d(torch.relu(TF.conv2d(x, weight, bias, 1, k // 2)), 2)

        def ours(x, weight, bias):
            return F.conv2d(x, weight, bias, 1, k // 2, activation="relu", pool=("max", 2))

        fns = candidates(eager, ours, (x, weight, bias), "fwd", device)
        return {name: no_grad(fn) for name, fn in fns.items()}

    return build


def _separable_builder(n, c, o, h, w, k, device, dtype):
    def build():
        import leedl_fast

        torch.manual_seed(0)
        factory = {"device": device, "dtype": dtype}
        dw = torch.nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False, **factory)
        pw = torch.nn.Conv2d(c, o, 1, bias=False, **factory)
        bn1 = torch.nn.BatchNorm2d(c, **factory)
        bn2 = torch.nn.BatchNorm2d(o, **factory)
        for bn in (bn1, bn2):
            with torch.no_grad():
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2)
        theirs = torch.nn.Sequential(dw, bn1, torch.nn.ReLU(), pw, bn2, torch.nn.ReLU()).eval()
        ours = leedl_fast.nn.DepthwiseSeparableConv2d.from_modules(dw, bn1, pw, bn2, "relu")
        x = torch.randn(n, c, h, w, **factory)
        fns = candidates(theirs, ours, (x,), "fwd", device)
        return {name: no_grad(fn) for name, fn in fns.items()}

    return build


def cases(device: str, quick: bool) -> list[Case]:
    gpu = device.startswith("cuda")
    dtype = torch.bfloat16 if gpu else torch.float32
    elem = torch.empty((), dtype=dtype).element_size()
    batch = 64 if gpu else 8
    layers = LAYERS[2:4] + LAYERS[5:] if quick else LAYERS
    out = []
    for op, c, o, h, w, k, stride, groups, act in layers:
        n = 1 if h >= 224 and not gpu else batch
        if quick:
            n, h, w = 1, 16, 16
        oh, ow = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
        nbytes = elem * (n * c * h * w + o * (c // groups) * k * k + n * o * oh * ow)
        layouts = [False, True] if op == "depthwise3x3" else [False]
        for channels_last in layouts:
            for mode in ("fwd", "fwd+bwd"):
                target = None
                backend = "leedl_fast:" + ("triton" if gpu else "cpu")
                if op == "depthwise3x3" and mode == "fwd" and not channels_last:
                    target = (backend, 2.0 if gpu else 1.0)
                elif gpu and mode == "fwd" and op == "conv3x3_bias_relu":
                    target = (backend, 1.2)
                elif gpu and mode == "fwd" and op == "conv3x3":
                    target = (backend, 0.9)
                name = op + ("_channels_last" if channels_last else "")
                out.append(Case(family="conv", op=name, mode=mode, shape=(n, c, o, h, w),
                                dtype=dtype, device=device,
                                nbytes=nbytes * (1 if mode == "fwd" else 3),
                                build=_layer_builder(n, c, o, h, w, k, stride, groups, act, mode,
                                                     device, dtype, channels_last),
                                target=target,
                                flops=_flops(n, c, o, oh, ow, k, groups, mode)))
    if gpu and not quick:  # batch 1: latency, where a launch and a small grid dominate
        for op, c, o, h, w, k, stride, groups, act in (LAYERS[3], LAYERS[5]):
            oh, ow = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
            out.append(Case(family="conv", op=op, mode="fwd", shape=(1, c, o, h, w),
                            dtype=dtype, device=device,
                            nbytes=elem * (c * h * w + o * (c // groups) * k * k + o * oh * ow),
                            build=_layer_builder(1, c, o, h, w, k, stride, groups, act, "fwd",
                                                 device, dtype, False),
                            flops=_flops(1, c, o, oh, ow, k, groups, "fwd")))
    n, c, o, h, w, k = batch, 64, 64, 56, 56, 3
    if quick:
        n, h, w = 1, 16, 16
    out.append(Case(family="conv", op="conv3x3_relu_maxpool", mode="fwd", shape=(n, c, o, h, w),
                    dtype=dtype, device=device,
                    nbytes=elem * (n * c * h * w + o * c * k * k + n * o * (h // 2) * (w // 2)),
                    build=_pool_builder(n, c, o, h, w, k, device, dtype),
                    flops=_flops(n, c, o, h, w, k, 1, "fwd")))
    op, c, o, h, w, k = SEPARABLE
    n = batch
    if quick:
        n, h, w = 1, 16, 16
    nbytes = elem * (n * c * h * w + n * o * h * w + c * k * k + c * o)
    out.append(Case(family="conv", op=op, mode="fwd", shape=(n, c, o, h, w), dtype=dtype,
                    device=device, nbytes=nbytes,
                    build=_separable_builder(n, c, o, h, w, k, device, dtype),
                    target=None if gpu else ("leedl_fast:cpu", 1.2),
                    flops=2 * n * h * w * (c * k * k + c * o)))
    return out
