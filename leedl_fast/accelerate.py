"""accelerate(model): swap torch.nn modules for their leedl_fast.nn counterparts, in place.

For most modules only the class changes (the leedl_fast modules subclass torch's, with the same
parameters and buffers), so weights, devices, dtypes, hooks and state_dict keys are all kept.
The recurrent modules cannot subclass torch's (torch.compile refuses to trace anything that is a
torch RNN), so they are rebuilt with the same configuration and given the same parameter
tensors: state_dict keys, devices and dtypes are kept, hooks on the old module are not.
"""
import copy
import dataclasses

import torch

from . import nn as lf_nn

# torch class -> leedl_fast class; exact type match, so user subclasses are left alone.
SWAPS = {
    torch.nn.LayerNorm: lf_nn.LayerNorm,
    torch.nn.RMSNorm: lf_nn.RMSNorm,
    # Fused only where need_weights=False (torch's own path otherwise, same results).
    torch.nn.MultiheadAttention: lf_nn.MultiheadAttention,
    torch.nn.Conv2d: lf_nn.Conv2d,
}

# Activations a Conv2d's epilogue can take over when they directly follow it (and its BN).
_FUSABLE_ACTIVATIONS = {torch.nn.ReLU: "relu", torch.nn.SiLU: "silu"}


def _activation_name(module):
    if type(module) is torch.nn.GELU:
        return "gelu" if module.approximate == "none" else None
    return _FUSABLE_ACTIVATIONS.get(type(module))


def _pool_of(module):
    """("max" | "avg", k) for a pooling module the conv kernels can fuse: k x k windows, stride
    k, k in (2, 3), no padding, dilation or ceil mode."""
    if type(module) is torch.nn.MaxPool2d:
        kind, ok = "max", module.dilation in (1, (1, 1)) and not module.return_indices
    elif type(module) is torch.nn.AvgPool2d:
        kind, ok = "avg", module.divisor_override is None
    else:
        return None
    k, s, p = module.kernel_size, module.stride, module.padding
    k = k if isinstance(k, int) else (k[0] if k[0] == k[1] else None)
    s = s if isinstance(s, int) else (s[0] if s[0] == s[1] else None)
    if not ok or k not in (2, 3) or s != k or p not in (0, (0, 0)) or module.ceil_mode:
        return None
    return kind, k


def _slot_counts(model):
    """id(module) -> how many child slots of the model's (distinct) modules hold it: more than
    one means the module runs in several places, and folding a BN into it would change them all."""
    counts = {}
    for module in model.modules():
        for child in module._modules.values():
            if child is not None:
                counts[id(child)] = counts.get(id(child), 0) + 1
    return counts


def _fold_sequential(seq, slot_counts=None):
    """In an eval-mode nn.Sequential, Conv2d -> BatchNorm2d [-> ReLU/GELU/SiLU [-> MaxPool2d /
    AvgPool2d (2 or 3)]] becomes one Conv2d with the BN folded into its weight and bias
    (fold_batchnorm) and the activation and pooling in its epilogue; the folded modules become
    Identity (indices, and so state_dict keys of the other children, are kept). Only where every module involved is in eval mode: the fold
    is exact for BN's running statistics, which training would not use. A conv that also runs
    elsewhere (the same module in another slot, per slot_counts) is left alone."""
    folded, skipped = [], []  # (index, what) for the report
    children = list(seq)  # not seq.children(): it skips repeats, and the indices are seq's
    for i, conv in enumerate(children[:-1]):
        bn = children[i + 1]
        if not (type(conv) is lf_nn.Conv2d and type(bn) is torch.nn.BatchNorm2d):
            continue
        if conv.training or bn.training:
            skipped.append((i, "Conv2d -> BatchNorm2d not folded: training mode (BN uses batch "
                               "statistics); accelerate the model.eval() copy to fold it"))
            continue
        if bn.running_mean is None or conv.activation:
            skipped.append((i, "Conv2d -> BatchNorm2d not folded: BN keeps no running "
                               "statistics" if bn.running_mean is None else
                               "Conv2d -> BatchNorm2d not folded: the conv already has an "
                               "activation epilogue"))
            continue
        if slot_counts is not None and slot_counts.get(id(conv), 1) > 1:
            skipped.append((i, "Conv2d -> BatchNorm2d not folded: the conv also runs elsewhere "
                               "in the model"))
            continue
        weight, bias = lf_nn.fold_batchnorm(conv, bn)
        what = ["Conv2d", "BatchNorm2d"]
        conv.weight = torch.nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
        conv.bias = torch.nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
        seq[i + 1] = torch.nn.Identity()
        act = children[i + 2] if i + 2 < len(children) else None
        name = _activation_name(act) if act is not None else None
        if name is not None:
            conv.activation = name
            seq[i + 2] = torch.nn.Identity()
            what.append(type(act).__name__)
            pool = _pool_of(children[i + 3]) if i + 3 < len(children) else None
            if pool is not None:
                conv.pool = pool
                seq[i + 3] = torch.nn.Identity()
                what.append(type(children[i + 3]).__name__)
        folded.append((i, " -> ".join(what) + " folded into one fused conv"))
    return folded, skipped




def _rebuild_rnn(module):
    if isinstance(module, torch.nn.LSTM) and module.proj_size:
        return None  # projected LSTMs stay torch's
    cls = {torch.nn.LSTM: lf_nn.LSTM, torch.nn.GRU: lf_nn.GRU}[type(module)]
    new = cls(module.input_size, module.hidden_size, module.num_layers, module.bias,
              module.batch_first, module.dropout, module.bidirectional, device="meta")
    for name, param in module.named_parameters():
        setattr(new, name, param)  # the same Parameter objects: optimizers keep tracking them
    return new.train(module.training)


