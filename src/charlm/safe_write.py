"""Every file charlm creates or replaces goes through here: never through a link, never torn.

A new content is written to a unique temp name in the destination's folder (mkstemp: O_EXCL),
fsync'ed, then renamed over the destination, so a crash leaves the old file or the new one, never
half of one. A destination that is a link, a device or anything but a regular file is refused, and
files opened in place (the lock, metrics.jsonl's appends) are opened with O_NOFOLLOW. A failed
write (a full disk) is one line naming the file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from charlm.errors import CharLMError


class WriteError(CharLMError):
    """A file could not be written, or its destination is not one charlm may replace."""


def check_destination(path: str | os.PathLike) -> None:
    """Refuse a destination that is not absent or a regular file (a link, a device, a folder, a FIFO)."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise WriteError(f"cannot write {path}: it is {_kind(mode)}, not a regular file "
                         "(move it away first); nothing was written")


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    return "not a regular file"


def failure(path: str | os.PathLike, exc: OSError, what: str = "write") -> WriteError:
    """One line for an OSError on `path` (ENOSPC: "No space left on device")."""
    return WriteError(f"cannot {what} {path}: {exc.strerror or exc}")


@contextmanager
def replacing(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """A file to write `path`'s new content into; renamed over `path` when the block ends without error."""
    path = Path(path)
    check_destination(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise failure(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide a run's files from its group
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        check_destination(path)  # again: a link planted while we wrote is refused, not followed
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise failure(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, content: str | bytes) -> None:
    """Replace `path` with `content` (text is UTF-8), all or nothing."""
    with replacing(path, "wb") as f:
        f.write(content.encode("utf-8") if isinstance(content, str) else content)


def open_no_follow(path: str | os.PathLike, flags: int, mode: str) -> IO:
    """open() of a file in place that never follows a link and refuses anything but a regular file."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0), 0o666)
    except OSError as exc:
        if os.path.islink(path):
            check_destination(path)
        raise failure(path, exc) from None
    st_mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(st_mode):
        os.close(fd)
        raise WriteError(f"cannot write {path}: it is {_kind(st_mode)}, not a regular file "
                         "(move it away first); nothing was written")
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode, encoding="utf-8")


def open_append(path: str | os.PathLike) -> IO:
    return open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "a")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line; a crash can leave at most this line incomplete, and readers skip such a line."""
    try:
        with open_append(path) as f:
            f.write(line + "\n")
    except OSError as exc:
        raise failure(path, exc) from None


def _sync_folder(folder: Path) -> None:
    """fsync the folder so the rename itself survives a power loss (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask is process-wide, not safe to toggle from threads
