"""The book's sequence-to-sequence Transformer (BOOK.md §7): an encoder-decoder with residual
connections and layer norm after each sub-block (post-LN, as in the original paper and the
book's figures), masked self-attention in the decoder, cross-attention from the decoder to the
encoder's output, and greedy and beam-search decoding (§7.5).

    model = Seq2SeqTransformer(Seq2SeqConfig.tiny())             # leedl_fast.nn modules
    oracle = Seq2SeqTransformer(Seq2SeqConfig.tiny(), nn=torch.nn)  # the same, from torch.nn
    oracle.load_state_dict(model.state_dict())                    # same keys, both ways

The layers take the arguments of torch.nn.TransformerEncoderLayer / TransformerDecoderLayer
(batch_first=True, norm_first=False, ReLU) and name their submodules as those do (self_attn,
multihead_attn, linear1, linear2, norm1..3), so torch's own layers load these weights too --
the tests use that as a second, independent oracle.

Masks follow torch.nn.MultiheadAttention: a boolean True means "may NOT attend" / "is padding".
"""
import dataclasses
import math

import torch

from .. import functional as F
from .. import nn as lf_nn


@dataclasses.dataclass
class Seq2SeqConfig:
    src_vocab: int = 32
    tgt_vocab: int = 32
    d_model: int = 64
    num_heads: int = 4
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dim_feedforward: int = 256
    dropout: float = 0.1
    max_len: int = 256      # longest sequence the positional table covers
    pad_id: int = 0         # id of the padding token (decoders fill finished rows with it)
    layer_norm_eps: float = 1e-5

    @classmethod
    def tiny(cls, **overrides):
        """Tests and the example: d 64, 4 heads, 2 + 2 layers."""
        return cls(**overrides)

    @classmethod
    def base(cls, **overrides):
        """The original Transformer-base (Vaswani et al. 2017): d 512, 8 heads, 6 + 6 layers,
        FFN 2048, dropout 0.1. The embeddings and the output layer are not shared (the paper
        shares them): 93 M parameters at a 32k vocabulary instead of 65 M."""
        base = {"src_vocab": 32000, "tgt_vocab": 32000, "d_model": 512, "num_heads": 8,
                "num_encoder_layers": 6, "num_decoder_layers": 6, "dim_feedforward": 2048,
                "dropout": 0.1, "max_len": 512}
        return cls(**{**base, **overrides})


def sinusoidal_positions(max_len, d_model):
    """The original Transformer's hand-made positional encoding (§6.4, §7.4):
    PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d))."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                         * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(position * inv_freq)
    pe[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
    return pe


def causal_mask(length, device=None):
    """(L, L) boolean, True above the diagonal: position i may not attend to j > i -- the
    decoder's masked self-attention (§7.5.1), which sees only what it has already produced."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


def add_and_norm(norm, x, sublayer_out):
    """§7.4's "Add & Norm": layer_norm(x + sublayer(x)). A leedl_fast LayerNorm (also one that
    accelerate() swapped in) runs the fused add + norm, which reads both inputs once."""
    if isinstance(norm, lf_nn.LayerNorm):
        return F.add_layer_norm(sublayer_out, x, norm.normalized_shape, norm.weight, norm.bias,
                                norm.eps)[0]
    return norm(x + sublayer_out)


class EncoderLayer(torch.nn.Module):
    """One encoder block (§7.4): self-attention -> Add & Norm -> FFN -> Add & Norm.
    Same arguments and submodule names as torch.nn.TransformerEncoderLayer(batch_first=True)."""

    def __init__(self, config, nn):
        super().__init__()
        d, eps = config.d_model, config.layer_norm_eps
        self.self_attn = nn.MultiheadAttention(d, config.num_heads, dropout=config.dropout,
                                               batch_first=True)
        self.linear1 = torch.nn.Linear(d, config.dim_feedforward)
        self.dropout = torch.nn.Dropout(config.dropout)
        self.linear2 = torch.nn.Linear(config.dim_feedforward, d)
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.dropout1 = torch.nn.Dropout(config.dropout)
        self.dropout2 = torch.nn.Dropout(config.dropout)

    def feed_forward(self, x):
        return self.linear2(self.dropout(torch.relu(self.linear1(x))))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        # need_weights=False: the fused attention never builds the averaged weight matrix.
        attn, _ = self.self_attn(src, src, src, key_padding_mask=src_key_padding_mask,
                                 attn_mask=src_mask, need_weights=False, is_causal=is_causal)
        x = add_and_norm(self.norm1, src, self.dropout1(attn))
        return add_and_norm(self.norm2, x, self.dropout2(self.feed_forward(x)))


