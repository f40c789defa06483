"""Evaluation: summed NLL over a whole text with the state carried, perplexity = exp(mean NLL).

The reference is one B = 1 stream in bounded chunks (`segments=1`); by default a model with a
tensor state is scored in side-by-side segments by charlm.evaluation.batched_eval, which reproduces that
stream's numbers (docs/evaluation.md says how closely) several times faster.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charlm.evaluation.batched_eval import EvaluationStopped as EvaluationStopped  # re-exported: callers catch it here
from charlm.evaluation.batched_eval import TOLERANCE, check_stop, score_batched, score_share, tokens_per_call
from charlm.data.text import tokenize
from charlm.data.vocab import encode_text
from charlm.errors import DataError
from charlm.device.precision import Precision, exact_fp32

DEFAULT_CHUNK_LEN = 512  # (1, 512, V) logits: small for characters, ~100 MB at V = 50k words
LN2 = math.log(2.0)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put `model` in eval mode for the block and give back whichever mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def scoring(model: torch.nn.Module, device: torch.device, precision: str) -> Iterator[tuple[float, float]]:
    """Eval mode, no autograd and the forward pass's precision for the block; gives the self-check's tolerance."""
    if precision not in TOLERANCE:
        raise ValueError(f"precision must be one of {', '.join(TOLERANCE)}, got {precision!r}")
    # no_grad, not inference_mode: under inference_mode autocast does not cache its bf16 copies of
    # the weights, so a model that steps in Python (the scratch RNN) cast W_hh again at every step
    # (profiled: 2 casts a step against 1; 10 % of its bf16 evaluation).
    with eval_mode(model), torch.no_grad(), exact_fp32(device), Precision(precision, "").autocast(device):
        yield TOLERANCE[precision]


@dataclass(frozen=True)
class EvalResult:
    """Whole-text scores; `tokens` counts scored tokens (all but the first)."""

    tokens: int
    nats_per_token: float
    bits_per_token: float
    perplexity: float  # exp(mean NLL in nats)
    unknown: int  # <unk> ids among ALL tokens of the text, inputs and targets alike
    vocab_size: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ScoreResult:
    """Per-token surprisal; the first token has no history, so its surprisal is None."""

    tokens: list[str]  # as in the normalized text (an unknown token shows itself, not <unk>)
    surprisal_bits: list[float | None]  # -log2 p(token | everything before it)
    total_bits: float
    perplexity: float
    unknown: int
    # With score_text(top=k): per token, the model's k likeliest tokens there as (token, bits).
    alternatives: list[list[tuple[str, float]] | None] | None = None


def _perplexity(nats_per_token: float) -> float:
    try:
        return math.exp(nats_per_token)
    except OverflowError:
        return math.inf


def _as_long(segment, device: torch.device) -> torch.Tensor:
    if isinstance(segment, torch.Tensor):
        return segment.to(device=device, dtype=torch.long)
    # Slicing a memmap reads only this chunk, so memory stays bounded for long corpora.
    return torch.from_numpy(np.asarray(segment, dtype=np.int64)).to(device)


def _check_length(n: int) -> None:
    if n < 2:
        raise DataError(
            f"text has {n} token(s); evaluation needs at least 2 (one to condition on, one to score)"
        )


def _count(ids: torch.Tensor, unk_id: int | None) -> int:
    return 0 if unk_id is None else int((ids == unk_id).sum())


def _check_ids(ids, vocab_size: int, unk_id: int | None, block: int = 1 << 16) -> int:
    """DataError for an id outside the vocabulary; the number of unknown ids. Reads a memmap in blocks."""
    unknown = 0
    for start in range(0, len(ids), block):
        part = ids[start:start + block]
        part = part.cpu() if isinstance(part, torch.Tensor) else np.asarray(part)  # a memmap's slice: no copy
        lo, hi = int(part.min()), int(part.max())
        if lo < 0 or hi >= vocab_size:
            raise DataError(
                f"token id {hi if hi >= vocab_size else lo} is outside the model's vocabulary of "
                f"{vocab_size}; were these ids made with another vocabulary?"
            )
        unknown += 0 if unk_id is None else int((part == unk_id).sum())
    return unknown


def _batchable(model, device) -> bool:
    """Whether the model's state is tensors with a batch dimension, as batched_eval needs."""
    state = model.init_state(1, device)
    leaves = state if isinstance(state, tuple) else (state,)
    return all(isinstance(leaf, torch.Tensor) for leaf in leaves)


def _scored_chunks(model, ids, vocab_size: int, chunk_len: int, device, reduction: str):
    """Yield (loss, targets, logits) per chunk: targets ids[s+1 : s+L+1] scored from inputs ids[s : s+L].

    The state carries from chunk to chunk, so the losses equal one pass over the whole text
    while only (1, L, V) logits exist at a time. The ids were checked against the vocabulary.
    """
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
    chunk_len = min(chunk_len, tokens_per_call(vocab_size))  # (1, L, V) logits stay bounded for any V
    state = model.init_state(1, device)
    for start in range(0, len(ids) - 1, chunk_len):
        chunk = _as_long(ids[start : start + chunk_len + 1], device)  # (L+1,)
        x, y = chunk[:-1], chunk[1:]  # (L,), (L,)
        logits, state = model(x[None], state)  # (1, L, V)
        # float32 within a chunk; the callers accumulate chunks in float64.
        yield F.cross_entropy(logits[0].float(), y, reduction=reduction), y, logits[0]


