"""GPT (BOOK.md §10.3) and BERT (§10.2): the Transformer of ch6-7 as a decoder-only language
model and as a masked-language-model encoder.

Both are built from the same two pieces:

* `SelfAttention` (§6.1-6.3): one Linear makes q, k and v for every head at once (W^q, W^k, W^v
  stacked), the heads attend separately through a fused scaled-dot-product attention, and an
  output Linear mixes the concatenated heads. GPT's is causal -- the decoder's masked
  self-attention of §7.5 -- and may be truncated to a sliding window (§6.5); BERT's sees every
  non-padding token.
* `MLP`, the position-wise feed-forward network of §7.4: Linear -> GELU -> Linear.

`nn=` chooses the module namespace: `leedl_fast.nn` (the default: fused LayerNorm, and
`leedl_fast.functional.scaled_dot_product_attention` in the attention) or `torch.nn` (torch's
LayerNorm and `torch.nn.functional.scaled_dot_product_attention`). Linear, Embedding, Dropout
and GELU are torch's in both builds, so the two have identical state_dict keys and a state_dict
saved by one loads into the other.

Dropout is applied to the embeddings and to each residual branch, not to the attention
probabilities: leedl_fast's flash attention never forms the probability matrix (dropout_p must
be 0; docs/attention.md), and both builds leave it out so that they stay the same model.
"""
import dataclasses
import math

import torch
import torch.nn.functional as torch_F

# ------------------------------------------------------------------------------- helpers

def _namespace(nn):
    """(nn, fused): the module namespace, and whether it is leedl_fast's (which also selects
    leedl_fast's attention)."""
    if nn is None:
        from leedl_fast import nn
    fused = nn.__name__.startswith("leedl_fast")
    if not fused and nn is not torch.nn:
        raise TypeError(f"nn must be leedl_fast.nn or torch.nn, got {nn!r}")
    return nn, fused


def causal_mask(lq, lk, window=None, device=None):
    """Boolean (Lq, Lk) mask, True where query i may attend key j, for causal attention whose
    queries are the *last* Lq of Lk positions (bottom-right aligned, as with a KV cache):
    query i sits at position p = i + Lk - Lq and sees keys p - window < j <= p (every j <= p
    when window is None). This is exactly what leedl_fast's sdpa computes for
    window=(window - 1, 0) (docs/attention.md); torch's sdpa needs it spelled out."""
    p = torch.arange(lq, device=device).unsqueeze(1) + (lk - lq)
    j = torch.arange(lk, device=device).unsqueeze(0)
    keep = j <= p
    if window is not None:
        keep &= j > p - window
    return keep


