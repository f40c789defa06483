"""Generation: warm the model's state on a prompt in bounded chunks, then decode one token per step."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from charlm.generation import fastgen
from charlm.config import GenerateConfig
from charlm.data.vocab import encode_text
from charlm.errors import CharLMError, ConfigError
from charlm.evaluation.evaluate import eval_mode
from charlm.device.precision import exact_fp32
from charlm.generation.sampling import get_strategy, validate_sampling
from charlm.models import model_device

UNKNOWN_POLICIES = ("error", "map")
# Prompt tokens per forward while warming: (B, 512, V) logits at most, so memory stays flat in the
# prompt's length (a 10 MB prompt in one piece needed ~10 GB); the state carries across chunks.
WARM_CHUNK = 512
# An empty prompt starts the text as if after a line break: the first of these the vocabulary has
# (a letters-only vocabulary has no newline). Never <unk>, which the model never saw as input.
START_TOKENS = ("\n", " ")
# Samples run in batches of at most SAMPLE_BATCH (one batch up to there, as they always have), so
# the state, logits and ids held are one batch's however many are asked for; MAX_TOKENS bounds
# what one call returns as text (num_samples * length).
SAMPLE_BATCH = 256
MAX_TOKENS = 10_000_000

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


def check_params(params: GenerateConfig) -> None:
    """Every generation parameter checked once, here: a one-line ConfigError for the first bad one."""
    validate_sampling(params.strategy, params.temperature, params.top_k, params.top_p)
    for name in ("length", "num_samples"):
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value!r}")
    seed = params.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not -(1 << 63) <= seed < (1 << 64)):
        raise ConfigError(f"seed must fit in 64 bits, got {seed!r}")
    if params.unknown not in UNKNOWN_POLICIES:
        raise ConfigError(f"unknown: {params.unknown!r} is not one of {', '.join(UNKNOWN_POLICIES)}")
    if params.precision not in fastgen.PRECISIONS:
        raise ConfigError(f"precision: {params.precision!r} is not one of {', '.join(fastgen.PRECISIONS)}")


_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.|$)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "0": "\0", "'": "'", '"': '"'}


def unescape(text: str, what: str = "text") -> str:
    r"""Interpret \n \t \r \0 \\ \' \" \xNN \uNNNN \UNNNNNNNN as in Python; `\\` is one backslash.

    Any other backslash is a one-line ConfigError (exit 2) rather than a silent literal.
    """

    def one(match: re.Match) -> str:
        code = match.group(1)
        if code in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[code]
        if len(code) > 1:
            point = int(code[1:], 16)
            if point <= 0x10FFFF:
                return chr(point)
        shown = "\\" + code[:9] if code else "a lone \\ at the end"
        raise ConfigError(f"{what}: bad escape {shown!r}; use \\n \\t \\r \\\\ \\xNN \\uNNNN, "
                          "and \\\\ for a backslash")

    return _ESCAPE.sub(one, text)


def _missing_line(what: str, level: str, missing: Sequence[str]) -> str:
    kind = "characters" if level == "char" else "words"
    shown = ", ".join(repr(t) for t in missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return f"{what} has {kind} not in the vocabulary: {shown}{more}"


def _stop_ids(vocab, stop: str) -> list[int]:
    """Stop string as ids; it must be text the model can emit."""
    encoded = encode_text(vocab, stop)
    if not len(encoded.ids):
        raise ConfigError("stop string is empty; give at least one character or leave it unset")
    if encoded.unknown:
        raise ConfigError(_missing_line("stop string", vocab.level, encoded.unknown)
                          + ", so the model can never produce it")
    return encoded.ids.tolist()


def start_token(vocab) -> int:
    """The id an empty prompt warms on: a newline, else a space, else the most frequent token."""
    for token in START_TOKENS:
        if token in vocab:
            return vocab.id_of(token)
    return max(range(1, len(vocab)), key=lambda i: vocab.counts[i], default=0)


def warm(model, ids, batch_size: int, device, chunk: int | None = None):
    """Run `ids` (a 1-D array) through the model in chunks from init_state: (last logits (B, V), state).

    Carrying the state makes the chunks one pass (the model contract), while no more than
    (B, chunk, V) logits exist at a time.
    """
    chunk = chunk or WARM_CHUNK
    state = model.init_state(batch_size, device)
    logits = None
    for start in range(0, len(ids), chunk):
        piece = torch.as_tensor(np.asarray(ids[start:start + chunk], dtype=np.int64), device=device)  # (T,)
        logits, state = model(piece.expand(batch_size, -1).contiguous(), state)  # (B, T, V)
    return logits[:, -1], state


def generate(model: torch.nn.Module, vocab, prompt: str | None = None, params: GenerateConfig = GenerateConfig(),
             *, normalize: str = "none", fast: bool = True, on_prefix: Callable[[str], None] | None = None,
             on_token: TokenCallback | None = None) -> GenerationResult:
    """Continue `prompt` (None: params.prefix) by up to params.length tokens, num_samples in batches.

    The prompt is normalized like the training text and run through the model in chunks that only
    warm the state; its last logits choose the first new token. Each new token is then fed back
    with the state carried, so a step costs the same at any length: through charlm.generation.fastgen's step
    where the model has one (`fast=False`: the model's own forward, the reference it is tested
    against), else through the model's forward. An empty prompt warms on start_token(vocab), which
    is not part of the output. `on_prefix(text)` gets the normalized prompt once it is accepted.

    `params.stop`: a sample stops once its text ends with the stop string after a new token (matches
    may start inside the prompt); its continuation ends with, and includes, the stop string --
    exactly what was streamed. The batch runs until every sample stopped or `length` is reached.

    Past SAMPLE_BATCH samples, on_token's pieces are those of the batch running (steps restart at 0).

    The model runs where its weights are, in eval mode under inference_mode, and gets its previous
    train/eval mode back. The same seed gives the same text.
    """
    check_params(params)
    prompt = params.prefix if prompt is None else prompt
    pick, p = get_strategy(params.strategy), params
    encoded = encode_text(vocab, prompt, normalize)
    if encoded.unknown and p.unknown == "error":
        raise CharLMError(_missing_line("prefix", vocab.level, encoded.unknown)
                          + " (use --unknown map to replace them with <unk>)")
    stop = _stop_ids(vocab, p.stop) if p.stop is not None else []
    device = model_device(model)
    generator = torch.Generator(device=device)
    seed = generator.manual_seed(p.seed).initial_seed() if p.seed is not None else generator.seed()

    total = p.num_samples * p.length
    if total > MAX_TOKENS:
        raise ConfigError(f"{p.num_samples:,} sample(s) of {p.length:,} tokens is {total:,} tokens, over the "
                          f"{MAX_TOKENS:,} one generation returns; lower --length or --num-samples")
    # Streamed pieces come from decode itself, so they always add up to the returned text.
    pieces = vocab.texts() if on_token is not None else ()
    if on_prefix is not None:
        on_prefix(encoded.text)
    warm_ids = encoded.ids if len(encoded.ids) else np.array([start_token(vocab)])
    # Ids kept per sample: the prompt's last S (a stop may start there) and the output, so memory
    # does not grow with the prompt.
    S = len(stop)
    tail = encoded.ids[len(encoded.ids) - min(S, len(encoded.ids)):].tolist() if S else []
    continuations, stopped = [], []
    for first in range(0, p.num_samples, SAMPLE_BATCH):
        B = min(SAMPLE_BATCH, p.num_samples - first)
        texts, ended = _sample_batch(model, vocab, p, B, warm_ids, tail, stop, pick, generator, device,
                                     fast, pieces, on_token)
        continuations += texts
        stopped += ended
    return GenerationResult(prefix=encoded.text, continuations=continuations, stopped=stopped,
                            mapped=encoded.unknown if p.unknown == "map" else [], seed=seed)


def _sample_batch(model, vocab, p: GenerateConfig, B: int, warm_ids, tail: list[int], stop: list[int], pick,
                  generator, device, fast: bool, pieces, on_token) -> tuple[list[str], list[bool]]:
    """B samples as one batch, from the prompt's warmed state: (continuations, stopped)."""
    S, T0, length = len(stop), len(tail), p.length
    try:
        buf = torch.empty((B, T0 + length), dtype=torch.long, device=device)
    except (RuntimeError, TypeError, ValueError, MemoryError):  # too large to allocate, or to index
        raise ConfigError(f"{B} sample(s) of {length} tokens do not fit in memory; "
                          "lower --length or --num-samples") from None
    buf[:, :T0] = torch.tensor(tail, dtype=torch.long, device=device)
    ends = torch.full((B,), T0 + length, dtype=torch.long, device=device)  # exclusive end per sample
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stop_t = torch.tensor(stop, device=device) if S else None  # (S,)

    # exact_fp32: the same text as on a CPU; step_threads: a small batch's tiny ops in one thread.
    with eval_mode(model), torch.inference_mode(), exact_fp32(device), fastgen.step_threads(B, device):
        logits, state = warm(model, warm_ids, B, device)
        step_fn = fastgen.stepper(model, state, p.precision) if fast else fastgen.plain_stepper(model, state)
        del state  # the stepper owns it now
        for step in range(length):
            t = T0 + step
            nxt = pick(logits, generator, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)  # (B,)
            buf.select(1, t).copy_(nxt)
            was_done = done
            if S and t + 1 >= S:
                hit = (buf[:, t + 1 - S: t + 1] == stop_t).all(-1) & ~done  # (B,)
                ends = torch.where(hit, t + 1, ends)
                done = done | hit
            if on_token is not None:
                ids, skip = nxt.tolist(), was_done.tolist()
                on_token(step, ["" if d else pieces[i] for i, d in zip(ids, skip)])
            if S and bool(done.all()):
                break
            if step + 1 < length:
                logits = step_fn(nxt)  # (B, V)
    # Samples still running end where the loop ended (early only if all of them stopped).
    ends = torch.where(done, ends, torch.full_like(ends, T0 + step + 1))
    continuations = [vocab.decode(row[T0:end]) for row, end in zip(buf.tolist(), ends.tolist())]
    return continuations, done.tolist()


def copied_lines(text: str, generated_from: int, complete: bool, training_lines: set[str]) -> tuple[int, list[str]]:
    """The whole lines of `text` that hold generated characters (from index `generated_from` on)
    and are lines of the training text too: (how many lines were checked, those found).

    A line counts when a newline ends it, or when `complete` (the sample stopped there); the line
    still being written when the length ran out is no whole line. For a word list (one word a
    line) this answers whether a generated word is a dictionary entry, which the longest shared
    substring cannot.
    """
    checked, found, start = 0, [], 0
    pieces = text.split("\n")
    for n, line in enumerate(pieces):
        end = start + len(line)
        last = n == len(pieces) - 1
        whole = not last or (complete and line != "")
        if whole and line and (end > generated_from or (not last and end + 1 > generated_from)):
            checked += 1
            if line in training_lines:
                found.append(line)
        start = end + 1
    return checked, found


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
