"""N-gram statistics of an encoded corpus: counts of the top n-grams and their Zipf slopes."""

from __future__ import annotations

import math

import numpy as np

TOP_K = 10
_DENSE_NGRAM_LIMIT = 1 << 22  # table cells (int64) below which n-grams are counted by bincount
_SPARSE_NGRAM_LIMIT = 1 << 22  # distinct n-grams kept before counting stops (memory bound)


class NgramCounter:
    """Counts n-grams over a stream of id arrays: a dense table when small, else sorted keys.

    Lower orders are derived at the end (each n-gram's prefix, plus the stream's last
    (n-1)-gram), so the hot loop counts one order only.
    """

    def __init__(self, size: int):
        self.size = size
        self.order = 3 if size**3 < 2**62 else 2  # combined keys must fit in int64
        cells = size**self.order
        self.table = np.zeros(cells, np.int64) if cells <= _DENSE_NGRAM_LIMIT else None
        self.keys, self.values = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.tail = np.zeros(0, np.int64)  # the last order-1 ids: context for the next array
        self.truncated = False

    def update(self, ids: np.ndarray) -> None:
        if self.truncated:
            return
        seam = np.concatenate([self.tail, ids[: self.order - 1]]).astype(np.int64)
        self.tail = np.concatenate([self.tail, ids[-(self.order - 1):]])[-(self.order - 1):].astype(np.int64)
        seam_keys = _window_keys(seam, self.order, self.size)
        if self.table is not None:
            np.add.at(self.table, seam_keys, 1)
            # Slices of a million keep the temporaries (8 MB) on the heap, not fresh mmaps.
            for start in range(0, len(ids), 1 << 20):
                window = ids[start: start + (1 << 20) + self.order - 1]
                self.table += np.bincount(_window_keys(window, self.order, self.size), minlength=len(self.table))
            return
        new_keys, new_values = np.unique(np.concatenate([seam_keys, _window_keys(ids, self.order, self.size)]),
                                         return_counts=True)
        # Both sides are sorted: add to the keys already there, insert the others in place.
        at = np.searchsorted(self.keys, new_keys)
        seen = at < len(self.keys)
        seen[seen] = self.keys[at[seen]] == new_keys[seen]
        self.values[at[seen]] += new_values[seen]
        self.keys = np.insert(self.keys, at[~seen], new_keys[~seen])
        self.values = np.insert(self.values, at[~seen], new_values[~seen])
        self.truncated = len(self.keys) > _SPARSE_NGRAM_LIMIT

    def summaries(self, tokens: list[str]) -> dict[int, dict]:
        """Summaries for orders 2..self.order."""
        if self.table is not None:
            keys = np.flatnonzero(self.table)
            values = self.table[keys]
        else:
            keys, values = self.keys, self.values
        result = {}
        for order in range(self.order, 1, -1):
            if order < self.order:  # from (order+1)-grams: their prefixes, plus the last order-gram
                keys, values = _sum_runs(keys // self.size, values)  # still sorted
                last = self.tail[len(self.tail) - order:]
                if len(last) == order:
                    key = _window_keys(last, order, self.size)[0]
                    at = np.searchsorted(keys, key)
                    if at < len(keys) and keys[at] == key:
                        values[at] += 1
                    else:
                        keys, values = np.insert(keys, at, key), np.insert(values, at, 1)
            result[order] = summary(keys, values, order, tokens) | {"truncated": self.truncated}
        return result


def _window_keys(ids: np.ndarray, order: int, size: int) -> np.ndarray:
    """Each window of `order` ids as one base-`size` number (int64)."""
    span = len(ids) - order + 1
    if span <= 0:
        return np.zeros(0, np.int64)
    keys = ids[:span]
    for j in range(1, order):
        # Narrow integer types while the numbers fit: less memory traffic than int64.
        wide = np.uint16 if size ** (j + 1) <= 1 << 16 else np.uint32 if size ** (j + 1) <= 1 << 32 else np.int64
        keys = keys.astype(np.promote_types(wide, ids.dtype))
        keys *= wide(size)
        keys += ids[j: j + span]
    return keys.astype(np.int64, copy=False)


def _sum_runs(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge runs of equal keys in a sorted array, adding their values."""
    if not len(keys):
        return keys, values
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return keys[starts], np.add.reduceat(values, starts)


def summary(keys: np.ndarray, values: np.ndarray, order: int, tokens: list[str]) -> dict:
    """Distinct count, top-k with counts and the Zipf slope of one n-gram order."""
    size = len(tokens)  # keys are base-`size` numbers
    top = np.argsort(-values, kind="stable")[:TOP_K]  # keys are sorted: ties go by key
    entries = []
    for key, count in zip(keys[top].tolist(), values[top].tolist()):
        ids = [(key // size ** (order - 1 - j)) % size for j in range(order)]
        entries.append({"tokens": [tokens[i] for i in ids], "count": count})
    return {"distinct": len(keys), "total": int(values.sum()), "zipf_slope": zipf_slope(values),
            "top": entries}


def zipf_slope(counts: np.ndarray) -> float | None:
    """Least-squares slope of log frequency against log rank (about -1 for natural text)."""
    counts = np.asarray(counts)
    log_counts = np.log(np.sort(counts[counts > 0])[::-1].astype(np.float64))
    if len(log_counts) < 2:
        return None
    log_ranks = np.log(np.arange(1, len(log_counts) + 1, dtype=np.float64))
    # The closed form, not np.polyfit: no n-by-2 design matrix for millions of n-grams.
    log_ranks -= log_ranks.mean()
    slope = float(np.dot(log_ranks, log_counts - log_counts.mean()) / np.dot(log_ranks, log_ranks))
    return round(slope, 4) if math.isfinite(slope) else None
