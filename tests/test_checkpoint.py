"""checkpoint.py: atomic writes that fail in one line, TrainState, and the vocabulary a checkpoint records."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from charlm.checkpoint import TrainState, check_same_vocab, load_checkpoint, save_checkpoint, vocab_digest
from charlm.data.vocab import Vocab
from charlm.errors import CheckpointError


class FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_under_torchs_writer_is_one_line_with_the_cause(tmp_path, monkeypatch):
    """torch's C++ writer turns the OSError into "[enforce fail at inline_container.cc…]"; the cause survives."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: FullDisk(real_fdopen(fd, mode, *a, **k), 2000))
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(10_000)})
    assert str(caught.value) == (f"could not write checkpoint {path}: No space left on device; "
                                 "the previous checkpoint is untouched")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_train_state_round_trips_and_leaves_out_what_a_counting_model_lacks():
    state = TrainState(model_name="ngram", model_args={"order": 3}, vocab={"tokens": ["<unk>", "a"]}, config={},
                       model={"w": torch.ones(2)}, step=0, finished=True)
    payload = state.to_payload()
    assert "optimizer" not in payload and "rng" not in payload and payload["carried_state"] is None
    again = TrainState.from_payload({**payload, "format_version": 1, "path": "x.pt"})
    assert again.model_name == "ngram" and torch.equal(again.model["w"], state.model["w"])
    with pytest.raises(CheckpointError, match="x.pt is not a charlm training checkpoint .it lacks model_name"):
        TrainState.from_payload({"path": "x.pt", "model": {}})


def test_a_vocabulary_of_the_same_size_in_another_order_is_refused_naming_both():
    trained = Vocab(["<unk>", "e", "t"], [0, 5, 3])
    other = Vocab(["<unk>", "t", "e"], [0, 5, 3])
    assert vocab_digest(trained.to_dict()) != vocab_digest(other.to_dict())
    assert vocab_digest(trained.to_dict()) == vocab_digest(Vocab(["<unk>", "e", "t"], [0, 9, 1]).to_dict())
    check_same_vocab(trained.to_dict(), None, "a.pt", trained, "data/a", "evaluate")  # an older checkpoint
    with pytest.raises(CheckpointError) as caught:
        check_same_vocab(trained.to_dict(), vocab_digest(trained.to_dict()), "a.pt", other, "data/b", "evaluate")
    was, found = vocab_digest(trained.to_dict())[:12], vocab_digest(other.to_dict())[:12]
    assert str(caught.value).startswith(f"evaluate: a.pt was trained with vocabulary sha256 {was} (3 tokens) but "
                                        f"the data folder data/b holds vocabulary sha256 {found} (3 tokens)")


def test_a_run_records_its_vocabulary_and_an_older_checkpoint_without_it_still_evaluates(tmp_path, monkeypatch,
                                                                                       tiny_text):
    from charlm.config import build_config
    from charlm.inference import evaluate_checkpoint
    from charlm.train import train

    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(tiny_text, encoding="utf-8")
    cfg = build_config({"data": {"corpus": "corpus.txt", "batch_size": 4, "num_steps": 8},
                        "model": {"name": "rnn", "hidden_size": 8, "embedding_dim": 4},
                        "train": {"max_steps": 2, "eval_every": 2}}, name="v")
    train(cfg, run_dir="v")
    payload = load_checkpoint("v/last.pt")
    assert payload["vocab_sha256"] == vocab_digest(payload["vocab"])
    older = {k: v for k, v in payload.items() if k not in ("vocab_sha256", "path")}
    torch.save(older, tmp_path / "older.pt")
    assert evaluate_checkpoint("older.pt").perplexity == evaluate_checkpoint("v/last.pt").perplexity
