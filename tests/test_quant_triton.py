"""The quantized matmul family's Triton kernels (kernels/quant.py), called directly with the op
schemas' arguments, against the float64 reference (leedl_fast/reference/quant.py) on weights made
by the quantizers (leedl_fast/quant/formats.py).

Here (CPU): under the Triton interpreter, at small odd sizes that cross the interpreter tiles
(GEMV: 64-wide K chunks, 16 features; tiled: 32 x 32 x 32; int4 group 32 shrinks the K tile, 6
gathers its scales per element). M 1, 5, 16 take the GEMV path (K = 100 splits K in two), 17 and
64 the tiled one. fp32 within 2e-5 of the reference (relative to max(1, max |y|)); fp16 within 2x
torch's own fp16 error (F.linear on the dequantized weight rounded to fp16); int8 dynamic: its
integer product must be exact, so only the fp32 rounding of the final scaling may differ.
bf16 runs only on the GPU: tl.dot on bf16 is silently wrong under the interpreter.
On a GPU (`make test-gpu`, TRITON_INTERPRET=0) the same tests run on CUDA tensors, plus the
@pytest.mark.gpu ones at LLM-sized shapes (split-K over 132 SMs, 128 x 128 int8 tiles).
"""
import pytest
import torch
import torch.nn.functional as F

from leedl_fast.quant import formats
from leedl_fast.reference import quant as ref

from .conftest import HAS_CUDA, INTERPRETED

pytestmark = pytest.mark.skipif(not (INTERPRETED or HAS_CUDA),
                                reason="Triton needs the interpreter or a GPU")
kernels = pytest.importorskip("leedl_fast.kernels.quant", reason="triton is not installed")
DEVICE = "cuda" if HAS_CUDA and not INTERPRETED else "cpu"

# format id -> (op, how to quantize w (N, K) into the op's arguments after x, before bias)
FORMATS = {
    "int8": ("int8_weight_linear", lambda w: formats.quantize_int8(w)),
    "int4g32": ("int4_weight_linear", lambda w: (*formats.quantize_int4(w, 32), 32)),
    "int4g128": ("int4_weight_linear", lambda w: (*formats.quantize_int4(w, 128), 128)),
    "int4g6": ("int4_weight_linear", lambda w: (*formats.quantize_int4(w, 6), 6)),
    **{f"cb{b}": ("codebook_linear",
                  lambda w, b=b: (*formats.quantize_codebook(w, b), b, w.shape[1]))
       for b in (1, 2, 3, 4)},
}
# (N, K) per format: odd N, K off the 64/32 tiles (int4: multiples of the group)
SHAPES = {"int8": [(1, 7), (7, 100), (33, 64)], "int4g32": [(7, 64), (33, 96)],
          "int4g128": [(7, 256)], "int4g6": [(33, 96)],
          **{f"cb{b}": [(1, 7), (7, 100), (33, 64)] for b in (1, 2, 3, 4)}}
CASES = [(f, n, k) for f, shapes in SHAPES.items() for n, k in shapes]
M_SIZES = (1, 5, 16, 17, 64)


def make_case(fmt, m, n, k, dtype=torch.float32, bias=True, zero_row=True):
    """(x, weight args, bias, W float64) for one call; row 2 of x is all zeros when it exists."""
    op, quantize = FORMATS[fmt]
    w = torch.randn(n, k, dtype=torch.float64) / k ** 0.5
    args = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in quantize(w)]
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    if zero_row and m > 2:
        x[2] = 0
    b = torch.randn(n, device=DEVICE).to(dtype) if bias else None
    return op, x, args, b, dequantize(op, args)


def dequantize(op, args):
    """W (N, K) float64 from an op's weight arguments."""
    return {"int8_weight_linear": ref.dequantize_int8, "int4_weight_linear": ref.dequantize_int4,
            "codebook_linear": ref.dequantize_codebook}[op](*args)


