"""Rich rendering for the CLI: the training progress bar and summary tables. No library logic."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


MAX_ERROR_CHARS = 1000  # a message quoting a value the user gave stays a line, however big the value


def shorten(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`message` cut in its middle (keeping the end, which says what to do) to at most `limit` characters."""
    if len(message) <= limit:
        return message
    tail = limit // 3
    return f"{message[:limit - tail - 1]}…{message[-tail:]}"


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def corpus_phrase(info: dict[str, Any]) -> str:
    """Which text a run trains on, the folder it reads, and how the text was normalized."""
    corpus, folder = str(info.get("corpus", "?")), str(info.get("data_dir", "?"))
    how = {"none": "text as is", "lower": "lowercased",
           "letters": "letters a-z only"}.get(info.get("normalize"), str(info.get("normalize")))
    same = Path(corpus).resolve() == Path(folder).resolve()
    return escape(f"{corpus} ({'' if same else folder + ', '}{how}, vocabulary {info.get('vocab_size')})")


class TrainingDisplay:
    """Turns the trainer's events into a progress bar (or, with quiet, into nothing until the end)."""

    def __init__(self, console: Console, quiet: bool = False):
        self.console, self.quiet = console, quiet
        self.progress: Progress | None = None
        self.task = None
        self.val: float | None = None
        self.info: dict[str, Any] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False

    def on_event(self, kind: str, info: dict[str, Any]) -> None:
        getattr(self, f"_on_{kind}", lambda info: None)(info)

    def _on_start(self, info):
        self.info = info
        if self.quiet:
            return
        world = f" × {info['world_size']} processes" if info.get("world_size", 1) > 1 else ""
        precision = f" in {info['precision']} ({escape(info['precision_reason'])})" if info.get("precision") else ""
        self.console.print(f"training [bold]{info['model']}[/] ({info['parameters']:,} parameters) on "
                           f"{corpus_phrase(info)} on {info['device']}{world}{precision} → "
                           f"{escape(str(info['run_dir']))}", highlight=False)
        if info.get("val_sample_tokens"):
            self.console.print(f"evaluations during training score the first {info['val_sample_tokens']:,} of "
                               f"{info['val_tokens']:,} validation tokens (train.eval_tokens, shown as ≈); "
                               "best.pt is scored on the whole split at the end", highlight=False)
        if not info["total_steps"] and not info.get("max_time"):
            return
        self.progress = Progress(
            # Fits 80 columns: train perplexity is in each evaluation line printed above the bar.
            # The bar's total is the limit that binds (steps or max_time), so time-left follows it.
            TextColumn("[bold]train[/]"), BarColumn(bar_width=10), TextColumn("{task.fields[where]}"),
            TextColumn("ep {task.fields[epoch]} loss {task.fields[loss]} val {task.fields[val]} "
                       "{task.fields[tps]} tok/s |g| {task.fields[grad]}"),
            TimeRemainingColumn(), console=self.console, transient=False, refresh_per_second=4)
        self.progress.start()
        self.task = self.progress.add_task("train", total=1.0, completed=info.get("progress", 0.0),
                                           where=self._where(info.get("step", 0), "steps"),
                                           epoch=0, loss="—", val="—", tps="—", grad="—")

    def _where(self, step: int, bound_by: str, elapsed: float = 0.0) -> str:
        total = self.info.get("total_steps")
        if bound_by == "time" or not total:
            return f"{elapsed:.0f}/{self.info['max_time']:g}s"
        return f"{step}/{total}"

    def _on_log(self, row):
        if row.get("val_perplexity") is not None:
            self.val = row["val_perplexity"]
        # A sampled validation figure is never shown bare: ≈ marks it, as the start line explains.
        approx = "≈" if self.info.get("val_sample_tokens") else ""
        if self.quiet or self.progress is None:
            if not self.quiet and "val_perplexity" in row:
                self.console.print(f"step {row['step']}: val perplexity {approx}{_fmt(self.val)}")
            return
        where = self._where(row["step"], row.get("bound_by", "steps"), row.get("elapsed", 0.0))
        self.progress.update(self.task, completed=row.get("progress", 0.0), where=where, epoch=row["epoch"],
                             loss=_fmt(row["loss"]),
                             val=approx + _fmt(self.val, ".2f"),
                             tps=f"{row['tokens_per_s'] / 1000:.1f}k", grad=_fmt(row["grad_norm"], ".2f"))
        if "val_perplexity" in row and row["val_perplexity"] is not None:
            self.progress.console.print(f"step {row['step']:>6}  train ppl {row['perplexity']:.3f}  "
                                        f"val ppl {approx}{row['val_perplexity']:.3f}  clipped {row['clipped']}",
                                        highlight=False)

    def _on_eval(self, row):
        self.val = row.get("val_perplexity")

    def _on_note(self, info):
        if not self.quiet:
            self.console.print(f"[yellow]note:[/] {escape(info['message'])}", highlight=False)

    def summary(self, result) -> None:
        if self.progress is not None:
            # The last frame shows the run's tokens/s, the number the summary line gives, not the last window's.
            self.progress.update(self.task, tps=f"{result.tokens_per_s / 1000:.1f}k")
            self.progress.stop()
            self.progress = None
        best, sampled, n = result.best_val_perplexity, result.sampled_best_val_perplexity, result.val_sample_tokens
        shown = _fmt(best) + (f" ({math.log2(best):.3f} bits/token)" if best else "")
        if sampled is not None and best is None and result.pending:  # stopped during best.pt's final pass
            shown = (f"≈{sampled:.3f} on the {n:,}-token sample (its whole-split score was stopped: "
                     f"charlm train --resume {result.run_dir} computes it)")
        elif sampled is not None and best is None:  # interrupted: the finished run will score the whole split
            shown = f"≈{sampled:.3f} on the {n:,}-token sample (the whole split is scored when the run finishes)"
        elif sampled is not None:
            shown += f" on the whole split (≈{sampled:.3f} on the {n:,}-token sample that chose it)"
        # Training time leaves evaluations out; where they took longer (a counting model's one pass
        # of counts, a long validation split), say so rather than print a run that seems instant.
        took = f" (+{result.validation_s:.1f}s validation)" if result.validation_s > result.elapsed else ""
        line = (f"{result.status} at step {result.step} in {result.elapsed:.1f}s{took}, "
                f"{result.tokens_per_s:,.0f} tok/s; "
                f"best val perplexity {shown} → {result.run_dir}")
        self.console.print(line, highlight=False, soft_wrap=True, markup=False)
        if result.status == "interrupted":
            self.console.print(f"resume with: charlm train --resume {result.run_dir}", highlight=False, markup=False)


