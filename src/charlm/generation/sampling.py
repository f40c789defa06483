"""Next-token strategies: pure functions from logits to token ids, kept in a registry."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from charlm.errors import ConfigError
from charlm.registry import Registry

# fn(logits (B, V), generator, *, temperature, top_k, top_p) -> ids (B,)
Strategy = Callable[..., torch.Tensor]

_STRATEGIES: Registry[Strategy] = Registry("sampling strategy")

# Below this, logits / temperature can overflow float32 to inf; such a draw is greedy anyway.
_MIN_TEMPERATURE = 1e-30

# Probability mass lost to float32 rounding in a cumulative sum of V terms is far below this;
# without the slack a nucleus that reaches p exactly could pick up one extra token.
_TOP_P_SLACK = 1e-6


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Decorator that adds a next-token strategy under `name`."""
    return _STRATEGIES.register(name)


def available_strategies() -> list[str]:
    """Registered strategy names, sorted (the CLI's choices)."""
    return _STRATEGIES.names()


def get_strategy(name: str) -> Strategy:
    """The strategy registered as `name`; ConfigError naming the closest one otherwise."""
    return _STRATEGIES.get(name)


def validate_sampling(
    strategy: str, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> None:
    """Raise a one-line ConfigError if the strategy or its parameters cannot be used."""
    get_strategy(strategy)
    if not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature must be a number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k must be a whole number >= 1, got {top_k!r}")
    if top_p is not None and not (0 < top_p <= 1):
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if strategy == "top_k" and top_k is None:
        raise ConfigError("strategy 'top_k' needs top_k (e.g. --top-k 5)")
    if strategy == "top_p" and top_p is None:
        raise ConfigError("strategy 'top_p' needs top_p (e.g. --top-p 0.9)")


def _draw(logits: torch.Tensor, generator: torch.Generator | None, temperature: float) -> torch.Tensor:
    """Sample one id per row of softmax(logits / temperature); temperature 0 is argmax."""
    if temperature < _MIN_TEMPERATURE:
        return logits.argmax(-1)
    logits = logits.float()  # (B, V); half-precision softmax loses the tail
    if temperature != 1.0:
        logits = logits / temperature  # softmax subtracts the row max itself
    # -inf logits get probability 0. A row with no finite logit gives NaNs, and argmax below
    # then returns the first NaN's id instead of crashing as multinomial would.
    probs = torch.softmax(logits, -1)  # (B, V)
    return _multinomial_one(probs, generator)


def _multinomial_one(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """torch.multinomial(probs, 1, generator=generator).view(-1), draw for draw.

    multinomial's one-sample path is this exponential race, argmax(p / q) with q ~ Exp(1);
    calling it directly skips multinomial's validity checks (about 12 of its 17 us per call at
    V = 28 on CPU, more than the draw itself), which finite softmax output always passes. Same
    generator state in, same ids and generator state out (tests/generation/test_sampling.py checks it).
    """
    q = torch.empty_like(probs).exponential_(generator=generator)  # (B, V)
    return probs.div_(q).argmax(-1)  # (B,)


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (B, V) of exactly the k largest logits per row (ties broken by topk)."""
    k = min(k, logits.shape[-1])
    keep = torch.zeros_like(logits, dtype=torch.bool)
    return keep.scatter_(-1, logits.topk(k, dim=-1).indices, True)


def top_p_mask(logits: torch.Tensor, p: float, temperature: float = 1.0) -> torch.Tensor:
    """Bool mask (B, V) of the smallest set of most likely tokens whose mass reaches p.

    The mass is taken from softmax(logits / temperature), the distribution actually sampled.
    """
    if temperature > 0 and temperature != 1.0:
        logits = (logits.float() - logits.float().amax(-1, keepdim=True)) / temperature
    probs = torch.softmax(logits.float(), -1)  # (B, V)
    sorted_probs, order = probs.sort(-1, descending=True)
    # Keep a token while the mass strictly before it is still short of p; the top token always
    # has mass 0 before it, so at least one survives.
    before = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = before < p - _TOP_P_SLACK
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)


@register_strategy("greedy")
def greedy(logits, generator=None, *, temperature=1.0, top_k=None, top_p=None):
    """The most likely token (first on ties); ignores every parameter."""
    return logits.argmax(-1)


@register_strategy("sample")
def sample(logits, generator=None, *, temperature=1.0, top_k=None, top_p=None):
    """Sample from softmax(logits / temperature) over the whole vocabulary."""
    return _draw(logits, generator, temperature)


@register_strategy("top_k")
def top_k(logits, generator=None, *, temperature=1.0, top_k=None, top_p=None):
    """Sample with temperature among the k most likely tokens only."""
    if top_k is None:
        raise ConfigError("strategy 'top_k' needs top_k (e.g. --top-k 5)")
    if temperature == 0 or top_k == 1:
        return logits.argmax(-1)
    masked = logits.float().masked_fill(~top_k_mask(logits, top_k), float("-inf"))
    return _draw(masked, generator, temperature)


@register_strategy("top_p")
def top_p(logits, generator=None, *, temperature=1.0, top_k=None, top_p=None):
    """Nucleus sampling: sample with temperature within the smallest set whose mass reaches p."""
    if top_p is None:
        raise ConfigError("strategy 'top_p' needs top_p (e.g. --top-p 0.9)")
    if temperature == 0:
        return logits.argmax(-1)
    if top_p >= 1.0:
        return _draw(logits, generator, temperature)
    keep = top_p_mask(logits, top_p, temperature)
    masked = logits.float().masked_fill(~keep, float("-inf"))
    return _draw(masked, generator, temperature)
