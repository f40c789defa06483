"""Training curves from a run's metrics.jsonl (matplotlib is optional)."""

from __future__ import annotations

import json
from pathlib import Path

from charlm.errors import CharLMError
from charlm.safe_write import replacing

MATPLOTLIB_HINT = "matplotlib is not installed; get it with `pip install matplotlib` (or `pip install charlm[plot]`)"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# Written by charlm.checkpoint.record_latest_run (not imported: it would import torch for a plot).
LATEST_POINTER = Path("runs") / "LATEST"


def latest_run() -> Path:
    """The most recent run's folder, as runs/LATEST names it."""
    try:
        text = LATEST_POINTER.read_text(encoding="utf-8").strip() if LATEST_POINTER.is_file() else ""
    except (OSError, UnicodeDecodeError):
        text = ""
    if not text or "\0" in text:
        raise CharLMError(f"no run folder given and no recent run found (in {LATEST_POINTER}); "
                          "train one with `charlm train` or pass the run folder")
    return Path(text)


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise CharLMError(f"{run_dir} is not a run folder (no metrics.jsonl)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CharLMError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    rows, lines = [], text.splitlines()
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines) and not text.endswith("\n"):
                    break  # the row a killed run was writing: the runs's rows before it stand
                raise CharLMError(f"{path}:{number} is not valid JSON") from None
            if not isinstance(row, dict):
                raise CharLMError(f"{path}:{number} is not a JSON object")
            if not isinstance(row.get("step"), (int, float)) or isinstance(row["step"], bool):
                raise CharLMError(f"{path}:{number} has no numeric \"step\"")
            rows.append(row)
    return rows


def validation_label(rows: list[dict]) -> str:
    """A validation figure scored on a sample of the split is never shown bare: ≈ marks it, as in the CLI."""
    sampled = [r["val_sample_tokens"] for r in rows if r.get("val_perplexity") is not None
               and isinstance(r.get("val_sample_tokens"), int) and r["val_sample_tokens"] > 0]
    return f"validation ≈ (first {max(sampled):,} tokens)" if sampled else "validation"


def plot_run(run_dir: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Draw train and validation perplexity against step into curves.png (default: the latest run's)."""
    run_dir = latest_run() if run_dir is None else run_dir
    rows = read_metrics(run_dir)
    if not have_matplotlib():
        raise CharLMError(MATPLOTLIB_HINT)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out or Path(run_dir) / "curves.png")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    train = [(r["step"], r["perplexity"]) for r in rows if r.get("perplexity") is not None]
    val = [(r["step"], r["val_perplexity"]) for r in rows if r.get("val_perplexity") is not None]
    if train:
        ax.plot(*zip(*train), label="train", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label=validation_label(rows), lw=1.5, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(Path(run_dir).name)
    ax.legend()
    fig.tight_layout()
    try:
        with replacing(out) as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)
    return out
