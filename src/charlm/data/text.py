"""Reading text files and built-in datasets, normalization and tokenization."""

from __future__ import annotations

import codecs
import hashlib
import importlib.resources
import json
import os
import re
import stat
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from charlm.errors import DataError

LEVELS = ("char", "word")
NORMALIZATIONS = ("none", "lower", "letters")
ERRORS = ("strict", "replace")
DEFAULT_CHUNK_BYTES = 4 << 20

_NON_LETTERS = re.compile("[^A-Za-z]+")
_LETTERS_BYTE_MAP = bytes(c | 0x20 if chr(c).isalpha() and c < 128 else 32 for c in range(256))
# Every character falls in exactly one alternative, so joining the tokens gives the text back.
_WORD_TOKEN = re.compile(r"\w+|[^\w\s]|\s+")
# `lower` keeps back the text after the last whitespace so that str.lower()'s one
# context-dependent rule (final sigma) sees whole words; past this many characters
# without whitespace it gives up waiting.
_MAX_LOWER_CARRY = 1 << 20


@dataclass(frozen=True)
class BuiltinDataset:
    """A public-domain corpus shipped inside the package (see corpora/sources.json)."""

    name: str
    filename: str
    sha256: str
    source: str


ERRORS_HINT = "pass --errors replace"  # what `charlm preprocess` takes; train says its own


def _load_builtins() -> types.MappingProxyType:
    entries = json.loads(_CORPORA.joinpath("sources.json").read_text(encoding="utf-8"))
    return types.MappingProxyType({name: BuiltinDataset(name, e["file"], e["sha256"], e["source"])
                                   for name, e in entries.items()})


_CORPORA = importlib.resources.files("charlm") / "corpora"
BUILTIN_DATASETS = _load_builtins()


# ---------------------------------------------------------------- normalization & tokens

def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise DataError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def normalize(text: str, mode: str = "none") -> str:
    """Normalize `text`: `none` keeps every character, `lower` lowercases, `letters` keeps
    ASCII letters, lowercased, and turns each run of anything else into one space (D2L).

    Under every mode "\\r\\n" and a lone "\\r" become "\\n", so files from any OS give the
    same tokens. A leading BOM is not touched here; the file readers drop it.
    """
    _check_choice(mode, NORMALIZATIONS, "normalization")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if mode == "lower":
        return text.lower()
    if mode == "letters":
        return _letters(text)
    return text


def _letters(text: str) -> str:
    """`re.sub("[^A-Za-z]+", " ", text).lower()`, vectorised for ASCII text."""
    if not text.isascii():
        return _NON_LETTERS.sub(" ", text).lower()
    import numpy as np  # here, not at the top: the CLI imports this module and must start fast

    spaced = np.frombuffer(text.encode("ascii").translate(_LETTERS_BYTE_MAP), np.uint8)
    is_space = spaced == 32
    keep = np.ones(len(spaced), bool)
    keep[1:] = ~(is_space[1:] & is_space[:-1])  # a space right after a space goes
    return spaced[keep].tobytes().decode("ascii")


def _last_whitespace_end(text: str) -> int:
    return max(text.rfind(" "), text.rfind("\n"), text.rfind("\t")) + 1


def iter_normalized(pieces: Iterable[str], mode: str = "none") -> Iterator[str]:
    """Normalize a stream of text pieces; the joined output equals normalize(joined input)."""
    _check_choice(mode, NORMALIZATIONS, "normalization")
    carry = ""
    in_gap = False  # letters: the last space emitted stands for a non-letter run that may go on
    for piece in pieces:
        text = carry + piece if carry else piece
        cut = len(text)
        if mode == "lower":
            cut = _last_whitespace_end(text)
            if cut == 0 and len(text) > _MAX_LOWER_CARRY:
                cut = len(text)
        if cut and text[cut - 1] == "\r":  # its "\n" may open the next piece
            cut -= 1
        carry = text[cut:]
        out = normalize(text[:cut], mode)
        if mode == "letters" and out:
            if in_gap and out[0] == " ":
                out = out[1:]
            in_gap = in_gap if not out else out[-1] == " "
        if out:
            yield out
    if carry:
        out = normalize(carry, mode)
        if mode == "letters" and in_gap and out.startswith(" "):
            out = out[1:]
        if out:
            yield out


def tokenize(text: str, level: str = "char") -> list[str]:
    """Split text into tokens; `"".join(tokenize(t, level)) == t` for both levels.

    `word` keeps words, single punctuation marks and whitespace runs as tokens.
    """
    _check_choice(level, LEVELS, "level")
    return list(text) if level == "char" else _WORD_TOKEN.findall(text)


