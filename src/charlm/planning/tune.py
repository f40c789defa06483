"""Search within the budget: a short multi-fidelity search around the plan, with Optuna (charlm[tune]).

A share of the budget goes to trials in `charlm.planning.search_space`'s space. Each trial trains from scratch
on its own short cosine schedule, scored on one fixed sample of the validation split at `RUNGS`
points; Optuna's seeded TPE sampler proposes the settings and its successive-halving pruner stops the
trials that trail at the early rungs. The best complete trial is then planned for the rest of the
budget: an ordinary run, reproducible from its config.yaml.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
import threading
from dataclasses import dataclass, replace
from time import perf_counter as clock
from typing import Any, Callable

from charlm.planning import planner
from charlm.errors import CharLMError, ConfigError
from charlm.planning.planner import Budget, Plan
from charlm.planning.search_space import (DEFAULT_SHARE, LR_FACTORS, RUNGS, SEARCHED, TRIAL_OWN, VAL_SAMPLE,
                                          SearchSpace, check_share, override_key, search_space)

STARTUP_TRIALS = 4  # TPE samples at random until this many trials have ended (the plan is the first)
Event = Callable[[str, dict[str, Any]], None]


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise CharLMError("--search needs Optuna: pip install 'charlm[tune]'") from None
    return optuna


def check_search(search: bool, share: float | None, *, budget: Budget | None, text: str | None, config, resume,
                 init_from, overrides: list[str]) -> float:
    """The --search options, checked before anything is measured or written; the share to use."""
    share = check_share(share, search)
    if config is not None or resume is not None or init_from is not None:
        raise ConfigError("--search searches around a plan for TEXT, from scratch: it takes no --config (a config "
                          "is a choice already made), --resume or --init-from")
    if budget is None or text is None:
        raise ConfigError("--search spends a share of a budget: `charlm train TEXT --time 5m --search` "
                          "(or --steps N)")
    searched = [key for key in map(override_key, overrides) if key in SEARCHED]
    if searched:
        raise ConfigError(f"--search chooses {searched[0]}; drop --set {searched[0]}=... or --search")
    require_optuna()
    return share


def plan_search(corpus: str, budget: Budget, share: float | None = None, *, device: str = "auto", note=None,
                **rules) -> str:
    """What `charlm train --search` would try for `corpus` and `budget` (Optuna not needed to say it)."""
    from charlm.planning.calibrate import measure_corpus

    share = check_share(share)  # `charlm plan` checks it before planning; a library caller here
    _, profile, speed = measure_corpus(corpus, device=device, note=note)
    space = search_space(profile, budget, speed, share, **rules)
    return f"{space.sizes[space.center].describe()}\n{space.describe()}"


@dataclass
class Trial:
    """One trial: its settings, how far it trained, its last validation loss (nats per token) and its end."""

    number: int
    size: str
    lr: float
    lr_factor: float
    dropout: float
    steps: int = 0
    val_loss: float | None = None
    state: str = "running"  # complete, pruned, diverged, or out of time (cut short by the share's end)
    seconds: float = 0.0

    def line(self) -> str:
        loss = "—" if self.val_loss is None else f"{self.val_loss:.4f}"
        return (f"trial {self.number:>2}: lstm {self.size.replace('x', '×')}, lr {self.lr:.3g} "
                f"(×{self.lr_factor:.2f}), dropout {self.dropout:.2f}: val loss {loss} after {self.steps} steps, "
                f"{self.state} ({self.seconds:.1f} s)")

    def row(self) -> dict[str, Any]:
        return {"number": self.number, "size": self.size, "lr": round(self.lr, 6),
                "lr_factor": round(self.lr_factor, 4), "dropout": self.dropout, "steps": self.steps,
                "val_loss": None if self.val_loss is None else round(self.val_loss, 5), "state": self.state,
                "seconds": round(self.seconds, 2)}


@dataclass
class SearchResult:
    space: SearchSpace
    trials: list[Trial]
    best: Trial
    plan: Plan  # the best trial's size planned for the rest of the budget, with its lr and dropout
    spent: float  # seconds or steps

    def summary(self) -> str:
        pruned = sum(t.state == "pruned" for t in self.trials)
        unit = "s" if self.space.in_seconds else " steps"
        first = self.trials[0]
        versus = (f" (the plan, trial 0: {first.val_loss:.4f})"
                  if self.best is not first and first.val_loss is not None else "")
        return (f"search: {len(self.trials)} trials ({pruned} pruned) in {self.spent:.4g}{unit}; best trial "
                f"{self.best.number}: lstm {self.best.size.replace('x', '×')}, lr {self.best.lr:.3g}, dropout "
                f"{self.best.dropout:.2f}, val loss {self.best.val_loss:.4f}{versus}")

    def tables(self) -> dict[str, str]:
        """trials.csv, and trials.md for reading: one row per trial, the chosen one marked."""
        rows = [t.row() for t in self.trials]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        head = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
        body = ""
        for trial, row in zip(self.trials, rows):
            cells = ["—" if v is None else str(v) for v in row.values()]
            cells[0] = f"**{cells[0]}**" if trial is self.best else cells[0]
            body += "| " + " | ".join(cells) + " |\n"
        md = (f"# Search\n\n{self.space.describe()}\n\n{self.summary()}\n\nThe trial in bold was trained for the "
              f"rest of the budget; val_loss is in nats per token, on the same validation tokens for every trial.\n\n"
              f"{head}{body}")
        return {"trials.csv": buffer.getvalue(), "trials.md": md}

    def recording(self, on_event: Event | None = None) -> Event:
        """`on_event` for the final run: also writes the trials tables into its folder once it exists."""
        def handle(kind: str, info: dict[str, Any]) -> None:
            if kind == "start":
                from charlm.training.rundir import RunDir

                for name, text in self.tables().items():
                    RunDir(info["run_dir"]).write_file(name, text)
            if on_event is not None:
                on_event(kind, info)
        return handle


def search_config(corpus: str, budget: Budget, overrides: list[str] | None = None, *,
                  share: float = DEFAULT_SHARE, device: str = "auto", recalibrate: bool = False,
                  force: bool = False, pruner=None, on_event: Event | None = None, note=None, **rules):
    """(RunConfig, SearchResult): search around the plan for `corpus`, then plan the best trial for the rest.

    `on_event` hears ("plan", {"text"}), ("trial", {"trial", "text"}) and ("result", {"result", "text"}).
    `pruner` replaces the successive-halving one (tests); `rules` go to the planner, as in plan_corpus.
    """
    optuna = require_optuna()
    from charlm.planning.calibrate import measure_corpus, run_name
    from charlm.config import build_config
    from charlm.training.rundir import RunDir

    emit = on_event or (lambda kind, info: None)
    overrides = list(overrides or [])
    prepared, profile, speed = measure_corpus(corpus, device=device, recalibrate=recalibrate, note=note)
    if len(prepared.val) < 2:
        raise ConfigError(f"--search scores trials on the validation split, and {corpus} has none")
    space = search_space(profile, budget, speed, share, **rules)
    name = run_name(corpus)
    final = build_config(space.sizes[space.center].config, overrides, name=name)  # --set mistakes, before a trial
    RunDir(final.train.out or f"runs/{name}").check(resume=False, force=force)  # a taken folder, before a trial
    emit("plan", {"text": f"{space.sizes[space.center].describe()}\n{space.describe()}"})

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=final.train.seed,
                                                                 n_startup_trials=STARTUP_TRIALS),
        pruner=pruner or optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2))
    study.enqueue_trial({"size": space.center, "lr_factor": 1.0,
                         "dropout": space.sizes[space.center].config["model"]["dropout"]})
    corpus_sample = replace(prepared, val=prepared.val[:VAL_SAMPLE])
    trial_overrides = [o for o in overrides if override_key(o) not in TRIAL_OWN]
    trials: list[Trial] = []
    started, spent, longest = clock(), 0.0, space.trial
    with tempfile.TemporaryDirectory() as scratch:
        while not trials or spent + longest <= space.search:
            asked = study.ask()
            size = asked.suggest_categorical("size", list(space.sizes))
            factor = asked.suggest_float("lr_factor", *LR_FACTORS, log=True)
            dropout = asked.suggest_float("dropout", *space.dropout, step=0.05)
            steps = space.trial_steps(size)
            left = space.search - spent if space.in_seconds else None
            cfg = build_config(_trial_config(space.sizes[size].config, steps, factor, dropout, left),
                               trial_overrides, name=f"trial-{asked.number}")
            trial = Trial(asked.number, size, cfg.optim.lr, factor, round(dropout, 2))
            began = clock()
            _run_trial(cfg, corpus_sample, scratch, asked, trial, steps)
            trial.seconds = clock() - began
            state = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED
                     }.get(trial.state, optuna.trial.TrialState.FAIL)
            study.tell(asked, trial.val_loss if trial.state == "complete" else None, state=state)
            trials.append(trial)
            if trial.state == "complete":
                longest = max(longest, trial.seconds)
            spent = clock() - started if space.in_seconds else spent + trial.steps
            emit("trial", {"trial": trial, "text": trial.line()})
    done = [t for t in trials if t.state == "complete" and t.val_loss is not None]
    if not done:
        raise CharLMError("--search: no trial trained to its end (each diverged or ran out of the share); "
                          "try a larger --search-share, or train the plan without --search")
    best = min(done, key=lambda t: t.val_loss)
    made = _final_plan(space, best, profile, speed, spent, rules)
    made.reasons.append(f"searched: trial {best.number} of {len(trials)} scored best")
    result = SearchResult(space, trials, best, made, spent)
    emit("result", {"result": result, "text": f"{result.summary()}\n{made.describe()}"})
    return build_config(made.config, overrides, name=name), result


def _trial_config(config: dict[str, Any], steps: int, factor: float, dropout: float,
                  seconds_left: float | None) -> dict[str, Any]:
    """A size's planned config, compressed into `steps` with the trial's lr and dropout."""
    lr, family = config["optim"]["lr"] * factor, config["model"]["name"]
    optim = {"lr": lr, "min_lr": lr * planner.min_lr_share(family), "warmup_steps": planner.warmup_steps(family, steps)}
    return {**config, "model": {**config["model"], "dropout": round(dropout, 2)},
            "optim": {**config["optim"], **optim},
            # the share's end is a safety net: a trial estimated to fit should finish by its steps
            "train": {"max_steps": steps, "max_time": seconds_left, "eval_every": steps // RUNGS,
                      "log_every": steps // RUNGS}}


def _run_trial(cfg, corpus, scratch: str, asked, trial: Trial, steps: int) -> None:
    """Train `cfg` from scratch with the library's Trainer, writing nothing; report each validation to Optuna."""
    import torch

    from charlm.training.loop import Trainer, TrainingDiverged
    from charlm.models import build_model
    from charlm.training.rundir import RunDir
    from charlm.device.runtime import training_device
    from charlm.train import model_options

    stop, every = threading.Event(), steps // RUNGS

    def on_event(kind: str, info: dict[str, Any]) -> None:
        if kind != "log" or info.get("val_perplexity") is None:
            return
        trial.steps, trial.val_loss = info["step"], math.log(info["val_perplexity"])
        rung = info["step"] // every
        asked.report(trial.val_loss, rung)
        if rung < RUNGS and asked.should_prune():
            stop.set()  # the trainer stops after its current step

    device = training_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)  # as train.open_run seeds a run: the same weights for the same seed
    model, model_args = build_model(cfg.model.name, len(corpus.vocab), **model_options(cfg))
    trainer = Trainer(cfg, model.to(device), corpus, RunDir(scratch, writer=False), device, emit=on_event,
                      model_args=model_args)
    try:
        trainer.fit(stop)
    except TrainingDiverged:
        trial.state, trial.val_loss, trial.steps = "diverged", None, trainer.step
        return
    trial.steps = trainer.step
    trial.state = "pruned" if stop.is_set() else "complete" if trainer.step >= steps else "out of time"


def _final_plan(space: SearchSpace, best: Trial, profile, speed, spent: float, rules) -> Plan:
    """The best trial's size and batch planned for the budget the search left, with its lr and dropout."""
    sized = space.sizes[best.size]
    left = (Budget(seconds=space.budget.seconds - spent) if space.in_seconds
            else Budget(steps=max(1, space.budget.steps - int(spent))))
    made = planner.plan(profile, left, speed, rules=rules.get("rules"), candidates=(sized.candidate,))
    lr = made.config["optim"]["lr"] * best.lr_factor
    made.config["optim"].update(lr=round(lr, 5), min_lr=round(lr * planner.min_lr_share(sized.candidate.family), 6))
    made.config["model"]["dropout"] = best.dropout
    return made
