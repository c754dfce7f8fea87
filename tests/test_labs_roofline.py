"""`leedl-fast roofline`: the numbers it prints are the spec's formulas, bad shapes are clear
errors, shapes of any size cost no memory (built on the meta device), --plot writes a PNG."""
import pytest
import torch

from leedl_fast.labs import roofline, roofline_cli
from leedl_fast.labs.spec import all_specs, get

# Fixed ceilings: the printed numbers become exact, and no test waits for the measurement.
FAKE = roofline.Ceilings("cpu", gbps=10.0, gflops=100.0, dtype="float32")


@pytest.fixture
def fake_ceilings(monkeypatch):
    monkeypatch.setattr(roofline, "ceilings", lambda device="cpu", dtype=None: FAKE)


def run(argv):
    lines = []
    status = roofline_cli.main(argv, out=lines.append)
    return status, "\n".join(lines)


@pytest.mark.parametrize("dtype, size", [("fp32", 4), ("fp16", 2), ("bf16", 2)])
def test_layer_norm_numbers_are_the_formula(fake_ceilings, dtype, size):
    rows, n = 8, 32
    status, text = run(["layer_norm", "--shape", f"rows={rows}", f"n={n}", "--dtype", dtype])
    assert status == 0, text
    # layer norm reads x, weight and bias once and writes y once; 8 FLOPs per element
    nbytes = size * (2 * rows * n + 2 * n)
    flops = 8 * rows * n
    assert f"rows={rows} n={n}, {dtype}" in text
    assert f"bytes        {nbytes:,} B" in text
    assert f"FLOPs        {flops:,}\n" in text
    assert f"intensity    {flops / nbytes:.3g} FLOP/byte" in text
    assert "ridge point  10 FLOP/byte" in text           # 100 GFLOP/s / 10 GB/s
    assert "bound by     memory" in text
    assert f"time bound   {nbytes / 10e9 * 1e6:.1f} us" in text
    assert "predict before you measure" in text


def test_estimate_compute_bound():
    spec = get("layer_norm")
    inputs, _, where = roofline_cli.build_inputs(spec, {"rows": 4, "n": 16})
    slow_math = roofline.Ceilings("cpu", gbps=1000.0, gflops=1.0, dtype="float32")
    est = roofline_cli.estimate(spec, inputs, slow_math)
    assert where == "meta"
    assert est["nbytes"] == spec.nbytes(inputs) == 4 * (2 * 4 * 16 + 2 * 16)
    assert est["flops"] == 8 * 4 * 16
    assert est["limit"] == "compute"
    assert est["bound"] == pytest.approx(est["flops"] / 1e9)


def test_default_shape_and_huge_shapes_cost_no_memory(fake_ceilings):
    status, text = run(["layer_norm"])
    assert status == 0 and "rows=4096 n=4096" in text
    # 10^11 elements (400 GB): only shapes on the meta device
    status, text = run(["rms_norm", "--shape", "rows=1000000", "n=100000"])
    assert status == 0, text
    assert f"{4 * (2 * 10**11 + 10**5):,} B" in text


@pytest.mark.parametrize("argv, words", [
    (["layer_norm", "--shape", "cols=3"], ["unknown shape key 'cols'", "rows", "n"]),
    (["layer_norm", "--shape", "rows"], ["KEY=VALUE", "rows", "n"]),
    (["layer_norm", "--shape", "rows=abc"], ["not an integer"]),
    (["layer_norm", "--shape", "rows=0"], [">= 1"]),
    (["no_such_op"], ["unknown op", "layer_norm"]),
])
def test_bad_arguments_are_clear_errors(fake_ceilings, argv, words):
    status, text = run(argv)
    assert status == 2
    for word in words:
        assert word in text


def test_list_names_ops_and_keys():
    status, text = run(["--list"])
    assert status == 0
    assert "layer_norm" in text and "--shape rows=4096 n=4096" in text


def test_plot_writes_png(fake_ceilings, monkeypatch, tmp_path):
    monkeypatch.setenv("LEEDL_FAST_LAB_QUICK", "1")
    path = tmp_path / "sub" / "roofline.png"
    status, text = run(["layer_norm", "--shape", "rows=4", "n=64", "--plot", str(path)])
    assert status == 0, text
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {path}" in text
    for name in ("leedl_fast", "torch", "reference"):
        assert f"\n  {name} " in text


def test_quick_plot_default_path_leaves_results_alone(monkeypatch):
    monkeypatch.setenv("LEEDL_FAST_LAB_QUICK", "1")
    path = roofline_cli.default_plot_path("layer_norm", "cpu", quick=True)
    assert "bench" not in path.parts
    full = roofline_cli.default_plot_path("layer_norm", "cuda", quick=False)
    assert full.parts[-3:] == ("bench", "results", "roofline-layer_norm-cuda.png")


@pytest.mark.parametrize("name", sorted(n for n, s in all_specs().items() if s.shape_case))
def test_every_spec_has_a_roofline(name):
    """Generic over the families: the default shape builds (on meta) and has bytes to move."""
    spec = get(name)
    inputs, dtype, _ = roofline_cli.build_inputs(spec, dict(spec.default_shape))
    est = roofline_cli.estimate(spec, inputs, FAKE)
    assert est["nbytes"] > 0 and est["flops"] >= 0 and est["bound"] > 0
    assert isinstance(dtype, torch.dtype)
