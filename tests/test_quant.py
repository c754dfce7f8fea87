"""Quantized matmul family, public surface: the quantizers' round trips, every op on every CPU
backend against dequantize-then-float64-matmul, quantize_ on a small model, state_dict round
trips, autograd to x, opcheck, torch.compile and bad input. Kernel edge cases are in
tests/test_quant_cpu.py and tests/test_quant_triton.py."""
import pytest
import torch

import leedl_fast
import leedl_fast.quant as Q
from leedl_fast.quant import formats
from leedl_fast.reference import quant as reference

from .conftest import cpu_backends

CONFIGS = [Q.Int8WeightOnly(), Q.Int4WeightOnly(group_size=32), Q.Int8Dynamic(),
           Q.Codebook(bits=1), Q.Codebook(bits=2), Q.Codebook(bits=3), Q.Codebook(bits=4)]
CONFIG_IDS = ["int8", "int4-g32", "int8dyn", "cb1", "cb2", "cb3", "cb4"]


def _k_for(config, k):
    """An in_features the config can store near k (int4 needs a multiple of the group)."""
    if isinstance(config, Q.Int4WeightOnly):
        return max(1, round(k / config.group_size)) * config.group_size
    return k


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [1, 7, 13, 64])
def test_pack_bits_round_trip(bits, k):
    idx = torch.randint(0, 1 << bits, (5, k))
    packed = reference.pack_bits(idx, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (k * bits + 7) // 8)
    assert torch.equal(reference.unpack_bits(packed, bits, k), idx)


def test_pack_bits_layout_is_lsb_first():
    """The documented layout: index k at bits [k*b, (k+1)*b), least significant bit first;
    int4: q[2j] in the low nibble of byte j."""
    assert reference.pack_int4(torch.tensor([[3, 10]])).item() == 3 | (10 << 4)
    assert reference.pack_bits(torch.tensor([[1, 2, 3, 0, 1]]), 2).tolist() == [[0b00111001, 1]]


def test_quantizer_round_trip_errors():
    """int8: |w - deq| <= scale / 2 per row; int4: <= scale / 2 per group and zeros exact;
    codebook: clusters are value intervals, the table is the clusters' means."""
    w = torch.randn(37, 96, dtype=torch.float64)
    w[3] = 0  # an all-zero row: scale 0, exact
    q, s = formats.quantize_int8(w)
    err = (reference.dequantize_int8(q, s) - w).abs()
    assert (err <= s.double()[:, None] / 2 + 1e-12).all() and err[3].max() == 0
    packed, scales, zeros = formats.quantize_int4(w, 32)
    deq = reference.dequantize_int4(packed, scales, zeros, 32)
    bound = scales.double().repeat_interleave(32, dim=1) / 2 + 1e-12
    assert ((deq - w).abs() <= bound).all() and deq[3].abs().max() == 0
    for bits in (1, 2, 3, 4):
        packed, table = formats.quantize_codebook(w, bits)
        idx = reference.unpack_bits(packed, bits, 96)
        # 1-D clusters are intervals: sorted weights get non-decreasing indices
        order = w.reshape(-1).argsort()
        assert (idx.reshape(-1)[order].diff() >= 0).all()
        for c in range(1 << bits):  # each entry is its members' mean (§17.3)
            members = w[idx == c]
            if members.numel():
                assert abs(members.mean().item() - table[c].item()) < 1e-6


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (1, 33, 70), (5, 17, 100), (17, 64, 128),
                                     (64, 7, 33)])
def test_ops_match_dequantized_float64(backend, config, m, n, k):
    k = _k_for(config, k)
    w = torch.randn(n, k)
    layer = torch.nn.Linear(k, n)
    layer.weight.data.copy_(w)
    qlin = Q.QuantizedLinear.from_linear(layer, config)
    x = torch.randn(m, k)
    # The dynamic path quantizes x at the precision it is given (x / sx rounded in fp32): its
    # oracle takes the fp32 x, else a quotient within an ulp of k + 1/2 rounds the other way.
    xr = x if config.op == "int8_dynamic_linear" else x.double()
    want = getattr(reference, config.op)(xr, *qlin.weight_view().op_args(),
                                         layer.bias.double()).double()
    with leedl_fast.backend(backend):
        got = qlin(x)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    torch.testing.assert_close(got.double(), want, atol=1e-4 * (1 + want.abs().max().item()),
                               rtol=1e-5)


@pytest.mark.parametrize("backend", cpu_backends())
def test_leading_dims_and_non_contiguous_x(backend):
    qlin = Q.QuantizedLinear.from_linear(torch.nn.Linear(64, 24), Q.Int4WeightOnly(32))
    x = torch.randn(3, 64, 5).transpose(1, 2)  # (3, 5, 64), not contiguous
    with leedl_fast.backend(backend):
        got = qlin(x)
    with leedl_fast.backend("reference"):
        want = qlin(x.contiguous())
    assert got.shape == (3, 5, 24)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_quantize_model_keeps_outputs_within_quantization_error():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    x = torch.randn(32, 64)
    want = model(x)
    errors = {}
    for config in (Q.Int8WeightOnly(), Q.Int8Dynamic(), Q.Int4WeightOnly(32), Q.Codebook(4)):
        quantized = Q.quantize_(torch.nn.Sequential(*[m for m in _clone(model)]), config)
        assert all(type(m) is not torch.nn.Linear for m in quantized)
        with torch.no_grad():
            errors[type(config).__name__] = ((quantized(x) - want).norm() / want.norm()).item()
    assert errors["Int8WeightOnly"] < 0.02 and errors["Int8Dynamic"] < 0.03
    assert errors["Int4WeightOnly"] < 0.15 and errors["Codebook"] < 0.2
    assert errors["Int8WeightOnly"] < errors["Int4WeightOnly"]


