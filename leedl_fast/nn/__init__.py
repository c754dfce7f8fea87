"""Drop-in modules: same constructor arguments, attributes and state_dict keys as torch.nn."""
from .attention import MultiheadAttention
from .normalization import LayerNorm, RMSNorm
from .rnn import GRU, LSTM, GRUCell, LSTMCell

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "LayerNorm", "MultiheadAttention", "RMSNorm"]
