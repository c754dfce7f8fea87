"""Weight quantization for inference (BOOK.md §17.3): `quantize_(model, config)` replaces the
model's nn.Linear layers, in place, by QuantizedLinear modules that store the weight in fewer
bits and run fused kernels that dequantize in registers (docs/quant.md).

    import leedl_fast.quant as Q
    Q.quantize_(model, Q.Int4WeightOnly(group_size=128))
    Q.quantize_(model, Q.Codebook(bits=2), filter_fn=lambda m, name: "head" not in name)

Configs: Int8WeightOnly() (per-channel int8), Int4WeightOnly(group_size) (group-wise int4 with
zero points), Int8Dynamic() (int8 weights and per-token int8 activations, int32 products),
Codebook(bits) (the book's weight clustering: 2^bits shared values per layer).
"""
import dataclasses
import warnings

import torch

from .._ops.quant import quantized_linear
from . import formats

__all__ = ["Codebook", "Int4WeightOnly", "Int8Dynamic", "Int8WeightOnly", "QuantizedLinear",
           "QuantizedWeight", "quantize_", "quantized_linear"]


@dataclasses.dataclass(frozen=True)
class Int8WeightOnly:
    op = "int8_weight_linear"
    buffers = ("qweight", "scales")


@dataclasses.dataclass(frozen=True)
class Int4WeightOnly:
    group_size: int = 128
    op = "int4_weight_linear"
    buffers = ("packed", "scales", "zeros")


@dataclasses.dataclass(frozen=True)
class Int8Dynamic:
    op = "int8_dynamic_linear"
    buffers = ("qweight", "scales")


@dataclasses.dataclass(frozen=True)
class Codebook:
    bits: int = 2
    op = "codebook_linear"
    buffers = ("packed", "table")


CONFIGS = (Int8WeightOnly, Int4WeightOnly, Int8Dynamic, Codebook)


def _buffer_shapes(config, n, k):
    """The stored tensors' (shape, dtype) for an (n, k) weight."""
    if isinstance(config, (Int8WeightOnly, Int8Dynamic)):
        return {"qweight": ((n, k), torch.int8), "scales": ((n,), torch.float32)}
    if isinstance(config, Int4WeightOnly):
        groups = k // config.group_size
        return {"packed": ((n, k // 2), torch.uint8), "scales": ((n, groups), torch.float32),
                "zeros": ((n, groups), torch.float32)}
    return {"packed": ((n, (k * config.bits + 7) // 8), torch.uint8),
            "table": ((1 << config.bits,), torch.float32)}


def check_config(config, in_features):
    """Raises a ValueError when `config` cannot store an (., in_features) weight."""
    if not isinstance(config, CONFIGS):
        raise TypeError(f"leedl_fast.quant: config must be one of "
                        f"{[c.__name__ for c in CONFIGS]}, got {config!r}")
    if isinstance(config, Int4WeightOnly):
        g = config.group_size
        if not isinstance(g, int) or g < 2 or g % 2 or in_features % g:
            raise ValueError(f"leedl_fast.quant: Int4WeightOnly(group_size={g}) needs an even "
                             f"group size dividing in_features ({in_features})")
    if isinstance(config, Codebook) and config.bits not in (1, 2, 3, 4):
        raise ValueError(f"leedl_fast.quant: Codebook(bits={config.bits}): bits must be 1-4")


class QuantizedWeight:
    """A view of a quantized (N, K) weight: its config and stored tensors, and the arguments
    of its op after x (see the schemas in csrc/ops.cpp)."""

    def __init__(self, config, out_features, in_features, tensors):
        self.config, self.out_features, self.in_features = config, out_features, in_features
        self._tensors = tensors
        self.op = config.op

    def tensors(self):
        return dict(self._tensors)

    def op_args(self):
        t, c = self._tensors, self.config
        if isinstance(c, Int4WeightOnly):
            return t["packed"], t["scales"], t["zeros"], c.group_size
        if isinstance(c, Codebook):
            return t["packed"], t["table"], c.bits, self.in_features
        return t["qweight"], t["scales"]

    @classmethod
    def quantize(cls, weight, config):
        n, k = weight.shape
        check_config(config, k)
        if isinstance(config, (Int8WeightOnly, Int8Dynamic)):
            tensors = dict(zip(config.buffers, formats.quantize_int8(weight)))
        elif isinstance(config, Int4WeightOnly):
            tensors = dict(zip(config.buffers, formats.quantize_int4(weight, config.group_size)))
        else:
            tensors = dict(zip(config.buffers, formats.quantize_codebook(weight, config.bits)))
        return cls(config, n, k, tensors)


class QuantizedLinear(torch.nn.Module):
    """nn.Linear's inference with a quantized weight. The stored tensors are buffers (so
    `.to(device)` and state_dict carry them: keys "<buffer>" per the config, plus "bias");
    the bias stays a float Parameter in the activation dtype."""

    def __init__(self, in_features, out_features, bias=True, config=Int8WeightOnly(),
                 device=None, dtype=None):
        super().__init__()
        check_config(config, in_features)
        self.in_features, self.out_features, self.config = in_features, out_features, config
        for name, (shape, buf_dtype) in _buffer_shapes(config, out_features, in_features).items():
            self.register_buffer(name, torch.zeros(shape, dtype=buf_dtype, device=device))
        self.bias = torch.nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype),
                                       requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear, config):
        weight = linear.weight.detach()
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, config,
                  device=weight.device, dtype=weight.dtype)
        for name, t in QuantizedWeight.quantize(weight, config).tensors().items():
            getattr(new, name).copy_(t)
        if linear.bias is not None:
            new.bias.data.copy_(linear.bias.detach())
        return new

    def weight_view(self):
        tensors = {name: getattr(self, name) for name in self.config.buffers}
        return QuantizedWeight(self.config, self.out_features, self.in_features, tensors)

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return quantized_linear(x, self.weight_view(), bias)

    def stored_bytes(self):
        """Bytes of the quantized weight (the buffers; the bias excluded)."""
        return sum(getattr(self, n).numel() * getattr(self, n).element_size()
                   for n in self.config.buffers)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, config={self.config}")


def quantize_(model, config, filter_fn=None):
    """Replace every nn.Linear of `model` (for which filter_fn(module, fully_qualified_name) is
    true, when given) by a QuantizedLinear, in place; returns the model. A layer the config
    cannot store (e.g. in_features not a multiple of the int4 group size) stays float, with a
    warning naming it."""
    check_config(config, 0 if not isinstance(config, Int4WeightOnly) else config.group_size)
    if isinstance(model, torch.nn.Linear):
        raise TypeError("leedl_fast.quant.quantize_ replaces submodules in place: wrap the "
                        "Linear (e.g. in nn.Sequential) or use QuantizedLinear.from_linear")
    skipped = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            fqn = f"{parent_name}.{name}" if parent_name else name
            if type(child) is not torch.nn.Linear:
                continue
            if filter_fn is not None and not filter_fn(child, fqn):
                continue
            try:
                check_config(config, child.in_features)
            except ValueError as e:
                skipped.append(f"{fqn}: {e}")
                continue
            setattr(parent, name, QuantizedLinear.from_linear(child, config))
    if skipped:
        warnings.warn("leedl_fast.quant.quantize_ left these layers in float:\n  " +
                      "\n  ".join(skipped), stacklevel=2)
    return model
