"""Preprocessing's two streaming passes over a text file: census, then ids, splits and statistics.

Pass 1 (`census.py`) gives every token a provisional id by its count over the whole file; pass 2
writes those ids, split at the boundary, and counts n-grams of the training part. The vocabulary
proper needs training counts, known only once the split point is, so the files are remapped
to final ids at the end when the two orders differ.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from charlm import __version__
from charlm.data.census import CharCensus, WordCensus
from charlm.data.ngrams import NgramCounter, summary
from charlm.data.text import iter_normalized, iter_text_chunks
from charlm.data.vocab import Vocab
from charlm.errors import DataError

Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes total)
# Below this share of a-z letters, `letters` has thrown most of the text away (a non-Latin script).
LETTERS_WARN_BELOW = 0.5


def encode_source(path: Path, tmp: Path | None, level: str, normalize: str, val_fraction: float, min_freq: int,
                  errors: str, chunk_bytes: int, progress: Progress) -> tuple[Vocab, dict, dict]:
    """Two streaming passes over `path`; writes train.bin/val.bin into `tmp` unless it is None.

    Returns the vocabulary, the meta fields that describe the source and the options, and the stats.
    """
    total_bytes = path.stat().st_size
    if total_bytes == 0:
        raise DataError(f"{path} is empty")
    digest = hashlib.sha256()
    chars = {"read": 0, "letters": 0}

    def pieces(phase: str) -> Iterator[str]:
        done = 0

        def on_bytes(raw: bytes) -> None:
            nonlocal done
            done += len(raw)
            if phase == "count":
                digest.update(raw)
            progress(phase, done, total_bytes)
        raw = iter_text_chunks(path, errors, chunk_bytes, on_bytes)
        if phase != "count" or normalize != "letters":
            return iter_normalized(raw, normalize)
        return _count_letters(iter_normalized(_count_read(raw, chars), normalize), chars)

    census = (CharCensus if level == "char" else WordCensus)(pieces("count"))
    tokens, n = census.tokens, int(census.counts.sum())
    if all(t.isspace() for t in tokens[1:]):
        hint = " (letters keeps only a-z; try --normalize none, or lower)" if normalize == "letters" else ""
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
    unknown = to_final == 0
    val_unknown = int(val_hist[unknown].sum())
    # Tokens seen in training but rarer than min_freq also became <unk>: they are not "unseen".
    unseen = (val_hist > 0) & unknown & (train_hist == 0)
    rare = (val_hist > 0) & unknown & (train_hist > 0)
    unigram_hist = train_hist if skip is None else np.where(skip, 0, train_hist)
    by_order = ngrams.summaries(tokens)
    stats = {
        "tokens": n, "train_tokens": boundary, "val_tokens": n - boundary,
        "vocab_size": len(vocab), "distinct_tokens": len(tokens) - 1,
        "train_unknown": vocab.counts[0], "val_unknown": val_unknown,
        "val_unknown_tokens": sorted(tokens[i] for i in np.flatnonzero(unseen))[:20],
        "val_unseen": int(val_hist[unseen].sum()), "val_rare": int(val_hist[rare].sum()),
        "val_rare_tokens": sorted(tokens[i] for i in np.flatnonzero(rare))[:20],
        "ngrams_over": "all tokens" if skip is None else "words and punctuation (whitespace skipped)",
        "unigrams": summary(np.flatnonzero(unigram_hist), unigram_hist[unigram_hist > 0], 1, tokens),
        "bigrams": by_order[2],
        "trigrams": by_order.get(3, {"distinct": None, "total": 0, "zipf_slope": None, "top": [],
                                     "truncated": True}),  # vocabularies past ~1.6M: not counted
    }
    if normalize == "letters":
        stats["letters_kept"] = {"letters": chars["letters"], "characters": chars["read"]}
    meta = {
        "charlm_version": __version__, "name": path.stem,
        "source": str(path.resolve()), "source_sha256": digest.hexdigest(), "source_bytes": total_bytes,
        "level": level, "normalize": normalize, "errors": errors, "val_fraction": float(val_fraction),
        "min_freq": int(min_freq), "train_unknown": vocab.counts[0], "val_unknown": val_unknown,
    }
    return vocab, meta, stats


def letters_warning(stats: dict) -> str | None:
    """A line saying how much of the text `--normalize letters` turned into spaces, when that is most of it."""
    kept = stats.get("letters_kept")
    if not kept or not kept["characters"] or kept["letters"] / kept["characters"] >= LETTERS_WARN_BELOW:
        return None
    share = 1 - kept["letters"] / kept["characters"]
    return (f"normalize=letters kept {kept['letters']:,} of {kept['characters']:,} characters as letters a-z; "
            f"the other {share:.0%} became spaces. For text that is not in the Latin alphabet, use --normalize lower "
            "(or none)")


def _count_read(pieces: Iterator[str], chars: dict) -> Iterator[str]:
    for piece in pieces:
        chars["read"] += len(piece)
        yield piece


def _count_letters(pieces: Iterator[str], chars: dict) -> Iterator[str]:
    for piece in pieces:  # under `letters` everything but a-z is a space
        chars["letters"] += len(piece) - piece.count(" ")
        yield piece


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


def _remap_file(path: Path, dtype: np.dtype, mapping: np.ndarray, chunk: int = 1 << 24) -> None:
    remapped = path.with_suffix(".remap")
    with open(path, "rb") as src, open(remapped, "wb") as dst:
        while len(ids := np.fromfile(src, dtype, count=chunk)):
            mapping[ids].tofile(dst)
    os.replace(remapped, path)
