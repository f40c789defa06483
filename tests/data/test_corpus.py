"""Tests for charlm.data.corpus: preprocess, load_corpus, statistics."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charlm.data import corpus as corpus_module
from charlm.data import encode as encode_module
from charlm.data import ngrams as ngrams_module
from charlm.data.corpus import FORMAT_VERSION, is_prepared, load_corpus, preprocess
from charlm.data.ngrams import zipf_slope
from charlm.data.text import NORMALIZATIONS, normalize, tokenize
from charlm.data.vocab import UNK, Vocab
from charlm.errors import DataError


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def leftovers(folder: Path) -> list[str]:
    """Hidden temp/old folders preprocess may have left next to its output."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def decoded(corpus) -> str:
    return corpus.vocab.decode(corpus.train) + corpus.vocab.decode(corpus.val)


# ---------------------------------------------------------------- the real corpora

def test_time_machine_letters_is_d2l(corpus_dir, tmp_path):
    source = corpus_dir / "timemachine.txt"
    assert hashlib.sha1(source.read_bytes()).hexdigest() == "090b5e7e70c295757f55df93cb0a180b9691891a"
    corpus = preprocess(source, tmp_path / "tm", normalize="letters")
    assert len(corpus.vocab) == 28 and corpus.vocab.tokens[:3] == (UNK, " ", "e")
    assert sorted(corpus.vocab.tokens[1:]) == sorted(" abcdefghijklmnopqrstuvwxyz")
    whole = normalize(source.read_text(encoding="utf-8"), "letters")
    n = len(whole)
    assert (len(corpus.train), len(corpus.val)) == (round(0.9 * n), n - round(0.9 * n))
    assert decoded(corpus) == whole
    assert corpus.train.dtype == np.uint8 and isinstance(corpus.train, np.memmap)
    assert not corpus.train.flags.writeable
    meta = corpus.meta
    assert meta["format_version"] == FORMAT_VERSION and meta["name"] == "timemachine"
    assert meta["source_sha256"] == "8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516"
    assert (meta["level"], meta["normalize"], meta["dtype"], meta["vocab_size"]) == ("char", "letters", "uint8", 28)
    assert meta["train_tokens"] + meta["val_tokens"] == n and meta["val_unknown"] == 0
    assert sorted(p.name for p in (tmp_path / "tm").iterdir()) == sorted(corpus_module.FILES)


def test_time_machine_statistics_match_brute_force_counts(corpus_dir, tmp_path):
    corpus = preprocess(corpus_dir / "timemachine.txt", stats_only=True, normalize="letters")
    text = normalize((corpus_dir / "timemachine.txt").read_text(encoding="utf-8"), "letters")
    train = text[: corpus.stats["train_tokens"]]
    for key, order in (("unigrams", 1), ("bigrams", 2), ("trigrams", 3)):
        counts = Counter(train[i: i + order] for i in range(len(train) - order + 1))
        summary = corpus.stats[key]
        assert summary["distinct"] == len(counts) and summary["total"] == sum(counts.values())
        assert ["".join(e["tokens"]) for e in summary["top"][:3]] == [g for g, _ in counts.most_common(3)]
        assert [e["count"] for e in summary["top"]] == sorted(counts.values(), reverse=True)[:10]
        assert summary["zipf_slope"] == pytest.approx(zipf_slope(np.array(list(counts.values()))))
        assert summary["zipf_slope"] < -1
    assert corpus.stats["trigrams"]["top"][0] == {"tokens": [" ", "t", "h"], "count": 3522}
    assert list(tmp_path.iterdir()) == []  # stats_only writes nothing


