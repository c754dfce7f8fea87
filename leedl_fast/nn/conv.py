"""Conv2d, DepthwiseSeparableConv2d and BatchNorm folding (BOOK.md §4, §17.4).

`Conv2d` subclasses torch.nn.Conv2d: constructor, parameters, state_dict keys ("weight",
"bias"), initialization and repr are torch's; forward runs leedl_fast's conv2d. It carries two
extra attributes fused into the kernel's epilogue: `activation` (None, "relu", "gelu", "silu")
and `pool` (None or ("max" | "avg", 2 | 3): non-overlapping pooling after the activation) --
`accelerate` sets them when it folds a following BatchNorm, activation and pooling into the
conv of an eval-mode model. padding_mode other than 'zeros' pads first, as torch does.

`DepthwiseSeparableConv2d(in, out, kernel_size, ...)` is the book's §17.4 block: a depthwise
k x k conv (one filter per channel) then a pointwise 1 x 1 conv that mixes channels,
k*k*I + I*O weights instead of k*k*I*O (17.5). The activation (if any) follows each of the two
convs, as in MobileNet. Its state_dict keys are "depthwise.weight", "depthwise.bias",
"pointwise.weight", "pointwise.bias". Inference runs one fused op (the depthwise result never
goes to memory whole); training runs the two convs.
"""
import torch
import torch.nn.functional as torch_F

from .._ops import conv as conv_ops


def fold_batchnorm(conv, bn):
    """The (weight, bias) of one conv equal to conv followed by `bn` in eval mode:
    bn(y) = (y - mean) * gamma / sqrt(var + eps) + beta, with y = conv(x) + b, so
    weight' = weight * s[o] and bias' = (b - mean) * s + beta, s = gamma / sqrt(var + eps).
    Computed in float64, returned in the conv weight's dtype. `conv` is an nn.Conv2d (or a
    weight tensor), `bn` an nn.BatchNorm2d with running statistics."""
    weight = conv.weight if isinstance(conv, torch.nn.Module) else conv
    bias = conv.bias if isinstance(conv, torch.nn.Module) else None
    if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"fold_batchnorm: bn must be a BatchNorm module, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_batchnorm: bn has no running statistics "
                         "(track_running_stats=False): there is nothing to fold")
    if bn.num_features != weight.shape[0]:
        raise ValueError(f"fold_batchnorm: bn has {bn.num_features} features, the conv "
                         f"{weight.shape[0]} output channels")
    with torch.no_grad():
        var, mean = bn.running_var.double(), bn.running_mean.double()
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
        scale = gamma / torch.sqrt(var + bn.eps)
        new_weight = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
        b = bias.double() if bias is not None else torch.zeros_like(mean)
        new_bias = (b - mean) * scale + beta
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype)


class Conv2d(torch.nn.Conv2d):
    activation = None  # fused epilogue: None, "relu", "gelu" or "silu" (see the top)
    pool = None  # fused pooling after the activation: None or ("max" | "avg", 2 | 3)

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = torch_F.pad(input, self._reversed_padding_repeated_twice,
                                mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        return conv_ops.conv2d(input, weight, bias, self.stride, padding, self.dilation,
                               self.groups, activation=self.activation, pool=self.pool)

    def forward(self, input):
        return self._conv_forward(input, self.weight, self.bias)

    def extra_repr(self):
        extra = super().extra_repr()
        if self.activation is not None:
            extra += f", activation={self.activation!r}"
        return extra if self.pool is None else f"{extra}, pool={self.pool!r}"


class DepthwiseSeparableConv2d(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 activation=None, device=None, dtype=None):
        super().__init__()
        if activation not in (None,) + conv_ops.ACTIVATIONS:
            raise ValueError(f"DepthwiseSeparableConv2d: activation must be one of "
                             f"{conv_ops.ACTIVATIONS} or None, got {activation!r}")
        factory = {"device": device, "dtype": dtype}
        self.depthwise = Conv2d(in_channels, in_channels, kernel_size, stride, padding,
                                groups=in_channels, bias=bias, **factory)
        self.pointwise = Conv2d(in_channels, out_channels, 1, bias=bias, **factory)
        self.activation = activation

    @classmethod
    def from_modules(cls, depthwise, depthwise_bn, pointwise, pointwise_bn, activation=None):
        """A block equal, in eval mode, to depthwise -> depthwise_bn -> act -> pointwise ->
        pointwise_bn -> act (either BN may be None): the BNs folded into the convs."""
        if depthwise.groups != depthwise.in_channels or depthwise.out_channels != \
                depthwise.in_channels:
            raise ValueError("from_modules: `depthwise` must have groups == in_channels == "
                             "out_channels")
        if depthwise.padding_mode != "zeros":
            raise ValueError(f"from_modules: `depthwise` must pad with zeros (the fused block "
                             f"does), got padding_mode={depthwise.padding_mode!r}")
        if (tuple(pointwise.kernel_size), tuple(pointwise.stride), pointwise.groups) != (
                (1, 1), (1, 1), 1) or pointwise.padding not in ((0, 0), "valid", "same") or \
                pointwise.in_channels != depthwise.out_channels:
            raise ValueError(f"from_modules: `pointwise` must be a 1 x 1 conv with stride 1, no "
                             f"padding, groups 1 and {depthwise.out_channels} in_channels, got "
                             f"{pointwise!r}")
        block = cls(depthwise.in_channels, pointwise.out_channels, depthwise.kernel_size,
                    depthwise.stride, depthwise.padding, True, activation,
                    device=depthwise.weight.device, dtype=depthwise.weight.dtype)
        block.depthwise.dilation = depthwise.dilation
        for conv, bn, dst in ((depthwise, depthwise_bn, block.depthwise),
                              (pointwise, pointwise_bn, block.pointwise)):
            if bn is not None:
                weight, bias = fold_batchnorm(conv, bn)
            else:
                weight = conv.weight.detach()
                bias = conv.bias.detach() if conv.bias is not None else torch.zeros(
                    conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device)
            with torch.no_grad():
                dst.weight.copy_(weight)
                dst.bias.copy_(bias)
        return block

    def forward(self, input):
        dw, pw = self.depthwise, self.pointwise
        return conv_ops.separable_conv2d(input, dw.weight, dw.bias, pw.weight, pw.bias,
                                         dw.stride, dw.padding, dw.dilation,
                                         dw_activation=self.activation,
                                         activation=self.activation)

    def extra_repr(self):
        return f"activation={self.activation!r}"