class KVCache:
    """Keys and values of the tokens generated so far, pre-allocated per layer as
    (batch, heads, max_len, head_dim) buffers, so each decoding step computes q, k, v for the
    new token only (§7.5.1's autoregressive decoder without recomputing the prefix).

    `length` tokens are filled. During one forward every layer calls `append` (which writes
    its new k, v at [length, length + T) and returns the filled part); the model then calls
    `advance(T)`. `length` is also the position offset of the new tokens."""

    def __init__(self, layers, batch, heads, head_dim, max_len, device=None, dtype=None):
        shape = (batch, heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.max_len = max_len
        self.length = 0

    def append(self, layer, k, v):
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache: {end} tokens exceed its capacity of {self.max_len}")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n):
        self.length += n

    def reset(self):
        self.length = 0


# ------------------------------------------------------------------------ building blocks

class SelfAttention(torch.nn.Module):
    """Multi-head self-attention (§6.3). x (B, T, C) -> qkv (B, T, 3C) -> q, k, v as
    (B, heads, T, C / heads) -> softmax(q kᵀ / sqrt(d)) v per head -> concatenate -> out.

    causal: masked self-attention (§7.5); window: with causal, each query sees only itself and
    the window - 1 tokens before it (truncated self-attention, §6.5)."""

    def __init__(self, d_model, heads, bias=True, causal=False, window=None, fused=True):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} must be a multiple of heads={heads}")
        if window is not None and (not causal or window < 1):
            raise ValueError(f"window={window}: a sliding window needs causal attention and "
                             "window >= 1")
        self.heads, self.causal, self.window, self.fused = heads, causal, window, fused
        self.qkv = torch.nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = torch.nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, key_padding=None, cache=None, layer=0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # every key so far, this step's last
        if self.window is not None:
            # Only the last `window` keys of the last query (and window - 1 before each earlier
            # query) can be seen: drop the rest. Bottom-right alignment keeps the mask right.
            start = max(0, k.shape[2] - (self.window + T - 1))
            k, v = k[:, :, start:], v[:, :, start:]
        y = self._attend(q, k, v, key_padding)
        return self.out(y.transpose(1, 2).reshape(B, T, C))

    def _attend(self, q, k, v, key_padding):
        lq, lk = q.shape[2], k.shape[2]
        if self.fused:
            from .. import functional as F
            if self.window is not None:
                return F.scaled_dot_product_attention(q, k, v, window=(self.window - 1, 0))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding,
                                                  is_causal=self.causal)
        if not self.causal:
            return torch_F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding)
        if self.window is None and lq == lk:
            return torch_F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.window is None and lq == 1:
            return torch_F.scaled_dot_product_attention(q, k, v)  # the last token sees all
        # torch's is_causal is top-left aligned: the cache and the window need a real mask.
        mask = causal_mask(lq, lk, self.window, q.device)
        return torch_F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class MLP(torch.nn.Sequential):
    """The position-wise feed-forward network (§7.4): Linear -> GELU -> Linear -> Dropout."""

    def __init__(self, d_model, ratio=4, bias=True, dropout=0.0, approximate="none"):
        super().__init__()
        self.fc = torch.nn.Linear(d_model, ratio * d_model, bias=bias)
        self.act = torch.nn.GELU(approximate=approximate)
        self.proj = torch.nn.Linear(ratio * d_model, d_model, bias=bias)
        self.drop = torch.nn.Dropout(dropout)


def _init_weights(model, std=0.02):
    """GPT-2/BERT initialisation: N(0, 0.02) for Linear and Embedding weights, zero biases
    (LayerNorms keep their ones and zeros)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(m.weight, 0.0, std)
        if isinstance(m, torch.nn.Linear) and m.bias is not None:
            torch.nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------ GPT

@dataclasses.dataclass
class GPTConfig:
    vocab_size: int = 50257
    context: int = 1024          # longest sequence (learned positions 0 .. context - 1)
    d_model: int = 768
    heads: int = 12
    layers: int = 12
    mlp_ratio: int = 4
    dropout: float = 0.0
    window: int | None = None  # sliding-window attention: each token sees the last `window`
    bias: bool = True
    tie_weights: bool = True     # the LM head reuses the token embedding matrix (GPT-2)

    @classmethod
    def tiny(cls, vocab_size=100, **overrides):
        """Character-level, for tests and examples (~0.1 M parameters)."""
        return cls(**{"vocab_size": vocab_size, "context": 64, "d_model": 64, "heads": 4, "layers": 2,
                      **overrides})

    @classmethod
    def base(cls, **overrides):
        """GPT-2 small: 124 M parameters."""
        return cls(**overrides)


class GPTBlock(torch.nn.Module):
    """Pre-LN decoder block (the book's note on "On Layer Normalization in the Transformer
    Architecture", §7.4; GPT-2's layout): x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg, nn, fused):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = SelfAttention(cfg.d_model, cfg.heads, cfg.bias, causal=True,
                                  window=cfg.window, fused=fused)
        self.drop = torch.nn.Dropout(cfg.dropout)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg.d_model, cfg.mlp_ratio, cfg.bias, cfg.dropout, approximate="tanh")

    def forward(self, x, cache=None, layer=0):
        x = x + self.drop(self.attn(self.ln1(x), cache=cache, layer=layer))
        return x + self.mlp(self.ln2(x))


