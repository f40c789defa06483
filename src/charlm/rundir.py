"""A run folder and every file training writes into it: config, vocabulary, metrics, checkpoints, summary, curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from charlm.checkpoint import TrainState, load_checkpoint, record_latest_run, save_checkpoint
from charlm.errors import CharLMError

# What a previous run leaves that a new one would not overwrite at once; --force clears these.
OUTPUTS = ("metrics.jsonl", "last.pt", "best.pt", "curves.png", "summary.json")


class RunDir:
    """runs/NAME/: config.yaml, vocab.json, metrics.jsonl, last.pt, best.pt, summary.json, curves.png.

    Only one process writes: with `writer=False` (ranks other than 0) every write is skipped.
    """

    def __init__(self, path: str | Path, writer: bool = True):
        self.path, self.writer = Path(path), writer
        self.board = None  # RUN/tensorboard/, while a run with train.tensorboard is logging

    def __str__(self) -> str:
        return str(self.path)

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def check(self, resume: bool, force: bool) -> None:
        """Refuse a run folder we must not use, before anything is written."""
        if resume:
            if not self.last.is_file():
                raise CharLMError(f"cannot resume: {self.last} does not exist")
            return
        if self.path.exists() and not self.path.is_dir():
            raise CharLMError(f"run folder {self.path} is a file")
        if self.path.exists() and not force and any(self.path.iterdir()):
            raise CharLMError(f"run folder {self.path} already exists; continue it with --resume {self.path} "
                              "or overwrite it with --force")

    def load_last(self) -> TrainState:
        return TrainState.from_payload(load_checkpoint(self.last))

    def create(self, clear: bool) -> None:
        """Make the folder; with `clear`, remove a previous run's outputs (--force). Once all checks passed."""
        if not self.writer:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for name in OUTPUTS if clear else ():
                (self.path / name).unlink(missing_ok=True)
        except OSError as exc:
            raise CharLMError(f"cannot write the run folder {self.path}: {exc.strerror or exc}") from None

    def write_config(self, config_yaml: str, vocab) -> None:
        if self.writer:
            (self.path / "config.yaml").write_text(config_yaml, encoding="utf-8")
            vocab.save(self.path / "vocab.json")

    def restart_metrics(self, step: int) -> None:
        """Drop rows logged after `step` (the checkpoint we resume from), so no step appears twice."""
        if not self.writer or not self.metrics.is_file():
            return
        rows = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    rows.append(line)
            except (ValueError, AttributeError):
                pass  # a row cut short by a kill: it belongs to the steps we are about to redo
        self.metrics.write_text("".join(r + "\n" for r in rows), encoding="utf-8")

    def open_log(self, tensorboard: bool) -> None:
        if self.writer and tensorboard:
            from charlm.tensorboard import TensorBoardLog

            self.board = TensorBoardLog(self.path)

    def log(self, row: dict[str, Any]) -> None:
        """One row of metrics.jsonl (and its TensorBoard mirror)."""
        if not self.writer:
            return
        with self.metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.board is not None:
            self.board.write(row)

    def close_log(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None

    def save(self, state: TrainState, best: bool) -> None:
        """last.pt, and best.pt too when this state holds the best validation so far."""
        if not self.writer:
            return
        payload = state.to_payload()
        save_checkpoint(self.last, payload)
        if best:
            save_checkpoint(self.best, payload)

    def finish(self, summary: dict[str, Any], curves: bool, note: Callable[[str], None]) -> None:
        """summary.json, runs/LATEST and curves.png: what a run writes when it ends, stopped or finished."""
        if not self.writer:
            return
        (self.path / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        record_latest_run(self.path)
        if curves:
            from charlm.plot import MATPLOTLIB_HINT, have_matplotlib, plot_run

            if have_matplotlib():
                plot_run(self.path)
            else:
                note(f"{MATPLOTLIB_HINT}; skipped curves.png")
