"""Lab ops of the convolution family (BOOK.md §4, §17.4; docs/conv.md): a 2-D convolution, NCHW,
square stride and padding, no groups or dilation, and its depthwise special case.

    conv2d(x, weight, bias, stride, padding) -> y
        x (B, C, H, W), weight (K, C, R, S), bias (K,); y (B, K, P, Q) with
        P = (H + 2 padding - R) // stride + 1, Q = (W + 2 padding - S) // stride + 1
        y[b, k, p, q] = bias[k] + sum_{c,r,s} x_pad[b, c, p stride + r, q stride + s] w[k, c, r, s]
    depthwise_conv2d(x, weight, bias, stride, padding) -> y
        groups = C: weight (C, 1, R, S), one R x S filter per channel, no mixing across channels
"""
import torch
import torch.nn.functional as F

from leedl_fast.labs.spec import Case, OpSpec, randn, register, strided, tensor_bytes


def _out(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def _conv_inputs(b, c, h, w, k, r, s, stride, padding, layout="nchw", depthwise=False):
    """Inputs of one case. layout: "nchw" (contiguous), "channels_last" (x stored NHWC: the
    same shape, strides (HWC, 1, WC, C)) or "strided" (every other column of a wider buffer)."""
    def make(device, dtype, g):
        x = randn((b, c, h, w), device, dtype, g)
        fan_in = (1 if depthwise else c) * r * s
        weight = randn((c if depthwise else k, 1 if depthwise else c, r, s), device, dtype, g,
                       scale=fan_in ** -0.5)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "strided":
            x = strided(x)
        return {"x": x, "weight": weight,
                "bias": randn((c if depthwise else k,), device, dtype, g, 0.5),
                "stride": stride, "padding": padding}
    return make


def _label(b, c, h, w, k, r, s, stride, padding, tag):
    return f"{b}x{c}x{h}x{w} k{k} {r}x{s} s{stride} p{padding} {tag}"


def _shape(b, c, h, w, k, r, s, stride, padding):
    return {"b": b, "c": c, "h": h, "w": w, "k": k, "r": r, "s": s, "stride": stride,
            "padding": padding}


# (b, c, h, w, k, r, s, stride, padding): every kernel size of the lab (1, 3, 5), both strides,
# paddings 0..2, odd H and W, C = 3 (an RGB image) and C not a multiple of 16 (K tiles overhang)
_CONV = [
    (2, 24, 7, 7, 20, 1, 1, 1, 0),      # pointwise: a plain matmul over channels
    (2, 3, 13, 13, 8, 3, 3, 1, 1),      # the first layer of an image CNN
    (1, 19, 13, 11, 33, 3, 3, 2, 1),    # strided, odd everything
    (2, 20, 9, 7, 12, 5, 5, 1, 2),      # 5 x 5 'same'
    (1, 5, 13, 13, 7, 5, 5, 2, 0),      # 5 x 5, stride 2, no padding
    (1, 48, 19, 19, 40, 3, 3, 1, 1),    # an AlphaGo-board layer (§4.8), narrowed
]
_CONV_QUICK = [
    (1, 3, 7, 7, 5, 3, 3, 1, 1),
    (1, 6, 9, 7, 9, 5, 5, 2, 2),
    (2, 5, 5, 5, 3, 1, 1, 1, 0),
]
# the odd-layout and half-precision cases, on one middle-sized shape
_CONV_LAYOUT = (2, 19, 13, 11, 24, 3, 3, 1, 1)
_CONV_LAYOUT_QUICK = (1, 5, 7, 9, 6, 3, 3, 2, 1)


def _dw_shape(t, depthwise):
    """Depthwise: as many output channels as input channels (k = c)."""
    return t[:4] + (t[1],) + t[5:] if depthwise else t


def _conv_cases(quick, depthwise=False):
    shapes = [_dw_shape(t, depthwise) for t in (_CONV_QUICK if quick else _CONV)]
    cases = [Case(_label(*t, "fp32"), _conv_inputs(*t, depthwise=depthwise), torch.float32,
                  _shape(*t)) for t in shapes]
    t = _dw_shape(_CONV_LAYOUT_QUICK if quick else _CONV_LAYOUT, depthwise)
    for layout in ("channels_last", "strided"):
        cases.append(Case(_label(*t, f"fp32 {layout} x"),
                          _conv_inputs(*t, layout=layout, depthwise=depthwise), torch.float32,
                          _shape(*t)))
    for dtype, tag in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        cases.append(Case(_label(*t, tag), _conv_inputs(*t, depthwise=depthwise), dtype,
                          _shape(*t)))
    return cases


# The bench shape: AlphaGo's policy network (§4.8), one of layers 2-12 -- 192 filters of
# 3 x 3 x 192 over the zero-padded 19 x 19 board, a batch of 8 positions.
_CONV_DEFAULT = _shape(8, 192, 19, 19, 192, 3, 3, 1, 1)
_CONV_BENCH_QUICK = _shape(2, 32, 9, 9, 32, 3, 3, 1, 1)


def _shaped(depthwise=False):
    def case(shape):
        t = _dw_shape(tuple(shape[key] for key in _CONV_DEFAULT), depthwise)
        return Case(_label(*t, "fp32"), _conv_inputs(*t, depthwise=depthwise), torch.float32,
                    dict(shape))
    return case


def _conv_bench(quick, depthwise=False, default=_CONV_DEFAULT):
    return [_shaped(depthwise)(_CONV_BENCH_QUICK if quick else default)]


def _conv_bytes(i):
    """x, weight and bias read once, y written once: the minimum any kernel must move."""
    x, w = i["x"], i["weight"]
    p = _out(x.shape[2], w.shape[2], i["stride"], i["padding"])
    q = _out(x.shape[3], w.shape[3], i["stride"], i["padding"])
    return tensor_bytes(x, w, i["bias"]) + x.shape[0] * i["bias"].shape[0] * p * q * \
        x.element_size()


def _conv_flops(i):
    """2 FLOPs (a multiply and an add) per filter weight per output element."""
    x, w = i["x"], i["weight"]
    p = _out(x.shape[2], w.shape[2], i["stride"], i["padding"])
    q = _out(x.shape[3], w.shape[3], i["stride"], i["padding"])
    outputs = x.shape[0] * i["bias"].shape[0] * p * q
    return 2 * outputs * w[0].numel()


# --- conv2d -------------------------------------------------------------------------------------

def _conv_oracle(x, weight, bias, stride, padding):
    return F.conv2d(x, weight, bias, stride, padding)  # float64 inputs: an exact enough oracle


def _conv_torch(x, weight, bias, stride, padding):
    return F.conv2d(x, weight, bias, stride, padding)


def _conv_ours(x, weight, bias, stride, padding):
    import leedl_fast.functional as LF

    return LF.conv2d(x, weight, bias, stride, padding)


def _conv_reference(x, weight, bias, stride, padding):
    from leedl_fast.reference.conv import conv2d

    return conv2d(x, weight, bias, (stride, stride), (padding,) * 4)


register(OpSpec(
    name="conv2d", family="conv", args=("x", "weight", "bias", "stride", "padding"),
    outputs=("y",),
    doc="2-D convolution (§4): y[b,k,p,q] = bias[k] + sum over c,r,s of x_pad[b,c,p*stride+r,"
        "q*stride+s] * weight[k,c,r,s]; x (B,C,H,W) any strides, weight (K,C,R,S), bias (K,), "
        "stride and padding ints (zero padding on every side); y (B,K,P,Q) in x's dtype",
    cases=_conv_cases, bench_cases=_conv_bench,
    oracle=_conv_oracle, torch_fn=_conv_torch, ours=_conv_ours, reference=_conv_reference,
    nbytes=_conv_bytes, flops=_conv_flops,
    tol={"out": (1e-4, 1e-4)},  # sums of up to 25 * 48 products in fp32
    default_shape=_CONV_DEFAULT, shape_case=_shaped(),
))


# --- depthwise_conv2d ---------------------------------------------------------------------------

def _dw_oracle(x, weight, bias, stride, padding):
    return F.conv2d(x, weight, bias, stride, padding, groups=x.shape[1])


def _dw_ours(x, weight, bias, stride, padding):
    import leedl_fast.functional as LF

    return LF.conv2d(x, weight, bias, stride, padding, groups=x.shape[1])


def _dw_reference(x, weight, bias, stride, padding):
    from leedl_fast.reference.conv import conv2d

    return conv2d(x, weight, bias, (stride, stride), (padding,) * 4, groups=x.shape[1])


# The bench shape: a MobileNet-style depthwise 3 x 3 layer (§17.4), 128 channels at 56 x 56.
_DW_DEFAULT = _shape(8, 128, 56, 56, 128, 3, 3, 1, 1)

register(OpSpec(
    name="depthwise_conv2d", family="conv", args=("x", "weight", "bias", "stride", "padding"),
    outputs=("y",),
    doc="depthwise 2-D convolution (§17.4), conv2d with groups = C: y[b,c,p,q] = bias[c] + sum "
        "over r,s of x_pad[b,c,p*stride+r,q*stride+s] * weight[c,0,r,s]; x (B,C,H,W) any "
        "strides, weight (C,1,R,S), bias (C,); y (B,C,P,Q) in x's dtype",
    cases=lambda quick: _conv_cases(quick, depthwise=True),
    bench_cases=lambda quick: _conv_bench(quick, depthwise=True, default=_DW_DEFAULT),
    oracle=_dw_oracle, torch_fn=_dw_oracle, ours=_dw_ours, reference=_dw_reference,
    nbytes=_conv_bytes, flops=_conv_flops,
    tol={"out": (1e-5, 1e-5)},  # at most 25 products per output
    default_shape=_DW_DEFAULT, shape_case=_shaped(depthwise=True),
))