def print_corpus_stats(console: Console, result, written: bool) -> None:
    """The counting-model view of a corpus: sizes, then the top n-grams and their Zipf slopes."""
    stats, meta = result.stats, result.meta
    console.print(f"[bold]{escape(str(meta.get('name')))}[/]: {stats['tokens']:,} {meta['level']} tokens "
                  f"(normalize={meta['normalize']}), train {stats['train_tokens']:,} / val {stats['val_tokens']:,}, "
                  f"vocabulary {stats['vocab_size']:,} (with <unk>)", highlight=False)
    if stats.get("val_unknown"):
        # Folders from before val_unseen/val_rare were counted say only how many went to <unk>.
        unseen, rare = stats.get("val_unseen", stats["val_unknown"]), stats.get("val_rare", 0)
        for count, key, what in ((unseen, "val_unknown_tokens", "unseen in training"),
                                 (rare, "val_rare_tokens", f"seen fewer than --min-freq {meta.get('min_freq')} "
                                                           "times in training")):
            if count:
                shown = ", ".join(repr(t) for t in stats.get(key, [])[:10])
                console.print(f"validation tokens {what}, mapped to <unk>: {count:,} ({shown})",
                              highlight=False, markup=False)
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for order in ("unigrams", "bigrams", "trigrams"):
        table.add_column(f"top {order}", no_wrap=True)
    tops = [stats[order]["top"] for order in ("unigrams", "bigrams", "trigrams")]
    for i in range(max(len(t) for t in tops)):
        table.add_row(*(escape(f"{_show(t[i]['tokens'])} {t[i]['count']:,}") if i < len(t) else "" for t in tops))
    console.print(table)
    slopes = ", ".join(f"{o} {_fmt(stats[o]['zipf_slope'], '.2f')}" for o in ("unigrams", "bigrams", "trigrams"))
    console.print(f"Zipf slope (log frequency vs log rank): {slopes}", highlight=False)
    if written and result.folder is not None:
        console.print(f"wrote {result.folder} ({meta['dtype']} ids)", highlight=False, markup=False)


