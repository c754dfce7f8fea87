"""Drop-in modules: same constructor arguments, attributes and state_dict keys as torch.nn."""
from .attention import MultiheadAttention
from .conv import Conv2d, DepthwiseSeparableConv2d, fold_batchnorm
from .normalization import LayerNorm, RMSNorm
from .rnn import GRU, LSTM, GRUCell, LSTMCell

__all__ = ["GRU", "LSTM", "Conv2d", "DepthwiseSeparableConv2d", "GRUCell", "LSTMCell", "LayerNorm",
           "MultiheadAttention", "RMSNorm", "fold_batchnorm"]
