"""Drop-in for torch.nn.functional: `import leedl_fast.functional as F`.

Same names and signatures as torch's; the fused extras (add_layer_norm, add_rms_norm,
separable_conv2d, quantized_linear, and conv2d's keyword-only activation= and residual=) have no torch
counterpart. Anything leedl_fast does not accelerate falls through to
torch.nn.functional, so the swap of the import is the only change a user makes.
"""
import torch.nn.functional as _torch_F

from ._ops.attention import scaled_dot_product_attention
from ._ops.conv import conv2d, separable_conv2d
from ._ops.norm import add_layer_norm, add_rms_norm, layer_norm, rms_norm
from ._ops.quant import quantized_linear

__all__ = ["add_layer_norm", "add_rms_norm", "conv2d", "layer_norm", "rms_norm",
           "quantized_linear", "scaled_dot_product_attention", "separable_conv2d"]


def __getattr__(name):
    # Everything else (relu, linear, cross_entropy, ...) is torch's own.
    return getattr(_torch_F, name)