def run(op, x, args, b):
    return getattr(kernels, op)(x, *args, b)


def want(op, x, args, b):
    """The float64 reference (no output rounding: x and bias passed as float64)."""
    return getattr(ref, op)(x.double(), *args, b.double() if b is not None else None)


def assert_close(got, expect, name, tol):
    assert got.shape == expect.shape, (name, got.shape, expect.shape)
    assert torch.isfinite(got).all(), name
    scale = max(1.0, expect.abs().max().item()) if expect.numel() else 1.0
    err = (got.double() - expect).abs().max().item() if expect.numel() else 0.0
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol:.1g} * {scale:.3g}"


# ------------------------------------------------------------------------------ weight-only

@pytest.mark.parametrize("m", M_SIZES)
@pytest.mark.parametrize("fmt, n, k", CASES, ids=[f"{f}-{n}x{k}" for f, n, k in CASES])
def test_weight_only_fp32(fmt, n, k, m):
    bias = (m + n) % 2 == 1 or fmt == "int8"  # both, across the cases; test_no_bias has more
    op, x, args, b, _ = make_case(fmt, m, n, k, bias=bias)
    y = run(op, x, args, b)
    assert y.dtype == torch.float32
    assert_close(y, want(op, x, args, b), f"{op} {fmt}", 2e-5)
    if m > 2:  # the all-zero row gives the bias exactly
        expect = b if b is not None else torch.zeros_like(y[2])
        assert torch.equal(y[2], expect)


@pytest.mark.parametrize("m", (1, 17))
@pytest.mark.parametrize("fmt", ["int8", "int4g32", "cb3"])
def test_no_bias(fmt, m):
    n, k = SHAPES[fmt][-1]
    op, x, args, _, _ = make_case(fmt, m, n, k, bias=False)
    assert_close(run(op, x, args, None), want(op, x, args, None), fmt, 2e-5)


@pytest.mark.parametrize("m", (1, 16, 17, 64))
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_weight_only_fp16_within_twice_torch_error(fmt, m):
    n, k = (33, 256) if fmt == "int4g128" else (33, 96)
    op, x, args, b, weight = make_case(fmt, m, n, k, dtype=torch.float16)
    got = run(op, x, args, b)
    assert got.dtype == torch.float16
    expect = want(op, x, args, b)
    torch_err = (F.linear(x, weight.to(DEVICE, torch.float16), b).double() - expect).abs().max()
    err = (got.double() - expect).abs().max()
    floor = 2 ** -11 * max(1.0, expect.abs().max().item())  # half an fp16 ulp at the scale
    assert err <= 2 * torch_err + floor, f"{fmt}: error {err:.3g} vs torch's {torch_err:.3g}"


@pytest.mark.parametrize("fmt", ["int8", "int4g32", "cb3"])
def test_split_k_and_paths_agree(monkeypatch, fmt):
    """Forced: every K chunk its own split (deterministic sum), and the tiled path at M = 5."""
    n, k = (33, 256)
    op, x, args, b, _ = make_case(fmt, 5, n, k)
    expect = want(op, x, args, b)
    monkeypatch.setattr(kernels, "INTERPRETER_PROGRAMS", 1000)
    first = run(op, x, args, b)
    assert torch.equal(first, run(op, x, args, b))  # no atomics: bit-for-bit repeatable
    assert_close(first, expect, f"{fmt} split-K", 2e-5)
    monkeypatch.setattr(kernels, "INTERPRETER_PROGRAMS", 1)
    assert_close(run(op, x, args, b), expect, f"{fmt} one program per column block", 2e-5)
    monkeypatch.setattr(kernels, "GEMV_MAX_M", 0)
    assert_close(run(op, x, args, b), expect, f"{fmt} tiled at M = 5", 2e-5)


