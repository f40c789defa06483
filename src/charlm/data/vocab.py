"""Vocab: token ↔ id maps built from counts, with `<unk>` at id 0."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlm.data.text import LEVELS, tokenize
from charlm.data.text import normalize as normalize_text
from charlm.errors import DataError

UNK = "<unk>"
# What id 0 decodes to: one character, so char-level text keeps one character per id, and
# it cannot be mistaken for text (a literal "<unk>" in a corpus is five tokens).
UNK_TEXT = "\ufffd"
VOCAB_FORMAT_VERSION = 1


def smallest_uint_dtype(size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds ids 0..size-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


class Vocab:
    """Tokens by id: `<unk>` first, then by descending training count, ties by token."""

    def __init__(self, tokens: Sequence[str], counts: Sequence[int], level: str = "char"):
        if level not in LEVELS:
            raise DataError(f"vocabulary level {level!r} is not one of: {', '.join(LEVELS)}")
        if not tokens or tokens[0] != UNK:
            raise DataError(f"a vocabulary must start with {UNK}")
        if len(tokens) != len(counts):
            raise DataError(f"vocabulary has {len(tokens)} tokens but {len(counts)} counts")
        bad = next((t for t in tokens if not isinstance(t, str) or not t), None) if tokens else None
        if bad is not None or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in counts):
            what = f"token {bad!r}" if bad is not None else "count"
            raise DataError(f"vocabulary holds a {what} that is not {'a string' if bad is not None else 'an integer'}")
        if level == "char" and any(len(t) != 1 for t in tokens[1:]):
            word = next(t for t in tokens[1:] if len(t) != 1)
            raise DataError(f"a char-level vocabulary holds the token {word[:20]!r}, not one character")
        self.tokens: tuple[str, ...] = tuple(tokens)
        self.counts: tuple[int, ...] = tuple(int(c) for c in counts)
        self.level = level
        self._index = {token: i for i, token in enumerate(self.tokens)}
        if len(self._index) != len(self.tokens):
            raise DataError("vocabulary lists a token twice")
        self._char_table: np.ndarray | None = None  # code point → id, built on first use
        self._texts = (UNK_TEXT,) + self.tokens[1:]  # id → decoded text, built once: decode never copies it

    @classmethod
    def build(cls, counts: Mapping[str, int], level: str = "char", min_freq: int = 1) -> Vocab:
        """Keep tokens seen at least `min_freq` times; the rest count towards `<unk>`."""
        if min_freq < 1:
            raise DataError(f"min_freq must be at least 1, got {min_freq}")
        kept = sorted(((t, int(c)) for t, c in counts.items() if c >= min_freq and t != UNK),
                      key=lambda item: (-item[1], item[0]))
        unk_count = sum(int(c) for t, c in counts.items() if c < min_freq or t == UNK)
        return cls([UNK] + [t for t, _ in kept], [unk_count] + [c for _, c in kept], level)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and (self.tokens, self.counts, self.level) == (
            other.tokens, other.counts, other.level)

    def __repr__(self) -> str:
        return f"Vocab(level={self.level!r}, size={len(self)})"

    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned dtype for this vocabulary's ids."""
        return smallest_uint_dtype(len(self))

    def id_of(self, token: str) -> int:
        return self._index.get(token, 0)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids for tokens; unknown tokens become 0."""
        get = self._index.get
        return [get(t, 0) for t in tokens]

    def encode_array(self, text_or_tokens: str | Iterable[str]) -> np.ndarray:
        """Ids as an array of `self.dtype`; a char-level str takes a vectorised path."""
        if isinstance(text_or_tokens, str):
            if self.level == "char":
                return self._encode_chars(text_or_tokens)
            text_or_tokens = tokenize(text_or_tokens, self.level)
        return np.array(self.encode(text_or_tokens), dtype=self.dtype)

    def _encode_chars(self, text: str) -> np.ndarray:
        table = self.char_table()
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
        # The table's last slot is <unk>, so clamping sends unseen high code points there.
        return table[np.minimum(points, len(table) - 1)]

    def char_table(self) -> np.ndarray:
        """Lookup table code point → id (last slot: unknown), built once per Vocab."""
        if self._char_table is None:
            chars = [(ord(t), i) for i, t in enumerate(self.tokens) if i and len(t) == 1]
            top = max((cp for cp, _ in chars), default=0)
            table = np.zeros(top + 2, dtype=self.dtype)
            for cp, i in chars:
                table[cp] = i
            table.flags.writeable = False
            self._char_table = table
        return self._char_table

    def decode(self, ids: Iterable[int], unk: str = UNK_TEXT) -> str:
        """Text for ids; id 0 becomes `unk` (U+FFFD by default)."""
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(self)):
            bad = min(ids) if min(ids) < 0 else max(ids)
            raise DataError(f"token id {bad} is outside this vocabulary of {len(self)} tokens")
        texts = self._texts
        if unk != UNK_TEXT:
            return "".join([unk if i == 0 else texts[i] for i in ids])
        return "".join([texts[i] for i in ids])

    def texts(self) -> tuple[str, ...]:
        """Each id's decoded text (`decode([i]) == texts()[i]`), one shared tuple."""
        return self._texts

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """Distinct tokens this vocabulary does not know, sorted."""
        return sorted({t for t in tokens if t not in self._index or t == UNK})

    def to_dict(self) -> dict:
        return {"format_version": VOCAB_FORMAT_VERSION, "level": self.level,
                "tokens": list(self.tokens), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Vocab:
        try:
            version = data.get("format_version", VOCAB_FORMAT_VERSION)
            if version != VOCAB_FORMAT_VERSION:
                raise DataError(f"vocabulary format_version {version} is not supported "
                                f"(this charlm reads {VOCAB_FORMAT_VERSION}); preprocess the corpus again")
            return cls(list(data["tokens"]), list(data["counts"]), data.get("level", "char"))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise DataError(f"malformed vocabulary ({exc!r}); preprocess the corpus again") from None

    def save(self, path: str | os.PathLike) -> None:
        from charlm.safe_write import write_atomic

        write_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        path = Path(path)
        from charlm.data.jsonfile import MAX_VOCAB_BYTES, read_json

        try:
            data = read_json(path, MAX_VOCAB_BYTES, "vocabulary ")
        except FileNotFoundError:
            raise DataError(f"no vocabulary at {path}") from None
        except OSError as exc:
            raise DataError(f"cannot read vocabulary {path}: {exc}") from None
        return cls.from_dict(data)


@dataclass(frozen=True)
class EncodedText:
    """A text as a model reads it: normalized, as ids, and what the vocabulary lacked."""

    text: str  # after normalization: exactly what `ids` encode
    ids: np.ndarray  # (N,) in the vocabulary's dtype; tokens it lacks are <unk> (0)
    unknown: list[str]  # the distinct tokens that became <unk>, sorted


def encode_text(vocab: Vocab, text: str, normalize: str = "none") -> EncodedText:
    """Normalize `text` like the training text and encode it: the one text-to-ids path.

    Char-level text never becomes a list of tokens (a vectorised lookup), so a text of many
    megabytes costs a few bytes per character.
    """
    text = normalize_text(text, normalize)
    if vocab.level == "char":
        ids = vocab.encode_array(text)
        unknown = sorted({text[i] for i in np.flatnonzero(ids == 0).tolist()})
    else:
        tokens = tokenize(text, vocab.level)
        ids = np.array(vocab.encode(tokens), dtype=vocab.dtype)
        unknown = vocab.unknown(tokens)
    return EncodedText(text, ids, unknown)


def vocab_digest(vocab: Mapping) -> str:
    """The identity of a vocabulary (Vocab.to_dict()): its level and its tokens in id order."""
    text = json.dumps({"level": vocab.get("level", "char"), "tokens": list(vocab["tokens"])},
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
