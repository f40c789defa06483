"""Tests for charlm.data.prepare: train finds the data folder made from its text, or makes one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from charlm.config import build_config
from charlm.data.corpus import preprocess
from charlm.data.prepare import prepare_for_training
from charlm.errors import DataError
from charlm.train import train


@pytest.fixture
def ws(tmp_path, monkeypatch, tiny_text):
    monkeypatch.chdir(tmp_path)
    # Each text twice, so that every validation character is also in training (no <unk>).
    for folder, text in (("a", tiny_text[:1500] * 2), ("b", tiny_text[2000:3500].upper() * 2)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "book.txt").write_text(text, encoding="utf-8")
    return tmp_path


def data_cfg(corpus: str, **data):
    return build_config({"data": {"corpus": corpus, **data}}).data


def text_of(corpus) -> str:
    return corpus.vocab.decode(corpus.train) + corpus.vocab.decode(corpus.val)


def test_another_file_of_the_same_name_gets_its_own_folder(ws):
    first = prepare_for_training(data_cfg("a/book.txt"))
    notes = []
    second = prepare_for_training(data_cfg("b/book.txt"), on_note=notes.append)
    assert text_of(first) == (ws / "a" / "book.txt").read_text()
    assert text_of(second) == (ws / "b" / "book.txt").read_text()
    assert first.folder != second.folder and text_of(load_again(first)) == text_of(first)  # left alone
    assert len(notes) == 1 and f"was made from {(ws / 'a' / 'book.txt').resolve()}" in notes[0]
    # and each is found again, without preprocessing a third time
    assert prepare_for_training(data_cfg("a/book.txt")).folder == first.folder
    assert prepare_for_training(data_cfg("b/book.txt")).folder == second.folder
    assert sorted(p.name for p in (ws / "data").iterdir()) == ["book", "book-char-none-v0.1-m1"]


def load_again(corpus):
    from charlm.data.corpus import load_corpus

    return load_corpus(corpus.folder)


def test_an_edited_source_is_preprocessed_again(ws):
    source = ws / "a" / "book.txt"
    prepare_for_training(data_cfg("a/book.txt"))
    for edit in ("the same length, other text! " * 200)[:len(source.read_text())], "a shorter text, again " * 9:
        source.write_text(edit, encoding="utf-8")
        notes = []
        corpus = prepare_for_training(data_cfg("a/book.txt"), on_note=notes.append)
        assert text_of(corpus) == edit
        assert notes and "earlier version of this file" in notes[0]


def test_a_folder_that_records_no_source_is_not_reused(ws):
    old = preprocess("b/book.txt", "data/book")
    meta = json.loads((old.folder / "meta.json").read_text())
    for key in ("source", "source_sha256", "source_bytes"):
        del meta[key]  # as folders written before the record existed
    (old.folder / "meta.json").write_text(json.dumps(meta))
    notes = []
    corpus = prepare_for_training(data_cfg("a/book.txt"), on_note=notes.append)
    assert text_of(corpus) == (ws / "a" / "book.txt").read_text() and corpus.folder != old.folder
    assert notes and "records no source file" in notes[0]


def test_the_same_file_reuses_its_folder_untouched(ws):
    first = prepare_for_training(data_cfg("a/book.txt"))
    stamp = (first.folder / "train.bin").stat().st_mtime_ns, (first.folder / "train.bin").stat().st_ino
    again = prepare_for_training(data_cfg("a/book.txt"))
    assert again.folder == first.folder
    assert ((again.folder / "train.bin").stat().st_mtime_ns, (again.folder / "train.bin").stat().st_ino) == stamp


TINY = {"data": {"corpus": "a/book.txt", "batch_size": 2, "num_steps": 8},
        "model": {"name": "rnn", "hidden_size": 8, "embedding_dim": 4},
        "train": {"max_steps": 2, "eval_every": 2, "log_every": 1, "device": "cpu"}}


def test_resume_goes_on_with_the_text_it_started_with(ws):
    first = train(build_config(TINY, name="r"), handle_signals=False)
    data_dir = json.loads(json.dumps(str(prepare_for_training(data_cfg("a/book.txt")).folder.resolve())))
    (ws / "a" / "book.txt").write_text("an edited book " * 200, encoding="utf-8")
    notes = []
    cfg = build_config(TINY, ["train.max_steps=4"], name="r")
    train(cfg, first.run_dir, resume=True, handle_signals=False,
          on_event=lambda kind, info: notes.append(info) if kind == "note" else None)
    import torch

    payload = torch.load(Path(first.run_dir) / "last.pt", weights_only=True)
    assert payload["step"] == 4 and payload["data_dir"] == data_dir and notes == []


def test_a_named_folder_gives_the_run_its_settings(ws):
    preprocess("a/book.txt", "prepared", normalize="letters", val_fraction=0.2)
    raw = {**TINY, "data": {**TINY["data"], "corpus": "prepared"}}  # normalize left out
    result = train(build_config(raw, name="named"), handle_signals=False)
    recorded = yaml.safe_load((Path(result.run_dir) / "config.yaml").read_text())["data"]
    assert (recorded["normalize"], recorded["val_fraction"]) == ("letters", 0.2)


def test_a_named_folder_still_refuses_a_contradicting_setting(ws):
    from charlm.errors import DataError

    preprocess("a/book.txt", "prepared", normalize="letters")
    with pytest.raises(DataError, match="data.normalize is 'lower' but prepared was preprocessed with normalize"):
        prepare_for_training(data_cfg("prepared", normalize="lower"))


def test_the_same_text_moved_elsewhere_keeps_its_folder(ws):
    first = prepare_for_training(data_cfg("a/book.txt"))
    (ws / "a").rename(ws / "moved")
    notes = []
    assert prepare_for_training(data_cfg("moved/book.txt"), on_note=notes.append).folder == first.folder
    assert notes == []


def test_train_reads_a_latin1_text_with_data_errors_replace(ws):
    (ws / "latin.txt").write_bytes("caf\u00e9 au lait, cr\u00e8me br\u00fbl\u00e9e. ".encode("latin-1") * 40)
    with pytest.raises(DataError, match=r"invalid UTF-8 at byte 3; set data.errors: replace "
                                        r"\(--set data.errors=replace\)"):
        prepare_for_training(data_cfg("latin.txt"))
    corpus = prepare_for_training(build_config({}, ["data.corpus=latin.txt", "data.errors=replace"]).data)
    assert "\ufffd" in corpus.vocab.tokens and corpus.meta["errors"] == "replace"
