"""The `charlm` command line: parses, calls the library, prints, sets exit codes. Nothing else."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from charlm import __version__
from charlm.cli.console import err, friendly, out
from charlm.errors import CharLMError

app = typer.Typer(
    name="charlm",
    help="Train, evaluate and sample character-level language models.\n\n"
         "Example: charlm train my_text.txt --config rnn && charlm generate --prefix 'The '",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
def version_callback(value: bool) -> None:
    if value:
        out.print(f"charlm {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    """Train, evaluate and sample character-level language models."""


@app.command(epilog="Example: charlm preprocess timemachine --normalize letters")
@friendly
def preprocess(
    corpus: str = typer.Argument(..., help="A text file, or a built-in dataset: timemachine, tinyshakespeare."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default data/<name>)."),
    level: str = typer.Option("char", help="Tokens: char or word (words, punctuation and whitespace)."),
    normalize: str = typer.Option("none", help="none (keep every character), lower, or letters (D2L: only a-z, "
                                               "lowercased; every other character, accented and non-Latin "
                                               "letters too, becomes a space)."),
    val_fraction: float = typer.Option(0.1, help="Share of the text, at its end, kept for validation."),
    min_freq: int = typer.Option(1, help="Tokens seen fewer times in training become <unk>."),
    errors: str = typer.Option("strict", help="Invalid UTF-8: strict (stop) or replace (use U+FFFD)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    stats_only: bool = typer.Option(False, "--stats-only", help="Print the statistics; write nothing."),
) -> None:
    """Encode a corpus into train.bin/val.bin with its vocabulary and n-gram statistics."""
    from charlm.config import build_config
    from charlm.data.corpus import preprocess as run_preprocess

    build_config({"data": {"level": level, "normalize": normalize, "val_fraction": val_fraction,
                           "min_freq": min_freq}})
    if errors not in ("strict", "replace"):
        raise CharLMError(f"--errors: '{errors}' is not one of strict, replace")
    result = run_preprocess(corpus, out_dir, level=level, normalize=normalize, val_fraction=val_fraction,
                            min_freq=min_freq, errors=errors, force=force, stats_only=stats_only)
    from charlm.data.encode import letters_warning
    from charlm.cli.report import print_corpus_stats

    print_corpus_stats(out, result, written=not stats_only)
    if warning := letters_warning(result.stats):
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


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
) -> None:
    """Plan a run for a text and a budget from this device's measured speed; print it without training."""
    from charlm.planning.calibrate import plan_corpus
    from charlm.config import build_config, dump_yaml
    from charlm.planning.planner import Budget, parse_duration

    budget = Budget(parse_duration(time_budget) if time_budget is not None else None, steps)
    if search or search_share is not None:
        from charlm.planning.search_space import check_share

        search_share = check_share(search_share, search)
    note = lambda message: err.print(escape(message), highlight=False)  # noqa: E731
    result = plan_corpus(corpus, budget, device=device, recalibrate=recalibrate, note=note)
    out.print(escape(result.describe()), highlight=False)
    if search:
        from charlm.planning.tune import plan_search

        out.print(escape(plan_search(corpus, budget, search_share, device=device, note=note)), highlight=False)
    if as_yaml:
        print(dump_yaml(build_config(result.config, name="plan")), end="")


@app.command(epilog="Examples: charlm plot\n\ncharlm plot runs/rnn")
@friendly
def plot(run: Optional[Path] = typer.Argument(
        None, help="A run folder (holds metrics.jsonl); default: the most recent run.")) -> None:
    """Redraw a run's curves.png: train and validation perplexity against step."""
    from charlm.training.plot import plot_run

    out.print(f"wrote {escape(str(plot_run(run)))}", highlight=False)


@app.command(epilog="Examples: charlm evaluate\n\ncharlm evaluate --checkpoint runs/lstm --data held_out.txt --json")
@friendly
def evaluate(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-C",
                                              help="Run folder (uses best.pt) or checkpoint file; "
                                                   "default: the most recent run."),
    data: str = typer.Option("val", "--data", "-d", help="'val' for the run's validation split, or a text file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    precision: str = typer.Option("auto", help="auto (as the run trained, where this device has it), fp32 or bf16."),
) -> None:
    """Score a text or the validation split: cross-entropy, bits per token, perplexity."""
    from charlm.inference import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, data, device=device, precision=precision)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    from charlm.cli.report import print_evaluation

    print_evaluation(out, result, data)