class DecoderLayer(torch.nn.Module):
    """One decoder block (§7.5): masked self-attention -> Add & Norm -> cross-attention (queries
    from the decoder, keys and values from the encoder's output, §7.6) -> Add & Norm -> FFN ->
    Add & Norm. Same arguments and names as torch.nn.TransformerDecoderLayer(batch_first=True)."""

    def __init__(self, config, nn):
        super().__init__()
        d, h, p, eps = config.d_model, config.num_heads, config.dropout, config.layer_norm_eps
        self.self_attn = nn.MultiheadAttention(d, h, dropout=p, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d, h, dropout=p, batch_first=True)
        self.linear1 = torch.nn.Linear(d, config.dim_feedforward)
        self.dropout = torch.nn.Dropout(p)
        self.linear2 = torch.nn.Linear(config.dim_feedforward, d)
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.norm3 = nn.LayerNorm(d, eps=eps)
        self.dropout1 = torch.nn.Dropout(p)
        self.dropout2 = torch.nn.Dropout(p)
        self.dropout3 = torch.nn.Dropout(p)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        attn, _ = self.self_attn(tgt, tgt, tgt, key_padding_mask=tgt_key_padding_mask,
                                 attn_mask=tgt_mask, need_weights=False, is_causal=tgt_is_causal)
        x = add_and_norm(self.norm1, tgt, self.dropout1(attn))
        cross, _ = self.multihead_attn(x, memory, memory,
                                       key_padding_mask=memory_key_padding_mask,
                                       attn_mask=memory_mask, need_weights=False,
                                       is_causal=memory_is_causal)
        x = add_and_norm(self.norm2, x, self.dropout2(cross))
        ffn = self.linear2(self.dropout(torch.relu(self.linear1(x))))
        return add_and_norm(self.norm3, x, self.dropout3(ffn))


