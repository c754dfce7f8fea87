"""accelerate(model): the report of what was swapped, folded and left (and why), inplace=False,
and torch's own Transformer layers. Per-family swaps are tested with their families."""
import pytest
import torch

import leedl_fast


class MyLayerNorm(torch.nn.LayerNorm):
    pass


def _model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.LayerNorm(128), MyLayerNorm(128),
        torch.nn.Unflatten(1, (8, 16)), torch.nn.LSTM(16, 4, proj_size=2, batch_first=True))


def test_report_lists_swaps_folds_and_what_was_left():
    model = _model().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model(x)[0]
    new, report = leedl_fast.accelerate(model, inplace=False, return_report=True)
    assert type(model[0]) is torch.nn.Conv2d  # inplace=False: the original is untouched
    assert type(new[0]) is leedl_fast.nn.Conv2d and type(new[5]) is leedl_fast.nn.LayerNorm
    assert ("0", "torch.nn.Conv2d -> leedl_fast.nn.Conv2d") in report.swapped
    assert ("5", "torch.nn.LayerNorm -> leedl_fast.nn.LayerNorm") in report.swapped
    assert report.folded == [("0", "Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d folded into one "
                                   "fused conv")]
    left = dict(report.left)
    assert "subclasses torch.nn.LayerNorm" in left["6"] and "proj_size" in left["8"]
    assert "3 left" not in str(report) and "2 left" in str(report)
    with torch.no_grad():
        torch.testing.assert_close(new(x)[0], want, rtol=1e-4, atol=1e-5)


def test_training_mode_bn_is_reported_not_folded():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    model, report = leedl_fast.accelerate(model, return_report=True)
    assert not report.folded and "training mode" in dict(report.left)["0"]
    assert type(model[1]) is torch.nn.BatchNorm2d


def test_torch_transformer_layers_and_rnn_root():
    enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(
        32, 4, 64, dropout=0.0, batch_first=True), 2, enable_nested_tensor=False).eval()
    dec = torch.nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    src, tgt = torch.randn(2, 5, 32), torch.randn(2, 4, 32)
    with torch.no_grad():
        want_enc, want_dec = enc(src), dec(tgt, src)
    enc2, report = leedl_fast.accelerate(enc, inplace=False, return_report=True)
    dec2, report_dec = leedl_fast.accelerate(dec, inplace=False, return_report=True)
    assert len(report.swapped) == 6 and len(report_dec.swapped) == 5  # 2 MHA + 3 LN
    assert sum("fast path" in what for _, what in report.notes) == 2
    with torch.no_grad():
        torch.testing.assert_close(enc2(src), want_enc, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(dec2(tgt, src), want_dec, rtol=1e-4, atol=1e-5)
    lstm, report = leedl_fast.accelerate(torch.nn.LSTM(3, 5), return_report=True)
    assert type(lstm) is leedl_fast.nn.LSTM and report.swapped == [
        ("", "torch.nn.LSTM -> leedl_fast.nn.LSTM")]


def test_bad_model_argument():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        leedl_fast.accelerate("not a model")


def test_encoder_layer_fast_path_no_longer_bypasses_the_swapped_modules():
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        want = layer(x)
    leedl_fast.accelerate(layer)
    calls = []
    layer.self_attn.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        got = layer(x)
    assert calls, "the swapped attention did not run (torch's fused fast path took over)"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
