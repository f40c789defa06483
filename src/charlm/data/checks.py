"""Checks on a data folder read from disk, before any id reaches a model: nothing in it is trusted."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from charlm.data.vocab import Vocab, smallest_uint_dtype
from charlm.errors import DataError

# The only dtypes preprocess writes. Anything else (object, bool, float) is refused before numpy
# maps a byte of the file: an "object" memmap reads file bytes as pointers and crashes the process.
ID_DTYPES = ("uint8", "uint16", "uint32")
_SCAN = 1 << 24  # ids per chunk: ~16 MB of uint8 at a time; a 1 GB split scans in ~0.05 s

AGAIN = "run `charlm preprocess --force` again"


def id_dtype(meta: dict, where: Path) -> np.dtype:
    name = meta.get("dtype")
    if not isinstance(name, str) or name not in ID_DTYPES:
        shown = repr(name)[:40]
        raise DataError(f"{where} declares dtype {shown}; token ids are stored as one of "
                        f"{', '.join(ID_DTYPES)}. It is corrupt or not written by charlm; {AGAIN}")
    return np.dtype(name)


def token_count(meta: dict, key: str, where: Path) -> int:
    value = meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DataError(f"{where}: {key} is {repr(value)[:40]}, not a whole number >= 0; {AGAIN}")
    return value


def check_vocab_matches(meta: dict, vocab: Vocab, dtype: np.dtype, folder: Path) -> None:
    """The meta, the vocabulary and the id width must tell one story."""
    declared = meta.get("vocab_size", len(vocab))
    if declared != len(vocab):
        raise DataError(f"{folder}: meta.json says {repr(declared)[:40]} tokens but vocab.json has "
                        f"{len(vocab)}; {AGAIN}")
    if meta.get("level", vocab.level) != vocab.level:
        raise DataError(f"{folder}: meta.json says level {repr(meta.get('level'))[:40]} but vocab.json is "
                        f"{vocab.level}-level; {AGAIN}")
    expected = smallest_uint_dtype(len(vocab))
    if dtype != expected:
        raise DataError(f"{folder}: ids declared as {dtype.name}, but a vocabulary of {len(vocab)} tokens "
                        f"is stored as {expected.name}; {AGAIN}")


def max_id(ids: np.ndarray) -> int:
    """The largest id, read chunk by chunk so a memmap is never pulled into memory at once."""
    return max((int(ids[i:i + _SCAN].max()) for i in range(0, len(ids), _SCAN)), default=-1)


def check_ids(ids: np.ndarray, vocab_size: int, path: Path) -> int:
    """Refuse ids outside the vocabulary (they would index past the embedding mid-training)."""
    top = max_id(ids)
    if top >= vocab_size:
        raise DataError(f"{path} holds token id {top}, outside its vocabulary of {vocab_size} tokens; "
                        f"it is corrupt. {AGAIN[0].upper() + AGAIN[1:]}")
    return top