def evaluate_ids(
    model: torch.nn.Module,
    ids: np.ndarray | torch.Tensor | Sequence[int],
    *,
    chunk_len: int = DEFAULT_CHUNK_LEN,
    device: str | torch.device = "cpu",
    unk_id: int | None = 0,
    segments: int | None = None,
    stop=None,
    precision: str = "fp32",
) -> EvalResult:
    """Mean NLL of ids[1:] given their history, as one stream with the state carried.

    The first token has no prediction (nothing to condition on), so n ids give n - 1 scored
    tokens, as in D2L. Unknown tokens are scored as <unk>, like in training. The model must be
    on `device`; it runs in eval mode without autograd and keeps its previous mode after.
    `segments=1` runs the B = 1 stream itself in chunks of `chunk_len`; otherwise a model with a
    tensor state is scored in that many side-by-side segments (None: chosen from the length).
    Setting `stop` (a threading.Event) ends a long pass between chunks with EvaluationStopped.
    `precision` "bf16" runs the forward pass under bf16 autocast (docs/evaluation.md: when it is used).
    """
    if getattr(ids, "ndim", 1) != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
    _check_length(len(ids))
    device = torch.device(device)
    with scoring(model, device, precision) as tolerance:
        vocab_size = model.vocab_size  # the model contract: logits are (B, T, vocab_size)
        unknown = _check_ids(ids, vocab_size, unk_id)
        if segments != 1 and _batchable(model, device):
            total = score_batched(model, ids, device, vocab_size=vocab_size, segments=segments, stop=stop,
                                  tolerance=tolerance).nats
        else:
            total = 0.0  # python floats are float64
            for loss, _, _ in _scored_chunks(model, ids, vocab_size, chunk_len, device, "sum"):
                check_stop(stop)
                total += float(loss)
    scored = len(ids) - 1
    nats = total / scored
    return EvalResult(
        tokens=scored,
        nats_per_token=nats,
        bits_per_token=nats / LN2,
        perplexity=_perplexity(nats),
        unknown=unknown,
        vocab_size=int(vocab_size),
    )


def evaluate_share(model, ids, lo: int, stop: int, device, previous, agree, precision: str = "fp32") -> float:
    """Summed NLL of ids[lo + 1 : stop] as one pass over all of `ids` scores them (one rank's share).

    `previous` and `agree` are collectives every rank calls together: see batched_eval.score_share.
    """
    device = torch.device(device)
    with scoring(model, device, precision) as tolerance:
        _check_ids(ids[lo:stop], model.vocab_size, None)
        if not _batchable(model, device):  # a stateless model: its share alone is exact
            return sum(float(loss) for loss, _, _ in _scored_chunks(model, ids[lo:stop], model.vocab_size,
                                                                     DEFAULT_CHUNK_LEN, device, "sum"))
        return score_share(model, ids, lo, stop, device, vocab_size=model.vocab_size, previous=previous, agree=agree,
                           tolerance=tolerance)


def evaluate_text(
    model: torch.nn.Module,
    vocab,
    text: str,
    normalize: str = "none",
    *,
    chunk_len: int = DEFAULT_CHUNK_LEN,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> EvalResult:
    """evaluate_ids on `text` normalized and tokenized like the training text.

    Tokens the vocabulary lacks become <unk> and are counted in `unknown`.
    """
    ids = encode_text(vocab, text, normalize).ids
    return evaluate_ids(model, ids, chunk_len=chunk_len, device=device, unk_id=0, precision=precision)


def score_text(
    model: torch.nn.Module,
    vocab,
    text: str,
    normalize: str = "none",
    *,
    chunk_len: int = DEFAULT_CHUNK_LEN,
    device: str | torch.device = "cpu",
    top: int = 0,
    segments: int | None = None,
    precision: str = "fp32",
) -> ScoreResult:
    """Surprisal of every token given its history; same pass and numbers as evaluate_text.

    `top=k` also lists, for every scored token, the k tokens the model found likeliest there.
    `segments` and `precision` as in evaluate_ids.
    """
    encoded = encode_text(vocab, text, normalize)
    tokens, ids = tokenize(encoded.text, vocab.level), encoded.ids
    _check_length(len(ids))
    device = torch.device(device)
    nats: list[float] = []
    tops: list[tuple[list, list]] = []  # per chunk: (ids, bits) rows of the k likeliest tokens
    with scoring(model, device, precision) as tolerance:
        vocab_size = model.vocab_size  # the model contract: logits are (B, T, vocab_size)
        unknown = _check_ids(ids, vocab_size, 0)
        if segments != 1 and _batchable(model, device):
            scored = score_batched(model, ids, device, vocab_size=vocab_size, segments=segments,
                                   per_token=True, top=top, tolerance=tolerance)
            nats = scored.per_token.tolist()
            if top:
                tops.append((scored.top[1].tolist(), scored.top[0].tolist()))
        else:
            for loss, _, logits in _scored_chunks(model, ids, vocab_size, chunk_len, device, "none"):
                nats.extend(loss.tolist())
                if top:
                    bits = -torch.log_softmax(logits.float(), -1) / LN2  # (L, V)
                    best, where = bits.topk(min(top, vocab_size), dim=-1, largest=False)
                    tops.append((where.tolist(), best.tolist()))
    alternatives: list[list[tuple[str, float]] | None] = [None]
    for where, best in tops:
        alternatives.extend([(vocab.decode([i]), b) for i, b in zip(row_ids, row_bits)]
                            for row_ids, row_bits in zip(where, best))
    total_nats = math.fsum(nats)
    return ScoreResult(
        tokens=tokens,
        surprisal_bits=[None] + [v / LN2 for v in nats],
        total_bits=total_nats / LN2,
        perplexity=_perplexity(total_nats / len(nats)),
        unknown=unknown,
        alternatives=alternatives if top else None,
    )
