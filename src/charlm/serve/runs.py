"""The run folders `charlm serve` offers: found once, each model loaded once and again when its checkpoint changes."""

from __future__ import annotations

import datetime
import json
import math
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlm.errors import CharLMError
from charlm.serve.fields import BadRequest


def find_runs(paths: list[Path]) -> dict[str, Path]:
    """Run folders by display name: the folders given, or every run under ./runs."""
    if not paths:
        root = Path("runs")
        paths = sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file()) \
            if root.is_dir() else []
        if not paths:
            raise CharLMError("no runs to serve: pass run folders (charlm serve runs/rnn) or train one first")
    runs: dict[str, Path] = {}
    for path in paths:
        if not path.is_dir() or not ((path / "best.pt").is_file() or (path / "last.pt").is_file()):
            raise CharLMError(f"{path} is not a run folder (no best.pt or last.pt)")
        name, n = path.name, 2
        while name in runs:
            name, n = f"{path.name}-{n}", n + 1
        runs[name] = path
    return runs


@dataclass
class _Cached:
    stamp: tuple[str, int]
    loaded: Any
    lock: threading.Lock


class RunModels:
    """Each run's model, loaded once and again only when its checkpoint file changes."""

    def __init__(self, runs: dict[str, Path]):
        self.runs = runs
        self._cache: dict[str, _Cached] = {}
        self._guard = threading.Lock()

    def folder(self, name: str | None) -> tuple[str, Path]:
        if name is None:
            name = next(iter(self.runs))
        if not isinstance(name, str) or name not in self.runs:
            raise BadRequest(f"unknown run {name!r}; runs: {', '.join(self.runs)}", 404)
        path = self.runs[name]
        if not path.is_dir():
            raise BadRequest(f"the run folder {path} is gone", 404)
        return name, path

    def get(self, name: str | None):
        from charlm.checkpoint import check_finite, checkpoint_file, load_model

        name, path = self.folder(name)
        try:
            file = checkpoint_file(path)
            stamp = (str(file), file.stat().st_mtime_ns)
        except (CharLMError, OSError):
            raise BadRequest(f"the run folder {path} holds no checkpoint now", 404) from None
        with self._guard:
            cached = self._cache.get(name)
            if cached is None or cached.stamp != stamp:
                loaded = load_model(file)
                check_finite(loaded)
                cached = _Cached(stamp, loaded, threading.Lock())
                self._cache[name] = cached
        return cached.loaded, cached.lock


# A run folder is read in bounded pieces: its config as any config (safe_yaml's size and alias
# limits), summary.json up to a size, and only the newest METRICS_TAIL_BYTES of metrics.jsonl
# (a long run logs hundreds of MB; the curves need its shape, summary.json its best score).
METRICS_TAIL_BYTES = 4 << 20
MAX_SUMMARY_BYTES = 1 << 20
_DEPTH = 32  # nesting kept in what the page is sent; deeper values become null


def _regular_size(path: Path) -> int | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _jsonable(value: Any, depth: int = 0) -> Any:
    """`value` as strict JSON: NaN and inf, bytes, and anything too deep become null; dates their ISO text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= _DEPTH:
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return None


def _read_config(path: Path) -> Any:
    from charlm.config import safe_yaml

    try:
        return _jsonable(safe_yaml.load_file(path))
    except Exception:  # noqa: BLE001 -- an unreadable config is shown as none, whatever is wrong with it
        return None


def _read_metrics(path: Path) -> list[dict]:
    size = _regular_size(path)
    if not size:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, size - METRICS_TAIL_BYTES))
            raw = handle.read(METRICS_TAIL_BYTES)
    except OSError:
        return []
    lines = raw.split(b"\n")
    if size > METRICS_TAIL_BYTES:
        lines = lines[1:]  # the first piece is the end of a row cut by the seek
    rows = []
    for line in lines:
        try:  # NaN and Infinity (Python's json writes them) are read as null
            row = json.loads(line, parse_constant=lambda name: None)
        except (ValueError, RecursionError):  # a row being written right now, or not a row at all
            continue
        if isinstance(row, dict):
            rows.append(_jsonable(row))
    return rows


def _summary_best(path: Path) -> float | None:
    size = _regular_size(path)
    if size is None or size > MAX_SUMMARY_BYTES:
        return None
    try:
        summary = json.loads(path.read_bytes(), parse_constant=lambda name: None)
    except (OSError, ValueError, RecursionError):
        return None
    best = summary.get("best_val_perplexity") if isinstance(summary, dict) else None
    return best if isinstance(best, (int, float)) and not isinstance(best, bool) and math.isfinite(best) else None


def describe_run(name: str, path: Path, rows: bool = False) -> dict[str, Any]:
    """A run as the page shows it: its config, its best validation perplexity, its curves.

    A finished run's summary.json holds best.pt's score on the whole validation split; a run still
    training has only the logged evaluations, which may score a sample of it. Whatever a file in
    the folder holds, the answer is strict JSON (a bad file shows as null or as no rows).
    """
    metrics = _read_metrics(path / "metrics.jsonl")
    vals = [r["val_perplexity"] for r in metrics
            if isinstance(r.get("val_perplexity"), (int, float)) and not isinstance(r["val_perplexity"], bool)]
    best = _summary_best(path / "summary.json")
    if best is None:
        best = min(vals) if vals else None
    out = {"name": name, "path": str(path), "config": _read_config(path / "config.yaml"),
           "steps": metrics[-1].get("step") if metrics else 0, "best_val_perplexity": best}
    if rows:
        out["metrics"] = metrics
    return out
