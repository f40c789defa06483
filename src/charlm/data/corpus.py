"""The encoded corpus on disk: the folder format, preprocessing into it, and loading it back.

A data folder holds train.bin and val.bin (flat arrays of token ids, the smallest unsigned
dtype the vocabulary fits), vocab.json, meta.json (source, sha256, sizes, dtype, options) and
stats.json. The passes that encode a text live in encode.py (their speed tricks in census.py),
the atomic folder swap in folders.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlm import __version__
from charlm.data import checks
from charlm.data.encode import Progress, encode_source
from charlm.data.folders import commit, discard, make_temp_dir
from charlm.data.text import (DEFAULT_CHUNK_BYTES, ERRORS, LEVELS, NORMALIZATIONS, iter_normalized,
                              iter_text_chunks, iter_token_lists, resolve_corpus)
from charlm.data.jsonfile import read_json
from charlm.data.vocab import Vocab
from charlm.errors import DataError

FORMAT_VERSION = 1
FILES = ("meta.json", "vocab.json", "stats.json", "train.bin", "val.bin")


@dataclass(frozen=True)
class PreparedCorpus:
    """A preprocessed corpus; `train`/`val` are read-only memmaps (None when only stats ran)."""

    vocab: Vocab
    meta: dict
    stats: dict
    train: np.ndarray | None = None
    val: np.ndarray | None = None
    folder: Path | None = None


def preprocess(source: str | os.PathLike, out: str | os.PathLike | None = None, *, level: str = "char",
               normalize: str = "none", val_fraction: float = 0.1, min_freq: int = 1,
               errors: str = "strict", force: bool = False, stats_only: bool = False,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES, on_progress: Progress | None = None) -> PreparedCorpus:
    """Encode a text file or built-in dataset into `out` (default data/<name>/ in the CWD).

    The last `val_fraction` of the tokens (never shuffled) is the validation split; 0 gives
    an empty val.bin. The vocabulary comes from the training split only. N-gram statistics
    count training tokens before `min_freq` folds any into <unk> (word level: whitespace
    skipped). `force` swaps an existing folder for the new one; `stats_only` writes nothing
    and returns train/val as None. Memory stays bounded by `chunk_bytes`, not the file size.
    """
    _check_options(level, normalize, val_fraction, min_freq, errors)
    if out is None:
        out = Path("data") / folder_name(source)
    out = Path(out)
    tmp, created = (None, []) if stats_only else make_temp_dir(out, force)  # fail before the work
    try:
        path = resolve_corpus(source)
        vocab, meta, stats = encode_source(path, tmp, level, normalize, val_fraction, min_freq, errors,
                                           chunk_bytes, on_progress or (lambda *_: None))
        meta = _full_meta(meta, vocab, stats["train_tokens"], stats["val_tokens"])
        if tmp is None:
            return PreparedCorpus(vocab, meta, stats)
        _finish(tmp, out, vocab, meta, stats, force)
    except OSError as exc:
        discard(tmp, created)
        raise DataError(f"cannot write {out}: {exc.strerror or exc}; choose another output folder") from None
    except BaseException:
        discard(tmp, created)
        raise
    return load_corpus(out)


def write_corpus(out: str | os.PathLike, vocab: Vocab, train: Iterable[np.ndarray], val: Iterable[np.ndarray], *,
                 source: str, normalize: str = "none", val_fraction: float | None = None, min_freq: int = 1,
                 stats: dict | None = None, force: bool = False) -> PreparedCorpus:
    """Write a data folder from token ids already made, e.g. generated ones for a benchmark.

    `train` and `val` are each an iterable of id arrays, written chunk by chunk (memory stays
    that of one chunk); `source` says where the ids came from. The folder appears whole or not at all.
    """
    out = Path(out)
    tmp, created = make_temp_dir(out, force)
    try:
        sizes = []
        for name, chunks in (("train.bin", train), ("val.bin", val)):
            with open(tmp / name, "wb") as sink:
                sizes.append(0)
                for ids in chunks:
                    np.asarray(ids).astype(vocab.dtype, copy=False).tofile(sink)
                    sizes[-1] += len(ids)
        fraction = sizes[1] / max(sum(sizes), 1) if val_fraction is None else val_fraction
        meta = _full_meta({"charlm_version": __version__, "name": out.name, "source": source, "level": vocab.level,
                           "normalize": normalize, "errors": "strict", "val_fraction": float(fraction),
                           "min_freq": int(min_freq), "train_unknown": 0, "val_unknown": 0}, vocab, *sizes)
        stats = {"tokens": sum(sizes), "train_tokens": sizes[0], "val_tokens": sizes[1], "vocab_size": len(vocab),
                 **(stats or {})}
        _finish(tmp, out, vocab, meta, stats, force)
    except OSError as exc:
        discard(tmp, created)
        raise DataError(f"cannot write {out}: {exc.strerror or exc}; choose another output folder") from None
    except BaseException:
        discard(tmp, created)
        raise
    return load_corpus(out)


def _full_meta(meta: dict, vocab: Vocab, train_tokens: int, val_tokens: int) -> dict:
    return {"format_version": FORMAT_VERSION, **meta, "dtype": vocab.dtype.name, "vocab_size": len(vocab),
            "train_tokens": train_tokens, "val_tokens": val_tokens}


def _finish(tmp: Path, out: Path, vocab: Vocab, meta: dict, stats: dict, force: bool) -> None:
    vocab.save(tmp / "vocab.json")
    for file, data in (("meta.json", meta), ("stats.json", stats)):
        (tmp / file).write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    commit(tmp, out, force)


def load_corpus(folder: str | os.PathLike) -> PreparedCorpus:
    """Open a folder written by preprocess; the splits are memory-mapped, not read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no prepared corpus at {folder}; run `charlm preprocess` first")
    meta = _read_json(folder / "meta.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{folder} has corpus format_version {meta.get('format_version')!r}; this "
                        f"charlm reads {FORMAT_VERSION}. Run `charlm preprocess --force` again")
    if not all(k in meta for k in ("dtype", "train_tokens", "val_tokens")):
        raise DataError(f"{folder / 'meta.json'} is incomplete; run `charlm preprocess --force` again")
    # Every field is checked before numpy maps a byte: see data/checks.py.
    dtype = checks.id_dtype(meta, folder / "meta.json")
    sizes = [checks.token_count(meta, k, folder / "meta.json") for k in ("train_tokens", "val_tokens")]
    vocab = Vocab.load(folder / "vocab.json")
    checks.check_vocab_matches(meta, vocab, dtype, folder)
    train, val = (_map_split(folder / f, dtype, n) for f, n in zip(("train.bin", "val.bin"), sizes))
    for ids, name in ((train, "train.bin"), (val, "val.bin")):
        checks.check_ids(ids, len(vocab), folder / name)
    return PreparedCorpus(vocab, meta, _read_json(folder / "stats.json"), train, val, folder)


