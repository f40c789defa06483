"""The commands that use a trained run: `charlm evaluate`, `generate`, `score`, `starts` and `serve`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from charlm.cli import app
from charlm.cli.console import err, friendly, out
from charlm.errors import CharLMError

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
