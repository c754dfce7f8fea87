"""The models benchmark's quantized-variants table (bench/model_quant.py) and its place in the
saved results: real models, really quantized and evaluated (quick: 10 training steps)."""
import pytest

from bench import model_quant, report


@pytest.fixture(scope="module")
def quick_table():
    return model_quant.table("cpu", quick=True, models=["image_cnn", "gpt"])


def _int(cell):
    return int(cell.replace(",", ""))


def test_each_model_has_a_float_row_then_one_per_format(quick_table):
    rows = quick_table["rows"]
    formats = [name for name, _ in model_quant._formats()]
    assert len(rows) == 2 * (1 + len(formats))
    for first in (0, 1 + len(formats)):
        assert rows[first][1] == "fp32" and rows[first][-1] == "1.00x"
        assert [r[1].split(" (")[0] for r in rows[first + 1:first + 1 + len(formats)]] == formats


def test_quantized_linear_bytes_shrink_as_the_format_says(quick_table):
    rows = {(r[0], r[1]): r for r in quick_table["rows"]}
    for model in ("ImageCNN", "GPT"):
        fp32 = _int(rows[model, "fp32"][4])
        int8 = _int(rows[model, "int8 weight-only"][4])
        int4 = _int(rows[model, "int4 weight-only g32"][4])
        two = _int(rows[model, "2-bit codebook"][4])
        # int8: 1 byte per weight + per-row scales + fp32 biases: just over a quarter
        assert 0.25 * fp32 < int8 < 0.3 * fp32
        assert two < int4 < int8
        assert _int(rows[model, "int8 weight-only"][5]) < _int(rows[model, "fp32"][5])


def test_int8_quality_is_close_to_float(quick_table):
    rows = {(r[0], r[1]): r for r in quick_table["rows"]}
    base = float(rows["GPT", "fp32"][2].split()[-1])
    assert abs(float(rows["GPT", "int8 weight-only"][2]) - base) < 0.02 * base


def test_tables_go_into_the_markdown(quick_table):
    run = {"families": ["models"], "timestamp": "t", "git_commit": "c", "torch": "x",
           "triton": "y", "threads": 2, "ceiling_gbps": 1.0, "quick": True, "device": "cpu",
           "records": [], "tables": {"models": [quick_table]}}
    md = report.markdown([run])
    assert f"### {quick_table['title']}" in md and "| GPT | int8 weight-only |" in md
