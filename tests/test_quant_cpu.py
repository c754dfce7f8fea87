"""C++ CPU kernels of the quantized matmul family (csrc/cpu/quant.cpp, quant_dynamic.cpp),
called directly through torch.ops.leedl_fast against the float64 reference
(leedl_fast/reference/quant.py): awkward shapes (K odd so codebook bit fields cross bytes,
N not a multiple of the 8/16/64-feature blocks, M on both sides of the brgemm threshold 16 and
of the 192-row task block, K past the 512/1024 chunks), every bit width and group size,
fp16/bf16, exactness of int8 dynamic's int32 products, and bad inputs."""
import itertools
import math

import pytest
import torch

from leedl_fast.quant import formats
from leedl_fast.reference import quant as reference

ops = torch.ops.leedl_fast

MS = [0, 1, 3, 16, 65]
NS = [1, 7, 64, 130]
SHAPES = list(itertools.product(MS, NS, [1, 7, 100, 256]))
INT4_SHAPES = list(itertools.product(MS, NS, [32, 96, 256]))
# Past the K chunks (512 weight-only, 1024 dynamic) and the 192-row M block of the brgemm path.
LARGE = [(1, 9, 1100), (200, 70, 1100), (20, 3, 2050)]
EPS = {torch.float32: torch.finfo(torch.float32).eps, torch.float16: 2.0 ** -10,
       torch.bfloat16: 2.0 ** -7}


def _case(m, n, k, dtype=torch.float32):
    x = torch.randn(m, k).to(dtype)
    w = torch.randn(n, k)
    bias = torch.randn(n).to(dtype)
    return x, w, bias


def _assert_fp32_close(got, x, w_deq, bias):
    """fp32 kernel vs the float64 product: per element, an fp32 dot product of K terms (blocked
    sums) errs by ~eps * sqrt(K) * sum_k |x_k w_k| in practice (K * eps worst case); we allow
    4 eps sqrt(K + 1) times that magnitude (plus the bias), far below a single wrong term."""
    xd = x.double()
    want = xd @ w_deq.T + (0 if bias is None else bias.double())
    mag = xd.abs() @ w_deq.abs().T + (0 if bias is None else bias.double().abs())
    tol = 4 * EPS[torch.float32] * math.sqrt(x.shape[1] + 1) * mag + 1e-30
    assert got.dtype == torch.float32 and got.shape == want.shape
    err = (got.double() - want).abs()
    assert (err <= tol).all(), f"max error {err.max().item():.3g}, tol {tol.min().item():.3g}"


def _weight_only_cases(n, k, w):
    """(name, call(x, bias), float64 dequantized weight) for every weight-only format at n, k."""
    cases = []
    q, s = formats.quantize_int8(w)
    cases.append(("int8", lambda x, b, q=q, s=s: ops.int8_weight_linear(x, q, s, b),
                  reference.dequantize_int8(q, s)))
    for bits in (1, 2, 3, 4):
        p, t = formats.quantize_codebook(w, bits)
        cases.append((f"codebook{bits}",
                      lambda x, b, p=p, t=t, bits=bits: ops.codebook_linear(x, p, t, bits, k, b),
                      reference.dequantize_codebook(p, t, bits, k)))
    for g in (2, 32, 64, 128):
        if k % g == 0 and k % 2 == 0:
            p, s, z = formats.quantize_int4(w, g)
            cases.append((f"int4-g{g}",
                          lambda x, b, p=p, s=s, z=z, g=g: ops.int4_weight_linear(x, p, s, z, g, b),
                          reference.dequantize_int4(p, s, z, g)))
    return cases


@pytest.mark.parametrize("m, n, k", SHAPES + INT4_SHAPES + LARGE)
def test_weight_only_fp32(m, n, k):
    x, w, bias = _case(m, n, k)
    for name, call, w_deq in _weight_only_cases(n, k, w):
        for b in (None, bias):
            got = call(x, b)
            assert got.shape == (m, n), name
            _assert_fp32_close(got, x, w_deq, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m, n, k", [(1, 7, 100), (3, 130, 256), (16, 64, 96), (65, 7, 256),
                                     (200, 70, 1100)])
def test_weight_only_half(dtype, m, n, k):
    """Error vs float64 at most 2x torch's own F.linear in that dtype on the dequantized weight
    (cast to the dtype), plus half an ulp of the output's largest value (torch can be exact on
    tiny cases)."""
    x, w, bias = _case(m, n, k, dtype)
    for name, call, w_deq in _weight_only_cases(n, k, w):
        want = x.double() @ w_deq.T + bias.double()
        got = call(x, bias)
        assert got.dtype == dtype, name
        torch_out = torch.nn.functional.linear(x, w_deq.to(dtype), bias)
        torch_err = (torch_out.double() - want).abs().max().item()
        err = (got.double() - want).abs().max().item()
        floor = EPS[dtype] / 2 * want.abs().max().item()
        assert err <= 2 * torch_err + floor, f"{name}: {err} vs torch {torch_err}"


DYNAMIC_CASES = ([(m, n, k, torch.float32) for m, n, k in SHAPES + LARGE]
                 + [(m, n, k, dt) for dt in (torch.float16, torch.bfloat16)
                    for m, n, k in [(1, 64, 7), (3, 130, 256), (65, 7, 100)] + LARGE])


