"""LayerNorm and RMSNorm backed by leedl_fast's fused kernels.

They subclass torch.nn.LayerNorm / torch.nn.RMSNorm, so the constructor (normalized_shape, eps,
elementwise_affine, bias, device, dtype), parameters, state_dict keys ("weight", "bias"),
reset_parameters and repr are torch's own; only forward runs leedl_fast's op. A state_dict saved
from either loads into the other.
"""
import torch

from .. import functional as F


class LayerNorm(torch.nn.LayerNorm):
    def forward(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(torch.nn.RMSNorm):
    def forward(self, input):
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)
