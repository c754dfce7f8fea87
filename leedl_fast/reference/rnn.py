"""The LSTM (and GRU) as the book writes it (BOOK.md §5.5-5.6), one step at a time: the oracle for the
recurrent kernels (run in float64) and the `reference` backend.

The memory cell has four inputs, all linear in the step's input x_t and the previous output
h_{t-1}: z (the candidate), z_i (input gate), z_f (forget gate), z_o (output gate). With f the
sigmoid, g = h = tanh (the book's §5.5.5 example takes g and h linear):

    c_t = g(z) * f(z_i) + c_{t-1} * f(z_f)        the cell: written where the input gate opens,
                                                   kept where the forget gate stays near 1
    h_t = h(c_t) * f(z_o)                          the output, let out by the output gate

torch.nn.LSTM stores the four transforms stacked in the order (z_i, z_f, z, z_o) -- "i, f, g, o"
-- in weight_ih (4H, I), weight_hh (4H, H), bias_ih and bias_hh (4H); this module uses the same
layout so a torch state_dict loads as is.
"""
import torch


def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, g=torch.tanh, h_act=torch.tanh):
    """One step for a batch: x (B, I), h and c (B, H) -> (h_t, c_t)."""
    z = x @ w_ih.T + h @ w_hh.T
    if b_ih is not None:
        z = z + b_ih
    if b_hh is not None:
        z = z + b_hh
    z_i, z_f, z_g, z_o = z.chunk(4, dim=-1)
    c_t = g(z_g) * torch.sigmoid(z_i) + c * torch.sigmoid(z_f)
    h_t = h_act(c_t) * torch.sigmoid(z_o)
    return h_t, c_t


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False):
    """One layer, one direction, over a whole sequence x (T, B, I): the cell applied step by
    step (backwards in time when `reverse`). Returns y (T, B, H), h_T, c_T."""
    h, c = h0, c0
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    ys = [None] * x.shape[0]
    for t in steps:
        h, c = lstm_cell(x[t], h, c, w_ih, w_hh, b_ih, b_hh)
        ys[t] = h
    return torch.stack(ys), h, c


def lstm(x, hx, weights, num_layers, bidirectional=False, batch_first=False):
    """A stacked (and optionally bidirectional) LSTM like torch.nn.LSTM without dropout.

    x (T, B, I) or (B, T, I) with batch_first; hx = (h0, c0), each (layers * dirs, B, H);
    weights: per layer and direction, (w_ih, w_hh, b_ih, b_hh) in torch's parameter order.
    Returns output (T, B, dirs * H) and (h_n, c_n)."""
    if batch_first:
        x = x.transpose(0, 1)
    dirs = 2 if bidirectional else 1
    h0, c0 = hx
    h_n, c_n = [], []
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            y, h, c = lstm_layer(x, h0[k], c0[k], *weights[k], reverse=d == 1)
            outs.append(y)
            h_n.append(h)
            c_n.append(c)
        x = torch.cat(outs, dim=-1)
    out = x.transpose(0, 1) if batch_first else x
    return out, (torch.stack(h_n), torch.stack(c_n))


def gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step (torch's gate order r, z, n; the book's §5: two gates, a reset r and an
    update z): x (B, I), h (B, H) -> h_t."""
    gx = x @ w_ih.T + (0 if b_ih is None else b_ih)
    gh = h @ w_hh.T + (0 if b_hh is None else b_hh)
    x_r, x_z, x_n = gx.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)                  # reset gate: how much of h feeds the candidate
    z = torch.sigmoid(x_z + h_z)                  # update gate: keep h (z = 1) or take n
    n = torch.tanh(x_n + r * h_n)                 # the candidate
    return (1 - z) * n + z * h


def gru_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False):
    """One GRU layer, one direction, over x (T, B, I): returns y (T, B, H), h_T."""
    h = h0
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    ys = [None] * x.shape[0]
    for t in steps:
        h = gru_cell(x[t], h, w_ih, w_hh, b_ih, b_hh)
        ys[t] = h
    return torch.stack(ys), h
