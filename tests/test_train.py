import json
import math
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from charlm.checkpoint import load_checkpoint, load_model
from charlm.config import build_config, load_config
from charlm.data.corpus import load_corpus
from charlm.errors import CharLMError, CheckpointError, ConfigError
from charlm.models import model_options
from charlm.train import Trainer, TrainingDiverged, lr_factor, train


@pytest.fixture
def workdir(tmp_path, monkeypatch, corpus_dir):
    monkeypatch.chdir(tmp_path)
    text = (corpus_dir / "timemachine.txt").read_text(encoding="utf-8")[:30000]
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    return tmp_path


def tiny(*overrides, **sections):
    raw = {"data": {"corpus": "corpus.txt", "normalize": "letters", "batch_size": 4, "num_steps": 12},
           "model": {"name": "rnn", "hidden_size": 24, "num_layers": 1, "embedding_dim": 8, "dropout": 0.1},
           "optim": {"lr": 0.01}, "train": {"max_steps": 12, "eval_every": 6, "log_every": 2, "eval_tokens": 500}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    # The small sizes above apply to whichever model an override picks, where it has them.
    name = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("model.name=")), raw["model"]["name"])
    raw["model"] = {k: v for k, v in raw["model"].items() if k == "name" or k in model_options(name)}
    return build_config(raw, list(overrides), name="tiny")


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_new_run_starts_its_rare_characters_quiet_counted_on_the_training_split(workdir, monkeypatch):
    import charlm.train as train_module

    seen = []
    monkeypatch.setattr(train_module, "trust_inputs_by_count", lambda model, counts: seen.append(counts))
    train(tiny("data.normalize=none"), run_dir="run", handle_signals=False)
    corpus = load_corpus(next((workdir / "data").iterdir()))
    assert len(seen) == 1 and seen[0].tolist() == np.bincount(corpus.train, minlength=len(corpus.vocab)).tolist()
    assert seen[0].min() < 100 <= seen[0].max()  # the text has rare characters, and frequent ones


