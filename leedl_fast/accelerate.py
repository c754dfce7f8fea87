"""accelerate(model): swap torch.nn modules for their leedl_fast.nn counterparts, in place.

Only the class changes (the leedl_fast modules subclass torch's, with the same parameters and
buffers), so weights, devices, dtypes, hooks and state_dict keys are all kept.
"""
import torch

from . import nn as lf_nn

# torch class -> leedl_fast class; exact type match, so user subclasses are left alone.
SWAPS = {
    torch.nn.LayerNorm: lf_nn.LayerNorm,
    torch.nn.RMSNorm: lf_nn.RMSNorm,
    # Fused only where need_weights=False (torch's own path otherwise, same results).
    torch.nn.MultiheadAttention: lf_nn.MultiheadAttention,
}


def accelerate(model):
    """Swap every module of a supported torch.nn type for leedl_fast's; returns the model."""
    for module in model.modules():
        new_cls = SWAPS.get(type(module))
        if new_cls is not None:
            module.__class__ = new_cls
    return model