def _show(tokens: list[str]) -> str:
    return repr("".join(tokens)) if all(len(t) == 1 for t in tokens) else repr(" ".join(tokens))


SURPRISAL_STYLES = ((1.0, "green"), (2.0, "bright_green"), (4.0, "yellow"), (8.0, "red"), (math.inf, "bold magenta"))


def _surprisal_style(bits: float | None) -> str:
    if bits is None:
        return "dim"
    return next(style for limit, style in SURPRISAL_STYLES if bits < limit)


def print_surprisal(console: Console, result) -> None:
    """The text with every token coloured by −log2 p, a legend, and the totals."""
    from rich.text import Text

    text = Text()
    for token, bits in zip(result.tokens, result.surprisal_bits):
        underline = " underline" if token.isspace() and bits and bits >= 4 else ""
        text.append(token, style=_surprisal_style(bits) + underline)
    console.print(text)
    legend = Text("surprisal: ")
    low = 0.0
    for limit, style in SURPRISAL_STYLES:
        label = f"{low:g}–{limit:g} bits" if math.isfinite(limit) else f"≥{low:g} bits"
        legend.append(f"■ {label}  ", style=style)
        low = limit
    console.print(legend)
    scored = sum(b is not None for b in result.surprisal_bits)
    console.print(f"total {result.total_bits:.1f} bits over {scored} predicted tokens "
                  f"({result.total_bits / max(scored, 1):.3f} bits/token), perplexity {result.perplexity:.3f}"
                  + (f", {result.unknown} unknown" if result.unknown else ""), highlight=False)


def print_evaluation(console: Console, result, data: str) -> None:
    """`charlm evaluate`'s table: the scores of one checkpoint on one text."""
    unit = "char" if result.level == "char" else "token"
    table = Table(title=escape(f"{result.checkpoint} on {data}"), show_header=False, box=None)
    for name, value in (("tokens scored", f"{result.tokens:,}"),
                        ("cross-entropy", f"{result.nats_per_token:.4f} nats/{unit}"),
                        ("", f"{result.bits_per_token:.4f} bits/{unit}"),
                        ("perplexity", f"{result.perplexity:.3f}"),
                        ("uniform baseline", f"{result.vocab_size} (vocabulary size)"),
                        ("unknown (<unk>)", f"{result.unknown:,}")):
        table.add_row(name, value)
    console.print(table)


def print_starts(console: Console, result) -> None:
    """`charlm starts`: how many two-token starts derail the model, and the worst of them."""
    sampled = "" if result.starts == result.possible_starts else f" (a sample of {result.possible_starts:,})"
    console.print(f"{result.derailed:,} of {result.starts:,} starts{sampled} score the next "
                  f"{len(result.text)} characters worse than uniform (perplexity > {result.vocab_size}); "
                  f"median perplexity {result.median_perplexity:.2f}")
    table = Table(show_header=True, box=None, pad_edge=False)
    table.add_column("start")
    table.add_column("perplexity", justify="right")
    for start, perplexity in result.worst:
        table.add_row(escape(repr(start)), f"{perplexity:,.2f}")
    console.print(table)


def print_configs(console: Console, configs) -> None:
    """`charlm configs`: each shipped config's name and what it trains."""
    table = Table(show_header=True, box=None, pad_edge=False)
    table.add_column("name", style="bold")
    table.add_column("what it trains")
    for item in configs:
        table.add_row(item.name, escape(item.description))
    console.print(table)
