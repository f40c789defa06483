"""The planner: a whole run config from the corpus, a budget and this device's measured speed.

`plan()` is pure: it takes the corpus's size, the budget and a throughput table (tokens/s per
candidate model, measured by `charlm.planning.calibrate` on this device) and returns the config and the
reasons for it. The rules are a few numbers in `RULES`; `scripts/plan_sweep.py` measures the runs
they were read from and can refit them on another machine. No torch here, so tests can plan
against a made-up throughput table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from charlm.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh])")


def parse_duration(text: str) -> float:
    """Seconds in '90', '90s', '5m', '1h', '1h30m' or '2.5m'."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
            raise ConfigError(f"--time: '{text}' is not a duration (examples: 90s, 5m, 1h30m)") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"--time: '{text}' must be a positive duration (examples: 90s, 5m, 1h30m)")
    return seconds


@dataclass(frozen=True)
class Candidate:
    """A model shape the planner may choose, on batch × num_steps: an LSTM of `num_layers` × `hidden_size`,
    or a transformer (`family` gpt) of `num_layers` blocks `hidden_size` wide with a num_steps window."""

    hidden_size: int
    num_layers: int = 1
    batch_size: int = 64
    num_steps: int = 64
    embedding_dim: int = 64
    family: str = "lstm"

    @property
    def key(self) -> str:
        return f"{self.family}-{self.num_layers}x{self.hidden_size}-b{self.batch_size}x{self.num_steps}"

    @property
    def num_heads(self) -> int:
        return max(1, self.hidden_size // GPT_HEAD_SIZE)

    def parameters(self, vocab_size: int) -> int:
        """nn.LSTM's count: per layer 4 gates of W_x, W_h and two biases; plus embedding and decoder.

        A gpt's: token and position embeddings, per block attention (4 w² + 4 w), MLP (8 w² + 5 w)
        and two LayerNorms (4 w), the final LayerNorm and the decoder.
        """
        h, e = self.hidden_size, self.embedding_dim
        if self.family == "gpt":
            return vocab_size * h + self.num_steps * h + self.num_layers * (12 * h * h + 13 * h) + 2 * h \
                + h * vocab_size + vocab_size
        recurrent = sum(4 * h * ((e if layer == 0 else h) + h + 2) for layer in range(self.num_layers))
        return vocab_size * e + recurrent + h * vocab_size + vocab_size

    def describe(self) -> str:
        return f"{self.family} {self.num_layers}×{self.hidden_size}"


GPT_HEAD_SIZE = 32  # shakespeare_gpt's 128 wide with 4 heads

# The shapes the planner chooses from: a ladder of sizes per family, each at three batch sizes
# (measured as needed).
CANDIDATES: tuple[Candidate, ...] = tuple(
    Candidate(h, layers, b) for layers, sizes in ((1, (128, 256, 384, 512, 768, 1024)), (2, (512, 1024)))
    for h in sizes for b in (32, 64, 128)) + tuple(
    Candidate(w, layers, b, family="gpt") for layers, w in ((4, 128), (4, 192), (4, 256), (6, 256), (6, 384),
                                                              (8, 512)) for b in (32, 64, 128))


@dataclass(frozen=True)
class Rules:
    """The planner's numbers (see docs/planner.md for the runs they come from)."""

    # The largest model the budget trains on at least this many tokens each: Tiny Shakespeare's 1 x 512 at
    # ~5 beat 1 x 640 at ~2.5 (by 0.4 %); The Time Machine's 1 x 512 at 2.8 (32 x 64) beat 1 x 384 (docs/planner.md).
    tokens_per_parameter: float = 2.5
    parameters_per_train_token: float = 12.0  # and no larger than this many parameters per training token
    # Below this many steps the smaller batch is taken: more updates beat fewer, larger ones (the Bible,
    # 3 minutes on one core: 32 x 64 for 1,855 steps 1.197 nats/char, 64 x 64 for 1,002 steps 1.237).
    min_steps: int = 1200
    min_tokens: int = 1_000_000  # less than this trains nothing worth sampling
    # dropout by epochs the budget buys: (at most this many epochs, dropout)
    # Tiny Shakespeare, ~7 epochs: 0.2 beat 0.25; The Time Machine, 2 x 384 at 20 epochs: 0.4 beat 0.5;
    # 1 x 512 at 21 epochs: 0.5 beat 0.4, 3.618 against 3.652, and at 27: 3.711 against 3.749 (docs/planner.md).
    dropout_by_epochs: tuple[tuple[float, float], ...] = ((1.0, 0.0), (3.0, 0.1), (8.0, 0.2), (15.0, 0.3),
                                                          (20.0, 0.4))
    max_dropout: float = 0.5
    # A transformer's, lower: on the word list (1.7 epochs) the planned gpt with dropout 0.1 scored 0.757
    # nats/char, shakespeare_gpt's same model without 0.597 (docs/planner.md); nanoGPT's CPU recipe has none.
    gpt_dropout_by_epochs: tuple[tuple[float, float], ...] = ((4.0, 0.0), (10.0, 0.1), (20.0, 0.2), (30.0, 0.3),
                                                              (50.0, 0.4))
    lr_512: float = 0.013  # AdamW's peak lr for a 1 × 512 LSTM; scaled by sqrt(512 / width) and per extra layer
    lr_layer_factor: float = 0.5
    # Beyond this many epochs an LSTM's lr doubles: twice the lr won on The Time Machine (21 and 27 epochs)
    # and Debian's changelogs (15), and lost on fortune quotes (8.5), Tiny Shakespeare (7) and the Bible (2;
    # docs/planner.md).
    many_epochs: float = 12.0
    many_epochs_lr_factor: float = 2.0
    weight_decay: float = 0.1
    # Of the budget, for the evaluations during training: each second there is one less of training, and
    # best.pt's final whole-split score is apart from it (shakespeare_5min's 30k-token samples take 1 %).
    eval_share: float = 0.02
    evaluations: int = 12  # per run
    # A whole run trains at 0.78-0.87 of the calibrated step's tokens/s (data, logging, checkpoints;
    # three quiet 5-minute and 3-minute runs, docs/planner.md), so epochs are counted at this share.
    realized_speed: float = 0.85
    eval_speedup: float = 3.0  # batched evaluation's tokens/s over training's (docs/evaluation.md)
    # A transformer where at least this share of the characters repeat what followed the same three
    # characters within the last 64 (CorpusProfile.copy_share): attention copies them, an LSTM has
    # to remember them. Between the C headers (0.24, LSTM by far) and the word list (0.56, gpt by far).
    transformer_copy_share: float = 0.4
    lr_gpt_128: float = 0.003  # AdamW's peak lr for a 128-wide gpt (shakespeare_gpt), scaled by sqrt(128 / width)
    # A transformer's warm-up, at most a quarter of the steps: on the word list 924 steps of gpt 4 x 128 scored
    # 0.604 nats/char after 100 warm-up steps (shakespeare_gpt's, nanoGPT's) and 0.678 after 37 (5 %).
    gpt_warmup_steps: int = 100

    def train_seconds(self, seconds: float) -> float:
        """The seconds of a time budget that train, at the calibrated speed's rate."""
        return seconds * (1 - self.eval_share) * self.realized_speed


RULES = Rules()


@dataclass(frozen=True)
class CorpusProfile:
    """What the planner needs to know about the text: its training tokens, vocabulary and level."""

    corpus: str
    train_tokens: int
    vocab_size: int
    level: str = "char"
    val_tokens: int = 0
    normalize: str = "none"  # as preprocessed: every character kept unless the user asked otherwise
    copy_share: float = 0.0  # see copy_share()


COPY_MATCH, COPY_WINDOW = 3, 64


def copy_share(ids, match: int = COPY_MATCH, window: int = COPY_WINDOW) -> float:
    """The share of tokens that repeat what followed the same `match` tokens within the last `window`.

    What a copy from the context would predict: a statistic of how much a model that attends to its
    window (a transformer) gains over one that must carry it in a state.
    """
    tokens = [int(t) for t in ids]
    seen: dict[tuple[int, ...], int] = {}  # the last position each `match` tokens ended at
    hits = 0
    for t in range(match, len(tokens)):
        key = tuple(tokens[t - match:t])
        j = seen.get(key)
        hits += j is not None and t - j <= window and tokens[j] == tokens[t]
        seen[key] = t
    return hits / max(1, len(tokens) - match)


@dataclass(frozen=True)
class Budget:
    seconds: float | None = None
    steps: int | None = None

    def __post_init__(self):
        if (self.seconds is None) == (self.steps is None):
            raise ConfigError("give the planner one budget: --time DURATION or --steps N")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")


@dataclass
class Plan:
    profile: CorpusProfile
    candidate: Candidate
    config: dict[str, Any]
    tokens: int  # the training tokens the budget is expected to buy
    tokens_per_s: float | None  # measured on this device; None for a steps budget
    reasons: list[str] = field(default_factory=list)

    @property
    def parameters(self) -> int:
        return self.candidate.parameters(self.profile.vocab_size)

    @property
    def epochs(self) -> float:
        return self.tokens / max(self.profile.train_tokens, 1)

    def summary(self) -> str:
        """One line: what was chosen and what it buys."""
        m, d, o = self.config["model"], self.config["data"], self.config["optim"]
        speed = f" at {_count(self.tokens_per_s)} tokens/s" if self.tokens_per_s else ""
        return (f"plan: {self.candidate.describe()} ({_count(self.parameters)} parameters), dropout {m['dropout']:g}, "
                f"batch {d['batch_size']} × {d['num_steps']}, lr {o['lr']:.3g}: ≈ {_count(self.tokens)} tokens"
                f"{speed}, ≈ {self.epochs:.1f} epochs of {_count(self.profile.train_tokens)}")

    def describe(self) -> str:
        """Two lines: what was chosen, and why."""
        return f"{self.summary()}\nwhy: {'; '.join(self.reasons)}"


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f}"


