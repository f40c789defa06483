"""`charlm preprocess`: encode a corpus once into the folder training reads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from charlm.cli import app
from charlm.cli.console import err, friendly, out
from charlm.errors import CharLMError

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
