"""Drop-in modules: same constructor arguments, attributes and state_dict keys as torch.nn."""
from .normalization import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm"]
