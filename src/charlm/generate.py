"""Generation: warm the model's state on a prefix once, then decode one token per step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from charlm.data.text import normalize as normalize_text
from charlm.data.text import tokenize
from charlm.errors import CharLMError, ConfigError
from charlm.evaluate import eval_mode
from charlm.precision import exact_fp32
from charlm.sampling import get_strategy, validate_sampling

UNK_ID = 0  # Vocab puts <unk> at id 0
UNKNOWN_POLICIES = ("error", "map")

# on_token(step, pieces): pieces[b] is the text sample b gained at this step ("" once stopped)
TokenCallback = Callable[[int, list[str]], None]


@dataclass(frozen=True)
class GenerationResult:
    """What generate() produced; `texts` glues each continuation to the prefix."""

    prefix: str  # after normalization: exactly what warmed the state
    continuations: list[str]  # one per sample, generated text only, stop string included
    stopped: list[bool]  # per sample: whether it ended on the stop string before `length`
    mapped: list[str]  # prefix tokens replaced by <unk> (unknown="map"); [] when none
    seed: int  # the generator's seed, so an unseeded run can be repeated

    @property
    def texts(self) -> list[str]:
        return [self.prefix + c for c in self.continuations]


def _missing_line(what: str, level: str, missing: Sequence[str]) -> str:
    kind = "characters" if level == "char" else "words"
    shown = ", ".join(repr(t) for t in missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return f"{what} has {kind} not in the vocabulary: {shown}{more}"


def _encode_prefix(vocab, text: str, unknown: str) -> tuple[list[int], list[str]]:
    """Token ids of the (normalized) prefix, and the tokens that had to become <unk>."""
    tokens = tokenize(text, vocab.level)
    missing = vocab.unknown(tokens)
    if missing and unknown == "error":
        raise CharLMError(
            _missing_line("prefix", vocab.level, missing)
            + " (use --unknown map to replace them with <unk>)"
        )
    return vocab.encode(tokens), list(missing)


def _encode_stop(vocab, stop: str) -> list[int]:
    """Stop string as ids; it is not normalized, it must be text the model can emit."""
    tokens = tokenize(stop, vocab.level)
    if not tokens:
        raise ConfigError("stop string is empty; give at least one character or leave it unset")
    missing = vocab.unknown(tokens)
    if missing:
        raise ConfigError(
            _missing_line("stop string", vocab.level, missing) + ", so the model can never produce it"
        )
    return vocab.encode(tokens)


def generate(
    model: torch.nn.Module,
    vocab,
    prefix: str = "",
    *,
    normalize: str = "none",
    length: int = 100,
    strategy: str = "sample",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    stop: str | None = None,
    unknown: str = "error",
    device: str | torch.device = "cpu",
    on_token: TokenCallback | None = None,
) -> GenerationResult:
    """Continue `prefix` by up to `length` tokens, `num_samples` samples decoded as one batch.

    The prefix is normalized like the training text and run through the model in ONE forward
    call that only warms the state; its last logits choose the first new token. Each new token is
    then fed back as a (B, 1) input with the state carried, so a step costs the same at any length.
    An empty prefix warms on a single <unk> token from init_state (the padding the window models
    see at the start of a text); that <unk> is not part of the output.

    `stop`: a sample stops once its text ends with the stop string after a new token (matches may
    start inside the prefix); its continuation ends with, and includes, the stop string -- exactly
    what was streamed. The batch runs until every sample stopped or `length` is reached.

    The model must already be on `device`; it runs in eval mode under inference_mode and gets its
    previous train/eval mode back. The same seed gives the same text.
    """
    validate_sampling(strategy, temperature, top_k, top_p)
    pick = get_strategy(strategy)
    if unknown not in UNKNOWN_POLICIES:
        raise ConfigError(f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, got {unknown!r}")
    if length < 0:
        raise ConfigError(f"length must be >= 0, got {length}")
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    if seed is not None and not -(1 << 63) <= seed < (1 << 64):
        raise ConfigError(f"seed must fit in 64 bits, got {seed}")

    text = normalize_text(prefix, normalize)
    prefix_ids, mapped = _encode_prefix(vocab, text, unknown)
    stop_ids = _encode_stop(vocab, stop) if stop is not None else None
    device = torch.device(device)
    generator = torch.Generator(device=device)
    seed = generator.manual_seed(seed).initial_seed() if seed is not None else generator.seed()

    B, P = num_samples, len(prefix_ids)
    # One id buffer for prefix + output: no per-step allocation, and stop matching can look back
    # into the prefix with one slice.
    try:
        buf = torch.empty((B, P + length), dtype=torch.long, device=device)
    except (RuntimeError, TypeError, ValueError, MemoryError):  # too large to allocate, or to index
        raise ConfigError(f"{num_samples} sample(s) of {length} tokens do not fit in memory; "
                          "lower --length or --num-samples") from None
    buf[:, :P] = torch.tensor(prefix_ids, dtype=torch.long, device=device)
    ends = torch.full((B,), P + length, dtype=torch.long, device=device)  # exclusive end per sample
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stop_t = torch.tensor(stop_ids, device=device) if stop_ids is not None else None  # (S,)
    # Streamed pieces come from decode itself, so they always add up to the returned text.
    pieces = [vocab.decode([i]) for i in range(len(vocab))] if on_token is not None else []

    if length > 0:
        with eval_mode(model), torch.inference_mode(), exact_fp32(device):  # the same text as on a CPU
            if P:
                warm = buf[:, :P].contiguous()  # (B, P)
            else:
                warm = torch.full((B, 1), UNK_ID, dtype=torch.long, device=device)
            logits, state = model(warm, model.init_state(B, device))  # (B, T, V)
            logits = logits.select(1, -1)  # (B, V)
            for step in range(length):
                t = P + step
                nxt = pick(logits, generator, temperature=temperature, top_k=top_k, top_p=top_p)
                buf.select(1, t).copy_(nxt)  # nxt: (B,)
                was_done = done
                if stop_t is not None and t + 1 >= len(stop_t):
                    hit = (buf[:, t + 1 - len(stop_t) : t + 1] == stop_t).all(-1) & ~done  # (B,)
                    ends = torch.where(hit, t + 1, ends)
                    done = done | hit
                if on_token is not None:
                    ids, skip = nxt.tolist(), was_done.tolist()
                    on_token(step, ["" if d else pieces[i] for i, d in zip(ids, skip)])
                if stop_t is not None and bool(done.all()):
                    break
                if step + 1 < length:
                    logits, state = model(nxt.unsqueeze(1), state)  # (B, 1, V)
                    logits = logits.select(1, -1)
        # Samples still running end where the loop ended (early only if all of them stopped).
        ends = torch.where(done, ends, torch.full_like(ends, P + step + 1))

    continuations = [vocab.decode(row[P:end]) for row, end in zip(buf.tolist(), ends.tolist())]
    return GenerationResult(
        prefix=text,
        continuations=continuations,
        stopped=done.tolist(),
        mapped=mapped,
        seed=seed,
    )


def novelty(sample: str, training_text: str) -> tuple[int, str]:
    """Longest substring of `sample` that occurs in `training_text`, as (length, substring).

    A sliding window [i, j) over the sample always occurs in the text at `pos`; growing it tests
    one character at that occurrence and only searches the text when it fails, so the number of
    full-text searches is at most about 2 * len(sample), whatever the text size.
    """
    best_len, best_at = 0, 0
    i, pos = 0, 0
    n_text = len(training_text)
    for j, ch in enumerate(sample):
        # invariant: sample[i:j] == training_text[pos : pos + j - i]
        while i <= j:
            k = pos + (j - i)
            if k < n_text and training_text[k] == ch:
                break
            found = training_text.find(sample[i : j + 1])
            if found >= 0:
                pos = found
                break
            i, pos = i + 1, pos + 1  # sample[i+1:j] occurs one further on
        else:
            i, pos = j + 1, 0  # sample[j] is nowhere in the text
            continue
        if j + 1 - i > best_len:
            best_len, best_at = j + 1 - i, i
    return best_len, sample[best_at : best_at + best_len]
