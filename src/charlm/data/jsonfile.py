"""A data folder's JSON files, read only once they are known to be regular files of a bounded size.

A name in a data folder may be a link to /dev/zero, /dev/urandom or a sparse file of many GB:
reading it whole would never end or fill the memory, so its type and size are checked first.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from charlm.errors import DataError

MAX_META_BYTES = 1 << 20  # meta.json and stats.json: a few hundred bytes is usual
MAX_VOCAB_BYTES = 256 << 20  # vocab.json: a word-level vocabulary of millions of tokens is tens of MB


def read_json(path: str | os.PathLike, limit: int = MAX_META_BYTES, what: str = "") -> Any:
    """The parsed file; FileNotFoundError as itself, anything else wrong a one-line DataError
    (`what`, e.g. "vocabulary ", names the file in it)."""
    path = Path(path)
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path} is not a regular file; run `charlm preprocess --force` again")
        if info.st_size > limit:
            raise DataError(f"{path} is {info.st_size:,} bytes, over the {limit:,} charlm reads for it; "
                            "run `charlm preprocess --force` again")
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise DataError(f"{path} grew past {limit:,} bytes while it was read")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"cannot read {what}{path}: {str(exc)[:200]}") from None