def is_prepared(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder preprocess wrote, in a format this version reads."""
    path = Path(path)
    try:
        version = read_json(path / "meta.json").get("format_version")
    except (OSError, DataError, AttributeError):
        return False
    return version == FORMAT_VERSION and all((path / f).is_file() for f in FILES)


# ---------------------------------------------------------------- files and folders

def _check_options(level, normalize, val_fraction, min_freq, errors) -> None:
    for value, choices, what in ((level, LEVELS, "level"), (normalize, NORMALIZATIONS, "normalization"),
                                 (errors, ERRORS, "--errors mode")):
        if value not in choices:
            raise DataError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    if not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction <= 0.5:
        raise DataError(f"val_fraction must be between 0 and 0.5, got {val_fraction!r}")
    if not isinstance(min_freq, (int, np.integer)) or min_freq < 1:
        raise DataError(f"min_freq must be a whole number of at least 1, got {min_freq!r}")


def folder_name(source: str | os.PathLike) -> str:
    """The data/<name> folder a text file or dataset gets: its stem (a built-in name is its own)."""
    path = Path(source).expanduser()
    name = path.stem
    if name in ("", ".", ".."):  # data/.. would be the working folder itself
        if path.is_dir():
            raise DataError(f"{source} is a folder; give a text file")
        raise DataError(f"cannot name a data folder after {str(source)!r}; preprocess it with "
                        f"`charlm preprocess {source} --out FOLDER` (and train on data.corpus: FOLDER)")
    return name


def _read_json(path: Path) -> dict:
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise DataError(f"{path.parent} is missing {path.name}; run `charlm preprocess --force` again") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a JSON object; run `charlm preprocess --force` again")
    return data


def _map_split(path: Path, dtype: np.dtype, length: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path.parent} is missing {path.name}; run `charlm preprocess --force` again")
    if path.stat().st_size != length * dtype.itemsize:
        raise DataError(f"{path} has {path.stat().st_size} bytes, expected {length * dtype.itemsize}; "
                        "it is truncated or corrupt. Run `charlm preprocess --force` again")
    if length == 0:  # np.memmap cannot map an empty file
        empty = np.zeros(0, dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r")


def encode_text_file(path: str | os.PathLike, vocab: Vocab, normalize: str, out: str | os.PathLike,
                     errors: str = "strict") -> np.ndarray:
    """Encode a text file with an existing vocabulary into `out`, chunk by chunk; returns a memmap.

    Memory stays bounded whatever the file's size; unknown tokens become <unk> (id 0).
    """
    pieces = iter_normalized(iter_text_chunks(resolve_corpus(path), errors), normalize)
    with open(out, "wb") as sink:
        if vocab.level == "char":
            for piece in pieces:
                vocab.encode_array(piece).astype(np.uint32).tofile(sink)
        else:
            for tokens in iter_token_lists(pieces, vocab.level):
                np.asarray(vocab.encode(tokens), np.uint32).tofile(sink)
    return _map_split(Path(out), np.dtype(np.uint32), Path(out).stat().st_size // 4)
