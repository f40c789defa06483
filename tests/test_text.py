"""Tests for charlm.data.text: reading, normalization, tokenization, built-in datasets."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charlm.data.text import (BUILTIN_DATASETS, LEVELS, NORMALIZATIONS, data_home, iter_normalized,
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


def test_letters_matches_d2l_on_the_time_machine(shared_data):
    text = (shared_data / "timemachine.txt").read_text(encoding="utf-8")
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
def cache(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "cache"
    monkeypatch.setenv("CHARLM_DATA_HOME", str(home))
    return home


def test_existing_path_is_returned(tmp_path):
    path = write(tmp_path / "mine.txt", b"hi")
    assert resolve_corpus(path) == path
    assert resolve_corpus(str(path)) == path


def test_bad_names_list_the_builtins(tmp_path, cache):
    with pytest.raises(DataError, match="is a folder"):
        resolve_corpus(tmp_path)
    with pytest.raises(DataError, match=r"built-in dataset: .*missing\.txt.*timemachine, tinyshakespeare"):
        resolve_corpus(tmp_path / "missing.txt")
    with pytest.raises(DataError, match=r"wikitext.*timemachine, tinyshakespeare"):
        resolve_corpus("wikitext")
    with pytest.raises(DataError, match="built-in datasets"):
        resolve_corpus("../../timemachine")
    assert not cache.exists()  # nothing was built from those names


def test_builtin_from_a_local_data_home_is_used_offline(shared_data, monkeypatch):
    monkeypatch.setenv("CHARLM_DATA_HOME", str(shared_data))
    monkeypatch.setenv("CHARLM_DATASET_URL_TIMEMACHINE", "http://127.0.0.1:9/never")
    path = resolve_corpus("timemachine")
    assert path == shared_data / "timemachine.txt"
    assert hashlib.sha1(path.read_bytes()).hexdigest() == "090b5e7e70c295757f55df93cb0a180b9691891a"


def test_data_home_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("CHARLM_DATA_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data_home() == tmp_path / "charlm"


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/www; yields (base url, folder, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, requests
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_and_caches(shared_data, cache, server, monkeypatch):
    base, root, requests = server
    write(root / "tm.txt", (shared_data / "timemachine.txt").read_bytes())
    monkeypatch.setenv("CHARLM_DATASET_URL_TIMEMACHINE", f"{base}/tm.txt")
    path = resolve_corpus("timemachine")
    assert path == cache / "timemachine.txt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == BUILTIN_DATASETS["timemachine"].sha256
    assert resolve_corpus("timemachine") == path
    assert len(requests) == 1  # the second call used the cache
    assert sorted(p.name for p in cache.iterdir()) == ["timemachine.txt"]


def test_corrupt_cache_is_downloaded_again(shared_data, cache, server, monkeypatch):
    base, root, _ = server
    write(root / "tm.txt", (shared_data / "timemachine.txt").read_bytes())
    cache.mkdir()
    write(cache / "timemachine.txt", b"truncated")
    monkeypatch.setenv("CHARLM_DATASET_URL_TIMEMACHINE", f"{base}/tm.txt")
    assert resolve_corpus("timemachine").read_bytes() == (shared_data / "timemachine.txt").read_bytes()


def test_wrong_checksum_is_rejected_and_nothing_kept(cache, server, monkeypatch):
    base, root, _ = server
    write(root / "tm.txt", b"not the time machine")
    monkeypatch.setenv("CHARLM_DATASET_URL_TIMEMACHINE", f"{base}/tm.txt")
    with pytest.raises(DataError, match=r"sha256 .* expected 8424dbd9.*file path instead"):
        resolve_corpus("timemachine")
    assert list(cache.iterdir()) == []


def test_missing_url_and_unreachable_host_say_how_to_use_a_local_file(cache, server, monkeypatch):
    base, _, _ = server
    monkeypatch.setenv("CHARLM_DATASET_URL_TINYSHAKESPEARE", f"{base}/absent.txt")
    with pytest.raises(DataError, match=r"cannot download tinyshakespeare .*pass a local copy"):
        resolve_corpus("tinyshakespeare")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CHARLM_DATASET_URL_TINYSHAKESPEARE", f"http://127.0.0.1:{port}/x.txt")
    with pytest.raises(DataError, match="cannot download tinyshakespeare"):
        resolve_corpus("tinyshakespeare")
    assert list(cache.iterdir()) == []
