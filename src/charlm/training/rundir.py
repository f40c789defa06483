"""A run folder and every file training writes into it: config, vocabulary, metrics, checkpoints, summary, curves."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from charlm.checkpoint import TrainState, load_checkpoint, record_latest_run, save_checkpoint
from charlm.errors import CharLMError
from charlm.training.run_manifest import LEGACY_FILES, LOCK, MANIFEST, previous_run_files, recorded
from charlm.safe_write import append_line, check_destination, open_no_follow, write_atomic


class RunDir:
    """runs/NAME/: config.yaml, vocab.json, metrics.jsonl, last.pt, best.pt, summary.json, curves.png.

    One process writes a folder: it holds an OS lock on RUN/.charlm.lock while it trains (the OS
    drops it if the process dies), and ranks other than 0 skip every write (`writer=False`).
    Every file is named in RUN/.charlm-files before it is created, so --force deletes only those.
    """

    def __init__(self, path: str | Path, writer: bool = True):
        self.path, self.writer = Path(path), writer
        self.board = None  # RUN/tensorboard/, while a run with train.tensorboard is logging
        self._lock = None  # the open lock file
        self._doomed: list[Path] = []  # a previous run's files, checked, deleted by create()
        self._names: set[str] | None = None  # the manifest, as read or written by this process
        # A resume writes nothing until its first checkpoint is saved: its config, vocabulary and
        # metrics rows wait here, so a resume that fails (a full disk) leaves the run as it was.
        self._pending: tuple[str, Any, int] | None = None
        self._rows: list[dict[str, Any]] = []
        self._saved_size: int | None = None  # metrics.jsonl's size at the last checkpoint saved
        self._row_of_save = False
        self._undo: tuple[list[str | None], int] | None = None  # what abandon() restores until a save

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
        """Refuse a run folder we must not use, before anything is written (reads only)."""
        if self.path.is_dir():  # a planted link is refused, never written through
            for name in (LOCK, MANIFEST, *(LEGACY_FILES if resume else ())):
                check_destination(self.path / name)
        if resume:
            if not self.last.is_file():
                raise CharLMError(f"cannot resume: {self.last} does not exist")
            return
        if self.path.exists() and not self.path.is_dir():
            raise CharLMError(f"run folder {self.path} is a file")
        if self._in_use():
            if not force:
                raise CharLMError(f"run folder {self.path} already exists; continue it with --resume {self.path} "
                                  "or overwrite it with --force")
            self._doomed = previous_run_files(self.path)

    def claim(self) -> None:
        """Lock an existing folder; what --force deletes is decided again under the lock."""
        if self.path.is_dir():
            self.lock()
            if self._doomed:
                self._doomed = previous_run_files(self.path)

    def _in_use(self) -> bool:
        return self.path.is_dir() and any(p.name != LOCK for p in self.path.iterdir())

    def lock(self) -> None:
        """Take the folder's lock, or say which process holds it."""
        if not self.writer or self._lock is not None:
            return
        f = open_no_follow(self.path / LOCK, os.O_RDWR | os.O_CREAT, "r+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read(20).strip() or "unknown"
            f.close()
            raise CharLMError(f"run folder {self.path} is in use by another charlm process (pid {holder}); "
                              "wait for it to finish or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.writer:
            self._record("summary.json")
            write_atomic(self.path / "summary.json", json.dumps(summary, indent=1))

    def write_file(self, name: str, text: str) -> None:
        """Another file of this run (such as a search's trials table), named in the manifest so --force replaces it."""
        if self.writer:
            self._record(name)
            write_atomic(self.path / name, text)

    def has_final_summary(self) -> bool:
        """Whether summary.json is a finished run's, with best.pt's whole-split score (not one still pending)."""
        try:
            summary = json.loads(_read(self.path / "summary.json") or "")
        except ValueError:
            return False
        return isinstance(summary, dict) and summary.get("status") == "finished" and not summary.get("pending")

    def last_logged(self, key: str) -> Any:
        """The last value of `key` in metrics.jsonl, or None."""
        for line in reversed((_read(self.metrics) or "").splitlines()):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get(key) is not None:
                return row[key]
        return None

    def load_last(self) -> TrainState:
        return TrainState.from_payload(load_checkpoint(self.last))

    def create(self, resume: bool) -> None:
        """Make and lock the folder; a new run first deletes the previous run's files (--force)."""
        if not self.writer:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock()
            if not resume and not self._doomed and self._in_use():  # another run finished here meanwhile
                raise CharLMError(f"run folder {self.path} already exists; continue it with --resume {self.path} "
                                  "or overwrite it with --force")
            for path in self._doomed:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
            for name in (*LEGACY_FILES, MANIFEST):  # temp files of a writer killed mid-rewrite (we hold the lock)
                for stale in self.path.glob(f".{name}.*.tmp"):
                    if stale.is_file() and not stale.is_symlink():
                        stale.unlink()
            if resume and not (self.path / MANIFEST).exists():  # a run from before the manifest: adopt its files
                for name in LEGACY_FILES:
                    if (self.path / name).is_file():
                        self._record(name)
        except OSError as exc:
            raise CharLMError(f"cannot write the run folder {self.path}: {exc.strerror or exc}") from None

    def _record(self, name: str) -> None:
        """Name a file in the manifest before it is first created."""
        if self._names is None:
            self._names = set(recorded(self.path))
        if name not in self._names:
            append_line(self.path / MANIFEST, name)
            self._names.add(name)

    def start(self, config_yaml: str, vocab, resume_step: int | None) -> None:
        """A new run writes config.yaml and vocab.json now; a resume (from `resume_step`) at its first save."""
        if not self.writer:
            return
        if resume_step is None:
            self._write_config(config_yaml, vocab)
        else:
            self._pending, self._rows = (config_yaml, vocab, resume_step), []

    def _write_config(self, config_yaml: str, vocab) -> None:
        for name, text in (("config.yaml", config_yaml),
                           ("vocab.json", json.dumps(vocab.to_dict(), ensure_ascii=False))):
            self._record(name)
            if _read(self.path / name) != text:  # a resume that changed nothing rewrites nothing
                write_atomic(self.path / name, text)

    def _commit(self) -> None:
        """Before a resume's first checkpoint: metrics.jsonl without the rows it redoes, plus its own, then
        its config. A kill from here on leaves rows the next resume drops; a failure (abandon) undoes them."""
        if self._pending is None:
            return
        config_yaml, vocab, step = self._pending
        self._record("metrics.jsonl")
        text = _read(self.metrics) or ""
        old = text.splitlines()
        kept = [line for line in old if _step(line) is not None and _step(line) <= step]
        new = [json.dumps(row) for row in self._rows]
        undo = ([_read(self.path / n) for n in ("config.yaml", "vocab.json")],
                sum(len(line.encode("utf-8")) + 1 for line in kept))
        if kept != old or not text.endswith("\n") and text:  # rows after the checkpoint or a torn line
            write_atomic(self.metrics, "".join(line + "\n" for line in kept + new))
        else:
            for line in new:
                append_line(self.metrics, line)
        self._pending, self._rows, self._undo = None, [], undo
        self._write_config(config_yaml, vocab)

    def _saved(self) -> None:
        """A checkpoint is on disk: the rows logged so far, and the next one, belong to it."""
        self._undo = None
        try:
            self._saved_size = self.metrics.stat().st_size
        except OSError:
            self._saved_size = 0
        self._row_of_save = True

    def abandon(self) -> None:
        """After a failure: drop the metrics rows logged since the last checkpoint (a resume's, all it wrote)."""
        self._pending, self._rows = None, []
        if not self.writer:
            return
        size = self._saved_size
        if self._undo is not None:
            texts, size = self._undo
            for name, text in zip(("config.yaml", "vocab.json"), texts):
                if text is not None and _read(self.path / name) != text:
                    try:
                        write_atomic(self.path / name, text)
                    except CharLMError:
                        pass  # the disk is still full: the resumable keys of the new config.yaml remain
        if size is not None:
            try:
                if self.metrics.stat().st_size > size:
                    os.truncate(self.metrics, size)  # needs no free space, unlike a rewrite
            except OSError:
                pass

    def open_log(self, tensorboard: bool) -> None:
        if self.writer and tensorboard:
            from charlm.training.tensorboard import TensorBoardLog

            self._record("tensorboard")
            self.board = TensorBoardLog(self.path)

    def log(self, row: dict[str, Any]) -> None:
        """One row of metrics.jsonl (and its TensorBoard mirror)."""
        if not self.writer:
            return
        if self._pending is not None:
            self._rows.append(row)
        else:
            self._record("metrics.jsonl")
            append_line(self.metrics, json.dumps(row))
            if self._row_of_save:  # the row logged right after a checkpoint belongs to it
                self._row_of_save = False
                self._saved_size = self.metrics.stat().st_size
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
        self._commit()
        self._record("last.pt")
        save_checkpoint(self.last, payload)
        self._saved()
        if best:
            self._record("best.pt")
            save_checkpoint(self.best, payload)

    def finish(self, summary: dict[str, Any], curves: bool, note: Callable[[str], None]) -> None:
        """summary.json, runs/LATEST and curves.png: what a run writes when it ends, stopped or finished."""
        if not self.writer:
            return
        self._commit()
        self.write_summary(summary)
        record_latest_run(self.path)
        if curves:
            self._record("curves.png")
            from charlm.training.plot import MATPLOTLIB_HINT, have_matplotlib, plot_run

            if have_matplotlib():
                plot_run(self.path)
            else:
                note(f"{MATPLOTLIB_HINT}; skipped curves.png")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _step(line: str) -> int | None:
    """A metrics row's step; None for a line a kill cut short (it belongs to the steps a resume redoes)."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None
