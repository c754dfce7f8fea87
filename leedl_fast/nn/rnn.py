"""LSTM and GRU backed by leedl_fast's whole-sequence kernels (docs/rnn.md).

Same constructors as torch.nn.LSTM / torch.nn.GRU (input_size, hidden_size, num_layers, bias, batch_first,
dropout, bidirectional, proj_size, device, dtype), the same parameters in the same order with
the same initialization, hence the same state_dict keys (weight_ih_l0, weight_hh_l0_reverse,
...): a trained torch.nn.LSTM's state_dict loads as is and gives the same outputs. forward has
torch's signature: forward(input, hx=None) -> (output, (h_n, c_n)) for the LSTM,
(output, h_n) for the GRU.

It is a plain nn.Module rather than a subclass of torch.nn.LSTM: torch.compile refuses to trace
anything that is an instance of torch's RNN classes (dynamo's allow_rnn), and fullgraph
compilation is part of the drop-in promise.

CPU tensors run the C++ kernels (one op per layer and direction for the whole sequence), CUDA
tensors the GPU kernels (leedl_fast/_ops/rnn_gpu.py); a device without a leedl_fast kernel
(or CUDA without triton) runs torch's own LSTM/GRU.
"""
import math

import torch
from torch.nn.utils.rnn import PackedSequence

from .. import _backend
from .._ops.rnn import gru_layer, lstm_layer


def _has_kernel(input):
    """CPU tensors have the C++ kernels; CUDA tensors the GPU kernels (Triton per step, CUDA
    persistent where the weights fit), which need triton; other devices have none."""
    if input.device.type == "cpu" or _backend.forced_backend() == "reference":
        return True
    return input.device.type == "cuda" and _backend.has_triton()


