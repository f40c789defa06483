"""A run folder's manifest (.charlm-files): the names charlm wrote there, all that `train --force` deletes."""

from __future__ import annotations

import os
from pathlib import Path

from charlm.errors import CharLMError

LOCK = ".charlm.lock"  # flock'ed by the one process writing the folder; holds its pid
MANIFEST = ".charlm-files"  # every name charlm wrote here, one a line: all that --force deletes
# Runs written before the manifest existed: --force replaces these names in them.
LEGACY_FILES = ("config.yaml", "vocab.json", "metrics.jsonl", "last.pt", "best.pt", "curves.png", "summary.json")
FOLDERS = ("tensorboard",)  # names in the manifest that are folders


def recorded(folder: Path) -> list[str]:
    try:
        return (folder / MANIFEST).read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return []


def previous_run_files(folder: Path) -> list[Path]:
    """What --force will delete: the files a charlm run recorded, each checked to be what it wrote."""
    names = recorded(folder)
    if not names:
        if not (folder / "config.yaml").is_file() or not _is_zip(folder / "last.pt"):
            raise CharLMError(f"--force: {folder} is not a charlm run folder (no {MANIFEST}); it holds files "
                              "charlm did not write, so nothing was deleted: choose another train.out")
        names = [n for n in LEGACY_FILES if (folder / n).exists()]
    doomed = []
    for name in dict.fromkeys(names):
        path = folder / name
        if Path(name).name != name or name in (".", "..", LOCK):
            raise CharLMError(f"--force: {folder / MANIFEST} names {name!r}, not a file of this folder; "
                              "nothing was deleted")
        if not os.path.lexists(path):
            continue
        is_folder = name in FOLDERS
        if path.is_symlink() or (path.is_dir() if is_folder else not path.is_file()):
            kind = "a link" if path.is_symlink() else ("a folder" if path.is_dir() else "not a regular file")
            raise CharLMError(f"--force: {path} is {kind}, not what charlm wrote there; nothing was deleted "
                              "(move it away or choose another train.out)")
        doomed.append(path)
        doomed += [p for p in folder.glob(f".{name}.*") if p.is_file()]  # temp files of a killed writer
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CharLMError(f"--force: cannot delete files in {folder} (permission denied); nothing was deleted")
    return doomed + [folder / MANIFEST]


def _is_zip(path: Path) -> bool:
    """Whether `path` is a file torch.save could have written (a zip archive)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False