class Seq2SeqTransformer(torch.nn.Module):
    """Encoder-decoder Transformer (§7). `nn` is the namespace the attention and layer-norm
    modules come from: leedl_fast.nn (default) or torch.nn; Linear, Embedding and Dropout are
    torch's in both, so both builds have the same state_dict keys.

    forward(src, tgt_in) returns next-token logits (B, T, tgt_vocab) for teacher forcing: tgt_in
    starts with BOS, and the loss compares the logits with tgt_in shifted left (ending in EOS).
    """

    def __init__(self, config, nn=None):
        super().__init__()
        nn = lf_nn if nn is None else nn
        self.config = config
        d = config.d_model
        self.src_embed = torch.nn.Embedding(config.src_vocab, d)
        self.tgt_embed = torch.nn.Embedding(config.tgt_vocab, d)
        self.register_buffer("positions", sinusoidal_positions(config.max_len, d),
                             persistent=False)  # fixed, not learned: not in the state_dict
        self.dropout = torch.nn.Dropout(config.dropout)
        self.encoder_layers = torch.nn.ModuleList(
            EncoderLayer(config, nn) for _ in range(config.num_encoder_layers))
        self.decoder_layers = torch.nn.ModuleList(
            DecoderLayer(config, nn) for _ in range(config.num_decoder_layers))
        self.out_proj = torch.nn.Linear(d, config.tgt_vocab)

    def _embed(self, embedding, tokens):
        """Token embedding scaled by √d (as in the original paper) plus the position code."""
        length = tokens.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"Seq2SeqTransformer: sequence length {length} exceeds "
                             f"config.max_len={self.config.max_len}")
        x = embedding(tokens) * math.sqrt(self.config.d_model) + self.positions[:length]
        return self.dropout(x)

    def encode(self, src, src_pad_mask=None):
        """Encoder output ("memory", B x S x d): computed once, read by every decoding step."""
        x = self._embed(self.src_embed, src)
        for layer in self.encoder_layers:
            x = layer(x, src_key_padding_mask=src_pad_mask)
        return x

    def decode(self, tgt_in, memory, src_pad_mask=None, tgt_pad_mask=None):
        """Logits (B, T, tgt_vocab) for every prefix of tgt_in, given the encoder's memory."""
        x = self._embed(self.tgt_embed, tgt_in)
        mask = causal_mask(tgt_in.shape[1], tgt_in.device)
        for layer in self.decoder_layers:
            x = layer(x, memory, tgt_mask=mask, tgt_key_padding_mask=tgt_pad_mask,
                      memory_key_padding_mask=src_pad_mask, tgt_is_causal=True)
        return self.out_proj(x)

    def forward(self, src, tgt_in, src_pad_mask=None, tgt_pad_mask=None):
        memory = self.encode(src, src_pad_mask)
        return self.decode(tgt_in, memory, src_pad_mask, tgt_pad_mask)

    # ------------------------------------------------------------------------- decoding (§7.5)
    # Each step re-runs the decoder over the whole prefix (no key/value cache: the GPT model
    # shows that); the encoder runs once. Outputs exclude BOS, include the EOS, and are padded
    # with config.pad_id after it. Call model.eval() first: dropout stays on in training mode.

    @staticmethod
    def _length_penalty(length, alpha):
        """GNMT's length penalty ((5 + |Y|) / 6)^α; α = 0 ranks by the plain log-probability
        sum, which favours short outputs (every token adds a negative log-probability)."""
        return ((5.0 + length) / 6.0) ** alpha

    @torch.no_grad()
    def greedy_decode(self, src, max_len, bos, eos, src_pad_mask=None):
        """The book's decoding (§7.5.1): start from BOS, feed back the most likely token, stop at
        EOS (or after max_len tokens). Returns (B, ≤ max_len) token ids."""
        memory = self.encode(src, src_pad_mask)
        b = src.shape[0]
        tokens = torch.full((b, 1), bos, dtype=torch.long, device=src.device)
        finished = torch.zeros(b, dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            next_token = self.decode(tokens, memory, src_pad_mask)[:, -1].argmax(-1)
            next_token = next_token.masked_fill(finished, self.config.pad_id)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            finished |= next_token == eos
            if finished.all():
                break
        return tokens[:, 1:]

    @torch.no_grad()
    def beam_search(self, src, beam_size, max_len, bos, eos, length_penalty=0.0,
                    src_pad_mask=None):
        """Beam search (§7.5 mentions it as the alternative to greedy decoding): keep the
        beam_size most probable prefixes, extend each by every token, keep the beam_size best
        of those, until every kept prefix has ended in EOS or max_len tokens were produced.

        All sentences of the batch are searched at once: rows are (sentence, beam) pairs.
        A finished hypothesis stays in the beam with its score frozen: its only continuation
        is padding at log-probability 0, so it competes with the open ones but grows no longer.
        Prefixes are ranked by their log-probability sum; the final choice among the beam
        divides by _length_penalty(length, length_penalty).

        Returns (tokens (B, ≤ max_len), scores (B,)): the best hypothesis per sentence and its
        length-penalised log-probability."""
        b, k = src.shape[0], beam_size
        device = src.device
        memory = self.encode(src, src_pad_mask).repeat_interleave(k, dim=0)  # (B*K, S, d)
        pad_mask = None if src_pad_mask is None else src_pad_mask.repeat_interleave(k, dim=0)
        tokens = torch.full((b * k, 1), bos, dtype=torch.long, device=device)
        # Only beam 0 is live at the start (all beams hold the same BOS prefix).
        scores = torch.full((b, k), float("-inf"), device=device)
        scores[:, 0] = 0.0
        finished = torch.zeros(b, k, dtype=torch.bool, device=device)
        lengths = torch.zeros(b, k, device=device)  # tokens produced, EOS included
        for _ in range(max_len):
            logp = self.decode(tokens, memory, pad_mask)[:, -1].float().log_softmax(-1)
            vocab = logp.shape[-1]
            logp = logp.view(b, k, vocab)
            # A finished beam extends only by padding, at no cost.
            frozen = torch.full_like(logp, float("-inf"))
            frozen[..., self.config.pad_id] = 0.0
            logp = torch.where(finished[..., None], frozen, logp)
            candidates = (scores[..., None] + logp).view(b, k * vocab)
            scores, index = candidates.topk(k, dim=-1)  # (B, K)
            parent, next_token = index // vocab, index % vocab
            rows = (parent + torch.arange(b, device=device)[:, None] * k).view(-1)
            tokens = torch.cat([tokens[rows], next_token.view(-1, 1)], dim=1)
            was_finished = finished.gather(1, parent)
            lengths = lengths.gather(1, parent) + (~was_finished).float()
            finished = was_finished | (next_token == eos)
            if finished.all():
                break
        final = scores / self._length_penalty(lengths, length_penalty)
        best = final.argmax(-1)
        rows = best + torch.arange(b, device=device) * k
        return tokens[rows, 1:], final.gather(1, best[:, None]).squeeze(1)

    @torch.no_grad()
    def sequence_score(self, src, hyp, bos, eos, length_penalty=0.0, src_pad_mask=None):
        """The score beam_search ranks by, for any given outputs hyp (B, T) as the decoders
        return them: Σ log p(y_t | y_<t, src) up to and including the first EOS (the whole row
        when there is none), divided by the length penalty."""
        b = hyp.shape[0]
        bos_col = torch.full((b, 1), bos, dtype=torch.long, device=hyp.device)
        logp = self(src, torch.cat([bos_col, hyp[:, :-1]], dim=1),
                    src_pad_mask).float().log_softmax(-1)
        token_logp = logp.gather(-1, hyp[..., None]).squeeze(-1)
        is_eos = (hyp == eos).long()
        # Positions up to and including the first EOS.
        keep = (is_eos.cumsum(1) - is_eos) == 0
        lengths = keep.sum(1).float()
        return (token_logp * keep).sum(1) / self._length_penalty(lengths, length_penalty)
