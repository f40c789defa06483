"""`train()`: check a run, build its model and trainer, write its first files, then run the loop.

The loop's steps are in `loop.py`, the run folder's files belong to `RunDir`, what a checkpoint
holds to `TrainState`, the device, seeds and signals to `runtime`.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charlm.device import runtime
from charlm.training import distributed
from charlm.checkpoint import check_same_vocab, load_checkpoint, load_weights
from charlm.training.checkpoint_checks import check_train_state
from charlm.config import RESUMABLE_KEYS, RunConfig, changed_keys, config_from_dict, dump_yaml
from charlm.data.prepare import folder_settings, prepare_for_training
from charlm.data.remap import in_vocabulary
from charlm.data.vocab import Vocab
from charlm.training.distributed import Dist
from charlm.errors import ConfigError
from charlm.training.loop import Event, Trainer, TrainingDiverged, TrainResult
from charlm.models import build_model, model_class
from charlm.models.recurrent import trust_inputs_by_count
from charlm.training.rundir import RunDir
from charlm.training.schedule import lr_factor, make_optimizer, run_progress
from charlm.training.tensorboard import require_tensorboard

__all__ = ["train", "open_run", "model_options", "Trainer", "TrainResult", "TrainingDiverged", "lr_factor",
           "make_optimizer", "run_progress"]


def model_options(cfg: RunConfig) -> dict[str, Any]:
    options = cfg.to_dict()["model"]
    options.pop("name")
    return options


def train(cfg: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False, force: bool = False,
          init_from: str | Path | None = None, on_event: Event | None = None,
          stop: threading.Event | None = None, handle_signals: bool = False) -> TrainResult:
    """Train `cfg` into `run_dir` (default runs/<config name>); see the README for the files it writes.

    Setting `stop` ends the run after the current step, saved and resumable (the CLI sets it on
    Ctrl-C/SIGTERM). `handle_signals=True` does that here, as `runtime.stop_on_signals` does for the CLI.
    """
    with ExitStack() as stack:
        if handle_signals:
            stop = stack.enter_context(runtime.stop_on_signals())
        dist = distributed.setup(cfg.train.device)
        stack.callback(dist.close)
        run = RunDir(run_dir or cfg.train.out or Path("runs") / cfg.name, writer=dist.is_main)
        stack.callback(run.unlock)
        trainer = open_run(cfg, dist, run, resume=resume, force=force, init_from=init_from, on_event=on_event)
        try:
            return trainer.fit(stop)
        except Exception:
            run.abandon()  # a failed run keeps no metrics rows beyond its last checkpoint
            raise


def open_run(cfg: RunConfig, dist: Dist, run: RunDir, *, resume: bool, force: bool,
             init_from: str | Path | None, on_event: Event | None) -> Trainer:
    """Check everything, then build the model and its trainer and write the run's first files.

    Every check comes before the first write to the run folder (only its lock file is taken
    earlier), so a mistake never touches an existing run.
    """
    run.check(resume, force)
    saved = run.load_last() if resume else None
    if saved is not None:  # every field, before any is used or a file is touched
        check_train_state(saved, run.last, cfg.data.level)
    dist.main_first(run.claim)  # rank 0 takes the folder's lock, or says who holds it
    if saved is not None:
        cfg = _resume_config(cfg, saved.config)
    t = cfg.train
    if not (t.max_steps or t.epochs or t.max_time) and model_class(cfg.model.name).trainable:
        raise ConfigError("set train.epochs, train.max_steps or train.max_time, or training never stops")
    if t.tensorboard:
        require_tensorboard()
    device = runtime.training_device(t.device, dist.world_size)  # before data/ is written
    # Only rank 0 reports: the other ranks' events would repeat its numbers.
    emit = (on_event if dist.is_main else None) or (lambda kind, info: None)
    # Rank 0 preprocesses if needed; the others then load what it wrote.
    corpus = dist.main_first(
        lambda: prepare_for_training(cfg.data, on_note=lambda message: emit("note", {"message": message}),
                                     resume_from=saved.data_dir or None if saved is not None else None))
    cfg = cfg.replace("data", **folder_settings(cfg.data, corpus))  # config.yaml says what it trained on
    start = load_checkpoint(init_from) if init_from is not None else None
    if start is not None and start["model_name"] != cfg.model.name:  # before any data folder is written for it
        raise ConfigError(f"--init-from {start['path']}: its model is {start['model_name']}, the config's "
                          f"{cfg.model.name}")
    if start is not None:  # another text: its ids in the model's vocabulary (charlm.data.remap)
        corpus = dist.main_first(lambda: in_vocabulary(
            corpus, Vocab.from_dict(start["vocab"]), on_note=lambda message: emit("note", {"message": message})
        ).corpus)
    torch.manual_seed(t.seed)  # the weights' initial values
    model, model_args = _build(cfg, len(corpus.vocab))
    if start is not None:
        _load_init(model, model_args, start, cfg, corpus)
    else:
        trust_inputs_by_count(model, token_counts(corpus.train, len(corpus.vocab)))
    model.to(device)
    runtime.seed_rank(t.seed, dist.rank, dist.world_size)
    trainer = Trainer(cfg, model, corpus, run, device, dist, emit, model_args)  # checks batches against the model
    if saved is not None and trainer.trainable:
        check_same_vocab(saved.vocab, saved.vocab_sha256, run.last, corpus.vocab, corpus.folder, "--resume")
        trainer.restore(saved)  # in memory only: a checkpoint that does not fit fails before any write
        _check_work_left(trainer, run)
    dist.main_first(lambda: run.create(resume))
    # A counting model counts again; a resume's first write waits for its first checkpoint (see RunDir.start).
    run.start(dump_yaml(cfg), corpus.vocab, (trainer.step if trainer.trainable else -1) if resume else None)
    return trainer


def token_counts(ids, vocab_size: int, block: int = 1 << 24) -> np.ndarray:
    """How many times each id occurs in `ids` (a memmap is read in blocks)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for lo in range(0, len(ids), block):
        counts += np.bincount(np.asarray(ids[lo:lo + block]), minlength=vocab_size)[:vocab_size]
    return counts