class _RNNBase(torch.nn.Module):
    """Shared by LSTM and GRU: parameters, initialization, input checks, the layer loop."""

    GATES = 0  # gate blocks stacked in each weight (LSTM 4, GRU 3)
    NAME = ""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None):
        super().__init__()
        if not (isinstance(hidden_size, int) and hidden_size > 0):
            raise ValueError(f"leedl_fast.nn.{self.NAME}: hidden_size must be a positive int, got "
                             f"{hidden_size!r}")
        if not (isinstance(num_layers, int) and num_layers > 0):
            raise ValueError(f"leedl_fast.nn.{self.NAME}: num_layers must be a positive int, got "
                             f"{num_layers!r}")
        if not (isinstance(dropout, (int, float)) and 0 <= dropout <= 1):
            raise ValueError(f"leedl_fast.nn.{self.NAME}: dropout must be in [0, 1], got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        gates = self.GATES * hidden_size
        factory = {"device": device, "dtype": dtype}
        dirs = 2 if bidirectional else 1
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * dirs
            for d in range(dirs):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                # torch's registration order, so state_dict keys come out in torch's order
                shapes = [("weight_ih", (gates, layer_input)), ("weight_hh", (gates, hidden_size))]
                if bias:
                    shapes += [("bias_ih", (gates,)), ("bias_hh", (gates,))]
                for name, shape in shapes:
                    self.register_parameter(name + suffix,
                                            torch.nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    def reset_parameters(self):
        """torch's initialization: every weight and bias uniform in +-1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            torch.nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self):
        """torch's cuDNN weight-packing hook; nothing to do here."""

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s

    def _layer_weights(self, layer, direction):
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        w_ih = getattr(self, "weight_ih" + suffix)
        w_hh = getattr(self, "weight_hh" + suffix)
        b_ih = getattr(self, "bias_ih" + suffix) if self.bias else None
        b_hh = getattr(self, "bias_hh" + suffix) if self.bias else None
        return w_ih, w_hh, b_ih, b_hh

    def _check(self, input, hx):
        name = f"leedl_fast.nn.{self.NAME}"
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: input must be 2-D (unbatched) or 3-D, got shape "
                             f"{list(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{name}: input's last dim {input.shape[-1]} must equal "
                             f"input_size={self.input_size}")
        if input.dtype != self.weight_ih_l0.dtype:
            raise TypeError(f"{name}: input dtype {input.dtype} must match the weights' "
                            f"{self.weight_ih_l0.dtype}")
        if input.device != self.weight_ih_l0.device:
            raise ValueError(f"{name}: input's device {input.device} differs from the "
                             f"weights' device {self.weight_ih_l0.device}")
        steps = input.shape[1 if self.batch_first and input.dim() == 3 else 0]
        if steps == 0:
            raise ValueError(f"{name}: the sequence is empty (length 0)")
        if hx is None:
            return
        states = self._states(hx)
        layers = self.num_layers * (2 if self.bidirectional else 1)
        batch = () if input.dim() == 2 else (input.shape[0 if self.batch_first else 1],)
        want = (layers, *batch, self.hidden_size)
        for label, t in zip(("h_0", "c_0"), states):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
                got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name}: {label} must have shape {list(want)}, got {got}")
            if t.dtype != input.dtype or t.device != input.device:
                raise TypeError(f"{name}: {label} must match input's dtype and device "
                                f"({input.dtype}, {input.device}), got ({t.dtype}, {t.device})")

    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            raise NotImplementedError(f"leedl_fast.nn.{self.NAME}: PackedSequence input is not "
                                      f"supported; pad the batch (or use torch.nn.{self.NAME})")
        self._check(input, hx)
        if not _has_kernel(input):
            return self._torch_rnn(input, hx)  # no leedl_fast kernel for this device: torch's
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first
                                                   else input)
        dirs = 2 if self.bidirectional else 1
        if hx is None:
            zeros = x.new_zeros(self.num_layers * dirs, x.shape[1], self.hidden_size)
            states = (zeros,) * self.STATES
        else:
            states = tuple(t.unsqueeze(1) for t in self._states(hx)) if unbatched \
                else self._states(hx)
        finals = [[] for _ in states]
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                y, *last = self._layer(x, [s[k] for s in states], self._layer_weights(layer, d),
                                       reverse=d == 1)
                outs.append(y)
                for f, v in zip(finals, last):
                    f.append(v)
            x = outs[0] if dirs == 1 else torch.cat(outs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = torch.nn.functional.dropout(x, self.dropout, training=True)
        finals = [torch.stack(f) for f in finals]
        if unbatched:
            x, finals = x.squeeze(1), [f.squeeze(1) for f in finals]
        elif self.batch_first:
            x = x.transpose(0, 1)
        return x, self._pack_states(finals)

    def _torch_rnn(self, input, hx):
        dirs = 2 if self.bidirectional else 1
        unbatched = input.dim() == 2
        x = input.unsqueeze(1 if not self.batch_first else 0) if unbatched else input
        if hx is None:
            zeros = x.new_zeros(self.num_layers * dirs, x.shape[0 if self.batch_first else 1],
                                self.hidden_size)
            states = (zeros,) * self.STATES
        else:
            states = tuple(t.unsqueeze(1) if unbatched else t for t in self._states(hx))
        weights = [w for layer in range(self.num_layers) for d in range(dirs)
                   for w in self._layer_weights(layer, d) if w is not None]
        out, *finals = self._torch_fn(x, states, weights)
        if unbatched:
            out = out.squeeze(1 if not self.batch_first else 0)
            finals = [f.squeeze(1) for f in finals]
        return out, self._pack_states(finals)


class LSTM(_RNNBase):
    GATES, STATES, NAME = 4, 2, "LSTM"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        if proj_size:
            raise NotImplementedError("leedl_fast.nn.LSTM: proj_size > 0 is not supported; use "
                                      "torch.nn.LSTM for projected LSTMs")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype)
        self.proj_size = 0

    def _states(self, hx):
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError("leedl_fast.nn.LSTM: hx must be a tuple (h_0, c_0)")
        return tuple(hx)

    def _pack_states(self, finals):
        return tuple(finals)

    def _layer(self, x, states, weights, reverse):
        return lstm_layer(x, *states, *weights, reverse=reverse)

    def _torch_fn(self, x, states, weights):
        return torch.lstm(x, states, weights, self.bias, self.num_layers, self.dropout,
                          self.training, self.bidirectional, self.batch_first)