def _dropout(epochs: float, rules: Rules, family: str = "lstm") -> float:
    table = rules.gpt_dropout_by_epochs if family == "gpt" else rules.dropout_by_epochs
    return next((d for limit, d in table if epochs <= limit), rules.max_dropout)


def _lr(c: Candidate, rules: Rules, epochs: float = 0.0) -> float:
    if c.family == "gpt":
        return rules.lr_gpt_128 * math.sqrt(128 / c.hidden_size)
    lr = rules.lr_512 * math.sqrt(512 / c.hidden_size) * rules.lr_layer_factor ** (c.num_layers - 1)
    return lr * (rules.many_epochs_lr_factor if epochs > rules.many_epochs else 1.0)


def min_lr_share(family: str) -> float:
    """Where the cosine ends, as a share of the peak lr: shakespeare_gpt's lr / 10 for a transformer, else lr / 50."""
    return 0.1 if family == "gpt" else 0.02


def warmup_steps(family: str, steps: int, rules: Rules = RULES) -> int:
    """The warm-up of a run of `steps` steps: 5 % (at most 100) for an LSTM, a transformer's longer one."""
    if family == "gpt":
        return max(1, min(rules.gpt_warmup_steps, steps // 4))
    return min(100, max(1, steps // 20))


def family_for(profile: CorpusProfile, rules: Rules) -> tuple[str, str]:
    """(family, why): a transformer for a text that repeats itself within a window, else an LSTM."""
    share = (f"{profile.copy_share:.0%} of its characters repeat what followed the same {COPY_MATCH} "
             f"within the last {COPY_WINDOW}")
    if profile.copy_share >= rules.transformer_copy_share:
        return "gpt", f"a transformer: {share} (≥ {rules.transformer_copy_share:.0%}), which attention copies"
    return "lstm", f"an LSTM: {share} (< {rules.transformer_copy_share:.0%})"


def model_config(c: Candidate, dropout: float) -> dict:
    if c.family == "gpt":
        return {"name": "gpt", "num_layers": c.num_layers, "num_heads": c.num_heads, "embedding_dim": c.hidden_size,
                "context": c.num_steps, "dropout": dropout}
    return {"name": c.family, "hidden_size": c.hidden_size, "num_layers": c.num_layers,
            "embedding_dim": c.embedding_dim, "dropout": dropout}


Speed = Callable[[Candidate], float]  # tokens/s of a candidate's training step on this device; 0: does not fit


def plan(profile: CorpusProfile, budget: Budget, speed: Speed | None, *, rules: Rules | None = None,
         candidates: tuple[Candidate, ...] | None = None) -> Plan:
    """The config for `profile` within `budget`; `speed` is asked only about the shapes it needs."""
    rules, candidates = rules or RULES, candidates or CANDIDATES
    if profile.level != "char":
        raise ConfigError("the planner plans character-level runs; for words pass --config")
    family, family_why = family_for(profile, rules)
    candidates = tuple(c for c in candidates if c.family == family) or candidates
    if budget.seconds is None:
        speed = None
    train_seconds = rules.train_seconds(budget.seconds) if budget.seconds is not None else 0.0

    def tokens(c: Candidate) -> int:
        if speed is None:
            return budget.steps * c.batch_size * c.num_steps
        return int(speed(c) * train_seconds)

    def batch_for(shape: list[Candidate]) -> Candidate:
        # The larger batch unless it leaves too few steps: more updates beat fewer, larger ones.
        ordered = sorted(shape, key=lambda c: -c.batch_size)
        return next((c for c in ordered if tokens(c) >= rules.min_steps * c.batch_size * c.num_steps), ordered[-1])

    shapes: dict[tuple[int, int], list[Candidate]] = {}
    for c in sorted(candidates, key=lambda c: c.parameters(profile.vocab_size)):
        shapes.setdefault((c.num_layers, c.hidden_size), []).append(c)
    chosen = None
    for shape in shapes.values():  # smallest first; speed falls as size grows, so stop at the first misfit
        c = batch_for(shape)
        n = tokens(c)
        if chosen is None and n < rules.min_tokens:
            raise ConfigError(_too_short(c, budget, speed, rules))
        params = c.parameters(profile.vocab_size)
        if n < rules.tokens_per_parameter * params or params > rules.parameters_per_train_token * profile.train_tokens:
            break
        chosen = c
    fitted = chosen is not None
    chosen = chosen or batch_for(next(iter(shapes.values())))
    n = tokens(chosen)
    epochs = n / max(profile.train_tokens, 1)
    dropout = _dropout(epochs, rules, chosen.family)
    params = chosen.parameters(profile.vocab_size)
    reasons = [family_why if chosen.family == family else f"a {chosen.family}: the only family offered",
               f"the largest model this budget trains on ≥ {rules.tokens_per_parameter:g} tokens per parameter "
               f"({n / params:.1f} here) within {rules.parameters_per_train_token:g} parameters per training token"
               if fitted else "the smallest model: the budget or the text is short for any larger one",
               f"dropout {dropout:g} for ≈ {epochs:.1f} epochs"]
    steps = max(1, n // (chosen.batch_size * chosen.num_steps))
    lr = _lr(chosen, rules, epochs)
    if lr != _lr(chosen, rules):  # the many-epochs rule applied
        reasons[-1] += f" and twice the lr (more than {rules.many_epochs:g})"
    gpt = chosen.family == "gpt"  # random windows: its memory is its window
    config = {
        "data": {"corpus": profile.corpus, "normalize": profile.normalize, "level": "char",
                 "sampling": "random" if gpt else "sequential", "batch_size": chosen.batch_size,
                 "num_steps": chosen.num_steps},
        "model": model_config(chosen, dropout),
        "optim": {"name": "adamw", "lr": round(lr, 5), "weight_decay": rules.weight_decay, "grad_clip": 1.0,
                  "schedule": "cosine", "warmup_steps": warmup_steps(chosen.family, steps, rules),
                  "min_lr": round(lr * min_lr_share(chosen.family), 6)},
        "train": {"eval_every": max(1, steps // rules.evaluations)},
    }
    if budget.seconds is not None and speed is not None:
        # Each evaluation scores the whole validation split unless that would take more than the
        # budget's eval_share: then a fixed sample of it (best.pt's final score is the whole split).
        affordable = int(budget.seconds * rules.eval_share / rules.evaluations * rules.eval_speedup * speed(chosen))
        if profile.val_tokens > affordable:
            config["train"]["eval_tokens"] = max(10_000, affordable)
            reasons.append(f"validation on {_count(config['train']['eval_tokens'])} of the split's "
                           f"{_count(profile.val_tokens)} tokens, to keep it within {rules.eval_share:.0%} of the time")
    if budget.seconds is not None:
        # The step cap is a safety net far past the expected count: the clock ends the run.
        config["train"].update(max_time=round(budget.seconds, 3), max_steps=max(10, steps * 4))
    else:
        config["train"]["max_steps"] = budget.steps
    return Plan(profile, chosen, config, n, speed(chosen) if speed else None, reasons)


def _too_short(smallest: Candidate, budget: Budget, speed: Speed | None, rules: Rules) -> str:
    if speed is None:
        need = math.ceil(rules.min_tokens / (smallest.batch_size * smallest.num_steps))
        return f"--steps {budget.steps} is too few to train anything useful; the shortest sensible budget is {need}"
    rate = speed(smallest)
    if rate <= 0:
        return "not even the smallest model fits in this device's memory"
    need = math.ceil(rules.min_tokens / rate / rules.train_seconds(1.0))
    return (f"--time {budget.seconds:g}s is too short to train anything useful on this device "
            f"({rate:,.0f} tokens/s for the smallest model); the shortest sensible budget is {need}s")


def budget_overrides(seconds: float | None, steps: int | None) -> list[str]:
    """`--time`/`--steps` on a config: the budget replaces the config's own stopping rule."""
    if seconds is not None:
        return [f"train.max_time={seconds:g}", "train.max_steps=null", "train.epochs=null"]
    if steps is not None:
        return [f"train.max_steps={steps}", "train.max_time=null", "train.epochs=null"]
    return []
