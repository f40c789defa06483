"""Every user mistake through the real CLI: exit 2, one `error:` line naming it, no traceback, no file touched.

One table (`CASES`); each row runs in a fresh copy of a workspace holding a tiny trained run
(`runs/tiny`, normalize none on 6,000 characters of The Time Machine, so '€' is not in its
vocabulary) and its preprocessed data (`data/small`). Every file and folder under the
workspace is fingerprinted (path -> sha256) before and after the command: nothing may change
and nothing may appear.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cli_helpers import invoke
from charlm.config import safe_yaml
from charlm.config import RunConfig, build_config, config_from_dict, dump_yaml, valid_keys
from charlm.errors import ConfigError


NEEDS_SERVE = pytest.mark.skipif(importlib.util.find_spec("starlette") is None, reason="needs charlm[serve]")

TINY = ("data: {corpus: small.txt, normalize: none, batch_size: 4, num_steps: 8}\n"
        "model: {name: rnn, hidden_size: 16, embedding_dim: 8}\n"
        "train: {max_steps: 6, eval_every: 3, log_every: 3, device: cpu}\n"
        "generate: {prefix: the, length: 8}\n")




@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_dir) -> Path:
    """A workspace with a trained tiny run; built once, copied per case."""
    root = tmp_path_factory.mktemp("bad-inputs-base")
    text = (corpus_dir / "timemachine.txt").read_text(encoding="utf-8")[:6000]
    assert "€" not in text and "Z" not in text
    (root / "small.txt").write_text(text, encoding="utf-8")
    (root / "tiny.yaml").write_text(TINY, encoding="utf-8")
    (root / "afile").write_text("a regular file, in the way of any path under it\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = invoke("train", "--config", "tiny.yaml", "--quiet")
    assert result.exit_code == 0, result.output
    payload = torch.load(root / "runs" / "tiny" / "last.pt", weights_only=True)
    (root / "truncated.pt").write_bytes((root / "runs" / "tiny" / "last.pt").read_bytes()[:3000])
    torch.save({**payload, "format_version": 99}, root / "future.pt")
    torch.save({**payload, "data_dir": str(root / "gone")}, root / "nodata.pt")
    torch.save([1, 2, 3], root / "list.pt")
    torch.save({"format_version": 1, "step": 3}, root / "hollow.pt")
    return root


@pytest.fixture
def ws(base, tmp_path, monkeypatch, corpus_dir) -> Path:
    shutil.copytree(base, tmp_path, dirs_exist_ok=True)
    (tmp_path / "runs" / "LATEST").write_text(str(tmp_path / "runs" / "tiny") + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>")
            for p in sorted(root.rglob("*"))}


# ------------------------------------------------------------------ files the cases need

def write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return setup


def folder(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).mkdir(parents=True)


def remove(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).unlink()


def retype(dtype: str) -> Callable[[Path], None]:
    """data/small's meta.json declares `dtype`, its sizes adjusted to match the files (a careful liar)."""
    def setup(root: Path) -> None:
        folder = root / "data" / "small"
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        size = np.dtype(dtype).itemsize
        for split in ("train", "val"):
            data = (folder / f"{split}.bin").read_bytes()
            (folder / f"{split}.bin").write_bytes(data[: len(data) // size * size])
            meta[f"{split}_tokens"] = len(data) // size
        (folder / "meta.json").write_text(json.dumps(meta | {"dtype": dtype}), encoding="utf-8")
    return setup


def edit_meta(**changes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / "data" / "small" / "meta.json"
        path.write_text(json.dumps(json.loads(path.read_text(encoding="utf-8")) | changes), encoding="utf-8")
    return setup


def poke_id(split: str, value: int) -> Callable[[Path], None]:
    """Overwrite one stored id (uint8: the tiny corpus has ~60 tokens)."""
    def setup(root: Path) -> None:
        path = root / "data" / "small" / f"{split}.bin"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] = value
        path.write_bytes(bytes(data))
    return setup


def checkpoint_on_local_data(root: Path) -> None:
    """here.pt: runs/tiny/best.pt with data_dir pointing at this workspace's data/small."""
    payload = torch.load(root / "runs" / "tiny" / "best.pt", weights_only=True)
    torch.save({**payload, "data_dir": str(root / "data" / "small")}, root / "here.pt")


def fifo(name: str) -> Callable[[Path], None]:
    """A named pipe with no writer. Opening it to read blocks until one comes, so a thread plays
    a writer that opens and closes at once if a reader ever waits: a command that opens the pipe
    then reads an empty text and fails on its phrase instead of hanging the suite."""
    def setup(root: Path) -> None:
        import os
        import threading
        import time

        path = root / name
        os.mkfifo(path)

        def unblock() -> None:
            for _ in range(200):
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                    return
                except OSError:  # ENXIO: nobody is reading, which is what should happen
                    time.sleep(0.1)
        threading.Thread(target=unblock, daemon=True).start()
    return setup


def alias_bomb(width: int = 9, levels: int = 6) -> str:
    """A few hundred bytes of flow-style YAML that stand for width**levels values (half a million:
    enough to prove the point, few enough that the code before the fix failed rather than ran for ever)."""
    text = "&a0 [" + ", ".join(["lol"] * width) + "]"
    for i in range(1, levels):
        text = f"[{text}, &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]]"
    return text


HUGE = 5_000_000  # bytes on one line, no newline anywhere
BINARY = b"some text\x00\x00\x01\x02 then binary\n"
BAD_UTF8 = b"caf\xe9 au lait\n"  # latin-1 e-acute: invalid UTF-8 at byte 3


class FilesChanged(AssertionError):
    """Raised when a case left new files or changed existing ones (xfail-able on its own)."""


@dataclass
class Case:
    args: list[str]
    phrase: str  # must appear in the one error line
    setup: list[Callable[[Path], None]] = field(default_factory=list)


def case(id: str, args: str | list[str], phrase: str, *setup, marks=()):
    return pytest.param(Case(args.split() if isinstance(args, str) else args, phrase, list(setup)), id=id,
                        marks=marks)


ON_SMALL = "train -c tiny.yaml --set train.out=runs/new --set data.corpus=data/small"
TAMPERED = [
    case("train-data-dtype-object", ON_SMALL, "declares dtype 'object'", retype("object")),
    case("train-data-dtype-bool", ON_SMALL, "declares dtype 'bool'", retype("bool")),
    case("train-data-dtype-float", ON_SMALL, "declares dtype 'float32'", retype("float32")),
    case("train-data-dtype-wider-than-written", ON_SMALL, "ids declared as uint16, but a vocabulary of",
         retype("uint16")),
    case("train-data-dtype-not-a-string", ON_SMALL, "declares dtype 7", edit_meta(dtype=7)),
    case("train-data-tokens-as-text", ON_SMALL, "train_tokens is '100', not a whole number",
         edit_meta(train_tokens="100")),
    case("train-data-negative-tokens", ON_SMALL, "val_tokens is -8, not a whole number", edit_meta(val_tokens=-8)),
    case("train-data-vocab-size-lies", ON_SMALL, "meta.json says 7 tokens but vocab.json has",
         edit_meta(vocab_size=7)),
    case("train-data-level-lies", ON_SMALL, "meta.json says level 'word' but vocab.json is char-level",
         edit_meta(level="word")),
    case("train-data-id-beyond-vocab", ON_SMALL, "train.bin holds token id 250, outside its vocabulary",
         poke_id("train", 250)),
    case("evaluate-data-id-beyond-vocab", "evaluate --checkpoint here.pt", "val.bin holds token id 251",
         checkpoint_on_local_data, poke_id("val", 251)),
    case("evaluate-data-dtype-object", "evaluate --checkpoint here.pt", "declares dtype 'object'",
         checkpoint_on_local_data, retype("object")),
    case("generate-novelty-data-dtype-object", "generate --checkpoint here.pt --check-novelty",
         "declares dtype 'object'", checkpoint_on_local_data, retype("object")),
]


UNBOUNDED = [
    case("preprocess-fifo", "preprocess pipe", "pipe is a pipe (FIFO), not a regular file", fifo("pipe")),
    case("preprocess-character-device", "preprocess /dev/zero --out o", "/dev/zero is a character device"),
    case("evaluate-data-fifo", "evaluate --data pipe", "pipe is a pipe (FIFO), not a regular file", fifo("pipe")),
    case("score-file-fifo", "score --file pipe", "pipe is a pipe (FIFO), not a regular file", fifo("pipe")),
    case("score-file-character-device", "score --file /dev/zero", "/dev/zero is a character device"),
    case("train-config-alias-bomb", "train -c bomb.yaml", "bomb.yaml: its YAML aliases expand to more than 10,000",
         write("bomb.yaml", f"data:\n  batch_size: {alias_bomb()}\n")),
    case("train-set-alias-bomb", ["train", "-c", "tiny.yaml", "--set", f"data.batch_size={alias_bomb()}"],
         "--set data.batch_size: its YAML aliases expand to more than 10,000"),
]


def edit_checkpoint(edit: Callable[[dict, Path], None], out: str = "runs/tiny/last.pt") -> Callable[[Path], None]:
    """runs/tiny/last.pt changed by `edit(payload, root)`, written to `out`: a checkpoint that lies carefully."""
    def setup(root: Path) -> None:
        payload = torch.load(root / "runs" / "tiny" / "last.pt", weights_only=True)
        edit(payload, root)
        torch.save(payload, root / out)
    return setup


def widen_a_weight(payload: dict, root: Path) -> None:
    name, tensor = next(iter(payload["model"].items()))
    payload["model"][name] = torch.zeros([n + 1 for n in tensor.shape])


def preprocessed(name: str, text: Callable[[str], str]) -> Callable[[Path], None]:
    """data/NAME: small.txt changed by `text`, preprocessed with the run's settings."""
    def setup(root: Path) -> None:
        (root / f"{name}.txt").write_text(text((root / "small.txt").read_text(encoding="utf-8")), encoding="utf-8")
        assert invoke("preprocess", f"{name}.txt", "--out", f"data/{name}").exit_code == 0
    return setup


def on_folder(name: str) -> Callable[[dict, Path], None]:
    return lambda payload, root: payload.update(data_dir=str(root / "data" / name))


def swap_e_and_t(text: str) -> str:
    """The same characters with other counts: a vocabulary of the same size in another order."""
    return text.translate(str.maketrans("et", "te"))


RESUME = "train --resume runs/tiny --set train.max_steps=8"
MISMATCHED = [
    case("train-resume-weights-of-another-shape", RESUME, "its weights do not fit the model",
         edit_checkpoint(widen_a_weight)),
    case("train-resume-optimizer-moments-of-another-shape", RESUME, "its optimizer state does not fit the model",
         edit_checkpoint(lambda payload, root: payload["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)))),
    case("train-resume-optimizer-of-fewer-parameters", RESUME, "its optimizer state does not fit the model",
         edit_checkpoint(lambda payload, root: payload["optimizer"]["param_groups"][0]["params"].pop())),
    case("train-init-from-weights-of-another-shape", "train -c tiny.yaml --set train.out=runs/new --init-from bad.pt",
         "its weights do not fit the model", edit_checkpoint(widen_a_weight, out="bad.pt")),
    case("evaluate-data-folder-of-another-vocabulary", "evaluate --checkpoint other.pt",
         "was trained with vocabulary sha256", preprocessed("upper", str.upper),
         edit_checkpoint(on_folder("upper"), out="other.pt")),
    case("train-resume-data-folder-of-another-vocabulary", RESUME, "holds vocabulary sha256",
         preprocessed("upper", str.upper), edit_checkpoint(on_folder("upper"))),
    case("train-init-from-a-model-of-another-family",
         "train -c tiny.yaml --set train.out=runs/new --set data.corpus=data/swapped --init-from other.pt",
         "--init-from other.pt: its model is gru", preprocessed("swapped", swap_e_and_t),
         edit_checkpoint(lambda payload, root: payload.update(model_name="gru"), out="other.pt")),
    case("train-force-into-a-folder-of-ones-own-files", "train -c tiny.yaml --force --set train.out=mine",
         "mine is not a charlm run folder", write("mine/summary.json", "{}\n"), write("mine/metrics.jsonl", "{}\n")),
    case("train-force-over-a-run-whose-best-is-a-folder", "train -c tiny.yaml --force",
         "runs/tiny/best.pt is a folder, not what charlm wrote there; nothing was deleted",
         remove("runs/tiny/best.pt"), folder("runs/tiny/best.pt")),
]


CASES = [
    # ---------------------------------------------------------------- plan (and train's budget)
    case("plan-missing-file", "plan nope.txt --steps 100", "no such file or built-in dataset: nope.txt"),
    case("plan-empty-file", "plan empty.txt --steps 100", "empty.txt is empty", write("empty.txt", b"")),
    case("plan-binary-file", "plan bin.txt --steps 100", "looks binary", write("bin.txt", BINARY)),
    case("plan-no-budget", "plan small.txt", "give the planner one budget: --time DURATION or --steps N"),
    case("plan-two-budgets", "plan small.txt --time 5m --steps 100", "give the planner one budget"),
    case("plan-not-a-duration", "plan small.txt --time soon", "'soon' is not a duration"),
    case("plan-zero-duration", "plan small.txt --time 0s", "must be a positive duration"),
    case("plan-zero-steps", "plan small.txt --steps 0", "--steps must be at least 1"),
    case("plan-too-few-steps", "plan small.txt --steps 1", "the shortest sensible budget is"),
    case("train-budget-without-a-text", "train --time 5m", "plan a run for a text"),
    case("train-budget-not-a-duration", "train small.txt --time 5minutes", "'5minutes' is not a duration"),
    # ---------------------------------------------------------------- preprocess
    case("preprocess-missing-file", "preprocess nope.txt", "no such file or built-in dataset: nope.txt"),
    case("preprocess-unknown-dataset", "preprocess wikitext103", "built-in datasets: timemachine, tinyshakespeare"),
    case("preprocess-empty-file", "preprocess empty.txt", "empty.txt is empty", write("empty.txt", b"")),
    case("preprocess-binary-file", "preprocess bin.txt", "looks binary (NUL byte at byte 9)", write("bin.txt", BINARY)),
    case("preprocess-invalid-utf8", "preprocess latin1.txt", "invalid UTF-8 at byte 3", write("latin1.txt", BAD_UTF8)),
    case("preprocess-directory", "preprocess somedir", "somedir is a folder", folder("somedir")),
    case("preprocess-only-whitespace", "preprocess blank.txt", "no text left", write("blank.txt", " \n\t\n ")),
    case("preprocess-letters-of-nothing", "preprocess kana.txt --normalize letters", "letters keeps only a-z",
         write("kana.txt", "かなかな、カナ。\n")),
    case("preprocess-val-fraction-too-big", "preprocess small.txt --out o --val-fraction 0.9",
         "data.val_fraction: 0.9 is out of range [0.0, 0.5]"),
    case("preprocess-negative-val-fraction", "preprocess small.txt --out o --val-fraction -0.1",
         "data.val_fraction: -0.1 is out of range"),
    case("preprocess-min-freq-zero", "preprocess small.txt --out o --min-freq 0", "data.min_freq: 0 is out of range"),
    case("preprocess-unknown-normalize", "preprocess small.txt --out o --normalize upper",
         "data.normalize: 'upper' is not one of"),
    case("preprocess-unknown-level", "preprocess small.txt --out o --level byte", "data.level: 'byte' is not one of"),
    case("preprocess-unknown-errors", "preprocess small.txt --out o --errors ignore",
         "--errors: 'ignore' is not one of strict, replace"),
    case("preprocess-out-under-a-file", "preprocess small.txt --out afile/out", "a file is in the way"),
    case("preprocess-out-is-a-file", "preprocess small.txt --out afile", "afile exists and is not a folder"),
    case("preprocess-out-exists", "preprocess small.txt", "data/small already exists; pass --force"),
    # ---------------------------------------------------------------- train: config
    case("train-config-missing", "train --config nope.yaml", "config file not found: nope.yaml"),
    case("train-config-directory", "train --config confdir", "(it is a directory)", folder("confdir")),
    case("train-config-malformed", "train --config bad.yaml", "bad.yaml: invalid YAML at line 2",
         write("bad.yaml", "data: {corpus: small.txt\nmodel: [rnn\n")),
    case("train-config-is-a-list", "train --config list.yaml", "must be a mapping of sections (data, model, ...), "
         "got a list", write("list.yaml", "- data\n- model\n")),
    case("train-config-is-a-scalar", "train --config scalar.yaml", "got a str", write("scalar.yaml", "hello\n")),
    case("train-config-not-utf8", "train --config latin1.yaml", "not a UTF-8 text file",
         write("latin1.yaml", b"generate: {prefix: caf\xe9}\n")),
    case("train-config-binary", "train --config bin.yaml", "invalid YAML", write("bin.yaml", BINARY)),
    case("train-config-misspelled-key", "train --config typo.yaml", "did you mean 'model.hidden_size'",
         write("typo.yaml", "model: {hiden_size: 8}\n")),
    case("train-config-unknown-section", "train --config sect.yaml", "unknown config section 'modle' (did you mean "
         "'model'?)", write("sect.yaml", "modle: {name: rnn}\n")),
    case("train-config-section-not-mapping", "train --config flat.yaml", "config section 'model' must be a mapping",
         write("flat.yaml", "model: rnn\n")),
    case("train-config-wrong-type", "train --config float.yaml", "train.max_steps: expected an integer, got 1.5",
         write("float.yaml", "train: {max_steps: 1.5}\n")),
    case("train-config-bad-date", "train --config date.yaml", "date.yaml: invalid YAML: month must be in 1..12",
         write("date.yaml", "generate: {length: 2024-13-45}\n")),
    case("train-config-nested-too-deeply", "train --config deep.yaml", "nested too deeply",
         write("deep.yaml", "[" * 5000 + "]" * 5000)),
    case("train-set-unknown-key", "train -c tiny.yaml --set optim.learning_rate=0.1",
         "unknown config key 'optim.learning_rate'"),
    case("train-set-without-equals", "train -c tiny.yaml --set optim.lr", "--set expects section.key=value"),
    case("train-set-wrong-type", "train -c tiny.yaml --set data.batch_size=many",
         "data.batch_size: expected an integer, got 'many'"),
    case("train-set-other-familys-key", "train -c tiny.yaml --set model.order=3",
         "unknown config key 'model.order' (an option of ngram) for model 'rnn'; rnn takes model.hidden_size"),
    case("train-set-zero-hidden", "train -c tiny.yaml --set model.hidden_size=0",
         "model.hidden_size: 0 is out of range"),
    case("train-set-negative-batch", "train -c tiny.yaml --set data.batch_size=-4",
         "data.batch_size: -4 is out of range"),
    case("train-set-nan-lr", "train -c tiny.yaml --set optim.lr=nan", "optim.lr: nan is out of range"),
    case("train-set-infinite-lr", "train -c tiny.yaml --set optim.lr=1e400", "optim.lr: inf is not a finite number"),
    case("train-set-huge-int-for-float", "train -c tiny.yaml --set optim.lr=" + "9" * 400, "is too large for a number"),
    case("train-set-bad-literal", "train -c tiny.yaml --set optim.name=adagrad", "optim.name: 'adagrad' is not one of"),
    case("train-set-huge-seed", "train -c tiny.yaml --set train.seed=" + "9" * 30,
         "train.seed: " + "9" * 30 + " is out of range"),
    case("train-zero-processes", "train -c tiny.yaml --nproc 0", "--nproc must be at least 1, got 0"),
    case("train-resume-and-init-from", "train --resume runs/tiny --init-from runs/tiny", "exclude each other"),
    # ---------------------------------------------------------------- train: data, checkpoints, outputs
    case("train-num-steps-longer-than-corpus",
         "train -c tiny.yaml --set train.out=runs/new --set data.num_steps=100000",
         "data.num_steps (100000) is too long for the training split"),
    case("train-batch-larger-than-subsequences", "train -c tiny.yaml --set train.out=runs/new "
         "--set data.batch_size=5000", "data.batch_size (5000) × data.num_steps (8) needs more tokens"),
    case("train-force-then-bad-data", "train -c tiny.yaml --force --set data.num_steps=100000",
         "is too long for the training split"),
    case("train-corpus-missing", "train -c tiny.yaml --set train.out=runs/new --set data.corpus=nope.txt",
         "no such file or built-in dataset: nope.txt"),
    case("train-corpus-binary", "train -c tiny.yaml --set train.out=runs/new --set data.corpus=bin.txt",
         "looks binary", write("bin.txt", BINARY)),
    case("train-corpus-unprepared-folder", "train -c tiny.yaml --set train.out=runs/new --set data.corpus=somedir",
         "is a folder but not a preprocessed corpus", folder("somedir")),
    case("train-unknown-sampling", "train -c tiny.yaml --set train.out=runs/new --set data.sampling=shuffled",
         "data.sampling: unknown minibatch strategy 'shuffled'"),
    case("train-unknown-model", "train -c tiny.yaml --set train.out=runs/new --set model.name=transformer",
         "transformer"),
    case("train-unknown-device", "train -c tiny.yaml --set train.out=runs/new --set train.device=tpu",
         "train.device: unknown device 'tpu'"),
    case("train-model-too-big-for-memory", "train -c tiny.yaml --set train.out=runs/new --set model.hidden_size="
         "100000000", "model.hidden_size: 100000000 is out of range"),
    case("train-model-too-big-for-memory-within-range", "train -c tiny.yaml --set train.out=runs/new --set "
         "model.hidden_size=65536 --set model.num_layers=64 --set model.name=lstm", "does not fit in memory"),
    case("train-no-stop-condition", "train -c tiny.yaml --set train.out=runs/new --set train.max_steps=null",
         "set train.epochs, train.max_steps or train.max_time"),
    case("train-out-under-a-file", "train -c tiny.yaml --set train.out=afile/run",
         "cannot write the run folder afile/run"),
    case("train-out-exists", "train -c tiny.yaml", "run folder runs/tiny already exists"),
    case("train-resume-without-checkpoint", "train --resume emptyrun", "cannot resume: emptyrun/last.pt does not exist",
         folder("emptyrun")),
    case("train-resume-changes-model", "train --resume runs/tiny --set model.hidden_size=32",
         "--resume cannot change model.hidden_size"),
    case("train-resume-below-current-step", "train --resume runs/tiny --set train.max_steps=4",
         "runs/tiny is at step 6 and train.max_steps=4, so there is nothing left to train"),
    case("train-resume-at-its-limit", "train --resume runs/tiny",
         "runs/tiny is at step 6 and train.max_steps=6, so there is nothing left to train"),
    case("train-resume-past-its-time", "train --resume runs/tiny --set train.max_time=0.001 --set train.max_steps=99",
         "train.max_time=0.001, so there is nothing left to train"),
    case("train-resume-truncated", "train --resume runs/tiny", "is corrupt or truncated",
         remove("runs/tiny/last.pt"), lambda root: shutil.copy(root / "truncated.pt", root / "runs/tiny/last.pt")),
    case("train-init-from-missing", "train -c tiny.yaml --set train.out=runs/new --init-from nope.pt",
         "checkpoint not found: nope.pt"),
    case("train-init-from-truncated", "train -c tiny.yaml --set train.out=runs/new --init-from truncated.pt",
         "truncated.pt is corrupt or truncated"),
    case("train-init-from-other-format", "train -c tiny.yaml --set train.out=runs/new --init-from future.pt",
         "has checkpoint format 99, this charlm reads format 1"),
    # ---------------------------------------------------------------- evaluate
    case("evaluate-checkpoint-missing", "evaluate --checkpoint nope.pt", "checkpoint not found: nope.pt"),
    case("starts-checkpoint-missing", "starts --checkpoint nope.pt", "checkpoint not found: nope.pt"),
    case("starts-length-one", "starts --checkpoint nope.pt --length 1", "need length ≥ 2"),
    case("evaluate-checkpoint-truncated", "evaluate --checkpoint truncated.pt", "truncated.pt is corrupt or truncated"),
    case("evaluate-checkpoint-other-format", "evaluate --checkpoint future.pt", "has checkpoint format 99"),
    case("evaluate-checkpoint-is-text", "evaluate --checkpoint small.txt", "small.txt is not a charlm checkpoint"),
    case("evaluate-checkpoint-empty", "evaluate --checkpoint empty.pt", "empty.pt is corrupt or truncated",
         write("empty.pt", b"")),
    case("evaluate-checkpoint-not-a-dict", "evaluate --checkpoint list.pt", "list.pt is not a charlm checkpoint"),
    case("evaluate-checkpoint-hollow", "evaluate --checkpoint hollow.pt", "does not describe a usable model"),
    case("evaluate-checkpoint-folder-without-one", "evaluate --checkpoint somedir",
         "somedir holds no checkpoint (best.pt or last.pt)", folder("somedir")),
    case("evaluate-no-recent-run", "evaluate", "no checkpoint given and no recent run found", remove("runs/LATEST")),
    case("evaluate-latest-pointer-garbled", "evaluate", "no checkpoint given and no recent run found",
         write("runs/LATEST", b"\xff\xfe\x00garbage")),
    case("generate-latest-pointer-empty", "generate", "no recent run found", write("runs/LATEST", b"\n")),
    case("score-latest-run-gone", "score hello", "checkpoint not found", write("runs/LATEST", "runs/deleted\n")),
    case("evaluate-data-folder-gone", "evaluate --checkpoint nodata.pt", "data folder"),
    case("evaluate-data-missing", "evaluate --data nope.txt", "no such file or built-in dataset: nope.txt"),
    case("evaluate-data-empty", "evaluate --data empty.txt", "evaluation needs at least 2", write("empty.txt", b"")),
    case("evaluate-data-binary", "evaluate --data bin.txt", "looks binary", write("bin.txt", BINARY)),
    case("evaluate-data-invalid-utf8", "evaluate --data latin1.txt", "invalid UTF-8 at byte 3",
         write("latin1.txt", BAD_UTF8)),
    case("evaluate-data-directory", "evaluate --data somedir", "somedir is a folder", folder("somedir")),
    case("evaluate-unknown-device", "evaluate --device tpu", "unknown device 'tpu'"),
    # ---------------------------------------------------------------- generate
    case("generate-prefix-outside-vocabulary", ["generate", "--prefix", "the Zeit €"],
         "prefix has characters not in the vocabulary: 'Z', '€'"),
    case("generate-negative-temperature", "generate --temperature -1", "temperature must be a number >= 0"),
    case("generate-nan-temperature", "generate --temperature nan", "temperature must be a number >= 0"),
    case("generate-top-p-zero", "generate --strategy top_p --top-p 0", "top_p must be in (0, 1]"),
    case("generate-top-p-above-one", "generate --strategy top_p --top-p 1.5", "top_p must be in (0, 1]"),
    case("generate-top-k-zero", "generate --strategy top_k --top-k 0", "top_k must be a whole number >= 1"),
    case("generate-unknown-strategy", "generate --strategy beam", "unknown sampling strategy 'beam'"),
    case("generate-length-zero", "generate --length 0", "length must be at least 1"),
    case("generate-huge-length", "generate --length 1000000000000", "one generation returns; lower --length"),
    case("generate-no-samples", "generate --num-samples 0", "num_samples must be at least 1"),
    case("generate-huge-num-samples", "generate --num-samples 1000000000000", "one generation returns"),
    case("generate-1e8-samples-of-one", "generate -n 100000000 --length 1", "100,000,000 sample(s) of 1 tokens is "
         "100,000,000 tokens, over the 10,000,000 one generation returns"),
    case("generate-huge-seed", "generate --seed " + "9" * 30, "seed must fit in 64 bits"),
    case("generate-unknown-policy", "generate --unknown ignore", "unknown: 'ignore' is not one of error, map"),
    case("generate-stop-outside-vocabulary", ["generate", "--stop", "€"], "stop string has characters not in the "
         "vocabulary"),
    case("generate-empty-stop", ["generate", "--stop", ""], "stop string is empty"),
    case("generate-checkpoint-other-format", "generate --checkpoint future.pt", "has checkpoint format 99"),
    # ---------------------------------------------------------------- score
    case("score-nothing-to-score", "score", "give either TEXT or --file"),
    case("score-text-and-file", "score hello --file small.txt", "give either TEXT or --file"),
    case("score-file-missing", "score --file nope.txt", "no such file: nope.txt"),
    case("score-file-directory", "score --file somedir", "somedir is a folder", folder("somedir")),
    case("score-file-binary", "score --file bin.txt", "looks binary", write("bin.txt", BINARY)),
    case("score-file-invalid-utf8", "score --file latin1.txt", "invalid UTF-8 at byte 3",
         write("latin1.txt", BAD_UTF8)),
    case("score-file-empty", "score --file empty.txt", "needs at least 2", write("empty.txt", b"")),
    case("score-one-character", "score t", "text has 1 token(s)"),
    case("score-huge-single-line", "score --file huge.txt", "more than score shows one by one (100,000); for its "
         "totals use `charlm evaluate --data huge.txt`", lambda root: (root / "huge.txt").write_bytes(b"x" * HUGE)),
    case("score-checkpoint-truncated", "score hello --checkpoint truncated.pt", "is corrupt or truncated"),
    # ---------------------------------------------------------------- plot
    case("plot-missing-run", "plot runs/nope", "runs/nope is not a run folder (no metrics.jsonl)"),
    case("plot-run-is-a-file", "plot afile", "afile is not a run folder"),
    case("plot-corrupt-metrics", "plot broken", "broken/metrics.jsonl:2 is not valid JSON",
         write("broken/metrics.jsonl", '{"step": 1, "perplexity": 3.0}\n{"step": 2, "perp\n')),
    case("plot-metrics-not-objects", "plot odd", "odd/metrics.jsonl:1 is not a JSON object",
         write("odd/metrics.jsonl", "[1, 2]\n")),
    case("plot-metrics-without-step", "plot nostep", 'nostep/metrics.jsonl:1 has no numeric "step"',
         write("nostep/metrics.jsonl", '{"perplexity": 3.0}\n')),
    case("plot-metrics-binary", "plot binrun", "cannot read binrun/metrics.jsonl",
         write("binrun/metrics.jsonl", BAD_UTF8)),
    case("plot-output-is-a-folder", "plot runs/tiny", "cannot write runs/tiny/curves.png",
         remove("runs/tiny/curves.png"), folder("runs/tiny/curves.png")),
    # ---------------------------------------------------------------- serve (fails before it listens)
    case("serve-missing-run", "serve runs/nope", "runs/nope is not a run folder (no best.pt or last.pt)",
         marks=NEEDS_SERVE),
    case("serve-run-without-checkpoint", "serve unfinished", "unfinished is not a run folder (no best.pt or last.pt)",
         write("unfinished/config.yaml", "model: {name: rnn}\n"), marks=NEEDS_SERVE),
    case("serve-unresolvable-host", "serve runs/tiny --host no.such.host.invalid",
         "--host 'no.such.host.invalid' is not an address of this machine", marks=NEEDS_SERVE),
    # ---------------------------------------------------------------- configs copy
    case("configs-copy-unknown-name", "configs copy lsmt", "no shipped config named 'lsmt' (did you mean 'lstm'?)"),
    case("configs-copy-over-a-file", "configs copy rnn afile", "afile exists; pass --force"),
    *TAMPERED,
    *UNBOUNDED,
    *MISMATCHED,
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line(ws, case: Case):
    for setup in case.setup:
        setup(ws)
    before = snapshot(ws)
    result = invoke(*case.args)
    detail = f"exit {result.exit_code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (repr(result.exception), detail)
    assert "Traceback" not in result.output, detail
    assert result.exit_code == 2, detail
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), detail
    assert case.phrase in lines[0], detail
    assert result.stdout == "", detail
    after = snapshot(ws)
    changed = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    if changed:
        raise FilesChanged(f"files changed or appeared: {sorted(changed)}")


def cli_commands() -> set[str]:
    """Every command the CLI has, as typed: `train`, `configs copy`, ..."""
    from charlm.cli import app

    def name(info) -> str:
        return info.name or info.callback.__name__.replace("_", "-")

    commands = {name(info) for info in app.registered_commands}
    for group in app.registered_groups:
        commands.add(group.name)
        commands |= {f"{group.name} {name(info)}" for info in group.typer_instance.registered_commands}
    return commands


# Commands that take nothing a user could get wrong.
NO_INPUT = {"configs"}  # lists the shipped configs


def test_every_command_has_bad_input_cases():
    covered = {" ".join(c.values[0].args[:2]) if c.values[0].args[0] in ("configs",) else c.values[0].args[0]
               for c in CASES}
    assert covered == cli_commands() - NO_INPUT


# ---------------------------------------------------------------- one 5 MB line, no newline

@pytest.fixture
def huge_line(ws) -> Path:
    words = (ws / "small.txt").read_text(encoding="utf-8").replace("\n", " ")
    (ws / "huge.txt").write_text((words * (HUGE // len(words) + 1))[:HUGE], encoding="utf-8")
    return ws / "huge.txt"


def test_huge_single_line_preprocesses(ws, huge_line):
    result = invoke("preprocess", "huge.txt", "--out", "big")
    assert result.exit_code == 0, result.output
    sizes = [(ws / "big" / f).stat().st_size for f in ("train.bin", "val.bin")]
    assert sum(sizes) == HUGE and sizes[1] == HUGE // 10  # one byte per token


def test_huge_single_line_trains(ws, huge_line):
    result = invoke("train", "-c", "tiny.yaml", "--quiet", "--set", "data.corpus=huge.txt",
                    "--set", "train.out=runs/big", "--set", "train.max_steps=2", "--set", "train.eval_tokens=500")
    assert result.exit_code == 0, result.output
    assert torch.load(ws / "runs" / "big" / "last.pt", weights_only=True)["step"] == 2


def test_huge_single_line_evaluates(ws, huge_line, monkeypatch):
    # A real pass over 5M characters is linear but takes minutes on one CPU stream (an RNN is
    # sequential): the file is encoded whole, in chunks, then only its tail is scored here.
    import charlm.inference

    real, seen = charlm.inference.evaluate_ids, []

    def tail_only(model, ids, **kwargs):
        seen.append(len(ids))
        return real(model, ids[-2000:], **kwargs)

    monkeypatch.setattr(charlm.inference, "evaluate_ids", tail_only)
    result = invoke("evaluate", "--data", "huge.txt", "--json")
    assert result.exit_code == 0, result.output
    assert seen == [HUGE] and '"tokens": 1999' in result.stdout


# ---------------------------------------------------------------- fuzz: config overrides
# (Vocabulary round trips, batch coverage and sampling sets have their own properties in
# tests/data/test_vocab.py, tests/data/test_batches.py and tests/generation/test_sampling.py.)

KEYS = valid_keys()
TRICKY = ["", " ", "null", "~", "nan", "-nan", ".inf", "-.inf", "inf", "1e400", "-1e400", "9" * 400, "-" + "9" * 40,
          "0x1F", "0o17", "1_000", "+5", "-0", "1e-3", "1.5", "yes", "no", "on", "True", "2024-13-45",
          "2024-01-01", "12:30:00", "[1, 2]", "{a: 1}", "&a [*a]", "!!python/name:os.system", "!!binary aGk=",
          "'quoted'", '"x', "#comment", "a: b", "- x", "=", "é€😀", "\x00", "\t\n", "[" * 300, "? x"]
real_keys = st.sampled_from(KEYS)
junk_keys = st.one_of(real_keys.map(lambda k: k[:-1]), st.text(max_size=15),
                      st.sampled_from(["", ".", "model.", ".lr", "a.b.c", "model.hidden_size.x", "ｍodel.name"]))
keys = st.one_of(real_keys, real_keys, real_keys, junk_keys)  # mostly real keys: values get checked
scalars = st.one_of(st.integers(), st.integers(min_value=-(10**30), max_value=10**30), st.floats(),
                    st.booleans(), st.none(), st.text(max_size=20), st.sampled_from(TRICKY))
texts = st.one_of(st.sampled_from(TRICKY), st.text(max_size=20), scalars.map(str))
overrides = st.lists(st.tuples(keys, texts).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=3)
raw_configs = st.dictionaries(
    st.one_of(st.sampled_from(["data", "model", "optim", "train", "generate"]), st.text(max_size=8)),
    st.one_of(st.dictionaries(st.one_of(st.sampled_from([k.split(".")[1] for k in KEYS]), st.text(max_size=8)),
                              st.one_of(scalars, st.lists(scalars, max_size=2)), max_size=4),
              scalars), max_size=4)


def build_or_config_error(raw, sets):
    try:
        return build_config(raw, sets)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.just({}), st.just({}), raw_configs), sets=overrides)
def test_fuzzed_configs_give_a_config_or_a_config_error(raw, sets):
    cfg = build_or_config_error(raw, sets)
    event("valid" if cfg is not None else "ConfigError")
    if cfg is not None:  # what a run stores (config.yaml, checkpoints) loads back the same
        assert isinstance(cfg, RunConfig)
        assert config_from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg


plausible = st.one_of(st.integers(0, 10**6).map(str), st.floats(0.0, 1.0).map(repr), st.text(max_size=10),
                      st.sampled_from(["true", "false", "null", "none", "lower", "letters", "char", "word", "sgd",
                                       "adamw", "cosine", "step", "add_k", "cpu", "greedy", "top_k", "1e-3"]))


@settings(max_examples=200, deadline=None)
@given(sets=st.lists(st.tuples(real_keys, plausible).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=6))
def test_valid_configs_survive_the_yaml_round_trip(sets):
    cfg = build_or_config_error({}, sets)
    event("valid" if cfg is not None else "ConfigError")
    if cfg is not None:  # config.yaml and checkpoints store it so; --resume reads it back
        assert config_from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=20).filter(lambda t: t.strip() not in ("", "null", "~", "Null", "NULL")))
def test_set_reads_string_values_as_a_yaml_file_does(text):
    # One reader for both: where YAML reads a string, --set gives that string (quotes dropped,
    # escapes read); where it reads none (yes, 1.0, a list) a text field keeps the text as typed.
    try:
        parsed = safe_yaml.loads(text)
    except Exception:
        parsed = None
    expected = parsed if isinstance(parsed, str) else text
    cfg = build_config({}, [f"generate.prefix={text}", f"train.out={text}"])
    assert cfg.generate.prefix == expected and cfg.train.out == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sets=overrides)
def test_fuzzed_set_through_the_cli_never_shows_a_traceback(tmp_path, monkeypatch, sets):
    monkeypatch.chdir(tmp_path)
    args = ["train", "-c", "rnn"] + [a for s in sets for a in ("--set", s)]
    # Pinned last so they win: the run stops at the missing corpus before any training, and
    # writes nowhere but tmp.
    args += ["--set", "data.corpus=missing-corpus.txt", "--set", f"train.out={tmp_path / 'run'}", "--force"]
    result = invoke(*args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
