"""train.precision: which precision a run picks and why, what stays fp32, and the time-bound schedule."""

import json
import math

import pytest
import torch

import charlm.device.precision as precision
from charlm.checkpoint import load_checkpoint
from charlm.config import build_config
from charlm.errors import ConfigError
from charlm.inference import evaluate_checkpoint
from charlm.device.precision import resolve_precision, scoring_precision
from charlm.train import Trainer, lr_factor, run_progress, train

from cli_helpers import invoke


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(tiny_text * 4, encoding="utf-8")
    return tmp_path


def tiny(*overrides):
    raw = {"data": {"corpus": "corpus.txt", "normalize": "letters", "batch_size": 4, "num_steps": 12,
                    "sampling": "sequential"},
           "model": {"name": "lstm", "hidden_size": 24, "embedding_dim": 8},
           "optim": {"lr": 0.01}, "train": {"max_steps": 12, "eval_every": 4, "log_every": 2, "eval_tokens": 500}}
    return build_config(raw, list(overrides), name="tiny")


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_auto_follows_what_onednn_reports_not_the_vendor(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == "bf16" and "oneDNN reports native bf16" in chosen.reason
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == "fp32" and "no native bf16" in chosen.reason
    assert resolve_precision("bf16", "cpu").name == "bf16"  # asked for: honoured, with a warning in the reason
    assert "expect it slow" in resolve_precision("bf16", "cpu").reason


def test_fp32_amp_false_and_other_devices_stay_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("fp32", "cpu").name == "fp32"
    assert resolve_precision("auto", "cpu", amp=False).reason == "train.amp is false"
    assert resolve_precision("auto", "meta").name == "fp32"
    with pytest.raises(ConfigError, match="not supported on meta"):
        resolve_precision("bf16", "meta")
    with pytest.raises(ConfigError, match="train.precision: 'fp16' is not one of auto, bf16, fp32"):
        resolve_precision("fp16", "cpu")


def test_evaluation_scores_in_the_precision_the_run_trained_in_where_native(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert scoring_precision("auto", "auto", "cpu") == "bf16"
    assert scoring_precision("auto", "bf16", "cpu") == "bf16"
    assert scoring_precision("auto", "fp32", "cpu") == "fp32"
    assert scoring_precision("auto", "auto", "cpu", amp=False) == "fp32"
    assert scoring_precision("fp32", "bf16", "cpu") == "fp32"  # asked for: honoured
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert scoring_precision("auto", "bf16", "cpu") == "fp32"  # trained in bf16 elsewhere, scored in fp32 here
    with pytest.raises(ConfigError, match="precision: 'fp16' is not one of auto, bf16, fp32"):
        scoring_precision("fp16")


def test_validation_during_training_and_evaluate_agree_in_the_runs_precision(workdir, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    result = train(tiny("train.precision=bf16", "train.eval_tokens=null"), run_dir="b", handle_signals=False)
    auto = evaluate_checkpoint(workdir / "b", precision="auto").perplexity
    assert auto == pytest.approx(result.best_val_perplexity, rel=1e-6)
    assert evaluate_checkpoint(workdir / "b", precision="fp32").perplexity != auto


def test_config_key_is_validated_and_old_configs_load():
    assert build_config({"train": {"amp": False}}).train.precision == "auto"
    with pytest.raises(ConfigError, match="train.precision: 'fp8' is not one of"):
        build_config({}, ["train.precision=fp8"])


def test_bf16_runs_the_forward_in_bf16_and_keeps_weights_optimizer_and_loss_fp32(workdir, monkeypatch):
    seen = []
    real_step = Trainer.train_step

    def spy(self, xb, yb, lr):
        with self.autocast:
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        loss, norm = real_step(self, xb, yb, lr)
        seen.append(loss.dtype)
        return loss, norm

    monkeypatch.setattr(Trainer, "train_step", spy)
    train(tiny("train.precision=bf16"), run_dir="bf", handle_signals=False)
    assert seen[0] == torch.bfloat16 and seen[1] == torch.float32
    saved = load_checkpoint("bf/last.pt")
    assert all(v.dtype == torch.float32 for v in saved["model"].values())
    moments = [t for s in saved["optimizer"]["state"].values() for k, t in s.items() if k != "step"]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    # The LSTM's carried state came out of autocast in bf16: stored as fp32, its dtype beside it.
    assert all(s.dtype == torch.float32 for s in saved["carried_state"])
    assert saved["carried_dtypes"] == ["bfloat16", "bfloat16"]
    assert json.loads((workdir / "bf" / "summary.json").read_text())["precision"] == "bf16"


def test_fp32_forward_has_no_autocast(workdir, monkeypatch):
    seen = []
    real_step = Trainer.train_step

    def spy(self, xb, yb, lr):
        with self.autocast:
            seen.append(torch.is_autocast_enabled("cpu"))
        return real_step(self, xb, yb, lr)

    monkeypatch.setattr(Trainer, "train_step", spy)
    train(tiny("train.precision=fp32", "train.max_steps=2"), run_dir="fp", handle_signals=False)
    assert seen == [False, False]


def test_bf16_resume_continues_as_if_never_stopped(workdir):
    whole = tiny("train.precision=bf16", "train.max_steps=16")
    train(whole, run_dir="whole", handle_signals=False)
    train(tiny("train.precision=bf16", "train.max_steps=8"), run_dir="split", handle_signals=False)
    train(whole, run_dir="split", resume=True, handle_signals=False)
    assert losses(workdir / "whole") == losses(workdir / "split")
    a, b = load_checkpoint("whole/last.pt")["model"], load_checkpoint("split/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_and_fp32_learn_alike(workdir):
    train(tiny("train.precision=bf16", "train.max_steps=30"), run_dir="b", handle_signals=False)
    train(tiny("train.precision=fp32", "train.max_steps=30"), run_dir="f", handle_signals=False)
    b, f = losses(workdir / "b"), losses(workdir / "f")
    assert b != f  # really a different precision
    assert b[-1] < b[0] - 0.3 and abs(b[-1] - f[-1]) < 0.1


def test_first_line_says_which_precision_and_why(workdir):
    (workdir / "c.yaml").write_text("data: {corpus: corpus.txt, normalize: letters, batch_size: 4, num_steps: 8}\n"
                                    "model: {name: rnn, hidden_size: 16, embedding_dim: 8}\n"
                                    "train: {max_steps: 2, eval_tokens: 200, precision: fp32}\n")
    result = invoke("train", "--config", "c.yaml")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("training rnn") and "in fp32 (train.precision is fp32)" in first


def test_cosine_anneals_by_whichever_limit_binds():
    cfg = tiny("optim.schedule=cosine", "optim.lr=1.0", "optim.min_lr=0.1", "train.max_steps=1000",
               "train.max_time=100")
    assert lr_factor(0, cfg, 1000, elapsed=0.0) == pytest.approx(1.0)
    assert lr_factor(100, cfg, 1000, elapsed=50.0) == pytest.approx(0.55)  # time binds: halfway
    assert lr_factor(500, cfg, 1000, elapsed=10.0) == pytest.approx(0.55)  # steps bind: halfway
    assert lr_factor(200, cfg, 1000, elapsed=100.0) == pytest.approx(0.1)  # the deadline: min_lr
    time_only = tiny("optim.schedule=cosine", "optim.lr=1.0", "optim.min_lr=0.0", "train.max_time=10")
    assert lr_factor(7, time_only, None, elapsed=5.0) == pytest.approx(0.5)
    assert run_progress(100, 50.0, cfg, 1000) == (0.5, "time")
    assert run_progress(600, 50.0, cfg, 1000) == (0.6, "steps")


def test_a_time_bound_run_ends_annealed(workdir):
    cfg = tiny("model.name=rnn", "optim.schedule=cosine", "optim.min_lr=0", "train.max_steps=null",
               "train.max_time=1.5", "train.eval_every=100000", "train.log_every=1")
    result = train(cfg, run_dir="timed", handle_signals=False)
    rows = [json.loads(line) for line in (workdir / "timed" / "metrics.jsonl").read_text().splitlines()]
    assert result.elapsed >= 1.5 and len(rows) > 20
    assert rows[0]["lr"] > 0.009 and rows[-1]["lr"] < 0.001  # was still 0.01 at the deadline before
    assert rows[-1]["bound_by"] == "time" and rows[-1]["progress"] == 1.0
    lrs = [r["lr"] for r in rows]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert math.isclose(load_checkpoint("timed/last.pt")["elapsed"], rows[-1]["elapsed"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_auto_picks_bf16_where_supported_and_trains(workdir):
    chosen = resolve_precision("auto", "cuda")
    assert chosen.name == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32")
    result = train(tiny("train.device=cuda", "train.max_steps=4"), run_dir="gpu", handle_signals=False)
    assert result.step == 4
    saved = load_checkpoint("gpu/last.pt")
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in saved["model"].values())
