"""`gpt`: a decoder-only transformer (pre-norm blocks, causal attention); its state is the KV cache."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from charlm.errors import ConfigError
from charlm.config.model_options import GPTOptions
from charlm.models import register_model

# (tokens (B, n), k_1, v_1, ..., k_L, v_L): the n ≤ context tokens in the window and, per layer,
# their keys and values (B, heads, n, head_dim). Keys are cached after the rotary rotation.
GPTState = tuple[torch.Tensor, ...]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding: rotate each pair (x1_i, x2_i) of x (B, h, t, d) by angle pos·θ_i."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, h, t, d/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (t, d/2)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class SelfAttention(nn.Module):
    """Multi-head causal self-attention over the cached keys/values and the new positions."""

    def __init__(self, width: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, past_k, past_v, rotary):
        B, t, E = x.shape
        qkv = self.qkv(x).view(B, t, 3, self.num_heads, E // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, t, d) each
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        n = past_k.shape[2]
        if n:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, h, n + t, d)
        # Query i sits at position n + i: it sees the n cached keys and the new keys up to itself.
        # is_causal aligns the mask top-left, which is right only without a cache.
        mask = None
        if n and t > 1:
            mask = torch.ones(t, n + t, dtype=torch.bool, device=x.device).tril(diagonal=n)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not n and t > 1,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, t, E)), k, v  # softmax(QKᵀ/√d)V


class Block(nn.Module):
    """Pre-norm block: x + Attention(LN(x)), then x + MLP(LN(x)), dropout on each branch."""

    def __init__(self, width: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = SelfAttention(width, num_heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, past_k, past_v, rotary):
        a, k, v = self.attn(self.ln1(x), past_k, past_v, rotary)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.ln2(x))), k, v


@register_model("gpt")
class GPT(nn.Module):
    """Token (+ learned position) embedding → pre-norm blocks → LayerNorm → linear decoder.

    The model sees at most `context` tokens. The state is the window's tokens and its key/value
    cache, so each new token costs one position. When the window is full it slides by `stride`:
    the last context − stride tokens are run again from position 0 to rebuild the cache, and
    the next `stride` tokens are predicted from them. Chunked input therefore equals one pass, and
    scoring a long text this way is the usual strided sliding-window evaluation: every token after
    the first window is predicted from at least context − stride previous tokens. stride = 1 is
    the exact "last `context` tokens" window at a full window's cost per token.
    """

    trainable = True

    def __init__(self, vocab_size: int, options: GPTOptions) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.num_layers = num_layers = options.num_layers
        self.num_heads = num_heads = options.num_heads
        self.context = context = options.context
        width, dropout, positions = options.embedding_dim, options.dropout, options.positions
        self.head_dim = width // num_heads  # the options check that num_heads divides the width
        # The default slide keeps a quarter of the window: every scored token after the first window sees at
        # least context/4 tokens. Measured on a trained shakespeare_gpt (docs/evaluation.md), it scores within
        # 0.15 % of a half-window slide at 1.6× its speed.
        self.stride = max(1, context - context // 4) if options.stride is None else options.stride
        self.positions = positions
        self.embedding = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(context, width) if positions == "learned" else None
        if positions == "rotary":
            # θ_i = 10000^(−2i/d): angles (context, d/2); recomputed on load, so not in the checkpoint.
            theta = 10000.0 ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
            angles = torch.arange(context, dtype=torch.float32)[:, None] * theta
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, num_heads, dropout) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(width)
        self.decoder = nn.Linear(width, vocab_size)
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: residual projections scaled by 1/√(2L), one per branch
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * num_layers))
        if options.tie_weights:
            self.decoder.weight = self.embedding.weight  # both (V, E)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def check_training(self, num_steps: int, carries_state: bool) -> None:
        """Refuse batches the model cannot train on, before a run starts."""
        if carries_state:
            raise ConfigError("model gpt does not carry state between batches; set data.sampling: random "
                              "(the transformer's memory is its model.context window)")
        if num_steps > self.context:
            raise ConfigError(f"data.num_steps ({num_steps}) is longer than model.context ({self.context}): "
                              "a gpt attends to at most context tokens; lower data.num_steps or raise model.context")

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> GPTState:
        """An empty window: no tokens, and per layer an empty key and value cache."""
        tokens = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        return (tokens, *self._empty_cache(batch_size, device))

    def _empty_cache(self, batch_size, device) -> list[torch.Tensor]:
        dtype = self.decoder.weight.dtype
        empty = torch.zeros(batch_size, self.num_heads, 0, self.head_dim, dtype=dtype, device=device)
        return [empty] * (2 * self.num_layers)

    def eval_history(self, position: int) -> int:
        """How many tokens the window holds after `position` tokens of a text fed from init_state.

        Replaying those tokens from an empty window rebuilds the window and its cache exactly
        (batched_eval's segment starts): it fills to `context`, then each slide keeps
        context − stride tokens and refills `stride` more.
        """
        if position <= self.context:
            return position
        return self.context - self.stride + (position - self.context - 1) % self.stride + 1

    @property
    def eval_min_segment(self) -> int:
        return self.context

    @property
    def eval_segment_multiple(self) -> int:
        return self.stride  # segment starts in the same phase of the slide schedule: equal windows

    def forward(self, ids: torch.Tensor, state: GPTState | None = None) -> tuple[torch.Tensor, GPTState]:
        """ids (B, T) → logits (B, T, V) and the window after the last token; T may exceed context."""
        B, T = ids.shape
        if state is None:
            state = self.init_state(B, ids.device)
        tokens, cache = state[0], list(state[1:])
        outputs, start = [], 0
        while start < T:
            if tokens.shape[1] == self.context:
                # The window is full: keep its last context − stride tokens and rebuild their cache
                # from position 0 together with the next `stride` new tokens.
                tokens = tokens[:, self.stride:]
                cache = self._empty_cache(B, ids.device)
            kept = tokens.shape[1] - cache[0].shape[2]  # window tokens without a cache: run again
            take = min(self.context - tokens.shape[1], T - start)
            new = ids[:, start:start + take]  # (B, take)
            hidden, cache = self._run(torch.cat([tokens[:, tokens.shape[1] - kept:], new], 1), cache)
            outputs.append(self.decoder(hidden[:, kept:]))  # (B, take, V)
            tokens = torch.cat([tokens, new], 1)
            start += take
        if not outputs:  # T == 0
            outputs = [ids.new_zeros(B, 0, self.vocab_size, dtype=self.decoder.weight.dtype)]
        logits = outputs[0] if len(outputs) == 1 else torch.cat(outputs, 1)
        return logits, (tokens, *cache)

    def _run(self, x: torch.Tensor, cache: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, t) at positions n .. n+t−1 after the n cached ones → hidden (B, t, E), new cache."""
        n, t = cache[0].shape[2], x.shape[1]
        h = self.embedding(x)  # (B, t, E)
        rotary = None
        if self.position is not None:
            h = h + self.position(torch.arange(n, n + t, device=x.device))  # (t, E) broadcast
        else:
            rotary = (self.cos[n:n + t], self.sin[n:n + t])
        h = self.drop(h)
        new_cache = []
        for i, block in enumerate(self.blocks):
            h, k, v = block(h, cache[2 * i], cache[2 * i + 1], rotary)
            new_cache += [k, v]
        return self.ln_f(h), new_cache
