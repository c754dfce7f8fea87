"""accelerate(model): swap torch.nn modules for their leedl_fast.nn counterparts, in place.

For most modules only the class changes (the leedl_fast modules subclass torch's, with the same
parameters and buffers), so weights, devices, dtypes, hooks and state_dict keys are all kept.
The recurrent modules cannot subclass torch's (torch.compile refuses to trace anything that is a
torch RNN), so they are rebuilt with the same configuration and given the same parameter
tensors: state_dict keys, devices and dtypes are kept, hooks on the old module are not.
"""
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
    children = list(seq)  # not seq.children(): it skips repeats, and the indices are seq's
    for i, conv in enumerate(children[:-1]):
        bn = children[i + 1]
        if not (type(conv) is lf_nn.Conv2d and type(bn) is torch.nn.BatchNorm2d):
            continue
        if conv.training or bn.training or bn.running_mean is None or conv.activation:
            continue
        if slot_counts is not None and slot_counts.get(id(conv), 1) > 1:
            continue
        weight, bias = lf_nn.fold_batchnorm(conv, bn)
        conv.weight = torch.nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
        conv.bias = torch.nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
        seq[i + 1] = torch.nn.Identity()
        act = children[i + 2] if i + 2 < len(children) else None
        name = _activation_name(act) if act is not None else None
        if name is not None:
            conv.activation = name
            seq[i + 2] = torch.nn.Identity()
            pool = _pool_of(children[i + 3]) if i + 3 < len(children) else None
            if pool is not None:
                conv.pool = pool
                seq[i + 3] = torch.nn.Identity()




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


def accelerate(model):
    """Swap every module of a supported torch.nn type for leedl_fast's; returns the model.
    In eval mode, Conv2d -> BatchNorm2d [-> activation] inside an nn.Sequential is folded into
    one fused conv (see _fold_sequential): call it on the inference copy of a model."""
    if type(model) in REBUILDS:
        return REBUILDS[type(model)](model) or model
    for module in model.modules():
        new_cls = SWAPS.get(type(module))
        if new_cls is not None:
            module.__class__ = new_cls
        for name, child in list(module.named_children()):
            rebuild = REBUILDS.get(type(child))
            new = rebuild(child) if rebuild else None
            if new is not None:
                setattr(module, name, new)
    slot_counts = _slot_counts(model)
    for module in list(model.modules()):
        if type(module) is torch.nn.Sequential:
            _fold_sequential(module, slot_counts)
    return model