class GRU(_RNNBase):
    GATES, STATES, NAME = 3, 1, "GRU"
    proj_size = 0  # torch's GRU has the attribute too

    def _states(self, hx):
        if not isinstance(hx, torch.Tensor):
            raise TypeError("leedl_fast.nn.GRU: hx must be a Tensor h_0")
        return (hx,)

    def _pack_states(self, finals):
        return finals[0]

    def _layer(self, x, states, weights, reverse):
        return gru_layer(x, *states, *weights, reverse=reverse)

    def _torch_fn(self, x, states, weights):
        return torch.gru(x, states[0], weights, self.bias, self.num_layers, self.dropout,
                         self.training, self.bidirectional, self.batch_first)


class _CellBase(torch.nn.Module):
    """LSTMCell / GRUCell: torch's parameters (weight_ih, weight_hh, bias_ih, bias_hh) and
    initialization; one step is the whole-sequence op with T = 1."""

    GATES = 0
    NAME = ""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        gates = self.GATES * hidden_size
        self.weight_ih = torch.nn.Parameter(torch.empty(gates, input_size, **factory))
        self.weight_hh = torch.nn.Parameter(torch.empty(gates, hidden_size, **factory))
        if bias:
            self.bias_ih = torch.nn.Parameter(torch.empty(gates, **factory))
            self.bias_hh = torch.nn.Parameter(torch.empty(gates, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self):
        """torch's initialization: every weight and bias uniform in +-1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for p in self.parameters():
            torch.nn.init.uniform_(p, -bound, bound)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def _prepare(self, input, states):
        name = f"leedl_fast.nn.{self.NAME}"
        if not isinstance(input, torch.Tensor) or input.dim() not in (1, 2):
            raise ValueError(f"{name}: input must be a 1-D or 2-D Tensor")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{name}: input's last dim {input.shape[-1]} must equal "
                             f"input_size={self.input_size}")
        if input.dtype != self.weight_ih.dtype or input.device != self.weight_ih.device:
            raise TypeError(f"{name}: input must match the weights' dtype and device "
                            f"({self.weight_ih.dtype}, {self.weight_ih.device})")
        x = input.unsqueeze(0) if input.dim() == 1 else input
        want = (x.shape[0], self.hidden_size)
        if states is None:
            return x, [x.new_zeros(want)] * self.STATES
        out = []
        for label, t in zip(("h_0", "c_0"), states):
            t = t.unsqueeze(0) if input.dim() == 1 and isinstance(t, torch.Tensor) else t
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
                raise ValueError(f"{name}: {label} must have shape {list(want)}")
            if t.dtype != x.dtype or t.device != x.device:
                raise TypeError(f"{name}: {label} must match input's dtype and device")
            out.append(t)
        return x, out

    def _weights(self):
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh


class LSTMCell(_CellBase):
    GATES, STATES, NAME = 4, 2, "LSTMCell"

    def forward(self, input, hx=None):
        if hx is not None and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError("leedl_fast.nn.LSTMCell: hx must be a tuple (h_0, c_0)")
        x, (h0, c0) = self._prepare(input, hx)
        if not _has_kernel(x):
            h, c = torch.lstm_cell(x, (h0, c0), *self._weights())
        else:
            _, h, c = lstm_layer(x.unsqueeze(0), h0, c0, *self._weights())
        return (h.squeeze(0), c.squeeze(0)) if input.dim() == 1 else (h, c)


class GRUCell(_CellBase):
    GATES, STATES, NAME = 3, 1, "GRUCell"

    def forward(self, input, hx=None):
        if hx is not None and not isinstance(hx, torch.Tensor):
            raise TypeError("leedl_fast.nn.GRUCell: hx must be a Tensor h_0")
        x, (h0,) = self._prepare(input, None if hx is None else (hx,))
        if not _has_kernel(x):
            h = torch.gru_cell(x, h0, *self._weights())
        else:
            _, h = gru_layer(x.unsqueeze(0), h0, *self._weights())
        return h.squeeze(0) if input.dim() == 1 else h
