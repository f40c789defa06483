"""Writing a data folder atomically: a hidden temporary folder next to it, renamed into place.

The temporary names carry the host and pid of their writer (`.<name>.tmp-<host>-<pid>-<hex>`,
`.<name>.old-…` for a folder being swapped out), so a later run can tell the leftovers of a
killed process (kill -9, power loss) from a live one's and remove them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

from charlm.errors import DataError

_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"
_TEMP = re.compile(r"\..+\.(tmp|old)-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-[0-9a-f]{8}")


def temp_name(out: Path, kind: str = "tmp") -> Path:
    return out.parent / f".{out.name}.{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def make_temp_dir(out: Path, force: bool) -> tuple[Path, list[Path]]:
    """A fresh hidden folder next to `out`, and the parent folders that had to be created."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise DataError(f"{out} exists and is not a folder; choose another output folder")
        if not force:
            raise DataError(f"{out} already exists; pass --force to replace it")
        # --force swaps the whole folder out and deletes it: only ever a folder preprocess wrote,
        # holding nothing but the files it writes (a meta.json alone proves nothing).
        if out.is_symlink() or (any(out.iterdir()) and not is_charlm_data_folder(out)):
            why = "no meta.json" if not (out / "meta.json").is_file() else "it holds files preprocess did not write"
            raise DataError(f"{out} is not a preprocessed corpus folder ({why}); --force only replaces "
                            "those, so nothing was deleted: choose another output folder")
    created = [p for p in reversed(out.absolute().parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out.parent)
        while True:  # os.mkdir, unlike mkdtemp, honours the umask the user expects for the result
            tmp = temp_name(out)
            try:
                tmp.mkdir()
                return tmp, created
            except FileExistsError:
                continue
    except OSError as exc:
        discard(None, created)
        reason = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else exc.strerror
        raise DataError(f"cannot write to {out.parent}: {reason or exc}; choose another output folder") from None


def commit(tmp: Path, out: Path, force: bool = True) -> None:
    """Swap the finished folder into place; an old one is renamed away first, then deleted.

    Without `force`, a folder another process put at `out` since `make_temp_dir` checked wins:
    rename(2) refuses to replace a folder that holds files, so exactly one writer succeeds.
    """
    if not force:
        try:
            os.rename(tmp, out)
        except OSError:
            if not out.exists():
                raise
            raise DataError(f"{out} was written by another process while this one ran; it is kept as that "
                            "process wrote it (pass --force to replace it)") from None
        return
    old = None
    if out.exists():
        old = temp_name(out, "old")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard(tmp: Path | None, created: list[Path]) -> None:
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    for folder in reversed(created):  # deepest first; only ever empty ones
        try:
            folder.rmdir()
        except OSError:
            break


def remove_stale_temps(parent: Path) -> list[Path]:
    """Remove the temporary folders in `parent` left by dead processes of this host; returns them.

    A live writer's folder, another host's (on shared storage its pids mean nothing here) and
    anything holding files charlm does not write are left alone.
    """
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.fullmatch(entry.name)
        if not match or match["host"] != _HOST or _alive(int(match["pid"])) or not _only_ours(entry):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process, or a pid we cannot ask about: leave it
    return True


_OURS = {"meta.json", "vocab.json", "stats.json", "train.bin", "val.bin", "train.remap", "val.remap"}


def is_charlm_data_folder(folder: Path) -> bool:
    """Whether `folder` holds only what preprocess writes, with the meta.json it writes."""
    if not _only_ours(folder) or not {"meta.json", "vocab.json"} <= {p.name for p in folder.iterdir()}:
        return False
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(meta, dict) and {"level", "normalize", "vocab_size"} <= set(meta)


def _only_ours(folder: Path) -> bool:
    try:
        return folder.is_dir() and not folder.is_symlink() and all(
            p.name in _OURS and p.is_file() and not p.is_symlink() for p in folder.iterdir())
    except OSError:
        return False
