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


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_text):
    """A finished run (4 steps of 8) to resume, made once."""
    from cli_helpers import invoke

    root = tmp_path_factory.mktemp("tamper")
    (root / "corpus.txt").write_text(tiny_text, encoding="utf-8")
    (root / "t.yaml").write_text("data: {corpus: corpus.txt, batch_size: 4, num_steps: 8}\n"
                                 "model: {name: rnn, hidden_size: 8, embedding_dim: 4}\n"
                                 "train: {max_steps: 4, eval_every: 2, log_every: 2}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert invoke("train", "-c", "t.yaml", "-q").exit_code == 0
    return root


def _word_vocab(vocab):
    return {**vocab, "level": "word"}


TAMPERED = {
    "rng-size": ("rng", lambda p: torch.zeros(7, dtype=torch.uint8), "its rng is a torch.uint8 tensor of shape (7,)"),
    "rng-string": ("rng", lambda p: "seed", "its rng is 'seed'"),
    "rng-ranks": ("rng_ranks", lambda p: [3], "its rng_ranks is not a list of random generators' states"),
    "step-string": ("step", lambda p: "4", "its step is '4', not a count"),
    "data-dir-int": ("data_dir", lambda p: 7, "its data_dir is 7"),
    "best-val-string": ("best_val", lambda p: "low", "its best_val is 'low'"),
    "batch-huge": ("batch", lambda p: 10**9, "its batch 1000000000 is beyond an epoch of"),
    "token-int": ("vocab", lambda p: {**p["vocab"], "tokens": [*p["vocab"]["tokens"][:-1], 5]}, "is not a string"),
    "token-multichar": ("vocab", lambda p: {**p["vocab"], "tokens": [*p["vocab"]["tokens"][:-1], "ab"]},
                        "a char-level vocabulary holds the token 'ab'"),
    "level-disagrees": ("vocab", lambda p: _word_vocab(p["vocab"]), "is a word-level vocabulary but its config"),
}


@pytest.mark.parametrize("field, value, phrase", TAMPERED.values(), ids=TAMPERED.keys())
def test_a_tampered_checkpoint_field_is_one_line_on_resume_and_touches_no_file(trained, tmp_path, monkeypatch,
                                                                                field, value, phrase):
    import shutil

    from cli_helpers import invoke, one_error_line

    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "t"
    payload = load_checkpoint(run / "last.pt")
    payload[field] = value(payload)
    save_checkpoint(run / "last.pt", {k: v for k, v in payload.items() if k not in ("path", "format_version")})
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".charlm.lock"}
    line = one_error_line(invoke("train", "--resume", "runs/t", "-q", "--set", "train.max_steps=8"))
    assert phrase in line and "runs/t/last.pt" in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".charlm.lock"} == before
    if field == "vocab":  # the commands that load a model say it in one line too
        for command in (["generate", "--checkpoint", "runs/t/last.pt", "--prefix", "the", "--length", "5"],
                        ["score", "--checkpoint", "runs/t/last.pt", "the time"]):
            assert "vocabulary" in one_error_line(invoke(*command))


def _pickled_modules(path) -> set[str]:
    """The modules a checkpoint's pickle names (GLOBAL / STACK_GLOBAL): what unpickling would import."""
    import pickletools
    import zipfile

    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    modules, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            modules.add(arg.split(" ")[0])
        elif op.name == "STACK_GLOBAL":
            modules.add(strings[-2])
        elif isinstance(arg, str):
            strings.append(arg)
    return modules


def test_a_checkpoint_names_no_charlm_module_so_moving_modules_cannot_break_loading(trained):
    # A checkpoint holds state dicts and plain values: its pickle refers to torch's rebuild helpers
    # and nothing of charlm's, so renaming or moving charlm's modules leaves every saved run loadable.
    (last,) = trained.rglob("last.pt")
    modules = _pickled_modules(last)
    assert "torch._utils" in modules  # the scan does see the globals a pickle names
    assert not [m for m in modules if m.split(".")[0] == "charlm"], modules
    assert load_checkpoint(last)["step"] == 4
