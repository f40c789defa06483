"""Pass 1 of preprocessing: count every token and give it a provisional id. The speed tricks live here.

Both censuses give `tokens` ([UNK] + tokens by count, then by token), `counts`, `dtype` and
`encode(pieces)`, which yields arrays of provisional ids and stops early at a token pass 1
never saw (the file changed while it was read; the caller's size check reports it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np

from charlm.data.text import iter_token_lists
from charlm.data.vocab import UNK, smallest_uint_dtype


def _code_points(piece: str) -> np.ndarray:
    # ASCII is the common case and 4x smaller as uint8 than as UTF-32.
    if piece.isascii():
        return np.frombuffer(piece.encode("ascii"), np.uint8)
    return np.frombuffer(piece.encode("utf-32-le"), np.uint32)


def count_code_points(piece: str) -> np.ndarray:
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


class CharCensus:
    """Pass 1 for characters: counts by code point; encodes through a code point table."""

    def __init__(self, pieces: Iterator[str]):
        by_point = np.zeros(256, np.int64)
        for piece in pieces:
            counts = count_code_points(piece)
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
                return
            yield self.table[points]


class WordCensus:
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
                return