@pytest.mark.parametrize("m, n, k, dtype", DYNAMIC_CASES)
def test_int8_dynamic_matches_reference(m, n, k, dtype):
    """The reference reproduces the int32 product exactly (float64) and scales in float64, as
    the kernel does: they agree up to the final rounding to the dtype (one ulp; a single wrong
    integer product would be off by sx * scale, far more at these sizes)."""
    x, w, bias = _case(m, n, k, dtype)
    if m > 1:
        x[1] = 0  # an all-zero row: sx = 0, y = bias
    q, s = formats.quantize_int8(w)
    for b in (None, bias):
        got = ops.int8_dynamic_linear(x, q, s, b)
        want = reference.int8_dynamic_linear(x, q, s, b)
        assert got.dtype == dtype and got.shape == (m, n)
        torch.testing.assert_close(got.double(), want.double(), rtol=EPS[dtype], atol=1e-30)
        if m > 1:
            expect = torch.zeros(n, dtype=dtype) if b is None else b
            assert torch.equal(got[1], expect)


@pytest.mark.parametrize("m, k", [(1, 15), (5, 33), (17, 2100)])
def test_int8_dynamic_int32_products_are_exact(m, k):
    """x rows of integers with max |x| = 127 quantize to themselves (sx = 1); scales = 1: y is
    the integer product itself (below 2^24, so fp32 holds it exactly). Includes qweight = -128,
    which no quantizer makes but the format allows."""
    n = 21
    x = torch.randint(-127, 128, (m, k)).float()
    x[:, 0] = 127
    qweight = torch.randint(-3, 4, (n, k), dtype=torch.int8)
    qweight[0, :] = -128
    got = ops.int8_dynamic_linear(x, qweight, torch.ones(n), None)
    want = x.double() @ qweight.double().T
    assert want.abs().max() < 2 ** 24
    assert torch.equal(got.double(), want)


def test_empty_m_returns_empty():
    x = torch.empty(0, 64)
    w = torch.randn(5, 64)
    q, s = formats.quantize_int8(w)
    p, sc, z = formats.quantize_int4(w, 32)
    cb, t = formats.quantize_codebook(w, 3)
    for y in (ops.int8_weight_linear(x, q, s, None), ops.int8_dynamic_linear(x, q, s, None),
              ops.int4_weight_linear(x, p, sc, z, 32, None), ops.codebook_linear(x, cb, t, 3, 64,
                                                                                  None)):
        assert y.shape == (0, 5) and y.dtype == torch.float32


def test_bad_inputs_raise():
    x = torch.randn(4, 64)
    w = torch.randn(10, 64)
    q, s = formats.quantize_int8(w)
    p, sc, z = formats.quantize_int4(w, 32)
    cb, t = formats.quantize_codebook(w, 3)
    bad = {
        "int8 qweight K": lambda: ops.int8_weight_linear(x, q[:, :60], s, None),
        "int8 qweight dtype": lambda: ops.int8_weight_linear(x, q.float(), s, None),
        "int8 scales shape": lambda: ops.int8_weight_linear(x, q, s[:9], None),
        "int8 bias shape": lambda: ops.int8_weight_linear(x, q, s, torch.randn(9)),
        "int8 bias dtype": lambda: ops.int8_weight_linear(x, q, s, torch.randn(10).double()),
        "dynamic qweight K": lambda: ops.int8_dynamic_linear(x, q[:, :63], s, None),
        "dynamic scales dtype": lambda: ops.int8_dynamic_linear(x, q, s.double(), None),
        "int4 packed width": lambda: ops.int4_weight_linear(x, p[:, :31], sc, z, 32, None),
        "int4 scales shape": lambda: ops.int4_weight_linear(x, p, sc[:, :1], z, 32, None),
        "int4 zeros shape": lambda: ops.int4_weight_linear(x, p, sc, z.T, 32, None),
        "int4 group not dividing K": lambda: ops.int4_weight_linear(x, p, sc, z, 48, None),
        "int4 odd group": lambda: ops.int4_weight_linear(x, p, sc, z, 3, None),
        "int4 group 0": lambda: ops.int4_weight_linear(x, p, sc, z, 0, None),
        "codebook bits 5": lambda: ops.codebook_linear(x, cb, torch.randn(32), 5, 64, None),
        "codebook bits 0": lambda: ops.codebook_linear(x, cb, t, 0, 64, None),
        "codebook table size": lambda: ops.codebook_linear(x, cb, t[:4], 3, 64, None),
        "codebook packed width": lambda: ops.codebook_linear(x, cb[:, :-1], t, 3, 64, None),
        "codebook in_features": lambda: ops.codebook_linear(x, cb, t, 3, 63, None),
        "non-contiguous x": lambda: ops.int8_weight_linear(
            torch.randn(64, 4).T, q, s, None),
        "float64 x": lambda: ops.int8_weight_linear(x.double(), q, s, None),
        "float64 x dynamic": lambda: ops.int8_dynamic_linear(x.double(), q, s, None),
        "3-D x": lambda: ops.codebook_linear(x[None], cb, t, 3, 64, None),
    }
    for name, call in bad.items():
        with pytest.raises(RuntimeError):
            call()
            pytest.fail(f"{name} did not raise")
