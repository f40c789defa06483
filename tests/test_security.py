"""Hostile inputs: pickles that run code, YAML tags that run code, paths that climb out.

(charlm downloads nothing: the built-in corpora ship in the package, see tests/data/test_text.py.)
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import stat
from pathlib import Path

import pytest
import torch

from cli_helpers import invoke, one_error_line
from charlm.config import build_config

TINY = ("data: {corpus: small.txt, normalize: none, batch_size: 4, num_steps: 8}\n"
        "model: {name: rnn, hidden_size: 16, embedding_dim: 8}\n"
        "train: {max_steps: 4, eval_every: 2, log_every: 2, device: cpu}\n")






def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>")
            for p in sorted(root.rglob("*"))}


class Evil:
    """Unpickling this runs `exec`, which writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_dir) -> Path:
    root = tmp_path_factory.mktemp("security-base")
    (root / "small.txt").write_text((corpus_dir / "timemachine.txt").read_text(encoding="utf-8")[:6000])
    (root / "tiny.yaml").write_text(TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = invoke("train", "--config", "tiny.yaml", "--quiet")
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def ws(base, tmp_path, monkeypatch, corpus_dir) -> Path:
    shutil.copytree(base, tmp_path, dirs_exist_ok=True)
    (tmp_path / "runs" / "LATEST").write_text(str(tmp_path / "runs" / "tiny") + "\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def evil_checkpoint(ws: Path, path: Path, marker: Path, fmt: str = "zip") -> Path:
    """A real checkpoint with one extra entry that runs code when unpickled."""
    payload = torch.load(ws / "runs" / "tiny" / "last.pt", weights_only=True)
    payload["vocab"] = {**payload["vocab"], "hook": Evil(marker)}
    if fmt == "zip":
        torch.save(payload, path)
    elif fmt == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


# ---------------------------------------------------------------- pickles

def test_the_evil_checkpoint_does_run_code_when_loaded_unsafely(ws):
    marker = ws / "proof"
    evil_checkpoint(ws, ws / "evil.pt", marker)
    torch.load(ws / "evil.pt", weights_only=False)  # what charlm must never do
    assert marker.read_text() == "pwned"


def _resume_run(ws: Path, evil: Path) -> list[str]:
    shutil.copytree(ws / "runs" / "tiny", ws / "runs" / "victim")
    shutil.copy(evil, ws / "runs" / "victim" / "last.pt")
    return ["train", "--resume", "runs/victim"]


def _as_best_of_the_latest_run(ws: Path, evil: Path, *args: str) -> list[str]:
    shutil.copy(evil, ws / "runs" / "tiny" / "best.pt")  # picked for a run folder, or with no --checkpoint
    return list(args)


COMMANDS = {
    "evaluate": lambda ws, evil: ["evaluate", "--checkpoint", str(evil)],
    "evaluate-run-folder": lambda ws, evil: _as_best_of_the_latest_run(ws, evil, "evaluate", "--checkpoint",
                                                                       "runs/tiny"),
    "generate": lambda ws, evil: ["generate", "--checkpoint", str(evil)],
    "generate-latest-run": lambda ws, evil: _as_best_of_the_latest_run(ws, evil, "generate"),
    "score": lambda ws, evil: ["score", "the time", "--checkpoint", str(evil)],
    "train-init-from": lambda ws, evil: ["train", "-c", "tiny.yaml", "--set", "train.out=runs/new", "--init-from",
                                         str(evil)],
    "train-resume": _resume_run,
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_a_checkpoint_that_would_run_code(ws, command):
    marker = ws / "pwned"
    evil = evil_checkpoint(ws, ws / "evil.pt", marker)
    line = one_error_line(invoke(*COMMANDS[command](ws, evil)))
    assert "refused to load" in line and "could run code" in line
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["legacy", "raw-pickle"])
def test_other_pickle_formats_are_refused_before_unpickling(ws, fmt):
    marker = ws / "pwned"
    evil = evil_checkpoint(ws, ws / "evil.pt", marker, fmt)
    for args in (["evaluate", "--checkpoint", str(evil)], ["generate", "--checkpoint", str(evil)]):
        assert "evil.pt is not a charlm checkpoint" in one_error_line(invoke(*args))
    assert not marker.exists()


# ---------------------------------------------------------------- YAML

TAGS = ["!!python/object/apply:os.system ['touch {m}']",
        "!!python/object/apply:builtins.exec [\"open('{m}', 'w')\"]",
        "!!python/object/new:subprocess.Popen [['touch', '{m}']]",
        "!!python/name:os.system",
        "!!python/module:os"]


@pytest.mark.parametrize("tag", TAGS, ids=["apply-system", "apply-exec", "new-popen", "name", "module"])
def test_yaml_python_tags_are_refused_and_never_run(ws, tag):
    marker = ws / "pwned"
    (ws / "evil.yaml").write_text(f"generate:\n  prefix: {tag.format(m=marker)}\n")
    before = snapshot(ws)
    line = one_error_line(invoke("train", "--config", "evil.yaml"))
    assert "evil.yaml: invalid YAML at line 2" in line and "could not determine a constructor" in line
    assert not marker.exists() and snapshot(ws) == before


def test_yaml_tags_in_set_overrides_stay_plain_text(ws):
    marker = ws / "pwned"
    text = f"!!python/object/apply:os.system ['touch {marker}']"
    assert build_config({}, [f"generate.prefix={text}"]).generate.prefix == text
    before = snapshot(ws)
    line = one_error_line(invoke("train", "-c", "tiny.yaml", "--set", f"generate.prefix={text}",
                                 "--set", "train.max_steps=0"))
    assert "train.max_steps: 0 is out of range" in line
    assert not marker.exists() and snapshot(ws) == before


# ---------------------------------------------------------------- paths

@pytest.fixture
def nested(tmp_path, monkeypatch, corpus_dir) -> Path:
    """cwd is tmp/a/b, so ../../ is tmp itself, where every file is watched."""
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("text outside the working folder\n" * 20)
    (cwd / "small.txt").write_text((corpus_dir / "timemachine.txt").read_text(encoding="utf-8")[:6000])
    (cwd / "tiny.yaml").write_text(TINY)
    (cwd / "...txt").write_text("a corpus whose name is '..'\n" * 20)
    (cwd / "...yaml").write_text(TINY)
    (tmp_path / "cache").mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("CHARLM_DATA_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("args, phrase", [
    (["preprocess", "../../x"], "no such file or built-in dataset: ../../x"),
    (["preprocess", "../../etc/passwd"], "no such file or built-in dataset: ../../etc/passwd"),
    (["preprocess", "timemachine/../../x"], "no such file or built-in dataset"),
    (["preprocess", ".."], "is a folder"),
    (["preprocess", "."], "is a folder"),
    (["preprocess", "...txt"], "cannot name a data folder after '...txt'"),
    (["preprocess", "small.txt", "--out", ".", "--force"], "is not a preprocessed corpus folder (no meta.json)"),
    (["preprocess", "small.txt", "--out", "../..", "--force"], "is not a preprocessed corpus folder"),
    (["train", "-c", "...yaml"], "a config's file name names its run"),
    (["train", "-c", "tiny.yaml", "--set", "data.corpus=...txt"], "cannot name a data folder after '...txt'"),
    (["train", "-c", "tiny.yaml", "--set", "data.corpus=../../etc/passwd"], "no such file or built-in dataset"),
], ids=["missing", "passwd", "builtin-prefix", "dotdot", "dot", "named-dotdot", "force-cwd", "force-parent",
        "run-named-dotdot", "train-corpus-named-dotdot", "train-corpus-passwd"])
def test_names_that_climb_out_are_refused_and_touch_nothing(nested, args, phrase):
    cwd = nested / "a" / "b"
    before = snapshot(nested)
    assert phrase in one_error_line(invoke(*args))
    after = snapshot(nested)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if args[0] == "train":  # train.py makes runs/<name>/ before it reads the data (see test_bad_inputs)
        changed = [k for k in changed if not k.startswith("a/b/runs")]
    assert changed == []
    assert not (cwd / "data").exists()


def test_an_existing_file_up_the_tree_is_read_but_written_only_inside(nested):
    before = snapshot(nested)
    result = invoke("preprocess", "../../outside.txt")
    assert result.exit_code == 0, result.output
    after = snapshot(nested)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed and all(k.startswith("a/b/data") for k in changed), changed
    assert (nested / "a" / "b" / "data" / "outside" / "train.bin").is_file()


# ---------------------------------------------------------------- unbounded values

def test_an_alias_bomb_in_a_config_is_refused_in_bounded_memory(ws):
    import resource
    import subprocess
    import sys

    levels = "\n".join(f"  x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10))
    (ws / "bomb.yaml").write_text(f"generate:\n  x0: &a0 [{', '.join(['lol'] * 9)}]\n{levels}\n"
                                  "data:\n  batch_size: *a9\n")  # 9**10 values in ~500 bytes
    assert (ws / "bomb.yaml").stat().st_size < 600

    def cap_memory():  # 2 GB of address space: the expanded bomb needs hundreds of GB
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    done = subprocess.run([sys.executable, "-m", "charlm", "train", "-c", "bomb.yaml"], cwd=ws, capture_output=True,
                          text=True, preexec_fn=cap_memory, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: bomb.yaml: its YAML aliases expand to more than 10,000 values")


def test_an_error_quoting_a_huge_value_stays_one_short_line(ws):
    line = one_error_line(invoke("train", "-c", "tiny.yaml", "--set", "data.normalize=" + "x" * 100_000))
    assert len(line) <= len("error: ") + 1000 and "…" in line
    assert line.startswith("error: data.normalize: 'xxx") and "is not one of 'none' | 'lower' | 'letters'" in line


def test_preprocess_force_never_deletes_a_users_folder_that_merely_holds_a_meta_json(ws):
    proj = ws / "proj"
    proj.mkdir()
    (proj / "meta.json").write_text("{}")
    (proj / "thesis.tex").write_text("years of work")
    line = one_error_line(invoke("preprocess", "small.txt", "--out", "proj", "--force"))
    assert "proj is not a preprocessed corpus folder" in line and "nothing was deleted" in line
    assert sorted(p.name for p in proj.iterdir()) == ["meta.json", "thesis.tex"]
    assert (proj / "thesis.tex").read_text() == "years of work"
    assert invoke("preprocess", "small.txt", "--out", "data/own").exit_code == 0  # charlm's own folder
    assert invoke("preprocess", "small.txt", "--out", "data/own", "--force").exit_code == 0  # is replaced


def test_a_link_planted_as_the_lock_file_is_refused_not_written_through(ws):
    victim = ws / "victim.txt"
    victim.write_text("precious")
    (ws / "runs" / "x").mkdir()
    (ws / "runs" / "x" / ".charlm.lock").symlink_to(victim)
    line = one_error_line(invoke("train", "--config", "tiny.yaml", "--quiet", "--set", "train.out=runs/x"))
    assert "runs/x/.charlm.lock: it is a symbolic link" in line
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("name", ["metrics.jsonl", "summary.json", "config.yaml", "vocab.json", ".charlm-files"])
def test_a_link_planted_in_a_run_folder_is_refused_on_resume_and_its_target_kept(ws, name):
    run = ws / "runs" / "tiny"
    victim = ws / "victim"
    victim.write_bytes((run / name).read_bytes())  # the link reads as the real file did
    (run / name).unlink()
    (run / name).symlink_to(victim)
    before = victim.read_bytes()
    line = one_error_line(invoke("train", "--resume", "runs/tiny", "--quiet", "--set", "train.max_steps=6"))
    assert f"runs/tiny/{name}: it is a symbolic link" in line and "nothing was written" in line
    assert victim.read_bytes() == before and (run / name).is_symlink()


def test_configs_copy_never_writes_through_a_planted_temp_link(ws):
    victim = ws / "victim.txt"
    victim.write_text("precious")
    (ws / "cc").mkdir()
    (ws / "cc" / ".x.yaml.tmp").symlink_to(victim)
    assert invoke("configs", "copy", "tiny", "cc/x.yaml").exit_code == 0
    assert victim.read_text() == "precious" and "model:" in (ws / "cc" / "x.yaml").read_text()


def test_configs_copy_force_replaces_only_a_regular_yaml_file(ws):
    victim = ws / "victim.yaml"
    victim.write_text("precious")
    (ws / "link.yaml").symlink_to(victim)
    assert "link.yaml: it is a symbolic link" in one_error_line(invoke("configs", "copy", "tiny", "link.yaml",
                                                                         "--force"))
    assert victim.read_text() == "precious" and (ws / "link.yaml").is_symlink()
    os.mkfifo(ws / "pipe.yaml")  # like /dev/null: not a file to replace
    assert "pipe.yaml: it is a pipe" in one_error_line(invoke("configs", "copy", "tiny", "pipe.yaml", "--force"))
    assert stat.S_ISFIFO(os.lstat(ws / "pipe.yaml").st_mode)
    (ws / "passwd").write_text("root:x:0:0")  # like /etc/passwd: a file, but no config
    assert "not a .yaml file" in one_error_line(invoke("configs", "copy", "tiny", "passwd", "--force"))
    assert (ws / "passwd").read_text() == "root:x:0:0"
    (ws / "mine.yaml").write_text("old")
    assert invoke("configs", "copy", "tiny", "mine.yaml", "--force").exit_code == 0
    assert "model:" in (ws / "mine.yaml").read_text()
