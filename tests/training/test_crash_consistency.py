"""kill -9 at chosen and random moments of training (every kind of file rewrite, the final whole-split
score): after each, every file of the run is whole, and the run resumes or refuses in one line."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from charlm.checkpoint import load_checkpoint
from charlm.config import load_config
from charlm.data.vocab import Vocab
from cli_helpers import invoke, one_error_line

pytestmark = pytest.mark.slow

# Evaluations during training score a 200-token sample; the final pass scores the whole split.
CONFIG = ("data: {corpus: small.txt, normalize: none, batch_size: 4, num_steps: 8}\n"
          "model: {name: rnn, hidden_size: 16, embedding_dim: 8}\n"
          "train: {max_steps: 12, eval_every: 4, log_every: 2, eval_tokens: 200, device: cpu}\n")

# Runs charlm's CLI and SIGKILLs it at the nth event matching KILL_ON="regex:n"; the events are the
# writes charlm makes (fsync of a temp file, rename, append), the evaluation passes and the chunks they score.
DRIVER = r"""
import os, re, signal, sys
pattern, nth = os.environ["KILL_ON"].rsplit(":", 1)
hits = [0]
def event(what):
    if re.search(pattern, what):
        hits[0] += 1
        if hits[0] == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)
def watch(name, fn, describe):
    def watched(*args, **kwargs):
        event(name + " " + describe(*args))
        return fn(*args, **kwargs)
    return watched
os.fsync = watch("fsync", os.fsync, lambda fd: os.readlink(f"/proc/self/fd/{fd}"))
os.replace = watch("replace", os.replace, lambda src, dst: str(dst))
import charlm.safe_write as sw
sw.append_line = watch("append", sw.append_line, lambda path, line: str(path))
import charlm.evaluation.batched_eval as be
import charlm.evaluation.evaluate as ev
real_check = be.check_stop
def check_stop(stop):  # before every chunk an evaluation scores, batched or not
    event("score chunk")
    return real_check(stop)
be.check_stop = ev.check_stop = check_stop
real_evaluate = ev.evaluate_ids
def evaluate_ids(*args, **kwargs):
    event("score pass")
    return real_evaluate(*args, **kwargs)
ev.evaluate_ids = evaluate_ids
from charlm.cli import main
sys.argv = ["charlm", *sys.argv[1:]]
main()
"""

EVALS = 3  # steps 4, 8 and 12; the final whole-split pass comes after
POINTS = {
    "config.yaml": "fsync .*config.yaml:1",  # before any checkpoint: a resume refuses in one line
    "metrics-append": "append .*metrics.jsonl:5",  # after step 8's checkpoint, before its row
    "last.pt": "fsync .*last.pt:2",
    "summary-before-score": "fsync .*summary.json:1",
    "final-score": f"score pass:{EVALS + 1}",
    "summary-after-score": "fsync .*summary.json:2",
}
# A resume's rewrites, in the folder left by "metrics-append": the metrics without the rows it redoes, config.yaml.
RESUME_POINTS = ("fsync .*metrics.jsonl:1", "fsync .*config.yaml:1")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus_dir) -> Path:
    root = tmp_path_factory.mktemp("crash")
    text = (corpus_dir / "timemachine.txt").read_text(encoding="utf-8")[:40000]
    (root / "small.txt").write_text(text, encoding="utf-8")
    (root / "k.yaml").write_text(CONFIG, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert invoke("preprocess", "small.txt", "--out", "data/small").exit_code == 0
    return root


def start_killed_at(workdir: Path, kill_on: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "KILL_ON": kill_on, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-c", DRIVER, "train", "--quiet", *args], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> int:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, -signal.SIGKILL), err  # killed, or it ended before the nth event
    return proc.returncode


def killed_at(workdir: Path, kill_on: str, *args: str) -> int:
    return finished(start_killed_at(workdir, kill_on, *args))


def assert_whole(run: Path) -> None:
    """Every file charlm wrote parses: no empty config, no half summary, no torn row but a last one."""
    if not run.is_dir():
        return
    if (run / "config.yaml").exists():
        load_config(run / "config.yaml")
    if (run / "vocab.json").exists():
        Vocab.load(run / "vocab.json")
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            load_checkpoint(run / name)
    if (run / "summary.json").exists():
        assert isinstance(json.loads((run / "summary.json").read_text()), dict)
    if (run / "metrics.jsonl").exists():
        lines = (run / "metrics.jsonl").read_text().splitlines()
        for line in lines[:-1]:
            json.loads(line)
    for name in (run / ".charlm-files").read_text().split() if (run / ".charlm-files").exists() else ():
        assert re.fullmatch(r"[\w.\-]+", name)


def assert_resumes_to_the_end(workdir: Path, run: Path) -> None:
    result = invoke("train", "--resume", "runs/k", "--quiet")
    if result.exit_code != 0:  # a refusal is one line: no checkpoint yet, or the run was whole already
        line = one_error_line(result)
        if "nothing left to train" not in line:
            assert "cannot resume" in line and not (run / "last.pt").exists(), line
            assert invoke("train", "-c", "k.yaml", "--quiet", "--force").exit_code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best_val_perplexity"] is not None
    assert "pending" not in summary
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 12
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def fresh(prepared: Path, tmp_path: Path) -> Path:
    shutil.copytree(prepared, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_a_kill_at_every_kind_of_write_and_during_the_final_score_leaves_whole_files(prepared, tmp_path,
                                                                                    monkeypatch):
    points = [*POINTS.values(), f".:{random.Random(3).randint(1, 60)}"]  # and one moment at random
    workdirs = [fresh(prepared, tmp_path / str(number)) for number in range(len(points))]
    codes = []
    for first in range(0, len(points), 4):  # four at a time: they are independent runs
        procs = [start_killed_at(workdir, kill_on, "-c", "k.yaml", "--set", "data.corpus=data/small")
                 for workdir, kill_on in zip(workdirs[first:first + 4], points[first:first + 4])]
        codes += [finished(proc) for proc in procs]
    assert codes[:len(POINTS)] == [-signal.SIGKILL] * len(POINTS)  # every chosen moment came and was hit
    seed = workdirs[list(POINTS).index("metrics-append")]
    with (seed / "runs" / "k" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 11, "lo')  # and a row torn by the kill
    for kill_on in RESUME_POINTS:
        assert killed_at(seed, kill_on, "--resume", "runs/k", "--set", "train.max_steps=12",
                         "--set", "train.log_every=1") == -signal.SIGKILL
        assert_whole(seed / "runs" / "k")
    for workdir in workdirs:
        monkeypatch.chdir(workdir)
        run = workdir / "runs" / "k"
        assert_whole(run)
        assert_resumes_to_the_end(workdir, run)