def test_default_output_folder_is_data_name_in_cwd(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = preprocess("tinyshakespeare", val_fraction=0.05)
    assert corpus.folder == Path("data") / "tinyshakespeare" and is_prepared("data/tinyshakespeare")
    assert len(corpus.vocab) == 66 and corpus.meta["name"] == "tinyshakespeare"
    assert len(corpus.train) + len(corpus.val) == 1_115_394
    assert leftovers(tmp_path / "data") == []


# ---------------------------------------------------------------- splits and vocabulary

def test_vocabulary_comes_from_the_training_split_only(tmp_path):
    source = write(tmp_path / "t.txt", "ab" * 45 + "abzzyyy" + "a")  # 98 chars, val = last 10
    corpus = preprocess(source, tmp_path / "out", val_fraction=0.1)
    assert set(corpus.vocab.tokens) == {UNK, "a", "b"}
    assert corpus.meta["val_unknown"] == corpus.stats["val_unknown"] == 5
    assert corpus.stats["val_unknown_tokens"] == ["y", "z"]
    assert corpus.vocab.decode(corpus.val) == "abab" + "\ufffd" * 5 + "a"
    assert corpus.vocab.counts == (0, 44, 44)


def test_min_freq_maps_rare_training_tokens_to_unk(tmp_path):
    source = write(tmp_path / "t.txt", "aaaabbbccccx" * 3)
    corpus = preprocess(source, tmp_path / "out", val_fraction=0.0, min_freq=4)
    assert corpus.vocab.tokens == (UNK, "a", "c", "b")
    assert corpus.meta["train_unknown"] == corpus.vocab.counts[0] == 3  # the three x
    assert corpus.vocab.decode(corpus.train).count("\ufffd") == 3


def test_zero_val_fraction_gives_an_empty_validation_split(tmp_path):
    corpus = preprocess(write(tmp_path / "t.txt", "hello world"), tmp_path / "out", val_fraction=0)
    assert len(corpus.train) == 11 and len(corpus.val) == 0 and corpus.val.dtype == np.uint8
    assert (tmp_path / "out" / "val.bin").stat().st_size == 0
    reloaded = load_corpus(tmp_path / "out")
    assert len(reloaded.val) == 0 and reloaded.vocab == corpus.vocab


@pytest.mark.parametrize("kwargs, message", [({"val_fraction": 0.6}, "between 0 and 0.5"),
                                             ({"min_freq": 0}, "min_freq"), ({"level": "byte"}, "level"),
                                             ({"normalize": "upper"}, "normalization"),
                                             ({"errors": "ignore"}, "--errors")])
def test_bad_options(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        preprocess(write(tmp_path / "t.txt", "abc"), tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cjk_corpus_is_uint16(tmp_path):
    text = "".join(chr(0x4E00 + (i * 7) % 3000) for i in range(9000)) + "\n"
    corpus = preprocess(write(tmp_path / "cjk.txt", text), tmp_path / "out", val_fraction=0)
    assert len(corpus.vocab) == 3002 and corpus.train.dtype == np.uint16
    assert decoded(corpus) == text
    assert corpus.stats["bigrams"]["total"] == 9000 and corpus.stats["trigrams"]["distinct"] == 3001


def test_more_than_65536_word_types_is_uint32(tmp_path):
    text = " ".join(f"w{i}" for i in range(70_000))
    corpus = preprocess(write(tmp_path / "words.txt", text), tmp_path / "out", level="word", val_fraction=0)
    assert len(corpus.vocab) == 70_002 and corpus.train.dtype == np.uint32  # words, " ", <unk>
    assert decoded(corpus) == text
    assert corpus.stats["unigrams"]["distinct"] == 70_000  # whitespace is left out of n-grams
    assert corpus.stats["bigrams"]["distinct"] == 69_999 and corpus.stats["trigrams"]["total"] == 69_998


def test_word_level_statistics_skip_whitespace(tmp_path):
    text = "the cat sat.\nthe cat ran.\r\nthe cat hid."
    corpus = preprocess(write(tmp_path / "t.txt", text), tmp_path / "out", level="word", val_fraction=0,
                        chunk_bytes=3)
    assert corpus.stats["bigrams"]["top"][0] == {"tokens": ["the", "cat"], "count": 3}
    unigrams = {"".join(e["tokens"]): e["count"] for e in corpus.stats["unigrams"]["top"]}
    assert unigrams == {"the": 3, "cat": 3, ".": 3, "sat": 1, "ran": 1, "hid": 1}
    assert decoded(corpus) == normalize(text)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("level", ["char", "word"])
def test_tiny_chunks_give_identical_output(tmp_path, normalization, level, monkeypatch):
    text = "\ufeffΣΑΣ Hello,, wörld!!\r\n\r\n  中文 😀 ok.\r" * 7
    source = write(tmp_path / "t.txt", text)
    outputs = []
    for i, (chunk_bytes, dense) in enumerate([(1 << 20, 1 << 22), (3, 1 << 22), (5, 0)]):
        monkeypatch.setattr(ngrams_module, "_DENSE_NGRAM_LIMIT", dense)  # 0: the sorted-keys path
        corpus = preprocess(source, tmp_path / f"o{i}", level=level, normalize=normalization,
                            chunk_bytes=chunk_bytes)
        files = {f: (tmp_path / f"o{i}" / f).read_bytes() for f in ("train.bin", "val.bin", "vocab.json")}
        outputs.append((files, corpus.stats))
    assert outputs[0] == outputs[1] == outputs[2]
    assert decoded(load_corpus(tmp_path / "o1")) == normalize(text[1:], normalization)


@settings(max_examples=25, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60),
       st.sampled_from(NORMALIZATIONS), st.sampled_from(["char", "word"]), st.integers(1, 9))
def test_decoded_corpus_is_the_normalized_text(tmp_path_factory, text, mode, level, chunk_bytes):
    folder = tmp_path_factory.mktemp("p")
    source = write(folder / "t.txt", text)
    whole = normalize(text[1:] if text.startswith("\ufeff") else text, mode)
    if "\x00" in text or not whole.strip():
        with pytest.raises(DataError):
            preprocess(source, folder / "out", level=level, normalize=mode, chunk_bytes=chunk_bytes)
        return
    corpus = preprocess(source, folder / "out", level=level, normalize=mode, chunk_bytes=chunk_bytes,
                        val_fraction=0)
    assert corpus.vocab.decode(corpus.train) == whole
    assert corpus.vocab == Vocab.build(Counter(tokenize(whole, level)), level)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("content, normalization, message", [
    (b"", "none", "is empty"), (b"\xef\xbb\xbf", "none", "only whitespace"),
    (b" \n\t\r\n ", "none", "only whitespace"), (b"123 456\n", "letters", "try --normalize none"),
    (b"ab\x00cd", "none", "looks binary"), (b"ab\xffcd", "none", "invalid UTF-8 at byte 2"),
])
def test_unusable_text_leaves_nothing_behind(tmp_path, content, normalization, message):
    source = write(tmp_path / "t.txt", content)
    with pytest.raises(DataError, match=message):
        preprocess(source, tmp_path / "deep" / "out", normalize=normalization)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_errors_replace_keeps_going(tmp_path):
    corpus = preprocess(write(tmp_path / "t.txt", b"ab\xffcd" * 5), tmp_path / "out", errors="replace")
    assert "\ufffd" in corpus.vocab and corpus.meta["errors"] == "replace"


def test_missing_source_and_unknown_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLM_DATA_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="timemachine, tinyshakespeare"):
        preprocess("wikitext", tmp_path / "out")
    with pytest.raises(DataError, match="timemachine, tinyshakespeare"):
        preprocess("../../etc/x", tmp_path / "out")
    with pytest.raises(DataError, match="is a folder"):
        preprocess(tmp_path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the output folder

def test_existing_output_needs_force_and_force_replaces(tmp_path):
    first = write(tmp_path / "a.txt", "aaaa")
    second = write(tmp_path / "b.txt", "bbbbcc")
    preprocess(first, tmp_path / "out")
    with pytest.raises(DataError, match="already exists; pass --force"):
        preprocess(second, tmp_path / "out")
    assert load_corpus(tmp_path / "out").vocab.tokens == (UNK, "a")
    replaced = preprocess(second, tmp_path / "out", force=True)
    assert replaced.vocab.tokens == (UNK, "b", "c") and load_corpus(tmp_path / "out").vocab == replaced.vocab
    assert leftovers(tmp_path) == []


def test_output_under_a_file_is_refused(tmp_path):
    source = write(tmp_path / "t.txt", "abc")
    blocker = write(tmp_path / "somefile", "x")
    for out in (blocker / "out", blocker / "deeper" / "out"):
        with pytest.raises(DataError, match="cannot write to .*somefile"):
            preprocess(source, out)
    with pytest.raises(DataError, match="not a folder"):
        preprocess(source, blocker, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somefile", "t.txt"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_parent_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(DataError, match="cannot write"):
            preprocess(write(tmp_path / "t.txt", "abc"), locked / "out")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_failure_while_writing_keeps_the_old_folder(tmp_path, monkeypatch):
    source = write(tmp_path / "t.txt", "abcabc")
    preprocess(source, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def disk_full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Vocab, "save", disk_full)
    with pytest.raises(DataError, match="No space left on device"):
        preprocess(source, tmp_path / "out", force=True, normalize="lower")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert leftovers(tmp_path) == []


def test_interrupt_removes_the_temporary_folder(tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(encode_module, "summary", interrupted)
    with pytest.raises(KeyboardInterrupt):
        preprocess(write(tmp_path / "t.txt", "abc"), tmp_path / "new" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


# ---------------------------------------------------------------- loading

def test_load_corpus_rejects_broken_folders(tmp_path):
    with pytest.raises(DataError, match="run `charlm preprocess` first"):
        load_corpus(tmp_path / "nothing")
    assert not is_prepared(tmp_path / "nothing")
    preprocess(write(tmp_path / "t.txt", "hello world" * 10), tmp_path / "out")
    out = tmp_path / "out"
    assert is_prepared(out)

    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps(meta | {"format_version": 99}))
    assert not is_prepared(out)
    with pytest.raises(DataError, match="format_version 99"):
        load_corpus(out)
    (out / "meta.json").write_text(json.dumps(meta))

    train = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(train[:-1])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_corpus(out)
    (out / "train.bin").write_bytes(train)
    assert len(load_corpus(out).train) == len(train)

    (out / "val.bin").unlink()
    assert not is_prepared(out)
    with pytest.raises(DataError, match="missing val.bin"):
        load_corpus(out)


def test_progress_reports_both_passes(tmp_path):
    source = write(tmp_path / "t.txt", "abc" * 1000)
    seen = []
    preprocess(source, tmp_path / "out", chunk_bytes=1000, on_progress=lambda *event: seen.append(event))
    assert [e for e in seen if e[0] == "count"][-1] == ("count", 3000, 3000)
    assert [e for e in seen if e[0] == "encode"][-1] == ("encode", 3000, 3000)


def test_huge_vocabularies_count_bigrams_only():
    class Tokens:  # 2M names without building them
        def __len__(self):
            return 1 << 21  # trigram keys would overflow int64

        def __getitem__(self, i):
            return f"t{i}"

    tokens = Tokens()
    counter = ngrams_module.NgramCounter(len(tokens))
    counter.update(np.array([5, 7, 5], np.uint32))
    counter.update(np.array([7], np.uint32))
    summaries = counter.summaries(tokens)
    assert list(summaries) == [2]
    assert summaries[2]["top"] == [{"tokens": ["t5", "t7"], "count": 2}, {"tokens": ["t7", "t5"], "count": 1}]


# ---------------------------------------------------------------- what went to <unk>, and why

def test_rare_tokens_are_not_called_unseen(tmp_path):
    # 'x' occurs twice in training (below min_freq 3) and once in validation; 'q' only in validation.
    source = write(tmp_path / "t.txt", "aaabbbx" * 2 + "abxq")
    corpus = preprocess(source, tmp_path / "out", val_fraction=4 / 18, min_freq=3)
    assert (corpus.stats["val_unseen"], corpus.stats["val_unknown_tokens"]) == (1, ["q"])
    assert (corpus.stats["val_rare"], corpus.stats["val_rare_tokens"]) == (1, ["x"])
    assert corpus.stats["val_unknown"] == 2


def test_letters_says_how_much_of_a_non_latin_text_became_spaces(tmp_path):
    from charlm.data.encode import letters_warning

    russian = write(tmp_path / "ru.txt", "Мой дядя самых честных правил, когда не в шутку занемог (Pushkin)\n" * 20)
    stats = preprocess(russian, stats_only=True, normalize="letters").stats
    assert stats["letters_kept"] == {"letters": 7 * 20, "characters": 66 * 20}
    warning = letters_warning(stats)
    assert "kept 140 of 1,320 characters as letters a-z; the other 89% became spaces" in warning
    assert "--normalize lower" in warning
    english = write(tmp_path / "en.txt", "The Time Traveller (for so it will be convenient to speak of him)\n" * 20)
    assert letters_warning(preprocess(english, stats_only=True, normalize="letters").stats) is None
    assert letters_warning(preprocess(russian, stats_only=True, normalize="lower").stats) is None


# ---------------------------------------------------------------- a corpus from ids already made

def test_write_corpus_makes_a_folder_load_corpus_reads(tmp_path):
    from charlm.data.corpus import write_corpus

    vocab = Vocab([UNK, " ", "a", "b"], [0, 5, 5, 5])
    chunks = [np.array([1, 2, 3] * 100, np.int64), np.array([2, 2], np.int64)]
    corpus = write_corpus(tmp_path / "ids", vocab, iter(chunks), [np.array([3, 1], np.int64)], source="made up")
    assert corpus.train.dtype == np.uint8 and corpus.train.tolist() == [1, 2, 3] * 100 + [2, 2]
    assert corpus.val.tolist() == [3, 1] and is_prepared(tmp_path / "ids")
    meta = corpus.meta
    assert (meta["source"], meta["train_tokens"], meta["val_tokens"], meta["vocab_size"]) == ("made up", 302, 2, 4)
    assert meta["val_fraction"] == pytest.approx(2 / 304) and meta["format_version"] == FORMAT_VERSION
    with pytest.raises(DataError, match="already exists"):
        write_corpus(tmp_path / "ids", vocab, [], [], source="again")
    with pytest.raises(DataError, match="outside its vocabulary"):  # checked on the way back in
        write_corpus(tmp_path / "bad", vocab, [np.array([1, 9])], [], source="bad ids")
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- leftovers of a killed preprocess

KILLED = """
import os, signal, sys
from charlm.data.corpus import preprocess
def die(phase, done, total):
    if phase == "encode":
        os.kill(os.getpid(), signal.SIGKILL)
preprocess(sys.argv[1], sys.argv[2], chunk_bytes=1000, on_progress=die)
"""


def test_a_killed_preprocess_leaves_a_temp_folder_the_next_run_removes(tmp_path):
    import signal
    import subprocess
    import sys

    source = write(tmp_path / "t.txt", "abcdefgh" * 2000)
    out = tmp_path / "data" / "t"
    killed = subprocess.run([sys.executable, "-c", KILLED, str(source), str(out)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert len(leftovers(tmp_path / "data")) == 1 and not out.exists()  # kill -9 cleans nothing
    preprocess(source, tmp_path / "data" / "other")
    assert leftovers(tmp_path / "data") == []


def test_a_live_writers_temp_folder_is_left_alone(tmp_path):
    from charlm.data import folders

    live = folders.temp_name(tmp_path / "busy")
    live.mkdir()
    (live / "train.bin").write_bytes(b"\x01")
    child = subprocess_sleeping()
    try:
        other = Path(str(live).replace(f"-{os.getpid()}-", f"-{child.pid}-"))
        live.rename(other)
        user = tmp_path / f".mine.tmp-{folders._HOST}-{2 ** 22 + 12345}-0123abcd"  # dead pid, but not our files
        user.mkdir()
        (user / "notes.txt").write_text("mine")
        assert folders.remove_stale_temps(tmp_path) == []
        assert other.is_dir() and user.is_dir()
    finally:
        child.kill()
        child.wait()
    assert folders.remove_stale_temps(tmp_path) == [other]


def subprocess_sleeping():
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.mark.parametrize("name", ["meta.json", "vocab.json", "stats.json"])
@pytest.mark.parametrize("target", ["/dev/zero", "sparse"])
def test_a_json_file_that_is_a_device_or_huge_is_refused_before_it_is_read(tmp_path, name, target):
    from charlm.data.jsonfile import MAX_VOCAB_BYTES

    source = write(tmp_path / "t.txt", "hello world, hello there\n" * 20)
    folder = tmp_path / "t"
    preprocess(source, folder)
    (folder / name).unlink()
    if target == "sparse":  # no disk used: a hole larger than any limit
        with open(tmp_path / "sparse", "wb") as handle:
            handle.truncate(MAX_VOCAB_BYTES + 1)
        target = tmp_path / "sparse"
    (folder / name).symlink_to(target)
    with pytest.raises(DataError, match="is not a regular file" if target == "/dev/zero" else r"over the [\d,]+ "):
        load_corpus(folder)


def test_of_two_preprocesses_into_one_folder_the_later_loses_and_says_so(tmp_path, tiny_text):
    # Both checked that data/book was free before either wrote it; the one that finishes second
    # must not replace the first one's folder and report success.
    (tmp_path / "book.txt").write_text(tiny_text)
    (tmp_path / "other.txt").write_text(tiny_text.upper())
    out = tmp_path / "data" / "book"
    started = []

    def meanwhile(*_):
        if not started:
            started.append(True)
            corpus_module.preprocess(tmp_path / "other.txt", out)

    with pytest.raises(DataError, match="was written by another process while this one ran"):
        corpus_module.preprocess(tmp_path / "book.txt", out, on_progress=meanwhile)
    assert json.loads((out / "meta.json").read_text())["source"].endswith("other.txt")
    assert [p.name for p in out.parent.iterdir()] == ["book"]  # no temporary folder left
