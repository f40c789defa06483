"""What a search within the budget tries around a plan, and how it spends its share: no torch, no Optuna.

The centre is the plan for the budget the search leaves; around it the learning rate (a factor of
each size's planned lr), dropout (around the planned) and the ladder's neighbouring sizes that fit
that budget. `charlm.planning.tune` runs the trials.
"""

from __future__ import annotations

from dataclasses import dataclass

from charlm.planning import planner
from charlm.errors import ConfigError
from charlm.planning.planner import Budget, Plan

DEFAULT_SHARE, MAX_SHARE = 0.25, 0.8
LR_FACTORS = (0.4, 2.5)  # of each size's planned lr, searched on a log scale
DROPOUT_SPREAD, MAX_DROPOUT = 0.2, 0.5  # around the planned dropout, in steps of 0.05
RUNGS = 4  # validations per trial (at 1/4, 1/2, 3/4 and its end): the pruner decides at the first three
TRIALS = 8  # the share is cut into trials for about this many that run to the end; pruned ones leave room
TRIAL_SECONDS = (2.0, 60.0)
VAL_SAMPLE = 10_000  # validation tokens every trial scores: the same ones, so trials compare
# The search sets these; a --set of one would quietly undo it.
SEARCHED = ("optim.lr", "optim.min_lr", "optim.warmup_steps", "model.dropout", "model.hidden_size",
            "model.num_layers", "data.batch_size", "data.num_steps")
TRIAL_OWN = ("train.max_steps", "train.max_time", "train.epochs", "train.eval_every", "train.log_every",
             "train.eval_tokens", "train.out")  # a trial's own length and scoring: --set leaves them to the final run


def check_share(share: float | None, search: bool = True) -> float:
    """--search-share, or its default; checked before anything is measured."""
    if not search:
        raise ConfigError("--search-share goes with --search")
    share = DEFAULT_SHARE if share is None else share
    if not (0 < share <= MAX_SHARE):  # NaN fails too
        raise ConfigError(f"--search-share must be above 0 and at most {MAX_SHARE:g}, got {share:g}")
    return share


def override_key(override: str) -> str:
    return override.split("=", 1)[0].strip()


def part_of(budget: Budget, fraction: float) -> Budget:
    if budget.seconds is not None:
        return Budget(seconds=budget.seconds * fraction)
    return Budget(steps=max(1, int(budget.steps * fraction)))


def size_label(c: planner.Candidate) -> str:
    return f"{c.family} {c.num_layers}x{c.hidden_size}" if c.family != "lstm" else f"{c.num_layers}x{c.hidden_size}"


@dataclass
class SearchSpace:
    """What the search tries, and how the share is spent: `search` and `trial` are seconds or steps."""

    sizes: dict[str, Plan]  # each size's plan for the training after the search, smallest first
    center: str  # the planned size
    dropout: tuple[float, float]
    budget: Budget
    share: float
    search: float
    trial: float
    sample: int = VAL_SAMPLE  # validation tokens each trial is scored on

    @property
    def in_seconds(self) -> bool:
        return self.budget.seconds is not None

    def trial_steps(self, size: str) -> int:
        """A trial's steps, a multiple of RUNGS: its share of seconds at this size's measured speed."""
        made = self.sizes[size]
        steps = self.trial
        if self.in_seconds:
            steps = made.tokens_per_s * self.trial / (made.candidate.batch_size * made.candidate.num_steps)
        return RUNGS * max(1, round(steps / RUNGS))

    def describe(self) -> str:
        unit = "s" if self.in_seconds else " steps"
        whole = self.budget.seconds if self.in_seconds else self.budget.steps
        sizes = ", ".join(f"{p.candidate.describe()}{' (planned)' if k == self.center else ''}"
                          for k, p in self.sizes.items())
        return (f"search: {self.search:g}{unit} of {whole:g}{unit} (share {self.share:g}) in trials of "
                f"{self.trial:.3g}{unit}, each scored at {RUNGS} points on the same {self.sample:,} validation "
                f"tokens; sizes {sizes}; lr ×{LR_FACTORS[0]:g} … ×{LR_FACTORS[1]:g} of each size's planned lr; "
                f"dropout {self.dropout[0]:g} … {self.dropout[1]:g}; Optuna TPE, successive halving stops the "
                f"trailing trials at 1/{RUNGS} and 2/{RUNGS}")


def search_space(profile, budget: Budget, speed, share: float = DEFAULT_SHARE, **rules) -> SearchSpace:
    """The plan for the budget left after the search, with its neighbouring sizes that still fit it."""
    candidates = rules.get("candidates") or planner.CANDIDATES
    limits = rules.get("rules") or planner.RULES
    rest = part_of(budget, 1 - share)
    try:
        center = planner.plan(profile, rest, speed, **rules)
    except ConfigError as exc:
        raise ConfigError(f"--search leaves {1 - share:g} of the budget to train: {exc}") from None
    shapes: dict[str, list] = {}
    family = center.candidate.family  # the neighbours are sizes of the family the plan chose
    for c in sorted((c for c in candidates if c.family == family), key=lambda c: c.parameters(profile.vocab_size)):
        shapes.setdefault(size_label(c), []).append(c)
    names = list(shapes)
    here = names.index(size_label(center.candidate))
    sizes = {names[here]: center}
    for near in (here - 1, here + 1):
        if not 0 <= near < len(names):
            continue
        try:  # a size that does not fit in memory or buys too few tokens is refused by the planner
            made = planner.plan(profile, rest, speed, rules=limits, candidates=tuple(shapes[names[near]]))
        except ConfigError:
            continue
        if made.parameters <= limits.parameters_per_train_token * profile.train_tokens:
            sizes[names[near]] = made
    sizes = {k: sizes[k] for k in names if k in sizes}
    d = center.config["model"]["dropout"]
    dropout = (round(max(0.0, d - DROPOUT_SPREAD), 2), round(min(MAX_DROPOUT, d + DROPOUT_SPREAD), 2))
    if budget.seconds is not None:
        search = round(budget.seconds * share, 1)
        trial = min(search, max(TRIAL_SECONDS[0], min(TRIAL_SECONDS[1], search / TRIALS)))
    else:
        search = int(budget.steps * share)
        trial = max(RUNGS, search // TRIALS)
    sample = min(VAL_SAMPLE, profile.val_tokens) if profile.val_tokens else VAL_SAMPLE
    return SearchSpace(sizes, names[here], dropout, budget, share, search, trial, sample)
