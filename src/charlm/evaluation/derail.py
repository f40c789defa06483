"""Derailment check: does the model read ordinary text well whatever two tokens it starts from?

A prompt starts the model from its initial state. A model that never learned to start there can
"derail": after an unusual first pair of characters it scores everything that follows worse than a
uniform guess and never recovers. The check puts every pair of first tokens (or a sample of them)
before the same stretch of the run's validation text, scores all rows as one batch, and counts
the starts whose perplexity on that text exceeds the vocabulary size V (the uniform model's).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charlm.checkpoint import checkpoint_device, open_checkpoint, training_ids
from charlm.errors import DataError
from charlm.evaluation.evaluate import eval_mode

DEFAULT_TEXT_TOKENS = 64  # the validation text after each start; derailment lasts, so a short stretch shows it
DEFAULT_MAX_STARTS = 5000  # all V² pairs up to this, a seeded sample beyond (V = 74: 5,329 pairs → sampled)
ROWS_PER_PASS = 512  # rows scored at once: bounds the (rows, T, V) logits
ROUNDING = 1e-4  # fp32 scores a uniform model's perplexity at V·(1 ± 1e-6): that is not derailed


@dataclass(frozen=True)
class DerailResult:
    """How many two-token starts derail the model on one stretch of text, and the worst of them."""

    vocab_size: int  # V, also the uniform model's perplexity: the threshold
    starts: int  # start pairs scored
    possible_starts: int  # all pairs of the vocabulary's tokens (<unk> left out)
    derailed: int  # starts whose perplexity on the text exceeds V
    text: str  # the validation text scored after every start
    median_perplexity: float
    worst: list[tuple[str, float]]  # (start, perplexity), worst first

    def to_dict(self) -> dict:
        return asdict(self)


def start_pairs(vocab_size: int, max_starts: int, seed: int = 0) -> np.ndarray:
    """(n, 2) ids: every ordered pair of tokens 1..V-1, or a seeded sample of `max_starts` of them."""
    n = vocab_size - 1
    index = np.arange(n * n, dtype=np.int64)
    if n * n > max_starts:  # a word vocabulary has ~10⁸ pairs: draw indices, never list the pairs
        index = np.sort(np.random.default_rng(seed).choice(n * n, size=max_starts, replace=False))
    return np.stack([index // n + 1, index % n + 1], axis=1)


def natural_text(val: np.ndarray, newline_id: int | None, length: int) -> np.ndarray:
    """`length` validation tokens from the first line start (the split's start without newlines)."""
    val = np.asarray(val[: 100_000 + length], dtype=np.int64)
    start = 0
    if newline_id is not None:
        after = np.flatnonzero(val[:-length] == newline_id) if len(val) > length else []
        start = int(after[0]) + 1 if len(after) else 0
    text = val[start:start + length]
    if len(text) < 2:
        raise DataError(f"the check needs at least 2 tokens of validation text, the split has {len(val)}")
    return text


@torch.no_grad()
def row_perplexities(model: torch.nn.Module, starts: np.ndarray, text: np.ndarray,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """Per start, the perplexity of text[1:] after the row [start, text] from the initial state.

    text[0] is left out: how likely it is right after an arbitrary start is not the question.
    """
    out = []
    body = torch.as_tensor(text, dtype=torch.long, device=device)
    with eval_mode(model):
        for i in range(0, len(starts), ROWS_PER_PASS):
            head = torch.as_tensor(starts[i:i + ROWS_PER_PASS], device=device)
            rows = torch.cat([head, body.expand(len(head), -1)], dim=1)  # (B, 2 + L)
            logits, _ = model(rows)  # (B, 2 + L, V)
            nll = F.cross_entropy(logits[:, 2:-1].float().transpose(1, 2), rows[:, 3:], reduction="none")
            out.append(nll.mean(dim=1).exp().cpu())
    return torch.cat(out).numpy()


def check_options(length: int = DEFAULT_TEXT_TOKENS, max_starts: int = DEFAULT_MAX_STARTS, top: int = 10, **_) -> None:
    if length < 2 or max_starts < 1 or top < 0:
        raise DataError(f"need length ≥ 2, max starts ≥ 1 and top ≥ 0; got {length}, {max_starts}, {top}")


def check_starts(model: torch.nn.Module, vocab, val: np.ndarray, length: int = DEFAULT_TEXT_TOKENS,
                 max_starts: int = DEFAULT_MAX_STARTS, top: int = 10, device: torch.device | str = "cpu",
                 seed: int = 0) -> DerailResult:
    """Score the validation text after every two-token start; count those worse than uniform."""
    check_options(length, max_starts, top)
    V = len(vocab)
    newline = vocab.id_of("\n") if "\n" in vocab else None
    text = natural_text(val, newline, length)
    starts = start_pairs(V, max_starts, seed)
    ppl = row_perplexities(model, starts, text, device)
    order = np.argsort(-ppl, kind="stable")[:top]
    worst = [(vocab.decode(starts[i].tolist()), float(ppl[i])) for i in order]
    return DerailResult(vocab_size=V, starts=len(starts), possible_starts=(V - 1) ** 2,
                        derailed=int((ppl > V * (1 + ROUNDING)).sum()), text=vocab.decode(text.tolist()),
                        median_perplexity=float(np.median(ppl)) if len(ppl) else math.nan, worst=worst)


def check_checkpoint(checkpoint=None, device: str = "cpu", **options) -> DerailResult:
    """`check_starts` on a run folder or checkpoint, over its own validation split."""
    check_options(**options)  # before loading anything
    loaded = open_checkpoint(checkpoint, device)
    val = training_ids(loaded, "val")
    if len(val) < 2:
        raise DataError("the run has no validation split (val_fraction 0): the check reads its text from it")
    return check_starts(loaded.model, loaded.vocab, val, device=checkpoint_device(loaded), **options)