def _rebuild_cell(module):
    cls = {torch.nn.LSTMCell: lf_nn.LSTMCell, torch.nn.GRUCell: lf_nn.GRUCell}[type(module)]
    new = cls(module.input_size, module.hidden_size, module.bias, device="meta")
    for name, param in module.named_parameters():
        setattr(new, name, param)
    return new.train(module.training)


REBUILDS = {torch.nn.LSTM: _rebuild_rnn, torch.nn.GRU: _rebuild_rnn,
            torch.nn.LSTMCell: _rebuild_cell, torch.nn.GRUCell: _rebuild_cell}


@dataclasses.dataclass
class AccelerateReport:
    """What `accelerate` did: swapped modules, folded Conv2d -> BN [-> act [-> pool]] runs, and
    modules of a supported type that were left as they are, each with the reason."""

    swapped: list = dataclasses.field(default_factory=list)  # (name, "torch X -> leedl_fast X")
    folded: list = dataclasses.field(default_factory=list)  # (name, what)
    left: list = dataclasses.field(default_factory=list)  # (name, why)
    notes: list = dataclasses.field(default_factory=list)  # (name, what else was changed)

    def __str__(self):
        lines = [f"accelerate: {len(self.swapped)} swapped, {len(self.folded)} folded, "
                 f"{len(self.left)} left"]
        for title, rows in (("swapped", self.swapped), ("folded", self.folded),
                            ("left", self.left), ("note", self.notes)):
            lines += [f"  {title:8s} {name or '<model>'}: {what}" for name, what in rows]
        return "\n".join(lines)


def _qualname(cls):
    return f"{cls.__module__.split('.')[0]}.nn.{cls.__name__}"


def _left_reason(module):
    """Why a module of a supported torch type is not swapped, or None if it is not one."""
    cls = type(module)
    if cls.__module__.startswith("leedl_fast"):
        return None
    for base in (*SWAPS, *REBUILDS):
        if isinstance(module, base) and cls is not base:
            return (f"{cls.__name__} subclasses torch.nn.{base.__name__}: only exact torch "
                    "types are swapped (a subclass may change forward)")
    if isinstance(module, torch.nn.LSTM) and module.proj_size:
        return "LSTM with proj_size > 0: no leedl_fast kernel (torch's is kept)"
    return None


def accelerate(model, *, inplace=True, return_report=False):
    """Swap every module of a supported torch.nn type for leedl_fast's, weights kept.

    Swapped: LayerNorm, RMSNorm, MultiheadAttention, Conv2d (class swap: the same parameters,
    buffers and hooks) and LSTM, GRU, LSTMCell, GRUCell (rebuilt around the same Parameter
    objects). In eval mode, Conv2d -> BatchNorm2d [-> activation [-> pool]] inside an
    nn.Sequential is folded into one fused conv (see _fold_sequential): call it on the inference
    copy of a model. torch's own nn.TransformerEncoder/Decoder layers are covered through their
    MultiheadAttention and LayerNorm children.

    inplace=False works on a deep copy and leaves `model` untouched. Returns the model, or
    (model, AccelerateReport) with return_report=True: what was swapped, folded, and left
    (a subclass of a torch module, a projected LSTM, a BN that training mode keeps) and why.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"accelerate: model must be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    report = AccelerateReport()
    if type(model) in REBUILDS:
        new = REBUILDS[type(model)](model)
        if new is None:
            report.left.append(("", _left_reason(model)))
        else:
            report.swapped.append(("", f"{_qualname(type(model))} -> {_qualname(type(new))}"))
        model = new or model
        return (model, report) if return_report else model
    names = {id(m): n for n, m in model.named_modules()}
    for module in model.modules():
        prefix = names.get(id(module), "")
        new_cls = SWAPS.get(type(module))
        if new_cls is not None:
            report.swapped.append((prefix, f"{_qualname(type(module))} -> {_qualname(new_cls)}"))
            module.__class__ = new_cls
        elif module is model and type(module) not in REBUILDS:
            why = _left_reason(module)  # (children are reported by their parent, below)
            if why is not None:
                report.left.append((prefix, why))
        for name, child in list(module.named_children()):
            rebuild = REBUILDS.get(type(child))
            new = rebuild(child) if rebuild else None
            full = f"{prefix}.{name}" if prefix else name
            if new is not None:
                setattr(module, name, new)
                report.swapped.append((full, f"{_qualname(type(child))} -> "
                                             f"{_qualname(type(new))}"))
            elif (why := _left_reason(child)) is not None:
                report.left.append((full, why))
    for name, module in model.named_modules():
        # torch's encoder layer (and the TransformerEncoder around it) takes a native fused path
        # in eval/no_grad that ignores its submodules' classes, so the swapped attention and
        # norms would never run; activation_relu_or_gelu = 0 is the flag that turns that path
        # off (the slow path keeps calling self.activation, so the math is unchanged).
        if isinstance(module, torch.nn.TransformerEncoderLayer) and \
                getattr(module, "activation_relu_or_gelu", 0) and \
                isinstance(module.self_attn, lf_nn.MultiheadAttention):
            module.activation_relu_or_gelu = 0
            report.notes.append((name, "torch's native encoder-layer fast path turned off, so "
                                         "the leedl_fast modules run"))
    slot_counts = _slot_counts(model)
    for name, module in list(model.named_modules()):
        if type(module) is torch.nn.Sequential:
            folded, skipped = _fold_sequential(module, slot_counts)
            prefix = f"{name}." if name else ""
            report.folded += [(f"{prefix}{i}", what) for i, what in folded]
            report.left += [(f"{prefix}{i}", why) for i, why in skipped]
    return (model, report) if return_report else model
