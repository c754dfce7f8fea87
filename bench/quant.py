"""Quantized matmul family: y = x W^T with W stored in int8 (per channel), int4 (group 128) or a
2-bit codebook (the book's 4 clusters), or int8 x int8 with dynamic per-token activation scales,
against F.linear on the float weight (cuBLAS bf16 on GPU, MKL fp32 on CPU) and torch.compile
of dequantize-then-linear (what a user gets without a fused kernel).

Counting (docs/quant.md): at small M the layer is memory bound and the bytes are the stored
weight: N*K bytes (int8), N*K/2 + 8*N*K/128 (int4 with fp32 scale and zero per group),
N*K*bits/8 (codebook), plus x and y. The GB/s column reads those bytes over the time; the
% ceil column compares them with the measured copy bandwidth -- a weight-only kernel at M = 1
is good when it is close to it, and faster than F.linear on a float weight by up to the ratio
of the weights' sizes (2x int8 vs fp16/bf16, 4x int4, 8x 2-bit; 4x / 8x / 16x vs fp32).

Shapes: the Linear layers of GPT-small (768 -> 3072, 3072 -> 768) and LLM size (4096 -> 4096,
4096 -> 11008, 11008 -> 4096), M (tokens) 1, 4, 16, 64, 512 on GPU; a subset on CPU.

`python -m bench.quant` (no arguments) also prints the accuracy cost on a small MLP trained in
a few seconds on synthetic data: accuracy before and after each quantization, and the size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as TF

from bench.harness import Case, candidates, no_grad

GPU_SHAPES = [(768, 3072), (3072, 768), (4096, 4096), (4096, 11008), (11008, 4096)]
GPU_M = [1, 4, 16, 64, 512]
CPU_CASES = [((4096, 4096), 1), ((4096, 4096), 16), ((4096, 4096), 64), ((768, 3072), 1),
             ((768, 3072), 512)]


def _configs():
    import leedl_fast.quant as Q

    return {"int8": Q.Int8WeightOnly(), "int4": Q.Int4WeightOnly(128),
            "int8dyn": Q.Int8Dynamic(), "codebook2": Q.Codebook(2)}


def _builder(fmt, m, k, n, device, dtype):
    def build():
        import leedl_fast.quant as Q
        from leedl_fast.reference import quant as reference

        torch.manual_seed(0)
        layer = torch.nn.Linear(k, n, bias=False, device=device, dtype=dtype)
        qlin = Q.QuantizedLinear.from_linear(layer, _configs()[fmt])
        x = torch.randn(m, k, device=device, dtype=dtype)
        view = qlin.weight_view()
        # The baseline is F.linear on a float weight of the same shape and dtype -- the
        # dequantized one, so the outputs are comparable (the harness checks them); int8
        # dynamic's baseline also rounds x as the kernel does (one cheap elementwise pass).
        weight = getattr(reference, {"int8": "dequantize_int8", "int8dyn": "dequantize_int8",
                                     "int4": "dequantize_int4",
                                     "codebook2": "dequantize_codebook"}[fmt])(
            *view.op_args()).to(dtype)

        def eager(x):
            if fmt == "int8dyn":
                xq, sx = reference.quantize_rows_int8(x)
                x = (xq * sx.double()[:, None]).to(x.dtype)
            return TF.linear(x, weight)

        def ours(x):
            return qlin(x)

        fns = candidates(eager, ours, (x,), "fwd", device, compile=False)

        def dequant_then_linear(x):  # without a fused kernel: dequantize every call
            args = view.op_args()
            if fmt in ("int8", "int8dyn"):
                w = args[0].to(x.dtype) * args[1].to(x.dtype)[:, None]
            elif fmt == "int4":  # unpack the nibbles and scale, all in x's dtype
                packed, scales, zeros, group = args
                q = torch.stack((packed & 15, packed >> 4), -1).reshape(n, k).to(x.dtype)
                w = (q - zeros.to(x.dtype).repeat_interleave(group, 1)) * \
                    scales.to(x.dtype).repeat_interleave(group, 1)
            else:
                w = args[1].to(x.dtype)[reference.unpack_bits(args[0], args[2], k)]
            if fmt == "int8dyn":
                xq, sx = reference.quantize_rows_int8(x)
                x = (xq * sx.double()[:, None]).to(x.dtype)
            return TF.linear(x, w)

        fns["dequantize + F.linear"] = lambda: dequant_then_linear(x)
        return {name: no_grad(fn) for name, fn in fns.items()}

    return build


def _stored_bytes(fmt, k, n):
    if fmt in ("int8", "int8dyn"):
        return n * k + 4 * n
    if fmt == "int4":
        return n * k // 2 + 8 * n * (k // 128)
    return n * k // 4 + 16


def cases(device: str, quick: bool) -> list[Case]:
    gpu = device.startswith("cuda")
    # GPU: the baseline is fp16 cuBLAS
    dtype = torch.float16 if gpu else torch.float32
    elem = torch.empty((), dtype=dtype).element_size()
    if quick:
        grid = [((256, 256), 1)]
    elif gpu:
        grid = [(s, m) for s in GPU_SHAPES for m in GPU_M]
    else:
        grid = CPU_CASES
    out = []
    for (k, n), m in grid:
        for fmt in _configs():
            if fmt == "int8dyn" and m < 16 and not quick:
                continue  # dynamic activation quantization is for prefill-sized M
            nbytes = _stored_bytes(fmt, k, n) + elem * m * (k + n)
            target = None  # the goals (docs/quant.md)
            if not gpu and m == 1 and (k, n) == (4096, 4096) and fmt in ("int8", "int4"):
                target = ("leedl_fast:cpu", 2.0 if fmt == "int8" else 3.0)
            if gpu and m <= 16 and fmt != "int8dyn":
                target = ("leedl_fast:triton",
                          {"int8": 1.8, "int4": 3.0, "codebook2": 4.0}[fmt])
            out.append(Case(family="quant", op=f"linear_{fmt}", mode="fwd", shape=(m, k, n),
                            dtype=dtype, device=device, nbytes=nbytes,
                            build=_builder(fmt, m, k, n, device, dtype),
                            target=target, flops=2 * m * k * n))
    return out


# ------------------------------------------------------------------------------ accuracy

def accuracy(seed=0, device="cpu"):
    """Train a 3-layer MLP on a synthetic 10-class problem (Gaussian clusters in 64-D, a
    nonlinear decision), then quantize it every way: [(name, accuracy, size bytes)]."""
    import leedl_fast.quant as Q

    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(10, 64, generator=g) * 0.3

    def data(count):
        labels = torch.randint(0, 10, (count,), generator=g)
        x = centers[labels] + torch.randn(count, 64, generator=g)
        return torch.tanh(x) * 2, labels

    (xt, yt), (xv, yv) = data(8192), data(4096)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for step in range(600):
        idx = torch.randint(0, len(xt), (128,), generator=g)
        loss = TF.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    def evaluate(m):
        with torch.no_grad():
            return (m(xv).argmax(-1) == yv).float().mean().item()

    def size(m):
        return sum(mod.stored_bytes() if isinstance(mod, Q.QuantizedLinear)
                   else mod.weight.numel() * 4 for mod in m if hasattr(mod, "in_features"))

    rows = [("fp32", evaluate(model), size(model))]
    for name, config in (("int8", Q.Int8WeightOnly()), ("int8 dynamic", Q.Int8Dynamic()),
                         ("int4 g64", Q.Int4WeightOnly(64)), ("codebook 4 bits", Q.Codebook(4)),
                         ("codebook 2 bits", Q.Codebook(2)),
                         ("codebook 1 bit", Q.Codebook(1))):
        clone = torch.nn.Sequential(*[torch.nn.Linear(mod.in_features, mod.out_features)
                                      if isinstance(mod, torch.nn.Linear) else mod
                                      for mod in model])
        clone.load_state_dict(model.state_dict())
        Q.quantize_(clone, config)
        rows.append((name, evaluate(clone), size(clone)))
    return rows


if __name__ == "__main__":
    base = None
    print("| weights | accuracy | change | weight bytes | vs fp32 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, acc, nbytes in accuracy():
        base = base or (acc, nbytes)
        print(f"| {name} | {acc:.4f} | {acc - base[0]:+.4f} | {nbytes} | "
              f"{nbytes / base[1]:.3f} |")