def _check_work_left(trainer: Trainer, run: RunDir) -> None:
    """A resume with no step left to train would only rewrite the run's files: refuse it, unless the
    run ended before its summary had best.pt's whole-split score (killed during that pass): it gets it now."""
    if not trainer.limit_reached() or not run.has_final_summary():
        return
    t, step = trainer.cfg.train, trainer.step
    if trainer.total is not None and step >= trainer.total:
        limit = (f"train.max_steps={t.max_steps}" if t.max_steps == trainer.total
                 else f"train.epochs={t.epochs} ({trainer.total} steps)")
        where = f"{run.path} is at step {step} and {limit}"
    else:
        where = f"{run.path} has trained {trainer.elapsed:.1f}s and train.max_time={t.max_time:g}"
    raise ConfigError(f"--resume: {where}, so there is nothing left to train; "
                      "raise that limit with --set to continue (nothing was changed)")


def _build(cfg: RunConfig, vocab_size: int):
    try:
        return build_model(cfg.model.name, vocab_size, **model_options(cfg))
    except (RuntimeError, MemoryError) as exc:  # torch's allocator: OutOfMemoryError is a RuntimeError
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        sizes = ", ".join(f"{k} {v}" for k, v in model_options(cfg).items() if k in ("hidden_size", "num_layers",
                                                                                        "embedding_dim", "order"))
        raise ConfigError(f"model {cfg.model.name} with {sizes} does not fit in memory ({first})") from None


def _load_init(model: torch.nn.Module, model_args: dict[str, Any], start: dict[str, Any], cfg: RunConfig,
               corpus) -> None:
    if start["model_args"] != model_args or start["model_name"] != cfg.model.name:
        raise ConfigError(f"--init-from {start['path']}: its model ({start['model_name']}, {start['model_args']}) "
                          f"differs from the config's ({cfg.model.name}, {model_args})")
    check_same_vocab(start["vocab"], start.get("vocab_sha256"), start["path"], corpus.vocab, corpus.folder,
                     "--init-from")
    load_weights(model, start["model"], f"--init-from {start['path']}")


def _resume_config(cfg: RunConfig, saved: dict[str, Any]) -> RunConfig:
    if "state_reset" not in (saved.get("data") or {}):  # saved before restarts existed: it never restarted rows
        saved = {**saved, "data": {**saved.get("data", {}), "state_reset": 0.0}}
        cfg = cfg.replace("data", state_reset=0.0)
    forbidden = [k for k in changed_keys(config_from_dict(saved, name=cfg.name), cfg)
                 if k not in RESUMABLE_KEYS and k != "train.out"]
    if forbidden:
        raise ConfigError(f"--resume cannot change {', '.join(forbidden)} (only {', '.join(sorted(RESUMABLE_KEYS))}); "
                          "use --init-from to start a new run from these weights")
    return cfg