class GPT(torch.nn.Module):
    """Decoder-only Transformer language model (§10.3): predicts token t + 1 from tokens
    0..t. Token + learned position embeddings -> `layers` pre-LN blocks with causal
    self-attention -> final LayerNorm -> LM head (tied to the token embedding by default:
    `lm_head.weight is tok_emb.weight`).

    forward(idx, targets=None, kv_cache=None): logits (B, T, vocab), or (logits, loss) when
    targets (B, T) are given (cross-entropy, -100 ignored). With a KVCache, idx holds only the
    new tokens and their positions start at kv_cache.length."""

    def __init__(self, config, nn=None):
        super().__init__()
        nn, fused = _namespace(nn)
        self.config = cfg = config
        self.tok_emb = torch.nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = torch.nn.Embedding(cfg.context, cfg.d_model)
        self.drop = torch.nn.Dropout(cfg.dropout)
        self.blocks = torch.nn.ModuleList(GPTBlock(cfg, nn, fused) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = torch.nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        _init_weights(self)
        for block in self.blocks:  # GPT-2: residual projections scaled by 1/sqrt(2 * layers)
            for proj in (block.attn.out, block.mlp.proj):
                torch.nn.init.normal_(proj.weight, 0.0, 0.02 / math.sqrt(2 * cfg.layers))
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight

    def new_cache(self, batch, device=None, dtype=None):
        cfg = self.config
        weight = self.tok_emb.weight
        return KVCache(cfg.layers, batch, cfg.heads, cfg.d_model // cfg.heads, cfg.context,
                       device or weight.device, dtype or weight.dtype)

    def forward(self, idx, targets=None, kv_cache=None):
        T = idx.shape[1]
        start = 0 if kv_cache is None else kv_cache.length
        if start + T > self.config.context:
            raise ValueError(f"GPT: positions up to {start + T} exceed the context of "
                             f"{self.config.context}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache=kv_cache, layer=layer)
        if kv_cache is not None:
            kv_cache.advance(T)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        loss = torch_F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True,
                 generator=None):
        """Extend idx (B, T) by max_new_tokens tokens, each sampled from the softmax of the last
        logits / temperature (temperature=0: greedy argmax), optionally restricted to the top_k
        (§7.5.1: the decoder feeds its own output back).

        With use_cache, the prompt is run once (prefill) and every later step runs only the new
        token against the cached keys and values. Without it, every step reruns the whole
        sequence. Both see the same last `context` tokens: once the sequence outgrows the
        context (learned positions end there), the cache is refilled from the cropped sequence,
        exactly what the uncached path computes."""
        context = self.config.context
        cache = self.new_cache(idx.shape[0]) if use_cache else None
        for _ in range(max_new_tokens):
            if cache is not None and 0 < cache.length and idx.shape[1] <= context:
                logits = self(idx[:, cache.length:], kv_cache=cache)
            else:
                if cache is not None:
                    cache.reset()
                logits = self(idx[:, -context:], kv_cache=cache)
            logits = logits[:, -1, :].float()
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


# ----------------------------------------------------------------------------------- BERT

@dataclasses.dataclass
class BERTConfig:
    vocab_size: int = 30522
    context: int = 512
    d_model: int = 768
    heads: int = 12
    layers: int = 12
    mlp_ratio: int = 4
    dropout: float = 0.1
    type_vocab_size: int = 2     # segments A / B (next-sentence prediction's sentence pairs)
    layer_norm_eps: float = 1e-12
    bias: bool = True

    @classmethod
    def tiny(cls, vocab_size=100, **overrides):
        return cls(**{"vocab_size": vocab_size, "context": 64, "d_model": 64, "heads": 4, "layers": 2,
                             "dropout": 0.0, **overrides})

    @classmethod
    def base(cls, **overrides):
        """BERT-base: 110 M parameters."""
        return cls(**overrides)


class BERTLayer(torch.nn.Module):
    """Post-LN encoder block, as in the original Transformer and BERT (§7.4):
    x = LN(x + attn(x)); x = LN(x + MLP(x))."""

    def __init__(self, cfg, nn, fused):
        super().__init__()
        self.attn = SelfAttention(cfg.d_model, cfg.heads, cfg.bias, causal=False, fused=fused)
        self.drop = torch.nn.Dropout(cfg.dropout)
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.mlp_ratio, cfg.bias, cfg.dropout)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, x, key_padding=None):
        x = self.ln1(x + self.drop(self.attn(x, key_padding=key_padding)))
        return self.ln2(x + self.mlp(x))


