"""The run folders `charlm serve` offers: found once, each model loaded once and again when its checkpoint changes."""

from __future__ import annotations

import json
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
        from charlm.checkpoint import checkpoint_file, load_model

        name, path = self.folder(name)
        try:
            file = checkpoint_file(path)
            stamp = (str(file), file.stat().st_mtime_ns)
        except (CharLMError, OSError):
            raise BadRequest(f"the run folder {path} holds no checkpoint now", 404) from None
        with self._guard:
            cached = self._cache.get(name)
            if cached is None or cached.stamp != stamp:
                cached = _Cached(stamp, load_model(file), threading.Lock())
                self._cache[name] = cached
        return cached.loaded, cached.lock


def describe_run(name: str, path: Path, rows: bool = False) -> dict[str, Any]:
    """A run as the page shows it: its config, its best validation perplexity, its curves.

    A finished run's summary.json holds best.pt's score on the whole validation split; a run still
    training has only the logged evaluations, which may score a sample of it.
    """
    import yaml

    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        config = None
    metrics = []
    try:
        with open(path / "metrics.jsonl", encoding="utf-8") as handle:
            for line in handle:
                try:
                    metrics.append(json.loads(line))
                except ValueError:  # a row being written right now
                    continue
    except OSError:
        pass
    vals = [r["val_perplexity"] for r in metrics if isinstance(r.get("val_perplexity"), (int, float))]
    best = min(vals) if vals else None
    try:
        scored = json.loads((path / "summary.json").read_text(encoding="utf-8")).get("best_val_perplexity")
        if isinstance(scored, (int, float)) and not isinstance(scored, bool):
            best = scored
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        pass
    out = {"name": name, "path": str(path), "config": config, "steps": metrics[-1].get("step") if metrics else 0,
           "best_val_perplexity": best}
    if rows:
        out["metrics"] = metrics
    return out