def _clone(model):
    clone = type(model)(*[type(m)(m.in_features, m.out_features) if isinstance(
        m, torch.nn.Linear) else m for m in model])
    clone.load_state_dict(model.state_dict())
    return clone


def test_quantize_filter_fn_and_skipped_layers():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 48),
                                torch.nn.Linear(48, 8))
    with pytest.warns(UserWarning, match="2: .*in_features \\(48\\)"):
        Q.quantize_(model, Q.Int4WeightOnly(32), filter_fn=lambda m, name: name != "1")
    assert isinstance(model[0], Q.QuantizedLinear)
    assert type(model[1]) is torch.nn.Linear and type(model[2]) is torch.nn.Linear


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_round_trip(config):
    k = _k_for(config, 64)
    src = Q.QuantizedLinear.from_linear(torch.nn.Linear(k, 20), config)
    dst = Q.QuantizedLinear(k, 20, config=config)
    assert dst.state_dict().keys() == src.state_dict().keys()
    dst.load_state_dict(src.state_dict())
    x = torch.randn(4, k)
    torch.testing.assert_close(dst(x), src(x))
    assert src.stored_bytes() < 20 * k * 4 / 3  # at least 3x smaller than fp32


def test_size_reduction_matches_bits():
    layer = torch.nn.Linear(1024, 1024)
    fp16_bytes = 1024 * 1024 * 2
    sizes = {name: Q.QuantizedLinear.from_linear(layer, c).stored_bytes() / fp16_bytes
             for name, c in (("int8", Q.Int8WeightOnly()), ("int4", Q.Int4WeightOnly()),
                             ("cb2", Q.Codebook(2)))}
    # int8: + 4 bytes of scale per row; int4: + 8 bytes of scale and zero per 128 weights
    assert 0.5 <= sizes["int8"] < 0.51 and 0.25 <= sizes["int4"] < 0.29
    assert 0.125 <= sizes["cb2"] < 0.126  # the book's 4 clusters: 2 bits per weight


@pytest.mark.parametrize("backend", cpu_backends())
def test_gradient_flows_to_x_and_bias(backend):
    qlin = Q.QuantizedLinear.from_linear(torch.nn.Linear(32, 16), Q.Codebook(3))
    qlin.bias.requires_grad_(True)
    x = torch.randn(5, 32, requires_grad=True)
    with leedl_fast.backend(backend):
        qlin(x).square().sum().backward()
    w = reference.dequantize_codebook(qlin.packed, qlin.table, 3, 32)
    xd = x.detach().double().requires_grad_()
    (xd @ w.T + qlin.bias.detach().double()).square().sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, atol=1e-4, rtol=1e-4)
    assert qlin.bias.grad is not None


def test_opcheck():
    x = torch.randn(3, 64)
    w = torch.randn(10, 64)
    q, s = formats.quantize_int8(w)
    packed, scales, zeros = formats.quantize_int4(w, 32)
    cb, table = formats.quantize_codebook(w, 3)
    bias = torch.randn(10)
    cases = [("int8_weight_linear", (x, q, s, bias)),
             ("int8_dynamic_linear", (x, q, s, None)),
             ("int4_weight_linear", (x, packed, scales, zeros, 32, bias)),
             ("codebook_linear", (x, cb, table, 3, 64, bias))]
    for op, args in cases:
        torch.library.opcheck(getattr(torch.ops.leedl_fast, op).default, args)


def test_torch_compile_fullgraph():
    model = Q.quantize_(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.GELU(),
                                            torch.nn.Linear(32, 8)), Q.Int4WeightOnly(32))
    x = torch.randn(4, 64)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))


def test_bad_input_raises_clear_errors():
    w = torch.randn(10, 64)
    with pytest.raises(ValueError, match="multiple of group_size"):
        formats.quantize_int4(w[:, :60], 32)
    with pytest.raises(ValueError, match="group size dividing"):
        Q.QuantizedLinear(60, 10, config=Q.Int4WeightOnly(32))
    with pytest.raises(ValueError, match="bits must be"):
        Q.quantize_(torch.nn.Sequential(torch.nn.Linear(4, 4)), Q.Codebook(bits=5))
    with pytest.raises(ValueError, match="non-finite"):
        formats.quantize_int8(torch.full((2, 2), float("nan")))
    qlin = Q.QuantizedLinear.from_linear(torch.nn.Linear(64, 10), Q.Int8WeightOnly())
    with pytest.raises(ValueError, match="in_features = 64"):
        qlin(torch.randn(3, 63))
    with pytest.raises(TypeError, match="dtype"):
        qlin(torch.randn(3, 64, dtype=torch.float64))
    with pytest.raises(TypeError, match="config must be"):
        Q.quantize_(torch.nn.Sequential(torch.nn.Linear(4, 4)), "int8")
    q, s = formats.quantize_int8(w)
    with pytest.raises(RuntimeError):
        torch.ops.leedl_fast.int8_weight_linear(torch.randn(3, 64), q[:, :32], s, None)
    packed, scales, zeros = formats.quantize_int4(w, 32)
    with pytest.raises(RuntimeError):
        torch.ops.leedl_fast.int4_weight_linear(torch.randn(3, 64), packed[:, :16], scales,
                                                zeros, 32, None)
