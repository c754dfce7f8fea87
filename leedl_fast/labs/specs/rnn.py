"""Lab ops of the recurrent family (BOOK.md §5.5-5.6): the LSTM cell, one step and a whole layer.

    lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh) -> (h_new, c_new)
    lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh) -> (y, h_n, c_n)

torch's layout: the four transforms stacked in the order (i, f, g, o) -- input gate, forget gate,
candidate, output gate -- in w_ih (4H, I), w_hh (4H, H), b_ih and b_hh (4H,). With z = x w_ih^T +
b_ih + h w_hh^T + b_hh split in four:
    c_new = sigmoid(z_f) * c + sigmoid(z_i) * tanh(z_g),   h_new = sigmoid(z_o) * tanh(c_new)
x (B, I), h and c (B, H) for the cell; x (T, B, I), h0 and c0 (B, H), y (T, B, H) for the layer.
"""
import torch

from leedl_fast.labs.spec import Case, OpSpec, randn, register, strided, tensor_bytes

# (B, I, H): one unit; odd sizes across block edges; I != H both ways; a wider hidden layer.
_SHAPES = [(1, 1, 1), (3, 5, 7), (4, 33, 17), (7, 100, 130), (16, 64, 257), (32, 512, 256)]
_QUICK = [(1, 1, 1), (3, 5, 7), (4, 33, 17), (5, 20, 130)]


def _weights(device, dtype, g, i, h):
    """torch.nn.LSTM's initialization scale, U(-1/sqrt(H), 1/sqrt(H)), here a normal of that
    spread: pre-activations of order 1, so every gate is neither saturated nor linear."""
    s = h ** -0.5
    return {"w_ih": randn((4 * h, i), device, dtype, g, s), "w_hh": randn((4 * h, h), device,
                                                                          dtype, g, s),
            "b_ih": randn((4 * h,), device, dtype, g, s), "b_hh": randn((4 * h,), device,
                                                                        dtype, g, s)}


def _cell_inputs(shape, strided_xh=False):
    b, i, h = shape

    def make(device, dtype, g):
        x = randn((b, i), device, dtype, g)
        hx = randn((b, h), device, dtype, g, 0.5)
        if strided_xh:
            x, hx = strided(x), strided(hx)
        return {"x": x, "h": hx, "c": randn((b, h), device, dtype, g),
                **_weights(device, dtype, g, i, h)}
    return make


def _cell_cases(quick):
    shapes = _QUICK if quick else _SHAPES
    cases = [Case(f"B{b} I{i} H{h} fp32", _cell_inputs((b, i, h)), torch.float32,
                  {"b": b, "i": i, "h": h}) for b, i, h in shapes]
    b, i, h = shapes[-1]
    cases.append(Case(f"B{b} I{i} H{h} fp32 strided x, h", _cell_inputs((b, i, h), True)))
    for dtype, tag in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        cases.append(Case(f"B{b} I{i} H{h} {tag}", _cell_inputs((b, i, h)), dtype))
    return cases


def _cell_oracle(x, h, c, w_ih, w_hh, b_ih, b_hh):
    z = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    zi, zf, zg, zo = z.chunk(4, dim=-1)
    c_new = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
    return torch.sigmoid(zo) * torch.tanh(c_new), c_new


def _cell_torch(x, h, c, w_ih, w_hh, b_ih, b_hh):
    return torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)


def _cell_ours(x, h, c, w_ih, w_hh, b_ih, b_hh):
    from leedl_fast._ops.rnn import lstm_layer

    _, h_n, c_n = lstm_layer(x.unsqueeze(0), h, c, w_ih, w_hh, b_ih, b_hh)
    return h_n, c_n


def _cell_reference(x, h, c, w_ih, w_hh, b_ih, b_hh):
    from leedl_fast.reference.rnn import lstm_cell

    return lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)


def _weight_bytes(i):
    return tensor_bytes(i["w_ih"], i["w_hh"], i["b_ih"], i["b_hh"])


def _cell_nbytes(i):
    """Read x, h, c and the weights once; write h_new and c_new."""
    return _weight_bytes(i) + tensor_bytes(i["x"], i["h"], i["c"]) + 2 * tensor_bytes(i["h"])


def _cell_flops(i):
    """The two products, 2 * B * (I + H) * 4H; the gate math (~10 FLOP per hidden unit per row)
    is noise beside them."""
    b, n_in = i["x"].shape[-2:]
    hidden = i["h"].shape[-1]
    return 2 * b * (n_in + hidden) * 4 * hidden + 10 * b * hidden


_CELL_DEFAULT = {"b": 64, "i": 512, "h": 512}


def _cell_shaped(shape):
    s = (shape["b"], shape["i"], shape["h"])
    return Case(f"B{s[0]} I{s[1]} H{s[2]} fp32", _cell_inputs(s), torch.float32, dict(shape))


def _cell_bench(quick):
    return [_cell_shaped({"b": 8, "i": 64, "h": 64} if quick else _CELL_DEFAULT)]