def iter_token_lists(pieces: Iterable[str], level: str = "char") -> Iterator[list[str]]:
    """Tokenize a stream of text pieces as if it were one text (no token split at a seam)."""
    _check_choice(level, LEVELS, "level")
    if level == "char":
        for piece in pieces:
            yield list(piece)
        return
    carry = ""
    for piece in pieces:
        tokens = _WORD_TOKEN.findall(carry + piece)
        carry = tokens.pop() if tokens else ""  # the last word may go on in the next piece
        if tokens:
            yield tokens
    if carry:
        yield [carry]


# ---------------------------------------------------------------- reading files

def iter_text_chunks(path: str | os.PathLike, errors: str = "strict",
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                     on_bytes: Callable[[bytes], None] | None = None) -> Iterator[str]:
    """Stream a UTF-8 file as text pieces, with universal newlines and no leading BOM.

    `errors="replace"` turns invalid bytes into U+FFFD; `on_bytes` sees every raw chunk
    (to hash the file in the same read).
    """
    _check_choice(errors, ERRORS, "--errors mode")
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be positive")
    path = Path(path)
    handle = _open_binary(path)
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    offset, at_start, held_cr = 0, True, False
    with handle:
        while True:
            raw = handle.read(chunk_bytes)
            final = not raw
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise DataError(f"{path} looks binary (NUL byte at byte {offset + nul}); charlm reads "
                                "UTF-8 text (convert UTF-16 files to UTF-8 first)")
            if on_bytes is not None and raw:
                on_bytes(raw)
            buffered = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final)
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: invalid UTF-8 at byte {offset - buffered + exc.start}; {ERRORS_HINT} "
                                "to read it with U+FFFD in place of bad bytes") from None
            offset += len(raw)
            if at_start and text:
                at_start = False
                if text[0] == "\ufeff":
                    text = text[1:]
            if held_cr:
                text, held_cr = "\r" + text, False
            if not final and text.endswith("\r"):  # a "\n" may open the next chunk
                text, held_cr = text[:-1], True
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if final:
                return


def read_text(path: str | os.PathLike, errors: str = "strict") -> str:
    """Read a whole (small) UTF-8 file like iter_text_chunks does."""
    return "".join(iter_text_chunks(path, errors))


_KINDS = ((stat.S_ISFIFO, "a pipe (FIFO)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def check_regular_file(path: Path) -> None:
    """Refuse pipes and devices before opening them: a FIFO with no writer blocks open() forever, and
    /dev/zero never ends. A text to read is a regular file (symlinks to one are fine)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # open() says what is wrong, in its own words
    kind = next((what for test, what in _KINDS if test(mode)), None)
    if kind is not None:
        raise DataError(f"{path} is {kind}, not a regular file; charlm reads text files (save the text to a "
                        "file first)")


def _open_binary(path: Path):
    check_regular_file(path)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder; give a text file") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with _open_binary(Path(path)) as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- corpora by name

def data_home() -> Path | None:
    """$CHARLM_DATA_HOME: a folder of the user's own corpora, found by bare name."""
    home = os.environ.get("CHARLM_DATA_HOME")
    return Path(home).expanduser() if home else None


def _builtin_names() -> str:
    return ", ".join(BUILTIN_DATASETS)


def resolve_corpus(name_or_path: str | os.PathLike) -> Path:
    """Turn a file path, a built-in dataset name or a name in $CHARLM_DATA_HOME into a local file.

    The built-in names always mean the copies shipped in the package: no network, ever.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a text file or one of: {_builtin_names()}")
    if path.exists():
        check_regular_file(path)
        return path
    name = str(name_or_path)
    if name in BUILTIN_DATASETS:  # only fixed names ever become package paths
        return builtin_path(name)
    home = data_home()
    if home is not None and path.name == name and name not in ("", ".", ".."):
        for candidate in (home / name, home / f"{name}.txt"):
            if candidate.is_file():
                return candidate
    where = f", nor in $CHARLM_DATA_HOME ({home})" if home is not None else ""
    raise DataError(f"no such file or built-in dataset: {name}{where}; built-in datasets: {_builtin_names()}")


def builtin_path(name: str) -> Path:
    """The shipped file of a built-in dataset, checked against its recorded sha256."""
    spec = BUILTIN_DATASETS[name]
    path = Path(str(_CORPORA.joinpath(spec.filename)))
    if not path.is_file():
        raise DataError(f"the built-in dataset {name} is missing from this installation ({path}); "
                        "reinstall charlm")
    if sha256_file(path) != spec.sha256:
        raise DataError(f"the built-in dataset {name} at {path} does not match its sha256 {spec.sha256}; "
                        "reinstall charlm")
    return path
