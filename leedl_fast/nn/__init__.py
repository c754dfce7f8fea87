"""Drop-in modules: same constructor arguments, attributes and state_dict keys as torch.nn."""
from .attention import MultiheadAttention
from .normalization import LayerNorm, RMSNorm
from .rnn import GRU, LSTM

__all__ = ["GRU", "LSTM", "LayerNorm", "MultiheadAttention", "RMSNorm"]
