"""The encoded corpus on disk: preprocessing in bounded memory, splits, n-gram statistics."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlm import __version__
from charlm.data import checks
from charlm.data.text import (DEFAULT_CHUNK_BYTES, ERRORS, LEVELS, NORMALIZATIONS,
                              iter_normalized, iter_text_chunks, iter_token_lists, resolve_corpus)
from charlm.data.ngrams import NgramCounter, summary
from charlm.data.vocab import UNK, Vocab, smallest_uint_dtype
from charlm.errors import DataError

FORMAT_VERSION = 1
FILES = ("meta.json", "vocab.json", "stats.json", "train.bin", "val.bin")

Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes total)


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
    tmp, created = (None, []) if stats_only else _make_temp_dir(out, force)  # fail before the work
    try:
        path = resolve_corpus(source)
        vocab, meta, stats = _encode(path, tmp, level, normalize, val_fraction, min_freq, errors,
                                     chunk_bytes, on_progress or (lambda *_: None))
        if tmp is None:
            return PreparedCorpus(vocab, meta, stats)
        vocab.save(tmp / "vocab.json")
        for file, data in (("meta.json", meta), ("stats.json", stats)):
            (tmp / file).write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        _commit(tmp, out)
    except OSError as exc:
        _discard(tmp, created)
        raise DataError(f"cannot write {out}: {exc.strerror or exc}; choose another output folder") from None
    except BaseException:
        _discard(tmp, created)
        raise
    return load_corpus(out)


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
        version = json.loads((path / "meta.json").read_text(encoding="utf-8")).get("format_version")
    except (OSError, ValueError, AttributeError):
        return False
    return version == FORMAT_VERSION and all((path / f).is_file() for f in FILES)


# ---------------------------------------------------------------- the two passes

def _encode(path, tmp, level, normalize, val_fraction, min_freq, errors, chunk_bytes, progress):
    """Two streaming passes over `path`; writes the splits into `tmp` unless it is None."""
    total_bytes = path.stat().st_size
    if total_bytes == 0:
        raise DataError(f"{path} is empty")
    digest = hashlib.sha256()

    def pieces(phase: str) -> Iterator[str]:
        done = 0

        def on_bytes(raw: bytes) -> None:
            nonlocal done
            done += len(raw)
            if phase == "count":
                digest.update(raw)
            progress(phase, done, total_bytes)
        return iter_normalized(iter_text_chunks(path, errors, chunk_bytes, on_bytes), normalize)

    # Pass 1 counts every token to give each a provisional id (by count over the whole file);
    # the vocabulary proper needs training counts, known only once the split point is.
    census = (_CharCensus if level == "char" else _WordCensus)(pieces("count"))
    tokens, n = census.tokens, int(census.counts.sum())
    if all(t.isspace() for t in tokens[1:]):
        hint = " (letters keeps only a-z; try --normalize none)" if normalize == "letters" else ""
        raise DataError(f"{path} has no text left after normalize={normalize} (only whitespace){hint}")
    boundary = max(1, round((1 - val_fraction) * n))
    skip = np.array([False] + [t.isspace() for t in tokens[1:]]) if level == "word" else None
    val_hist, ngrams, written = _second_pass(census, pieces("encode"), boundary, tmp, skip)
    if written != n:
        raise DataError(f"{path} changed while it was being read; run again")

    train_hist = census.counts - val_hist
    vocab = Vocab.build({t: c for t, c in zip(tokens[1:], train_hist[1:].tolist()) if c}, level, min_freq)
    to_final = np.array([0] + [vocab.id_of(t) for t in tokens[1:]], dtype=vocab.dtype)
    if tmp and (vocab.dtype != census.dtype or not np.array_equal(to_final, np.arange(len(tokens)))):
        for split in ("train.bin", "val.bin"):
            _remap_file(tmp / split, census.dtype, to_final)
    val_unknown = int(val_hist[to_final == 0].sum())
    unigram_hist = train_hist if skip is None else np.where(skip, 0, train_hist)
    by_order = ngrams.summaries(tokens)
    stats = {
        "tokens": n, "train_tokens": boundary, "val_tokens": n - boundary,
        "vocab_size": len(vocab), "distinct_tokens": len(tokens) - 1,
        "train_unknown": vocab.counts[0], "val_unknown": val_unknown,
        "val_unknown_tokens": sorted(tokens[i] for i in np.flatnonzero((val_hist > 0) & (to_final == 0)))[:20],
        "ngrams_over": "all tokens" if skip is None else "words and punctuation (whitespace skipped)",
        "unigrams": summary(np.flatnonzero(unigram_hist), unigram_hist[unigram_hist > 0], 1, tokens),
        "bigrams": by_order[2],
        "trigrams": by_order.get(3, {"distinct": None, "total": 0, "zipf_slope": None, "top": [],
                                     "truncated": True}),  # vocabularies past ~1.6M: not counted
    }
    meta = {
        "format_version": FORMAT_VERSION, "charlm_version": __version__, "name": path.stem,
        "source": str(path.resolve()), "source_sha256": digest.hexdigest(), "source_bytes": total_bytes,
        "level": level, "normalize": normalize, "errors": errors, "val_fraction": float(val_fraction),
        "min_freq": int(min_freq), "dtype": vocab.dtype.name, "vocab_size": len(vocab),
        "train_tokens": boundary, "val_tokens": n - boundary,
        "train_unknown": vocab.counts[0], "val_unknown": val_unknown,
    }
    return vocab, meta, stats


def _second_pass(census, pieces, boundary, tmp, skip):
    """Encode with provisional ids and split at `boundary`; count n-grams of the training ids."""
    val_hist = np.zeros(len(census.tokens), np.int64)
    ngrams = NgramCounter(len(census.tokens))
    written = 0
    sinks = [open(tmp / f, "wb") for f in ("train.bin", "val.bin")] if tmp else None
    try:
        for ids in census.encode(pieces):
            cut = min(max(boundary - written, 0), len(ids))
            train_ids, val_ids = ids[:cut], ids[cut:]
            if sinks:
                train_ids.tofile(sinks[0])
                val_ids.tofile(sinks[1])
            if len(val_ids):
                val_hist += np.bincount(val_ids, minlength=len(val_hist))
            if len(train_ids):
                ngrams.update(train_ids if skip is None else train_ids[~skip[train_ids]])
            written += len(ids)
    finally:
        for sink in sinks or ():
            sink.close()
    return val_hist, ngrams, written


def _code_points(piece: str) -> np.ndarray:
    # ASCII is the common case and 4x smaller as uint8 than as UTF-32.
    if piece.isascii():
        return np.frombuffer(piece.encode("ascii"), np.uint8)
    return np.frombuffer(piece.encode("utf-32-le"), np.uint32)


def _count_code_points(piece: str) -> np.ndarray:
    """Occurrences of each code point in `piece`, indexed by code point."""
    if not piece.isascii():
        return np.bincount(np.frombuffer(piece.encode("utf-32-le"), np.uint32))
    data = piece.encode("ascii")
    # bincount over byte pairs is ~3x faster than over bytes: text repeats a few bytes
    # (space, e), and consecutive increments of one counter stall on each other.
    pairs = np.bincount(np.frombuffer(data, np.uint16, len(data) // 2), minlength=1 << 16).reshape(256, 256)
    counts = pairs.sum(axis=0) + pairs.sum(axis=1)
    if len(data) % 2:
        counts[data[-1]] += 1
    return counts


class _CharCensus:
    """Pass 1 for characters: counts by code point; encodes through a code point table."""

    def __init__(self, pieces: Iterator[str]):
        by_point = np.zeros(256, np.int64)
        for piece in pieces:
            counts = _count_code_points(piece)
            if len(counts) > len(by_point):
                by_point = np.concatenate([by_point, np.zeros(len(counts) - len(by_point), np.int64)])
            by_point[: len(counts)] += counts
        present = np.flatnonzero(by_point)
        points = present[np.lexsort((present, -by_point[present]))]  # count desc, then code point
        self.tokens = [UNK] + [chr(p) for p in points.tolist()]
        self.counts = np.concatenate([[0], by_point[points]]).astype(np.int64)
        self.dtype = smallest_uint_dtype(len(self.tokens))
        self.table = np.zeros(len(by_point), self.dtype)
        self.table[points] = np.arange(1, len(self.tokens))
        # With byte-sized ids, ASCII maps through bytes.translate, far faster than fancy indexing.
        self.byte_map = self.table[:256].tobytes() if self.table.dtype == np.uint8 else None

    def encode(self, pieces: Iterator[str]) -> Iterator[np.ndarray]:
        for piece in pieces:
            if self.byte_map is not None and piece.isascii():
                yield np.frombuffer(piece.encode("ascii").translate(self.byte_map), np.uint8)
                continue
            points = _code_points(piece)
            if len(points) and points.max() >= len(self.table):
                return  # a character pass 1 never saw: the file changed; the size check reports it
            yield self.table[points]


class _WordCensus:
    """Pass 1 for words: a Counter over streamed tokens; encodes through a dict."""

    def __init__(self, pieces: Iterator[str]):
        counter = Counter()
        for tokens in iter_token_lists(pieces, "word"):
            counter.update(tokens)
        ordered = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
        self.tokens = [UNK] + [t for t, _ in ordered]
        self.counts = np.array([0] + [c for _, c in ordered], np.int64)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.dtype = smallest_uint_dtype(len(self.tokens))

    def encode(self, pieces: Iterator[str]) -> Iterator[np.ndarray]:
        lookup = self.index.__getitem__
        for tokens in iter_token_lists(pieces, "word"):
            try:
                yield np.fromiter(map(lookup, tokens), self.dtype, len(tokens))
            except KeyError:
                return  # a token pass 1 never saw: the file changed; the size check reports it


def _remap_file(path: Path, dtype: np.dtype, mapping: np.ndarray, chunk: int = 1 << 24) -> None:
    remapped = path.with_suffix(".remap")
    with open(path, "rb") as src, open(remapped, "wb") as dst:
        while len(ids := np.fromfile(src, dtype, count=chunk)):
            mapping[ids].tofile(dst)
    os.replace(remapped, path)


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


def _make_temp_dir(out: Path, force: bool) -> tuple[Path, list[Path]]:
    """A fresh hidden folder next to `out`, and the parent folders that had to be created."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise DataError(f"{out} exists and is not a folder; choose another output folder")
        if not force:
            raise DataError(f"{out} already exists; pass --force to replace it")
        # --force swaps the whole folder out and deletes it: only ever one preprocess wrote.
        if any(out.iterdir()) and not (out / "meta.json").is_file():
            raise DataError(f"{out} is not a preprocessed corpus folder (no meta.json); --force only replaces "
                            "those, choose another output folder")
    created = [p for p in reversed(out.absolute().parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        while True:  # os.mkdir, unlike mkdtemp, honours the umask the user expects for the result
            tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
            try:
                tmp.mkdir()
                return tmp, created
            except FileExistsError:
                continue
    except OSError as exc:
        _discard(None, created)
        reason = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else exc.strerror
        raise DataError(f"cannot write to {out.parent}: {reason or exc}; choose another output folder") from None


def _commit(tmp: Path, out: Path) -> None:
    """Swap the finished folder into place; an old one is renamed away first, then deleted."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _discard(tmp: Path | None, created: list[Path]) -> None:
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    for folder in reversed(created):  # deepest first; only ever empty ones
        try:
            folder.rmdir()
        except OSError:
            break


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path.parent} is missing {path.name}; run `charlm preprocess --force` again") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
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
