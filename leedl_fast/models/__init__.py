"""The textbook's models, built from leedl_fast modules (issue 8; docs/models.md).

Each model takes its sizes from a config with "tiny" (tests) and "base" (benchmarks) presets and
an `nn=` argument: `leedl_fast.nn` (the default) or `torch.nn`, which builds the same
architecture, with the same state_dict keys, from torch's own modules -- the oracle of the
tests and the baseline of the benchmarks.

    cnn.py          ImageCNN, SeparableImageCNN, distillation_loss (ch4, ch17), GoPolicyCNN (ch4.8)
    rnn.py          LSTMTagger (ch5 slot filling), CharLSTM (a character language model)
    seq2seq.py      Seq2SeqTransformer (ch7: encoder-decoder, greedy and beam search)
    transformer.py  GPT (ch10.3), BERT (ch10.2)
"""
import importlib

_WHERE = {
    "ImageCNN": "cnn", "SeparableImageCNN": "cnn", "distillation_loss": "cnn",
    "GoPolicyCNN": "cnn", "CNNConfig": "cnn", "GoConfig": "cnn",
    "LSTMTagger": "rnn", "CharLSTM": "rnn", "TaggerConfig": "rnn", "CharLSTMConfig": "rnn",
    "Seq2SeqTransformer": "seq2seq", "GPT": "transformer", "BERT": "transformer",
    "Seq2SeqConfig": "seq2seq", "GPTConfig": "transformer", "BERTConfig": "transformer",
}
__all__ = sorted(_WHERE)


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'leedl_fast.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
