"""Stage 0: the LSTM cell as the book writes it (BOOK.md §5.5-5.6), one PyTorch op per term.

    z_i, z_f, z_g, z_o = x w_ih^T + b_ih + h w_hh^T + b_hh      (torch's gate order i, f, g, o)
    c_new = sigmoid(z_f) * c + sigmoid(z_i) * tanh(z_g)
    h_new = sigmoid(z_o) * tanh(c_new)

Each op below is its own kernel: 2 matrix products, then 12 elementwise ones (3 adds, 5
nonlinearities, 3 multiplies, 1 add; the 4 slices are views, free), each reading its inputs from
memory and writing a (B, H) or (B, 4H) temporary back: ~50 (B, H)-sized reads and writes after
the products, for work that needs 11. `lstm_layer` runs the cell T times.

    leedl-fast check docs/labs/rnn/stage0_naive.py --op lstm_cell
    leedl-fast check docs/labs/rnn/stage0_naive.py --op lstm_layer
"""
import torch


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """x (B, I), h and c (B, H), w_ih (4H, I), w_hh (4H, H), b_ih and b_hh (4H,) -> (h, c)."""
    hidden = h.shape[1]
    z = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh                 # (B, 4H) pre-activations
    i = torch.sigmoid(z[:, 0 * hidden:1 * hidden])            # input gate
    f = torch.sigmoid(z[:, 1 * hidden:2 * hidden])            # forget gate
    g = torch.tanh(z[:, 2 * hidden:3 * hidden])               # candidate
    o = torch.sigmoid(z[:, 3 * hidden:4 * hidden])            # output gate
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    return h_new, c_new


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """x (T, B, I), h0 and c0 (B, H) -> y (T, B, H), h_n, c_n: the cell, step by step."""
    h, c, ys = h0, c0, []
    for x_t in x:
        h, c = lstm_cell(x_t, h, c, w_ih, w_hh, b_ih, b_hh)
        ys.append(h)
    return torch.stack(ys), h, c