def test_a_run_writes_everything_and_learns(workdir):
    result = train(tiny(), handle_signals=False)
    run = workdir / "runs" / "tiny"
    assert result.status == "finished" and result.step == 12 and result.run_dir.resolve() == run
    for name in ("config.yaml", "vocab.json", "metrics.jsonl", "last.pt", "best.pt", "summary.json", "curves.png"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    keys = {"step", "epoch", "loss", "perplexity", "lr", "grad_norm", "clipped", "tokens_per_s", "elapsed"}
    assert keys <= set(rows[0])
    assert [r["step"] for r in rows if "val_perplexity" in r] == [6, 12]
    assert rows[-1]["loss"] < rows[0]["loss"] < math.log(28) + 0.5
    assert math.isclose(rows[0]["perplexity"], math.exp(rows[0]["loss"]))
    assert (workdir / "runs" / "LATEST").read_text().strip() == str(run.resolve())
    loaded = load_model()  # the most recent run, without a path
    assert loaded.normalize == "letters" and len(loaded.vocab) == 28
    assert load_checkpoint(run / "last.pt")["finished"] is True


def test_sampled_validation_is_labelled_and_best_pt_is_scored_on_the_whole_split(workdir):
    from charlm.inference import evaluate_checkpoint

    result = train(tiny(), handle_signals=False)  # eval_tokens 500 of a 3,000-token validation split
    run = workdir / "runs" / "tiny"
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").open()) if "val_perplexity" in r]
    assert [r["val_sample_tokens"] for r in evals] == [500, 500]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_sample_tokens"] == result.val_sample_tokens == 500
    sampled_best = min(r["val_perplexity"] for r in evals)
    assert summary["sampled_best_val_perplexity"] == result.sampled_best_val_perplexity == sampled_best
    full = evaluate_checkpoint(run).perplexity  # what `charlm evaluate` reports for best.pt
    assert summary["best_val_perplexity"] == result.best_val_perplexity == pytest.approx(full, rel=1e-6)
    assert abs(full - sampled_best) > 1e-3  # the sample is another number, so mixing them up would show


def test_a_whole_split_evaluation_is_its_own_result(workdir):
    result = train(tiny("train.eval_tokens=null"), handle_signals=False)
    run = workdir / "runs" / "tiny"
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").open()) if "val_perplexity" in r]
    assert evals and not any("val_sample_tokens" in r for r in evals)
    summary = json.loads((run / "summary.json").read_text())
    assert "val_sample_tokens" not in summary and result.sampled_best_val_perplexity is None
    assert summary["best_val_perplexity"] == min(r["val_perplexity"] for r in evals)


def test_same_seed_same_losses(workdir):
    train(tiny(), run_dir="a", handle_signals=False)
    train(tiny(), run_dir="b", handle_signals=False)
    train(tiny("train.seed=1"), run_dir="c", handle_signals=False)
    assert losses(workdir / "a") == losses(workdir / "b")
    assert losses(workdir / "a") != losses(workdir / "c")


@pytest.mark.parametrize("sampling, model, reset", [("random", "rnn", 0), ("sequential", "lstm", 0),
                                                    ("sequential", "lstm", 0.5), ("random", "gpt", 0)])
def test_resume_continues_as_if_never_stopped(workdir, sampling, model, reset):
    # state_reset 0.5: rows restart from the initial state mid-epoch, on both sides of the stop
    options = [f"data.sampling={sampling}", f"model.name={model}", f"data.state_reset={reset}"]
    options += ["model.context=12", "model.num_heads=2"] if model == "gpt" else []
    cfg = tiny(*options, "train.max_steps=16", "train.eval_every=4")
    train(cfg, run_dir="whole", handle_signals=False)
    train(tiny(*options, "train.max_steps=8", "train.eval_every=4"), run_dir="split", handle_signals=False)
    result = train(cfg, run_dir="split", resume=True, handle_signals=False)
    assert result.step == 16
    assert losses(workdir / "whole") == losses(workdir / "split")
    a, b = load_checkpoint("whole/last.pt")["model"], load_checkpoint("split/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("model", ["lstm", "rnn_scratch"])
def test_sequential_training_restarts_the_drawn_rows_from_the_initial_state(workdir, monkeypatch, model):
    """Carried state alone never shows a model its initial state after the first batch; every prompt starts there."""
    from charlm.data.batches import make_sampler
    from charlm.models import recurrent, rnn_scratch

    seen = []
    cls = recurrent.RecurrentLM if model == "lstm" else rnn_scratch.RNNScratch
    forward = cls.forward

    inputs = []

    def spy(self, ids, state=None):
        if self.training:
            h = None if state is None else (state[0] if isinstance(state, tuple) else state)
            seen.append(None if h is None else (h.reshape(-1, ids.shape[0], h.shape[-1]) == 0).all(-1).all(0))
            inputs.append((ids.clone(), self.vocab_size))
        return forward(self, ids, state)

    monkeypatch.setattr(cls, "forward", spy)
    for reset in (0.0, 0.5):
        seen.clear()
        inputs.clear()
        cfg = tiny("data.sampling=sequential", f"model.name={model}", f"data.state_reset={reset}",
                   "train.max_steps=8")
        train(cfg, run_dir=f"r{reset}", handle_signals=False)
        sampler = make_sampler("sequential", [0] * 30000, 4, 12, 0, state_reset=reset)
        expected = [sampler.fresh_rows(0, b) for b in range(1, 8)]
        assert seen[0] is None  # the epoch's first batch starts from the initial state
        got = [rows.numpy() for rows in seen[1:8]]
        if reset == 0:
            assert not any(rows.any() for rows in got)
        else:
            assert sum(rows.sum() for rows in got) >= 4
            for rows, want in zip(got, expected):
                assert (rows == (want if want is not None else False)).all()
            for b, rows in enumerate(got, start=1):  # and a restarted row reads 1-4 random tokens first
                ids, vocab_size = inputs[b]
                lengths, tokens = sampler.random_starts(0, b, vocab_size)
                for r in np.flatnonzero(rows):
                    assert ids[r, :lengths[r]].tolist() == tokens[r, :lengths[r]].tolist()


def test_a_restarted_rows_random_tokens_are_read_but_not_predicted():
    from types import SimpleNamespace

    from charlm.data.batches import make_sampler
    from charlm.training.loop import IGNORED, Trainer

    sampler = make_sampler("sequential", np.arange(30000) % 7, 4, 12, 0, state_reset=0.5)
    fresh = np.array([True, False, True, False])
    x = torch.arange(48).reshape(4, 12) % 7
    y = (torch.arange(48).reshape(4, 12) + 1) % 7
    trainer = SimpleNamespace(sampler=sampler, epoch=0, batch=3, model=SimpleNamespace(vocab_size=7))
    nx, ny = Trainer.random_starts(trainer, x, y, fresh)
    lengths, tokens = sampler.random_starts(0, 3, 7)
    for r in range(4):
        k = int(lengths[r]) if fresh[r] else 0
        assert nx[r, :k].tolist() == tokens[r, :k].tolist() and torch.equal(nx[r, k:], x[r, k:])
        assert (ny[r, :max(k - 1, 0)] == IGNORED).all() and torch.equal(ny[r, max(k - 1, 0):], y[r, max(k - 1, 0):])
    assert torch.equal(x, torch.arange(48).reshape(4, 12) % 7)  # the batch itself is left alone
    assert ((tokens >= 1) & (tokens < 7)).all() and ((lengths >= 1) & (lengths <= 4)).all()


def test_best_pt_after_resume_holds_the_best_val_perplexity(tmp_path, monkeypatch, tiny_text):
    """Stop right after an evaluation that set a new best, resume: best.pt must still hold the best.

    With lr 0.05 this trajectory sets a new best at step 6, then evaluates worse than it but better
    than the previous best at step 7: a last.pt that kept the previous best would let step 7
    overwrite best.pt."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(tiny_text, encoding="utf-8")

    def cfg(steps):
        return build_config({"data": {"corpus": "corpus.txt", "normalize": "letters", "batch_size": 4, "num_steps": 12},
                             "model": {"name": "rnn", "hidden_size": 24, "embedding_dim": 8},
                             "optim": {"lr": 0.05}, "train": {"max_steps": steps, "eval_every": 1, "log_every": 1}},
                            name="best")

    train(cfg(12), run_dir="whole", handle_signals=False)
    train(cfg(6), run_dir="split", handle_signals=False)
    vals = {r["step"]: r["val_perplexity"] for r in map(json.loads, (tmp_path / "split/metrics.jsonl").open())}
    assert vals[6] < min(vals[s] for s in range(1, 6))  # the premise: step 6 set a new best
    later = {r["step"]: r["val_perplexity"] for r in map(json.loads, (tmp_path / "whole/metrics.jsonl").open())}
    assert any(vals[6] < later[s] < min(vals[s] for s in range(1, 6)) for s in range(7, 13))  # and a later one
    assert load_checkpoint("split/last.pt")["best_val"] == vals[6]
    train(cfg(12), run_dir="split", resume=True, handle_signals=False)
    for run in ("whole", "split"):
        vals = {r["step"]: r["val_perplexity"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl").open())}
        best_step = min(vals, key=vals.get)
        best = load_checkpoint(f"{run}/best.pt")
        assert best["step"] == best_step and best["best_val"] == vals[best_step], run
        assert load_checkpoint(f"{run}/last.pt")["best_val"] == vals[best_step], run
    assert losses(tmp_path / "whole") == losses(tmp_path / "split")
    a, b = load_checkpoint("whole/best.pt"), load_checkpoint("split/best.pt")
    assert a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_refuses_model_changes_and_init_from_starts_fresh(workdir):
    train(tiny(), run_dir="first", handle_signals=False)
    with pytest.raises(ConfigError, match="--resume cannot change model.hidden_size"):
        train(tiny("model.hidden_size=32"), run_dir="first", resume=True, handle_signals=False)
    result = train(tiny("train.max_steps=2"), run_dir="second", init_from="first/last.pt", handle_signals=False)
    assert result.step == 2
    first_loss = losses(workdir / "second")[0]
    assert first_loss < losses(workdir / "first")[0]  # started from trained weights
    with pytest.raises(ConfigError, match="differs from the config"):
        train(tiny("model.hidden_size=32"), run_dir="third", init_from="first/last.pt", handle_signals=False)


@pytest.mark.parametrize("overrides, message", [
    (["data.sampling=sequential"], "model gpt does not carry state between batches; set data.sampling: random"),
    (["model.context=8"], r"data.num_steps \(12\) is longer than model.context \(8\)"),
])
def test_gpt_refuses_batches_it_cannot_train_on_before_writing(workdir, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(tiny("model.name=gpt", "model.context=12", *overrides), handle_signals=False)
    assert not (workdir / "runs" / "tiny").exists()


def test_existing_run_needs_force(workdir):
    train(tiny("train.max_steps=2"), run_dir="r", handle_signals=False)
    with pytest.raises(CharLMError, match="--resume r or overwrite it with --force"):
        train(tiny("train.max_steps=2"), run_dir="r", handle_signals=False)
    assert train(tiny("train.max_steps=2"), run_dir="r", force=True, handle_signals=False).step == 2


def test_nan_loss_stops_and_keeps_last_good_checkpoint(workdir, monkeypatch):
    real_step = Trainer.train_step

    def poisoned(self, xb, yb, lr):
        loss, norm = real_step(self, xb, yb, lr)
        return (loss * float("nan") if self.step >= 7 else loss), norm

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match="loss became nan near step 8"):
        train(tiny(), run_dir="nan", handle_signals=False)
    checkpoint = load_checkpoint("nan/last.pt")
    assert checkpoint["step"] == 6 and all(torch.isfinite(v).all() for v in checkpoint["model"].values())


def test_stop_event_saves_and_resumes(workdir):
    stop = threading.Event()

    def on_event(kind, info):
        if kind == "log" and info["step"] == 4:
            stop.set()

    result = train(tiny(), run_dir="sig", on_event=on_event, stop=stop)
    # asked to stop after step 4 was logged: step 5 is finished, saved, and the run stops
    assert result.status == "interrupted" and result.step == 5
    assert load_checkpoint("sig/last.pt")["step"] == 5
    assert train(tiny(), run_dir="sig", resume=True).step == 12


def test_an_interrupted_run_leaves_the_whole_split_to_the_run_that_finishes(workdir):
    from charlm.inference import evaluate_checkpoint

    stop = threading.Event()
    result = train(tiny(), run_dir="cut", stop=stop,  # after step 6's evaluation
                   on_event=lambda kind, info: kind == "log" and info["step"] == 6 and stop.set())
    summary = json.loads((workdir / "cut" / "summary.json").read_text())
    assert result.status == "interrupted" and result.sampled_best_val_perplexity is not None
    assert result.best_val_perplexity is None and summary["best_val_perplexity"] is None  # no whole-split pass
    done = train(tiny(), run_dir="cut", resume=True)
    assert done.status == "finished"
    assert done.best_val_perplexity == pytest.approx(evaluate_checkpoint(workdir / "cut").perplexity, rel=1e-6)


def test_a_python_callers_sigint_stays_its_own_unless_handed_over(workdir):
    seen = []

    def on_event(kind, info):
        if kind == "log" and info["step"] == 4:
            seen.append(signal.getsignal(signal.SIGINT))
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(tiny(), run_dir="own", on_event=on_event)
    assert seen == [signal.default_int_handler]
    result = train(tiny(), run_dir="handed", on_event=on_event, handle_signals=True)
    assert result.status == "interrupted" and result.step == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def test_failed_checkpoint_write_keeps_the_previous_one(workdir, monkeypatch):
    train(tiny("train.max_steps=6"), run_dir="disk", handle_signals=False)
    before = (workdir / "disk" / "last.pt").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device; the previous checkpoint is untouched"):
        train(tiny("train.max_steps=12"), run_dir="disk", resume=True, handle_signals=False)
    assert (workdir / "disk" / "last.pt").read_bytes() == before
    assert not [p for p in (workdir / "disk").iterdir() if p.name.endswith(".tmp")]


def test_schedules():
    cfg = tiny("optim.schedule=cosine", "optim.warmup_steps=10", "optim.lr=1.0", "optim.min_lr=0.1")
    assert lr_factor(0, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 110) == pytest.approx(1.0)
    assert lr_factor(60, cfg, 110) == pytest.approx(0.55)
    assert lr_factor(110, cfg, 110) == pytest.approx(0.1)
    step = tiny("optim.schedule=step", "optim.step_size=5", "optim.gamma=0.5")
    assert [lr_factor(s, step, None) for s in (0, 4, 5, 10)] == [1.0, 1.0, 0.5, 0.25]


def test_clipping_is_reported(workdir):
    train(tiny("optim.grad_clip=0.01"), run_dir="clip", handle_signals=False)
    rows = [json.loads(line) for line in (workdir / "clip" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["clipped"] == 2 for r in rows)  # every step of every 2-step window
    train(tiny("optim.grad_clip=0"), run_dir="noclip", handle_signals=False)
    rows = [json.loads(line) for line in (workdir / "noclip" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["clipped"] == 0 for r in rows)


def test_counting_model_trains_by_counting(workdir):
    result = train(tiny("model.name=ngram", "model.order=3"), run_dir="ng", handle_signals=False)
    assert result.status == "finished" and result.step == 0
    assert 1 < result.best_val_perplexity < 28
    assert load_model("ng").model.__class__.__name__.lower().startswith("ngram")
    summary = json.loads((workdir / "ng" / "summary.json").read_text())  # the same ending as a trained run
    assert summary["status"] == "finished" and summary["val_perplexity"] == result.best_val_perplexity
    assert 0 < result.validation_s == summary["validation_s"]  # its validation pass is timed and reported


def test_tensorboard_mirrors_every_metrics_row(workdir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from charlm.config import load_config

    cfg = load_config("tiny", ["train.tensorboard=true", "data.corpus=corpus.txt", "train.out=runs/tb"])
    train(cfg, handle_signals=False)
    rows = [json.loads(line) for line in (workdir / "runs/tb/metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(workdir / "runs/tb/tensorboard")).Reload()
    for key in ("loss", "perplexity", "val_perplexity", "lr", "grad_norm", "clipped", "tokens_per_s"):
        logged = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        assert logged, key
        seen = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in seen] == [s for s, _ in logged], key
        assert [v for _, v in seen] == pytest.approx([v for _, v in logged], rel=1e-6), key


def test_tensorboard_off_writes_no_event_files(workdir):
    from charlm.config import load_config

    train(load_config("tiny", ["data.corpus=corpus.txt", "train.out=runs/plain"]), handle_signals=False)
    assert not (workdir / "runs/plain/tensorboard").exists()


def test_init_from_fine_tunes_on_a_text_of_another_vocabulary(workdir):
    # A model trained on letters-only text, fine-tuned on the same story as written: capitals,
    # punctuation and digits it never saw become <unk>, counted and reported; its ids stay its own.
    train(tiny("data.normalize=letters"), run_dir="first", handle_signals=False)
    (workdir / "other.txt").write_text("The Time Traveller, 1895: " + (workdir / "corpus.txt").read_text()[:9000])
    notes = []
    result = train(tiny("data.corpus=other.txt", "data.normalize=none", "train.max_steps=2"), run_dir="second",
                   init_from="first/last.pt", handle_signals=False,
                   on_event=lambda kind, info: notes.append(info["message"]) if kind == "note" else None)
    assert result.step == 2
    first, tuned = load_checkpoint("first/last.pt"), load_checkpoint("second/last.pt")
    assert tuned["vocab"]["tokens"] == first["vocab"]["tokens"]  # the model's rows keep their meaning
    remapped = load_corpus(tuned["data_dir"])
    own = load_corpus("data/other")
    lacking = [t for t in own.vocab.tokens[1:] if t not in first["vocab"]["tokens"]]
    assert "T" in lacking and "," in lacking and "1" in lacking
    unknown = int(sum((np.asarray(own.train) == own.vocab.id_of(t)).sum() + (np.asarray(own.val) == own.vocab.id_of(t)
                                                                             ).sum() for t in lacking))
    assert int((np.asarray(remapped.train) == 0).sum() + (np.asarray(remapped.val) == 0).sum()) == unknown
    text = own.vocab.decode(np.asarray(own.train[:200]).tolist())
    assert remapped.vocab.decode(np.asarray(remapped.train[:200]).tolist()) == "".join(
        c if c in first["vocab"]["tokens"] else "\ufffd" for c in text)  # decode shows <unk> as U+FFFD
    assert any(f"{unknown:,} of its" in n and "are <unk>" in n for n in notes), notes
    # Resumed, the run reads the ids it started with; a second fine-tune reuses the folder.
    assert train(tiny("data.corpus=other.txt", "data.normalize=none", "train.max_steps=3"), run_dir="second",
                 resume=True, handle_signals=False).step == 3
    assert sorted(p.name for p in (workdir / "data").iterdir()) == sorted(
        ["corpus", "other", Path(tuned["data_dir"]).name])


class Killed(BaseException):
    """kill -9, as far as the process's files can tell."""


def test_a_kill_during_the_whole_split_score_leaves_a_summary_and_resume_completes_it(workdir, monkeypatch):
    from charlm.training import loop
    from charlm.inference import evaluate_checkpoint

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as kill:
        kill.setattr(loop, "score_whole_split", killed)
        with pytest.raises(Killed):
            train(tiny(), run_dir="k")
    summary = json.loads((workdir / "k" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best_val_perplexity"] is None and summary["pending"]
    assert summary["sampled_best_val_perplexity"] == load_checkpoint("k/last.pt")["best_val"]  # marked as such
    done = train(tiny(), run_dir="k", resume=True)  # not "nothing left to train": it scores best.pt
    assert done.step == 12 and done.best_val_perplexity == pytest.approx(evaluate_checkpoint("k").perplexity)
    summary = json.loads((workdir / "k" / "summary.json").read_text())
    assert summary["best_val_perplexity"] == done.best_val_perplexity and "pending" not in summary
    with pytest.raises(ConfigError, match="nothing left to train"):  # now whole: a resume is refused again
        train(tiny(), run_dir="k", resume=True)


def test_a_stop_request_ends_the_whole_split_pass_at_once(workdir, monkeypatch):
    from charlm.evaluation import batched_eval

    stop, chunks, real_check = threading.Event(), [], batched_eval.check_stop

    def counted(event):  # called before each chunk of the pass
        chunks.append(stop.is_set())
        real_check(event)

    def on_event(kind, info):
        if kind == "note" and "whole validation split" in info["message"]:
            stop.set()  # SIGTERM during the pass

    monkeypatch.setattr(batched_eval, "check_stop", counted)
    result = train(tiny(), run_dir="t", stop=stop, on_event=on_event)
    assert result.status == "finished" and result.best_val_perplexity is None
    assert chunks.count(True) == 1  # one chunk of the pass, then it stopped (the split has several)
    assert json.loads((workdir / "t" / "summary.json").read_text())["pending"]
    assert train(tiny(), run_dir="t", resume=True).best_val_perplexity is not None


def test_ctrl_c_saves_without_an_extra_evaluation_and_the_resumed_run_continues_exactly(workdir, monkeypatch):
    validated, real_validate = [], Trainer.validate

    def counted(self):
        validated.append(self.step)
        return real_validate(self)

    monkeypatch.setattr(Trainer, "validate", counted)
    stop = threading.Event()
    result = train(tiny(), run_dir="cut", stop=stop, on_event=lambda kind, info: kind == "log" and stop.set())
    assert result.status == "interrupted" and result.step == 3 and validated == []  # saved, not evaluated
    assert load_checkpoint("cut/last.pt")["step"] == 3 and not (workdir / "cut" / "best.pt").exists()
    assert "val_perplexity" not in json.loads((workdir / "cut" / "metrics.jsonl").read_text().splitlines()[-1])
    train(tiny(), run_dir="cut", resume=True)
    train(tiny(), run_dir="whole")
    cut, whole = load_checkpoint("cut/last.pt"), load_checkpoint("whole/last.pt")
    assert all(torch.equal(cut["model"][k], whole["model"][k]) for k in whole["model"])
    assert cut["best_val"] == whole["best_val"]
    rows = {r["step"]: r for r in map(json.loads, (workdir / "whole" / "metrics.jsonl").read_text().splitlines())}
    for row in map(json.loads, (workdir / "cut" / "metrics.jsonl").read_text().splitlines()):
        if row["step"] in rows and row["step"] != 4:  # step 4's window began at the cut
            assert row["loss"] == rows[row["step"]]["loss"] and row.get("val_perplexity") == rows[row["step"]].get(
                "val_perplexity")


def test_a_run_saved_before_row_restarts_existed_resumes_without_them(workdir):
    """Its checkpoint and config.yaml lack data.state_reset: the default 0.05 would change its course."""
    whole = train(tiny(data={"sampling": "sequential", "state_reset": 0.0}), run_dir="whole")
    train(tiny(data={"sampling": "sequential", "state_reset": 0.0}, train={"max_steps": 6}), run_dir="old")
    payload = torch.load("old/last.pt", weights_only=True)
    del payload["config"]["data"]["state_reset"]
    torch.save(payload, "old/last.pt")
    config = yaml.safe_load((workdir / "old" / "config.yaml").read_text())
    del config["data"]["state_reset"]
    (workdir / "old" / "config.yaml").write_text(yaml.safe_dump(config))
    resumed = train(load_config(workdir / "old" / "config.yaml", ["train.max_steps=12"]), run_dir="old", resume=True)
    assert resumed.step == 12
    old, new = load_checkpoint("old/last.pt"), load_checkpoint(whole.run_dir / "last.pt")
    assert all(torch.equal(old["model"][k], new["model"][k]) for k in new["model"])