class BERT(torch.nn.Module):
    """Transformer encoder pre-trained as a masked language model (§10.2).

    Embeddings: token + learned position + segment, then LayerNorm and dropout; `layers`
    post-LN encoder blocks; the MLM head: Linear -> GELU -> LayerNorm (the "transform") ->
    decoder whose weight is the token embedding matrix (tied) plus its own bias.

    forward(input_ids, attention_mask=None, labels=None, token_type_ids=None): logits
    (B, T, vocab), or (logits, loss) with labels (B, T) (cross-entropy on the positions whose
    label is not -100, i.e. the masked ones). attention_mask (B, T) is 1 for real tokens and 0
    for padding; no query attends to a padding key, so the outputs at real positions do not
    depend on what the padding holds."""

    def __init__(self, config, nn=None):
        super().__init__()
        nn, fused = _namespace(nn)
        self.config = cfg = config
        self.tok_emb = torch.nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = torch.nn.Embedding(cfg.context, cfg.d_model)
        self.seg_emb = torch.nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.emb_ln = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.drop = torch.nn.Dropout(cfg.dropout)
        self.layers = torch.nn.ModuleList(BERTLayer(cfg, nn, fused) for _ in range(cfg.layers))
        self.mlm_dense = torch.nn.Linear(cfg.d_model, cfg.d_model)
        self.mlm_act = torch.nn.GELU()
        self.mlm_ln = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlm_decoder = torch.nn.Linear(cfg.d_model, cfg.vocab_size)
        _init_weights(self)
        self.mlm_decoder.weight = self.tok_emb.weight

    def encode(self, input_ids, attention_mask=None, token_type_ids=None):
        """The encoder's output (B, T, d_model): one contextual vector per token (what a
        downstream head -- CLS classification, tagging, QA spans -- reads)."""
        T = input_ids.shape[1]
        if T > self.config.context:
            raise ValueError(f"BERT: {T} tokens exceed the context of {self.config.context}")
        pos = torch.arange(T, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos)
        if token_type_ids is not None:
            x = x + self.seg_emb(token_type_ids)
        else:
            x = x + self.seg_emb.weight[0]
        x = self.drop(self.emb_ln(x))
        # (B, 1, 1, T): broadcast over heads and queries; True = may attend.
        key_padding = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_padding)
        return x

    def forward(self, input_ids, attention_mask=None, labels=None, token_type_ids=None):
        h = self.encode(input_ids, attention_mask, token_type_ids)
        logits = self.mlm_decoder(self.mlm_ln(self.mlm_act(self.mlm_dense(h))))
        if labels is None:
            return logits
        loss = torch_F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return logits, loss


def mask_tokens(ids, mask_id, vocab, prob=0.15, generator=None, *, maskable=None):
    """BERT's masking (§10.2): choose each token with probability `prob` (only where `maskable`
    is True, e.g. not padding); of the chosen, 80% become mask_id, 10% a random token in
    [0, vocab), 10% stay as they are. Returns (inputs, labels): labels are the original ids at
    the chosen positions and -100 (ignored by the loss) elsewhere."""
    def uniform():
        return torch.rand(ids.shape, generator=generator, device=ids.device)

    chosen = uniform() < prob
    if maskable is not None:
        chosen &= maskable.bool()
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    r = uniform()
    to_mask = chosen & (r < 0.8)
    to_random = chosen & (r >= 0.8) & (r < 0.9)
    random_ids = torch.randint(0, vocab, ids.shape, generator=generator, device=ids.device)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels
