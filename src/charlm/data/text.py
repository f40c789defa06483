"""Reading text files and built-in datasets, normalization and tokenization."""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import tempfile
import types
import urllib.error
import urllib.request
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
    """A public corpus charlm can fetch by name."""

    name: str
    url: str
    sha256: str
    filename: str


BUILTIN_DATASETS = types.MappingProxyType({
    "timemachine": BuiltinDataset(
        "timemachine", "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
        "8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516", "timemachine.txt"),
    "tinyshakespeare": BuiltinDataset(
        "tinyshakespeare",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", "tinyshakespeare.txt"),
})


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
                raise DataError(f"{path}: invalid UTF-8 at byte {offset - buffered + exc.start}; pass "
                                "--errors replace to read it with U+FFFD in place of bad bytes") from None
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


def _open_binary(path: Path):
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

def data_home() -> Path:
    """Where built-in datasets are cached: $CHARLM_DATA_HOME, else $XDG_CACHE_HOME/charlm."""
    if os.environ.get("CHARLM_DATA_HOME"):
        return Path(os.environ["CHARLM_DATA_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "charlm"


def _builtin_names() -> str:
    return ", ".join(BUILTIN_DATASETS)


def resolve_corpus(name_or_path: str | os.PathLike, timeout: float = 30.0) -> Path:
    """Turn a file path or a built-in dataset name into a readable local file."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a text file or one of: {_builtin_names()}")
    if path.exists():
        return path
    name = str(name_or_path)
    if name in BUILTIN_DATASETS:  # only fixed names ever become cache paths
        return _fetch_builtin(BUILTIN_DATASETS[name], timeout)
    raise DataError(f"no such file or built-in dataset: {name}; built-in datasets: {_builtin_names()}")


def _fetch_builtin(spec: BuiltinDataset, timeout: float) -> Path:
    home = data_home()
    target = home / spec.filename
    if target.is_file() and sha256_file(target) == spec.sha256:
        return target
    url = os.environ.get(f"CHARLM_DATASET_URL_{spec.name.upper()}") or spec.url
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=home)
    except OSError as exc:
        raise DataError(f"cannot write the dataset cache {home}: {exc.strerror or exc}; "
                        "set CHARLM_DATA_HOME to a writable folder") from None
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != spec.sha256:
            raise DataError(f"{spec.name} downloaded from {url} has sha256 {digest.hexdigest()}, "
                            f"expected {spec.sha256}; not using it. Download it yourself and pass "
                            "the file path instead")
        os.replace(tmp, target)
        return target
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"cannot download {spec.name} from {url} ({reason}); without network, "
                        f"pass a local copy instead: charlm preprocess path/to/{spec.filename} "
                        "(or put it in $CHARLM_DATA_HOME)") from None
    finally:
        tmp.unlink(missing_ok=True)