def test_split_k_config():
    """Splits are whole K chunks and none is empty."""
    for programs, k, block_k in ((1, 100, 64), (3, 4096, 128), (1000, 4096, 128), (1, 7, 64)):
        splits, k_split = kernels.split_k(programs, k, block_k, False)
        assert k_split % block_k == 0 and (splits - 1) * k_split < k <= splits * k_split


def test_int4_k_tiles():
    """One scale column per tile where group_size allows it, per-element gathers otherwise."""
    assert kernels.k_tile(64, kernels.INT4, 128, 16) == (64, True)
    assert kernels.k_tile(64, kernels.INT4, 32, 16) == (32, True)
    assert kernels.k_tile(64, kernels.INT4, 6, 16) == (64, False)
    assert kernels.k_tile(64, kernels.INT4, 8, 16) == (64, False)  # too small a dot tile
    assert kernels.k_tile(64, kernels.CODEBOOK, 1, 16) == (64, False)


@pytest.mark.parametrize("fmt", ["int8", "int4g32", "cb2"])
def test_empty(fmt):
    op, x, args, b, _ = make_case(fmt, 0, 7, 64)
    assert run(op, x, args, b).shape == (0, 7)


# ------------------------------------------------------------------------------ int8 dynamic

def _int8_weights(n, k):
    q, s = formats.quantize_int8(torch.randn(n, k) / k ** 0.5)
    return q.to(DEVICE), s.to(DEVICE)


def test_quantize_rows_ties_to_even_and_zero_rows():
    """sx = 127 / 127 = 1 exactly, so x / sx = x: the halves must round to even like
    torch.round; an all-zero row gets sx = 0 and xq = 0; rows match the reference exactly."""
    ties = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 126.5, -126.5, 0.49999997,
                         1.5000001, -127.0, 7.0])
    x = torch.stack([ties, torch.zeros_like(ties), torch.randn(14) * 3,
                     torch.randn(14) * 1e-30]).to(DEVICE)
    xq, sx = kernels.quantize_rows(x)
    assert xq.dtype == torch.int8 and sx.dtype == torch.float32
    assert xq[0].tolist() == torch.round(ties).to(torch.int8).tolist()
    assert sx[1].item() == 0 and xq[1].abs().max().item() == 0
    want_q, want_sx = ref.quantize_rows_int8(x.cpu())
    assert torch.equal(sx.cpu(), want_sx)
    assert torch.equal(xq.cpu().double(), want_q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m", M_SIZES)
@pytest.mark.parametrize("n, k", [(1, 7), (7, 100), (33, 64)])
def test_int8_dynamic_integer_part_exact(n, k, m, dtype):
    """y = acc * sx * scale + bias with acc exact: the error is the fp32 rounding of the three
    operations on each element (<= 3 ulps of the terms) and the output rounding; a wrong xq
    or a lost product would cost sx * scale * |w| >> that."""
    q, s = _int8_weights(n, k)
    x = (torch.randn(m, k, device=DEVICE) * 2).to(dtype)
    if m > 2:
        x[2] = 0
    b = torch.randn(n, device=DEVICE).to(dtype) if m % 2 else None
    got = kernels.int8_dynamic_linear(x, q, s, b)
    assert got.dtype == dtype
    xq, sx = ref.quantize_rows_int8(x.cpu())
    terms = (xq @ q.cpu().double().T).abs() * sx.double()[:, None] * s.cpu().double()[None, :]
    bias = b.cpu().double() if b is not None else torch.zeros(n, dtype=torch.float64)
    terms = terms + bias.abs()
    expect = _exact_dynamic(x.cpu(), q.cpu(), s.cpu(), b)
    if dtype == torch.float32:
        bound = 4 * 2 ** -24 * terms + 1e-30
    else:  # fp16 output: its rounding (half an ulp) on top of the fp32 steps
        bound = 4 * 2 ** -24 * terms + 2 ** -11 * expect.abs() + 2 ** -25
    assert ((got.cpu().double() - expect).abs() <= bound).all()
    if m > 2:
        assert torch.equal(got[2].cpu(), b.cpu() if b is not None else torch.zeros(n, dtype=dtype))


def _exact_dynamic(x, q, s, b):
    """The reference's int8 dynamic result in float64, before the output rounding."""
    xq, sx = ref.quantize_rows_int8(x)
    y = (xq @ q.double().T) * sx.double()[:, None] * s.double()[None, :]
    return y + b.to(y.device).double() if b is not None else y


def test_int8_dynamic_reads_xq_back():
    """With qweight = I and scales = 1, y = xq * sx: the kernel's quantized rows exactly."""
    k = 40
    x = torch.randn(5, k, device=DEVICE) * 3
    eye = torch.eye(k, dtype=torch.int8, device=DEVICE)
    y = kernels.int8_dynamic_linear(x, eye, torch.ones(k, device=DEVICE), None)
    xq, sx = ref.quantize_rows_int8(x.cpu())
    assert torch.equal(y.cpu(), (xq * sx.double()[:, None]).float())


def test_int8_dynamic_empty():
    q, s = _int8_weights(7, 64)
    assert kernels.int8_dynamic_linear(torch.zeros(0, 64, device=DEVICE), q, s, None).shape \
        == (0, 7)


# ------------------------------------------------------------------------------ GPU only

GPU_FORMATS = ["int8", "int4g128", "int4g32", "cb2", "cb3", "cb4"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 7, 16, 17, 256])
@pytest.mark.parametrize("fmt", GPU_FORMATS)
def test_gpu_weight_only_16bit(fmt, m, dtype):
    op, quantize = FORMATS[fmt]
    n, k = 1000, 4096
    w = torch.randn(n, k, dtype=torch.float64, device="cuda") / k ** 0.5
    args = quantize(w)
    x = torch.randn(m, k, device="cuda").to(dtype)
    b = torch.randn(n, device="cuda").to(dtype)
    got = run(op, x, args, b)
    expect = want(op, x, args, b)
    weight = dequantize(op, args)
    torch_err = (F.linear(x, weight.to(dtype), b).double() - expect).abs().max()
    err = (got.double() - expect).abs().max()
    half_ulp = 2 ** -9 if dtype == torch.bfloat16 else 2 ** -11
    floor = half_ulp * max(1.0, expect.abs().max().item())  # the output's own rounding
    assert err <= 2 * torch_err + floor, \
        f"{fmt} {dtype} M={m}: {err:.3g} vs torch's {torch_err:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 300])