register(OpSpec(
    name="lstm_cell", family="rnn", args=("x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh"),
    outputs=("h_new", "c_new"),
    doc="one LSTM step (§5.5-5.6), torch's gate order i, f, g, o: z = x w_ih^T + b_ih + h w_hh^T "
        "+ b_hh, c_new = sig(z_f) c + sig(z_i) tanh(z_g), h_new = sig(z_o) tanh(c_new); x (B, I), "
        "h and c (B, H), w_ih (4H, I), w_hh (4H, H), b_ih and b_hh (4H,)",
    cases=_cell_cases, bench_cases=_cell_bench,
    oracle=_cell_oracle, torch_fn=_cell_torch, ours=_cell_ours, reference=_cell_reference,
    nbytes=_cell_nbytes, flops=_cell_flops,
    tol={"out": (2e-5, 1e-5)},
    default_shape=_CELL_DEFAULT, shape_case=_cell_shaped,
))


# --- lstm_layer --------------------------------------------------------------------------------

# (T, B, I, H)
_LAYER_SHAPES = [(1, 1, 1, 1), (5, 3, 7, 5), (17, 4, 33, 17), (9, 16, 64, 130)]
_LAYER_QUICK = [(1, 1, 1, 1), (5, 3, 7, 5), (6, 4, 33, 17)]


def _layer_inputs(shape, strided_x=False):
    t, b, i, h = shape

    def make(device, dtype, g):
        x = randn((t, b, i), device, dtype, g)
        return {"x": strided(x) if strided_x else x, "h0": randn((b, h), device, dtype, g, 0.5),
                "c0": randn((b, h), device, dtype, g), **_weights(device, dtype, g, i, h)}
    return make


def _layer_cases(quick):
    shapes = _LAYER_QUICK if quick else _LAYER_SHAPES
    cases = [Case(f"T{t} B{b} I{i} H{h} fp32", _layer_inputs((t, b, i, h)), torch.float32,
                  {"t": t, "b": b, "i": i, "h": h}) for t, b, i, h in shapes]
    t, b, i, h = shapes[-1]
    cases.append(Case(f"T{t} B{b} I{i} H{h} fp32 strided x", _layer_inputs((t, b, i, h), True)))
    for dtype, tag in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        cases.append(Case(f"T{t} B{b} I{i} H{h} {tag}", _layer_inputs((t, b, i, h)), dtype))
    return cases


def _layer_oracle(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    h, c, ys = h0, c0, []
    for x_t in x:
        h, c = _cell_oracle(x_t, h, c, w_ih, w_hh, b_ih, b_hh)
        ys.append(h)
    return torch.stack(ys), h, c


def _layer_torch(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    y, h_n, c_n = torch.lstm(x, (h0[None], c0[None]), [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0,
                             False, False, False)
    return y, h_n[0], c_n[0]


def _layer_ours(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    from leedl_fast._ops.rnn import lstm_layer

    return lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh)


def _layer_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    from leedl_fast.reference.rnn import lstm_layer

    return lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh)


def _layer_nbytes(i):
    """Read x, h0, c0 and the weights once (they stay in cache across steps); write y, h_n,
    c_n."""
    return (_weight_bytes(i) + tensor_bytes(i["x"], i["h0"], i["c0"]) + 2 * tensor_bytes(i["h0"])
            + tensor_bytes(i["x"]) // i["x"].shape[-1] * i["h0"].shape[-1])


def _layer_flops(i):
    t, b, n_in = i["x"].shape
    hidden = i["h0"].shape[-1]
    return t * (2 * b * (n_in + hidden) * 4 * hidden + 10 * b * hidden)


_LAYER_DEFAULT = {"t": 256, "b": 16, "i": 256, "h": 256}


def _layer_shaped(shape):
    s = (shape["t"], shape["b"], shape["i"], shape["h"])
    return Case("T{} B{} I{} H{} fp32".format(*s), _layer_inputs(s), torch.float32, dict(shape))


def _layer_bench(quick):
    return [_layer_shaped({"t": 8, "b": 4, "i": 32, "h": 32} if quick else _LAYER_DEFAULT)]


register(OpSpec(
    name="lstm_layer", family="rnn", args=("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"),
    outputs=("y", "h_n", "c_n"),
    doc="one LSTM layer, one direction, over a sequence (§5.5-5.6): lstm_cell applied for t = 0.."
        "T-1 from (h0, c0); x (T, B, I), h0 and c0 (B, H); y (T, B, H) holds every step's h, "
        "h_n and c_n the last step's state",
    cases=_layer_cases, bench_cases=_layer_bench,
    oracle=_layer_oracle, torch_fn=_layer_torch, ours=_layer_ours, reference=_layer_reference,
    nbytes=_layer_nbytes, flops=_layer_flops,
    tol={"out": (5e-5, 1e-5)},
    default_shape=_LAYER_DEFAULT, shape_case=_layer_shaped,
))
