"""`charlm train`, `plan` and `plot`: a run from a config or a time budget, its plan, its curves."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from charlm.cli import app
from charlm.cli.console import err, friendly, out
from charlm.errors import CharLMError

@app.command(epilog="Examples: charlm train my_text.txt --time 5m\n\n"
                    "charlm train my_text.txt --config rnn\n\n"
                    "charlm train data/my_text --config lstm --set train.max_steps=500\n\n"
                    "charlm train --config rnn  (the config's own corpus: The Time Machine)\n\n"
                    "charlm train --resume runs/rnn --set train.max_steps=4000")
@friendly
def train(
    text: Optional[str] = typer.Argument(
        None, metavar="[TEXT]", help="Train on this: a text file, a folder `charlm preprocess` wrote, or a built-in "
        "dataset (timemachine, tinyshakespeare); default: the config's data.corpus. Your text is kept as is "
        "(data.normalize none) unless you set data.normalize."),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="YAML config: a file, or a shipped config's name (see `charlm configs`)."),
    overrides: List[str] = typer.Option([], "--set", help="Override a key: --set optim.lr=0.001 (repeatable)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder from last.pt."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from these weights, fresh optimizer."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing run folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only a final summary line."),
    nproc: int = typer.Option(1, "--nproc", help="Processes for data-parallel training (launches torchrun)."),
    time_budget: Optional[str] = typer.Option(
        None, "--time", "-t", help="Train for this long: 90s, 5m, 1h30m. Without --config the model is planned for "
        "TEXT and this machine (see `charlm plan`); with one, it replaces the config's step or time limit."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Train this many steps (planned as --time is)."),
    search: bool = typer.Option(False, "--search", help="Spend a share of the budget on short trials around the "
                                "plan (learning rate, dropout, neighbouring sizes), then train the best for the rest "
                                "(needs charlm\\[tune])."),
    search_share: Optional[float] = typer.Option(None, "--search-share", help="The budget's share for --search: "
                                                 "above 0, at most 0.8 (default 0.25)."),
) -> None:
    """Train a model on TEXT from a YAML config, or planned for a time (--time); writes checkpoints, metrics and
    curves to the run folder. The first line says which corpus and data folder the run trains on."""
    from charlm.config import load_config
    from charlm.planning.planner import Budget, budget_overrides, parse_duration

    if resume is not None and init_from is not None:
        raise CharLMError("--resume and --init-from exclude each other")
    if nproc < 1:
        raise CharLMError(f"--nproc must be at least 1, got {nproc}")
    seconds = parse_duration(time_budget) if time_budget is not None else None
    budget = Budget(seconds, steps) if seconds is not None or steps is not None else None
    if search or search_share is not None:
        from charlm.planning.tune import check_search

        search_share = check_search(search, search_share, budget=budget, text=text, config=config, resume=resume,
                                    init_from=init_from, overrides=overrides)
    if resume is not None and config is None and (resume / "config.yaml").is_file():
        config = resume / "config.yaml"
    found = None
    if config is None and resume is None and text is not None and budget is not None:
        from charlm.planning.calibrate import planned_config

        if nproc > 1:  # each worker would measure and might plan another model
            raise CharLMError("--nproc takes a config: save the plan with `charlm plan TEXT --time ... --yaml > "
                              "plan.yaml`, then `charlm train --config plan.yaml --nproc N`")
        note = lambda message: err.print(escape(message))  # noqa: E731
        if search:
            from charlm.planning.tune import search_config

            cfg, found = search_config(text, budget, overrides, share=search_share, force=force, note=note,
                                       on_event=lambda kind, info: out.print(escape(info["text"]), highlight=False))
        else:
            cfg, made = planned_config(text, budget, overrides, note=note)
            out.print(escape(made.describe()), highlight=False)
    else:
        cfg = load_config(config, overrides + budget_overrides(seconds, steps), corpus=text)
    if config is None and resume is None and budget is None:  # the built-in defaults are no model anyone chose
        raise CharLMError(f"give a budget or a config: `charlm train {shlex.quote(text or 'TEXT')} --time 5m` plans "
                          "one, --config NAME takes a shipped one (`charlm configs` lists them, e.g. rnn) or "
                          "--config FILE.yaml; --resume RUN reuses the run's own")
    if config is None and resume is None and text is None:
        raise CharLMError("--time and --steps plan a run for a text: `charlm train TEXT --time 5m`")
    if resume is not None:
        cfg = cfg.replace("train", out=str(resume))
    if nproc > 1:
        from charlm.training.distributed import check_launch, launch

        check_launch(cfg, nproc)
        raise typer.Exit(launch(nproc, sys.argv[1:]))
    from charlm.cli.report import TrainingDisplay
    from charlm.device.runtime import stop_on_signals
    from charlm.train import train as run_training

    from charlm.training.distributed import is_main_process

    display = TrainingDisplay(out, quiet=quiet)
    # Ctrl-C or SIGTERM: the run stops after the current step, saved and resumable.
    with display, stop_on_signals() as stop:
        result = run_training(cfg, resume=resume is not None, force=force, init_from=init_from,
                              on_event=found.recording(display.on_event) if found else display.on_event, stop=stop)
        if is_main_process():
            display.summary(result)  # while the bar is live, so its last frame can show the run's figures


@app.command(epilog="Examples: charlm plan mytext.txt --time 5m\n\ncharlm plan tinyshakespeare --time 90s --yaml")
@friendly
def plan(
    corpus: str = typer.Argument(..., help="A text file, or a built-in dataset: timemachine, tinyshakespeare."),
    time_budget: Optional[str] = typer.Option(None, "--time", "-t", help="Training time: 90s, 5m, 1h30m."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps instead of a time."),
    as_yaml: bool = typer.Option(False, "--yaml", help="Print the whole config as YAML."),
    device: str = typer.Option("auto", help="cpu, cuda or auto: the device to plan (and calibrate) for."),
    recalibrate: bool = typer.Option(False, "--recalibrate", help="Measure this device again, ignoring the cache."),
    search: bool = typer.Option(False, "--search", help="Also say what `charlm train --search` would try."),
    search_share: Optional[float] = typer.Option(None, "--search-share", help="The budget's share for --search."),
    overrides: List[str] = typer.Option([], "--set", help="Override a key as `charlm train TEXT` would: "
                                        "--set data.normalize=letters (repeatable)."),
) -> None:
    """Plan a run for a text and a budget from this device's measured speed; print it without training."""
    from charlm.planning.calibrate import planned_config
    from charlm.config import dump_yaml
    from charlm.planning.planner import Budget, parse_duration

    budget = Budget(parse_duration(time_budget) if time_budget is not None else None, steps)
    if search or search_share is not None:
        from charlm.planning.search_space import check_share

        search_share = check_share(search_share, search)
    note = lambda message: err.print(escape(message), highlight=False)  # noqa: E731
    cfg, result = planned_config(corpus, budget, overrides, device=device, recalibrate=recalibrate, note=note)
    out.print(escape(result.describe()), highlight=False)
    if search:
        from charlm.planning.tune import plan_search

        out.print(escape(plan_search(corpus, budget, search_share, device=device, note=note)), highlight=False)
    if as_yaml:  # the config `charlm train TEXT` with the same --set would train
        print(dump_yaml(cfg), end="")


@app.command(epilog="Examples: charlm plot\n\ncharlm plot runs/rnn")
@friendly
def plot(run: Optional[Path] = typer.Argument(
        None, help="A run folder (holds metrics.jsonl); default: the most recent run.")) -> None:
    """Redraw a run's curves.png: train and validation perplexity against step."""
    from charlm.training.plot import plot_run

    out.print(f"wrote {escape(str(plot_run(run)))}", highlight=False)