@pytest.mark.parametrize("fmt", ["int8", "int4g128", "cb3"])
def test_gpu_weight_only_fp32(fmt, m):
    op, quantize = FORMATS[fmt]
    n, k = 777, 2048
    args = quantize(torch.randn(n, k, dtype=torch.float64, device="cuda") / k ** 0.5)
    x = torch.randn(m, k, device="cuda")
    b = torch.randn(n, device="cuda")
    assert_close(run(op, x, args, b), want(op, x, args, b), fmt, 2e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m", [1, 16, 17, 300])
def test_gpu_int8_dynamic(m, dtype):
    n, k = 1000, 4096
    q, s = formats.quantize_int8(torch.randn(n, k, device="cuda") / k ** 0.5)
    x = torch.randn(m, k, device="cuda").to(dtype)
    b = torch.randn(n, device="cuda").to(dtype)
    xq, sx = kernels.quantize_rows(x)
    want_q, want_sx = ref.quantize_rows_int8(x)
    assert torch.equal(xq.double(), want_q) and torch.equal(sx, want_sx)
    got = kernels.int8_dynamic_linear(x, q, s, b).double()
    expect = _exact_dynamic(x, q, s, b)
    # |acc| can pass 2^24 at K = 4096: its conversion to fp32 rounds too (one more ulp)
    tol = 2 ** -21 if dtype == torch.float32 else 2 ** -8
    assert ((got - expect).abs() <= tol * (expect.abs() + b.double().abs() + 1)).all()