@app.command(epilog='Examples: charlm generate --prefix "time traveller"\n\n'
                    'charlm generate --prefix "ROMEO:" --strategy top_p --top-p 0.9 --num-samples 3 --seed 1\n\n'
                    "charlm generate --prefix 'ROMEO:\\n' --stop '\\n\\n' --precision bf16")
@friendly
def generate(
    prefix: Optional[str] = typer.Option(
        None, "--prefix", help="Text that warms the state (default: the config's); escapes such as \\n, "
        "\\t, \\xNN, \\uNNNN are read, \\\\ is a backslash. Empty: start as after a newline "
        "(a space where the vocabulary has none)."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", "-C", help="Run folder or checkpoint file; default: the most recent run."),
    length: Optional[int] = typer.Option(None, help="Tokens to generate (at least 1)."),
    strategy: Optional[str] = typer.Option(None, help="greedy, sample, top_k or top_p."),
    temperature: Optional[float] = typer.Option(None, help="Softmax temperature; 0 means greedy."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep the k most likely tokens (top_k)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Keep the smallest set with this mass (top_p)."),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", "-n", help="Samples, generated as one batch."),
    seed: Optional[int] = typer.Option(None, help="Random seed: the same seed gives the same text."),
    stop: Optional[str] = typer.Option(None, help="Stop a sample once it produces this string (escapes as in --prefix, "
                                                  "so '\\n\\n' is a blank line)."),
    unknown: Optional[str] = typer.Option(None, help="Prefix characters outside the vocabulary: error or map "
                                                     "(to <unk>)."),
    precision: Optional[str] = typer.Option(
        None, help="The recurrent step's weights: fp32 (default, exact), or opt-in bf16 or int8 (faster on some "
                   "CPUs, slightly different text)."),
    continuation_only: bool = typer.Option(False, "--continuation-only", help="Print only the new text."),
    check_novelty: bool = typer.Option(False, "--check-novelty",
                                       help="Report each sample's longest substring found in the training text, "
                                            "and which whole generated lines are lines of it (on stderr)."),
    plain: bool = typer.Option(False, "--plain", help="Samples one after another, no '--- sample N' headers or blank "
                                                      "lines: -n 200 --stop '\\n' --continuation-only --plain "
                                                      "prints a word list one per line."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
) -> None:
    """Continue a prefix, one token at a time with the state carried (streams as it goes)."""
    from charlm.generation.generate import unescape
    from charlm.inference import generate_from_checkpoint

    streaming = (num_samples or 1) == 1 and out.is_terminal
    overrides = dict(prefix=None if prefix is None else unescape(prefix, "--prefix"), length=length,
                     strategy=strategy, temperature=temperature, top_k=top_k, top_p=top_p, num_samples=num_samples,
                     seed=seed, stop=None if stop is None else unescape(stop, "--stop"), unknown=unknown,
                     precision=precision)
    pending_prefix = []

    def show_prefix(text: str) -> None:
        if streaming and not continuation_only:
            pending_prefix.append(text)

    def on_token(step: int, tokens: list[str]) -> None:
        # The prefix is written with the first token, once generation has started: a prefix it
        # rejects must leave nothing on stdout but the error line.
        out.file.write("".join(pending_prefix) + tokens[0])
        pending_prefix.clear()
        out.file.flush()

    run = generate_from_checkpoint(checkpoint, device=device, check_novelty=check_novelty, on_prefix=show_prefix,
                                   on_token=on_token if streaming else None, **overrides)
    for warning in run.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    for i, text in enumerate(run.result.continuations):
        if streaming:
            out.file.write("\n")
        else:
            if len(run.result.continuations) > 1 and not plain:
                out.print(f"[dim]--- sample {i + 1}[/]", highlight=False)
            body = ("" if continuation_only else run.result.prefix) + text
            out.file.write(body if plain and body.endswith("\n") else body + "\n")
        if run.novelty:
            length_found, found = run.novelty[i]
            checked, copied = run.copied_lines[i]
            lines = (f"; whole lines also in it: {len(copied)} of {checked}"
                     + (f" ({', '.join(repr(line[:30]) for line in copied[:3])})" if copied else "")) if checked else ""
            err.print(f"[dim]novelty: longest substring also in the training text: {length_found} "
                      f"characters ({escape(repr(found[:60]))}){escape(lines)}[/]", highlight=False)
    if run.novelty and len(run.copied_lines) > 1:
        checked = sum(n for n, _ in run.copied_lines)
        copied = sum(len(found) for _, found in run.copied_lines)
        err.print(f"novelty: {copied} of {checked} whole generated lines are lines of the training text",
                  highlight=False)
    out.file.flush()


@app.command(epilog='Examples: charlm score "the time traveller smiled"\n\ncharlm score --file chapter.txt --json')
@friendly
def score(
    text: Optional[str] = typer.Argument(None, help="Text to score (or use --file)."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Score this text file instead."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", "-C", help="Run folder or checkpoint file; default: the most recent run."),
    as_json: bool = typer.Option(False, "--json", help="Print per-token surprisal as JSON."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    precision: str = typer.Option("auto", help="auto (as the run trained, where this device has it), fp32 or bf16."),
) -> None:
    """Colour each character of a text by its surprisal (-log2 p) under the model."""
    from charlm.inference import score_checkpoint

    if (text is None) == (file is None):
        raise CharLMError("give either TEXT or --file, not both or neither")
    result = score_checkpoint(checkpoint, text, file, device=device, precision=precision)
    if as_json:
        print(json.dumps({"tokens": result.tokens, "surprisal_bits": result.surprisal_bits,
                          "total_bits": result.total_bits, "perplexity": result.perplexity,
                          "unknown": result.unknown}, ensure_ascii=False))
        return
    from charlm.cli.report import print_surprisal

    print_surprisal(out, result)


@app.command(epilog="Examples: charlm starts\n\ncharlm starts -C runs/shakespeare_lstm --json")
@friendly
def starts(
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", "-C", help="Run folder or checkpoint file; default: the most recent run."),
    length: int = typer.Option(64, help="Validation tokens scored after each start."),
    max_starts: int = typer.Option(5000, "--max-starts", help="Score all pairs up to this many, a sample beyond."),
    top: int = typer.Option(10, help="Worst starts to list."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
) -> None:
    """Check every two-token start: validation text after it scored worse than uniform means derailed (exit 1)."""
    from charlm.evaluation.derail import check_checkpoint

    result = check_checkpoint(checkpoint, device=device, length=length, max_starts=max_starts, top=top)
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        from charlm.cli.report import print_starts

        print_starts(out, result)
    if result.derailed:
        raise typer.Exit(1)


@app.command(epilog="Examples: charlm serve runs/rnn\n\ncharlm serve runs/rnn runs/lstm --port 8001")
@friendly
def serve(
    runs: Optional[List[Path]] = typer.Argument(None, help="Run folders to serve (default: every run in runs/)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; anything but loopback is reachable by others."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
) -> None:
    """A local web page: generate with streamed text, per-character surprisal, training curves
    (needs charlm\\[serve])."""
    from charlm.serve import check_port, find_runs, is_loopback, run_server

    found = find_runs(list(runs or []))
    check_port(host, port)
    if not is_loopback(host):
        err.print(f"[yellow]warning:[/] listening on {escape(host)}: anyone who can reach this machine can use "
                  "these models", highlight=False)
    out.print(f"serving {escape(', '.join(found))} at http://{escape(host)}:{port} (Ctrl-C stops)", highlight=False)
    run_server(found, host, port)


configs_app = typer.Typer(help="List the shipped configs, or copy one out to edit.", no_args_is_help=False,
                          context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(configs_app, name="configs")


@configs_app.callback(invoke_without_command=True,
                      epilog="Examples: charlm configs\n\ncharlm configs copy lstm my_lstm.yaml")
@friendly
def configs(ctx: typer.Context) -> None:
    """List the configs shipped with charlm; `charlm train --config NAME` runs one."""
    if ctx.invoked_subcommand is not None:
        return
    from charlm.cli.report import print_configs
    from charlm.config.shipped import shipped_configs

    print_configs(out, shipped_configs().values())


@configs_app.command("copy", epilog="Example: charlm configs copy rnn my_rnn.yaml && charlm train -c my_rnn.yaml")
@friendly
def configs_copy(
    name: str = typer.Argument(..., help="A shipped config's name (see `charlm configs`)."),
    dest: Optional[Path] = typer.Argument(None, help="File or folder to write (default ./NAME.yaml)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a shipped config to a file you can edit."""
    from charlm.config.shipped import copy_config

    out.print(f"wrote {escape(str(copy_config(name, dest, force=force)))}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
