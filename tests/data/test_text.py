"""Tests for charlm.data.text: reading, normalization, tokenization, built-in datasets."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charlm.data import text as text_module
from charlm.data.text import (BUILTIN_DATASETS, LEVELS, NORMALIZATIONS, builtin_path, iter_normalized,
                              iter_text_chunks, iter_token_lists, normalize, read_text, resolve_corpus,
                              tokenize)
from charlm.errors import DataError

# Characters that stress the seams: sigma (context-dependent lowercasing), CR/LF, letters
# next to non-letters, multi-byte UTF-8 and a BOM.
SEAM_ALPHABET = st.sampled_from(list("aZ Σσ\r\n\t.,9éß中😀\ufeffİ"))


def split_at(text: str, cuts: list[int]) -> list[str]:
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


# ---------------------------------------------------------------- normalize

def test_normalize_modes():
    text = "Hello, Wörld!! 42\nÉTÉ"
    assert normalize(text, "none") == text
    assert normalize(text, "lower") == "hello, wörld!! 42\nété"
    assert normalize(text, "letters") == "hello w rld t "
    assert normalize("Σ ΑΣ", "lower") == "σ ας"  # final sigma survives


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_line_endings_become_newlines_in_every_mode(mode):
    assert normalize("A\r\nB\rC\n", mode) == normalize("A\nB\nC\n", mode)
    assert "\r" not in normalize("x\r\r\n", mode)


def test_letters_matches_d2l_on_the_time_machine(corpus_dir):
    text = (corpus_dir / "timemachine.txt").read_text(encoding="utf-8")
    expected = re.sub("[^A-Za-z]+", " ", text).lower()
    assert normalize(text, "letters") == expected
    assert sorted(set(expected)) == sorted(" abcdefghijklmnopqrstuvwxyz")


def test_letters_on_non_ascii_text_uses_the_same_rule():
    assert normalize("Ça va? Oui—très bien", "letters") == " a va oui tr s bien"


def test_unknown_normalization_is_a_data_error():
    with pytest.raises(DataError, match="letters"):
        normalize("x", "upper")


@given(st.text(SEAM_ALPHABET, max_size=40), st.lists(st.integers(0, 40), max_size=8),
       st.sampled_from(NORMALIZATIONS))
def test_chunked_normalize_equals_whole(text, cuts, mode):
    assert "".join(iter_normalized(split_at(text, cuts), mode)) == normalize(text, mode)


def test_letters_run_across_many_chunks_collapses_to_one_space():
    pieces = ["ab", "!", " ", "12", ",", "cd!", "!"]
    assert "".join(iter_normalized(pieces, "letters")) == "ab cd "


# ---------------------------------------------------------------- tokenize

def test_tokenize_levels():
    text = "Hello, world!\n  ok"
    assert tokenize(text, "char") == list(text)
    assert tokenize(text, "word") == ["Hello", ",", " ", "world", "!", "\n  ", "ok"]
    with pytest.raises(DataError, match="char, word"):
        tokenize(text, "byte")


@given(st.text(), st.sampled_from(LEVELS))
def test_tokenize_round_trips(text, level):
    assert "".join(tokenize(text, level)) == text


@given(st.text(st.sampled_from(list("ab ,\n.é中")), max_size=40), st.lists(st.integers(0, 40), max_size=6))
def test_streamed_word_tokens_equal_whole_text_tokens(text, cuts):
    streamed = [t for tokens in iter_token_lists(split_at(text, cuts), "word") for t in tokens]
    assert streamed == tokenize(text, "word")


# ---------------------------------------------------------------- reading files

def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 4096])
def test_chunks_handle_bom_multibyte_and_crlf_seams(tmp_path, chunk_bytes):
    text = "\ufeffa\r\nb中\r\r\nc😀\r"
    path = write(tmp_path / "t.txt", text.encode("utf-8"))
    chunks = list(iter_text_chunks(path, chunk_bytes=chunk_bytes))
    assert "".join(chunks) == "a\nb中\n\nc😀\n"
    assert all(chunks)


@settings(max_examples=60, deadline=None)
@given(st.text(SEAM_ALPHABET, max_size=30), st.integers(1, 7), st.sampled_from(NORMALIZATIONS))
def test_streamed_file_normalizes_like_the_whole_text(tmp_path_factory, text, chunk_bytes, mode):
    path = write(tmp_path_factory.mktemp("s") / "t.txt", text.encode("utf-8"))
    streamed = "".join(iter_normalized(iter_text_chunks(path, chunk_bytes=chunk_bytes), mode))
    whole = text[1:] if text.startswith("\ufeff") else text
    assert streamed == normalize(whole, mode)


def test_invalid_utf8_strict_names_the_byte_offset(tmp_path):
    path = write(tmp_path / "bad.txt", b"abc\xe4\xb8\xadok\xffdef")
    for chunk_bytes in (1, 4, 1024):
        with pytest.raises(DataError, match=r"invalid UTF-8 at byte 8;.*--errors replace"):
            list(iter_text_chunks(path, chunk_bytes=chunk_bytes))


def test_truncated_multibyte_at_end_is_reported_strict_and_replaced(tmp_path):
    path = write(tmp_path / "cut.txt", b"ab\xe4\xb8")
    with pytest.raises(DataError, match="byte 2"):
        read_text(path)
    assert read_text(path, errors="replace") == "ab\ufffd"


def test_replace_substitutes_u_fffd(tmp_path):
    path = write(tmp_path / "bad.txt", b"a\xffb\xfe")
    assert read_text(path, errors="replace") == "a\ufffdb\ufffd"


def test_nul_bytes_look_binary(tmp_path):
    path = write(tmp_path / "x.bin", b"text\x00more")
    with pytest.raises(DataError, match=r"looks binary \(NUL byte at byte 4\)"):
        read_text(path, errors="replace")


def test_read_text_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="is a folder"):
        read_text(tmp_path)
    with pytest.raises(DataError, match="--errors mode"):
        read_text(tmp_path / "x", errors="ignore")
    assert read_text(write(tmp_path / "e.txt", b"")) == ""


# ---------------------------------------------------------------- corpora by name

@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("CHARLM_DATA_HOME", str(folder))
    return folder


def test_existing_path_is_returned(tmp_path):
    path = write(tmp_path / "mine.txt", b"hi")
    assert resolve_corpus(path) == path
    assert resolve_corpus(str(path)) == path


def test_bad_names_list_the_builtins(tmp_path, home):
    with pytest.raises(DataError, match="is a folder"):
        resolve_corpus(tmp_path)
    with pytest.raises(DataError, match=r"built-in dataset: .*missing\.txt.*timemachine, tinyshakespeare"):
        resolve_corpus(tmp_path / "missing.txt")
    with pytest.raises(DataError, match=r"wikitext, nor in \$CHARLM_DATA_HOME.*timemachine, tinyshakespeare"):
        resolve_corpus("wikitext")
    write(tmp_path / "secret.txt", b"outside the data home")
    with pytest.raises(DataError, match="built-in datasets"):  # a name never climbs out of the data home
        resolve_corpus("../secret")
    assert list(home.iterdir()) == []


def test_builtins_are_the_shipped_copies_and_need_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a built-in dataset tried to use the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.delenv("CHARLM_DATA_HOME", raising=False)
    path = resolve_corpus("timemachine")
    assert path.parent.name == "corpora" and path.parent.parent.name == "charlm"
    assert hashlib.sha1(path.read_bytes()).hexdigest() == "090b5e7e70c295757f55df93cb0a180b9691891a"  # D2L's
    shakespeare = resolve_corpus("tinyshakespeare").read_text(encoding="utf-8")
    assert len(shakespeare) == 1_115_394 and len(set(shakespeare)) == 65


def test_sources_record_an_https_source_and_the_sha256_of_each_shipped_file():
    sources = json.loads((builtin_path("timemachine").parent / "sources.json").read_text(encoding="utf-8"))
    assert set(sources) == set(BUILTIN_DATASETS) == {"timemachine", "tinyshakespeare"}
    for name, entry in sources.items():
        assert entry["source"].startswith("https://")
        assert hashlib.sha256(builtin_path(name).read_bytes()).hexdigest() == entry["sha256"]


def test_a_damaged_shipped_corpus_is_refused(tmp_path, monkeypatch):
    damaged = write(tmp_path / "timemachine.txt", b"not the time machine")
    monkeypatch.setattr(text_module, "_CORPORA", tmp_path)
    with pytest.raises(DataError, match="does not match its sha256 8424dbd9.*reinstall charlm"):
        resolve_corpus("timemachine")
    damaged.unlink()
    with pytest.raises(DataError, match="missing from this installation"):
        resolve_corpus("timemachine")


def test_a_users_corpus_is_found_by_name_in_the_data_home(home, tmp_path, monkeypatch):
    write(home / "poems.txt", b"roses are red")
    write(home / "notes", b"no suffix")
    monkeypatch.chdir(tmp_path)
    assert resolve_corpus("poems") == home / "poems.txt"
    assert resolve_corpus("poems.txt") == home / "poems.txt"
    assert resolve_corpus("notes") == home / "notes"
    write(home / "timemachine.txt", b"a user's file does not replace the shipped corpus")
    assert resolve_corpus("timemachine") == builtin_path("timemachine")


def test_no_plain_http_url_is_left_in_the_package():
    remote_http = re.compile(r"http://(?!127\.0\.0\.1|localhost|\[::1\]|\{)")  # loopback is no download
    package = Path(text_module.__file__).resolve().parents[1]
    offenders = [str(p.relative_to(package)) for p in package.rglob("*")
                 if p.is_file() and p.suffix in (".py", ".json", ".yaml", ".html", ".js")
                 and remote_http.search(p.read_text(encoding="utf-8", errors="replace"))]
    assert offenders == []


