"""Training survives faults: kill -9 at random moments, SIGTERM/Ctrl-C, a full disk, a NaN loss."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from charlm.checkpoint import load_checkpoint
from charlm.errors import CharLMError
from cli_helpers import invoke, one_error_line


# eval_every 1: a checkpoint is written after every step, so a random kill often lands inside
# save_checkpoint (temp file written, fsynced, renamed).
CONFIG = ("data: {corpus: small.txt, normalize: none, batch_size: 4, num_steps: 8}\n"
          "model: {name: rnn, hidden_size: 48, embedding_dim: 8}\n"
          "train: {max_steps: 100000, eval_every: 1, log_every: 1, eval_tokens: 200, device: cpu}\n")






@pytest.fixture
def workdir(tmp_path, monkeypatch, corpus_dir):
    monkeypatch.chdir(tmp_path)
    text = (corpus_dir / "timemachine.txt").read_text(encoding="utf-8")[:20000]
    (tmp_path / "small.txt").write_text(text, encoding="utf-8")
    (tmp_path / "k.yaml").write_text(CONFIG, encoding="utf-8")
    return tmp_path


def start(workdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-m", "charlm", "train", "--quiet", *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def saved_step(path: Path) -> int:
    try:
        return load_checkpoint(path)["step"]
    except Exception:  # not there yet
        return -1


def wait_for_step_beyond(proc: subprocess.Popen, last: Path, step: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = saved_step(last)
        if now > step:
            return now
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended early with {proc.returncode}:\n{out}\n{err}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no checkpoint past step {step} within {timeout}s")


def test_kill_9_at_random_moments_always_leaves_a_resumable_checkpoint(workdir):
    run = workdir / "runs" / "k"
    last = run / "last.pt"
    rng = random.Random(7)
    step, steps = 0, []
    for kill in range(5):
        proc = start(workdir, *(["--config", "k.yaml"] if kill == 0 else ["--resume", str(run)]))
        wait_for_step_beyond(proc, last, step)  # it resumed and made progress
        time.sleep(0 if kill == 1 else rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        payload = load_checkpoint(last)  # the folder always holds a whole, loadable last.pt
        assert payload["step"] > step and all(torch.isfinite(v).all() for v in payload["model"].values())
        step = payload["step"]
        steps.append(step)
    assert steps == sorted(set(steps))
    # Temp files of kills inside save_checkpoint (usually 2-3 of the 5) do not matter: the run
    # resumes, finishes, and the next successful save sweeps them away.
    result = invoke("train", "--resume", str(run), "--quiet", "--set", f"train.max_steps={step + 2}")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(last)["step"] == step + 2
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_ctrl_c_save_and_exit_0(workdir, signum):
    run = workdir / "runs" / "k"
    proc = start(workdir, "--config", "k.yaml")
    wait_for_step_beyond(proc, run / "last.pt", 2)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (out, err)
    assert "Traceback" not in err and "interrupted at step" in out and "resume with" in out
    payload = load_checkpoint(run / "last.pt")
    step = payload["step"]
    assert f"interrupted at step {step} " in out and payload["finished"] is False
    result = invoke("train", "--resume", str(run), "--quiet", "--set", f"train.max_steps={step + 2}")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "last.pt")["step"] == step + 2


def test_disk_full_while_saving_is_one_line_and_keeps_the_previous_checkpoint(workdir, monkeypatch):
    run = workdir / "runs" / "k"
    first = invoke("train", "-c", "k.yaml", "-q", "--set", "train.max_steps=4", "--set", "train.eval_every=2")
    assert first.exit_code == 0, first.output
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt")}

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    result = invoke("train", "--resume", str(run), "-q", "--set", "train.max_steps=8")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "could not write checkpoint" in line and "No space left on device" in line
    assert "the previous checkpoint is untouched" in line
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_disk_full_on_any_other_file_is_one_line_too(workdir, monkeypatch):
    real_open = os.open

    def full_disk(path, flags, *args, **kwargs):
        if Path(path).name == "metrics.jsonl" and flags & os.O_APPEND:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", full_disk)
    result = invoke("train", "-c", "k.yaml", "-q", "--set", "train.max_steps=4", "--set", "train.eval_every=2",
                    "--set", "train.log_every=2")
    assert result.exit_code == 2
    assert one_error_line(result) == "error: cannot write runs/k/metrics.jsonl: No space left on device"
    assert load_checkpoint(workdir / "runs" / "k" / "last.pt")["step"] == 2  # saved just before the log line


def test_nan_loss_mid_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(workdir, monkeypatch):
    from charlm.train import Trainer

    real_step = Trainer.train_step

    def poisoned(self, xb, yb, lr):
        loss, norm = real_step(self, xb, yb, lr)
        return (loss * math.nan if self.step >= 4 else loss), norm  # from the 5th step on

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    result = invoke("train", "-c", "k.yaml", "-q", "--set", "train.eval_every=2", "--set", "train.log_every=2")
    line = one_error_line(result, exit_code=1)
    assert "loss became nan near step 6" in line and "runs/k/last.pt" in line
    payload = load_checkpoint(workdir / "runs" / "k" / "last.pt")
    assert payload["step"] == 4 and all(torch.isfinite(v).all() for v in payload["model"].values())
    rows = [json.loads(line) for line in (workdir / "runs" / "k" / "metrics.jsonl").read_text().splitlines()]
    vals = {r["step"]: r["val_perplexity"] for r in rows}
    assert sorted(vals) == [2, 4]
    best = load_checkpoint(workdir / "runs" / "k" / "best.pt")
    assert best["step"] == min(vals, key=vals.get) and best["best_val"] == min(vals.values())


def test_a_second_writer_gets_one_line_naming_the_first_and_changes_nothing(workdir):
    run = workdir / "runs" / "k"
    proc = start(workdir, "--config", "k.yaml")
    wait_for_step_beyond(proc, run / "last.pt", 2)
    config = (run / "config.yaml").read_bytes()
    for args in (["--resume", "runs/k"], ["-c", "k.yaml", "--force"]):
        # a short run, so that a second writer let in ends (as it did before the lock)
        line = one_error_line(invoke("train", *args, "-q", "--set", "train.max_steps=3"))
        assert line == (f"error: run folder runs/k is in use by another charlm process (pid {proc.pid}); "
                        "wait for it to finish or stop it first"), args
    wait_for_step_beyond(proc, run / "last.pt", saved_step(run / "last.pt"))  # the live run carries on
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (out, err)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one writer: every step once, in order
    assert (run / "config.yaml").read_bytes() == config
    result = invoke("train", "--resume", "runs/k", "-q", "--set", f"train.max_steps={steps[-1] + 1}")
    assert result.exit_code == 0, result.output  # the lock went with the process


@pytest.mark.parametrize("overrides", [["optim.lr=100"], ["optim.name=sgd", "optim.lr=1000"]],
                         ids=["adam-lr-100", "sgd-lr-1000"])
def test_divergence_by_learning_rate_is_one_line_and_never_saves_an_infinite_best(workdir, overrides):
    sets = [arg for o in overrides for arg in ("--set", o)]
    line = one_error_line(invoke("train", "-c", "k.yaml", "-q", *sets), exit_code=1)
    assert "training stopped" in line and "try a lower optim.lr" in line
    run = workdir / "runs" / "k"
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            payload = load_checkpoint(run / name)
            assert payload["best_val"] is None or math.isfinite(payload["best_val"]), name
            assert all(torch.isfinite(v).all() for v in payload["model"].values()), name
    rows = [json.loads(row) for row in (run / "metrics.jsonl").read_text().splitlines()] if (
        run / "metrics.jsonl").exists() else []
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["perplexity"]) for r in rows)
    assert all(r["val_perplexity"] is None or math.isfinite(r["val_perplexity"]) for r in rows)


def test_torch_writer_error_while_saving_is_one_line_and_keeps_the_previous_checkpoint(workdir, monkeypatch):
    run = workdir / "runs" / "k"
    first = invoke("train", "-c", "k.yaml", "-q", "--set", "train.max_steps=4", "--set", "train.eval_every=2")
    assert first.exit_code == 0, first.output
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt")}

    def writer_fails(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", writer_fails)
    line = one_error_line(invoke("train", "--resume", str(run), "-q", "--set", "train.max_steps=8"))
    assert line == (f"error: could not write checkpoint {run / 'last.pt'}: torch's writer failed: "
                    "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598; "
                    "the previous checkpoint is untouched")
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


class HalfWrites:
    """A file on a disk that fills up: each write puts down half its data, then fails with ENOSPC."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_the_disk(monkeypatch, run: Path) -> None:
    """Every file opened for writing in `run` from now on (whatever the way it is opened) fills the disk."""
    real_open = io.open

    def opened(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        where = Path(os.readlink(f"/proc/self/fd/{f.fileno()}")) if isinstance(file, int) else Path(file).absolute()
        writing = any(c in mode for c in "wax+")
        return HalfWrites(f) if writing and where.parent == run.resolve() and where.name != ".charlm.lock" else f

    monkeypatch.setattr(io, "open", opened)


def run_files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".charlm.lock"}


