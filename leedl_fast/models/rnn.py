"""The textbook's recurrent models (BOOK.md §5): a slot-filling tagger and a character LM.

    LSTMTagger  §5's running task, slot filling: every word of "I would like to arrive Taipei on
                November 2nd" gets a slot label (dest, arrive_date, ... or O). Embedding ->
                bidirectional RNN (§5: a forward and a backward RNN, both hidden states per
                position) built from stacked LSTM layers (§5.5.3, §5.6) -> dropout -> one Linear
                classifier applied at every position.
    CharLSTM    a character language model (§5's many-to-many use): embedding -> LSTM -> Linear to
                the vocabulary; `generate` carries the LSTM state (c, h) from step to step, which
                is what makes an RNN's generation cost O(1) per new character.

`nn=` picks where the recurrent layer comes from: `leedl_fast.nn` (the default, the fused
whole-sequence kernels) or `torch.nn` (the oracle of the tests, the baseline of the benchmarks).
Embedding, Dropout and Linear come from torch.nn in both builds (leedl_fast.nn has none of its
own), so both builds have the same modules and the same state_dict keys: a checkpoint of one
loads into the other, and `leedl_fast.accelerate` turns the torch build into the leedl_fast one.

Padding. leedl_fast.nn.LSTM has no PackedSequence path (it raises NotImplementedError), so the
tagger runs on the padded batch as it is, pads at the end of each sentence, and the loss ignores
the pad positions (tag -100, `ignore_index` of cross_entropy). The first layer's forward
direction never sees a sentence's padding before its words, but the reverse direction reads the
pads first, and from the second layer on both directions take the first layer's reverse outputs
as input: every output depends a little on how much padding the batch has. Training sees the
same kind of padding, so the model learns to start its reverse pass from "pad" states: the tiny
tagger after 60 training steps gives 98% of the tokens the same tag in a padded batch as alone
(tests/test_models_rnn.py), after examples/lstm_tagger.py's training 100%. For results exactly independent of the batch, evaluate sentences of equal length together.
The `lengths` argument of `LSTMTagger.forward` zeroes the logits at pad positions.
"""
import dataclasses

import torch
import torch.nn.functional as F


def _namespace(nn):
    if nn is None:
        from leedl_fast import nn
    return nn


@dataclasses.dataclass
class TaggerConfig:
    """Sizes of an LSTMTagger. The defaults are `base()`, the benchmark size; `tiny()` trains in
    seconds. Both take overrides: TaggerConfig.tiny(dropout=0.0)."""
    vocab_size: int = 10_000
    embed_dim: int = 256
    hidden_size: int = 512
    num_layers: int = 2
    num_tags: int = 128
    bidirectional: bool = True
    dropout: float = 0.1
    pad_id: int = 0

    @classmethod
    def tiny(cls, **overrides):
        return cls(**{"vocab_size": 512, "embed_dim": 32, "hidden_size": 48, "num_layers": 2,
                      "num_tags": 32, **overrides})

    @classmethod
    def base(cls, **overrides):
        return cls(**overrides)


class LSTMTagger(torch.nn.Module):
    """Slot filling (§5): tokens (B, T) -> per-token slot logits (B, T, num_tags).

    Each position's class sees the whole sentence: the forward LSTM summarizes the words
    before it, the reverse LSTM those after it, and the classifier reads both -- which
    is how "Taipei" in "arrive Taipei" and "leave Taipei" gets two different labels.
    """

    def __init__(self, config, nn=None):
        super().__init__()
        nn = _namespace(nn)
        self.config = c = config
        dirs = 2 if c.bidirectional else 1
        self.embedding = torch.nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=c.pad_id)
        # dropout between the stacked LSTM layers too, as torch.nn.LSTM(dropout=) does
        self.lstm = nn.LSTM(c.embed_dim, c.hidden_size, c.num_layers, batch_first=True,
                            dropout=c.dropout if c.num_layers > 1 else 0.0,
                            bidirectional=c.bidirectional)
        self.dropout = torch.nn.Dropout(c.dropout)
        self.classifier = torch.nn.Linear(dirs * c.hidden_size, c.num_tags)

    def forward(self, tokens, lengths=None):
        """tokens: (B, T) int64, pads (config.pad_id) at the end; lengths: optional (B,) valid
        lengths, which set the logits at pad positions to 0. Returns logits (B, T, num_tags)."""
        x = self.embedding(tokens)                  # (B, T, E)
        h, _ = self.lstm(x)                         # (B, T, dirs * H): both directions, per token
        logits = self.classifier(self.dropout(h))   # the same classifier at every position
        if lengths is not None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
            valid = positions[None, :] < lengths.to(tokens.device)[:, None]
            logits = logits * valid[..., None].to(logits.dtype)
        return logits

    @staticmethod
    def loss(logits, tags, ignore_index=-100):
        """Mean cross entropy over the real tokens (pad positions carry tag -100)."""
        return F.cross_entropy(logits.flatten(0, 1), tags.flatten(), ignore_index=ignore_index)


@dataclasses.dataclass
class CharLSTMConfig:
    """Sizes of a CharLSTM; vocab_size is the number of distinct characters (pass the corpus's:
    CharLSTMConfig.tiny(vocab_size=len(vocab))). The defaults are `base()`."""
    vocab_size: int = 128
    embed_dim: int = 128
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.0

    @classmethod
    def tiny(cls, **overrides):
        return cls(**{"embed_dim": 32, "hidden_size": 128, "num_layers": 1, **overrides})

    @classmethod
    def base(cls, **overrides):
        return cls(**overrides)


class CharLSTM(torch.nn.Module):
    """Character language model: predicts character t+1 from characters 0..t (§5's
    many-to-many use; the LSTM's cell memory c carries the context, §5.5.3)."""

    def __init__(self, config, nn=None):
        super().__init__()
        nn = _namespace(nn)
        self.config = c = config
        self.embedding = torch.nn.Embedding(c.vocab_size, c.embed_dim)
        self.lstm = nn.LSTM(c.embed_dim, c.hidden_size, c.num_layers, batch_first=True,
                            dropout=c.dropout if c.num_layers > 1 else 0.0)
        self.dropout = torch.nn.Dropout(c.dropout)
        self.head = torch.nn.Linear(c.hidden_size, c.vocab_size)

    def forward(self, x, state=None):
        """x: (B, T) character ids; state: (h, c), each (num_layers, B, hidden) or None (zeros).
        Returns (logits (B, T, vocab), state after the last character)."""
        h, state = self.lstm(self.embedding(x), state)
        return self.head(self.dropout(h)), state

    @torch.no_grad()
    def generate(self, prompt_ids, steps, temperature=1.0, generator=None):
        """Continue `prompt_ids` ((T,) or (B, T), T >= 1) by `steps` characters; returns the
        prompt followed by the new ids. The prompt is read once; after that each step feeds
        only the newest character with the carried (h, c) state. temperature 0 (or below)
        picks the argmax (greedy); otherwise samples from softmax(logits / temperature)."""
        unbatched = prompt_ids.dim() == 1
        ids = prompt_ids[None] if unbatched else prompt_ids
        logits, state = self(ids)
        out = [ids]
        for step in range(steps):
            last = logits[:, -1]
            if temperature <= 0:
                nxt = last.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(last.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            out.append(nxt)
            if step + 1 < steps:
                logits, state = self(nxt, state)  # one character in, the state carried
        ids = torch.cat(out, dim=1)
        return ids[0] if unbatched else ids
