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
}




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
    """Swap every module of a supported torch.nn type for leedl_fast's; returns the model."""
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
    return model