def test_a_resume_that_fills_the_disk_changes_no_file_and_names_the_file(workdir):
    assert invoke("train", "-c", "k.yaml", "-q", "--set", "train.max_steps=4").exit_code == 0
    run = workdir / "runs" / "k"
    with (run / "metrics.jsonl").open("a") as f:  # a killed run's rows beyond last.pt, the last one torn
        f.write(json.dumps({"step": 9, "loss": 1.0}) + '\n{"step": 10, "lo')
    before = run_files(run)
    with pytest.MonkeyPatch.context() as full:
        fill_the_disk(full, run)
        line = one_error_line(invoke("train", "--resume", "runs/k", "-q", "--set", "train.max_steps=8",
                                     "--set", "train.eval_every=3"))
    assert "No space left on device" in line and "runs/k/" in line  # names the file it could not write
    assert run_files(run) == before  # config.yaml, metrics.jsonl, summary.json, last.pt: as they were
    assert invoke("train", "--resume", "runs/k", "-q", "--set", "train.max_steps=8").exit_code == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # the killed run's rows and its torn line are gone, no step twice


def test_rewrites_are_whole_or_absent_and_a_torn_metrics_line_is_skipped(workdir):
    from charlm.training.plot import read_metrics
    from charlm.safe_write import write_atomic

    target = workdir / "summary.json"
    target.write_text('{"status": "finished"}')
    with pytest.MonkeyPatch.context() as full, pytest.raises(CharLMError, match="summary.json: No space left"):
        fill_the_disk(full, workdir)
        write_atomic(target, json.dumps({"status": "finished", "step": 400150}))
    assert target.read_text() == '{"status": "finished"}' and [p.name for p in workdir.iterdir()
                                                               if p.name.endswith(".tmp")] == []
    (workdir / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"st')  # killed mid-append
    assert [row["step"] for row in read_metrics(workdir)] == [1, 2]
