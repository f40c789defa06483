"""This device's training speed per planner candidate, measured once and cached per machine.

A candidate is timed as charlm trains it: its training step (sampler, model, loss, clipping,
AdamW) on random ids, in the precision `train.precision: auto` picks on the device. The cache
key names the CPU or GPU, the torch version, the thread count and the precision, so another
machine, torch or precision measures again.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from charlm.errors import CharLMError
from charlm.planning.planner import Candidate

MEASURE_S = 0.6  # per candidate after its warm-up step: long enough to average, short enough to try several
COPY_SAMPLE = 200_000  # training tokens the copy statistic (planner.copy_share) is counted on


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "charlm" / "throughput.json"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(device: torch.device, precision: str) -> str:
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    return f"{device_name(device)}|{device.type}|torch {torch.__version__}|threads {threads}|{precision}"


class Calibration:
    """tokens/s per candidate on one device, measured on first use and kept in the cache file."""

    def __init__(self, device: torch.device | str = "cpu", vocab_size: int = 96, path: Path | None = None,
                 recalibrate: bool = False, note=None):
        from charlm.device.precision import resolve_precision

        self.device = torch.device(device)
        self.precision = resolve_precision("auto", self.device).name
        self.key, self.vocab_size = machine_key(self.device, self.precision), vocab_size
        self.path = path or cache_path()
        self.note = note or (lambda message: None)
        self.table: dict[str, float] = {} if recalibrate else self._load().get(self.key, {})
        self.measured: list[str] = []

    def __call__(self, candidate: Candidate) -> float:
        if candidate.key not in self.table:
            self.table[candidate.key] = self._measure(candidate)
            self.measured.append(candidate.key)
            self._save()
        return self.table[candidate.key]

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # no cache yet, or an unreadable one: measure again
        return data if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()) else {}

    def _save(self) -> None:
        from charlm.safe_write import write_atomic

        data = self._load()
        data[self.key] = self.table
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True))
        except (OSError, CharLMError) as exc:  # a read-only home: the plan still works, it measures again next time
            self.note(f"could not cache the calibration in {self.path} ({getattr(exc, 'strerror', None) or exc})")

    def _measure(self, c: Candidate) -> float:
        """tokens/s of `c`'s training step; 0.0 when it does not fit in memory."""
        from charlm.config import build_config
        from charlm.training.distributed import Dist
        from charlm.training.loop import Trainer
        from charlm.models import build_model
        from charlm.planning.planner import model_config
        from charlm.train import model_options

        self.note(f"calibrating {c.describe()} on batch {c.batch_size} × {c.num_steps}")
        sampling = "random" if c.family == "gpt" else "sequential"
        cfg = build_config({"data": {"batch_size": c.batch_size, "num_steps": c.num_steps, "sampling": sampling},
                            "model": model_config(c, 0.0),
                            "optim": {"name": "adamw", "lr": 1e-3},
                            "train": {"max_steps": 10**9, "device": str(self.device), "precision": "auto"}})
        ids = np.random.default_rng(0).integers(self.vocab_size, size=c.batch_size * c.num_steps * 8 + 2,
                                                dtype=np.int64).astype(np.uint8 if self.vocab_size < 256 else np.int32)
        try:
            with tempfile.TemporaryDirectory() as folder:
                model, _ = build_model(c.family, self.vocab_size, **model_options(cfg))
                corpus = SimpleNamespace(train=ids, val=ids[:0], vocab=list(range(self.vocab_size)))
                trainer = Trainer(cfg, model.to(self.device), corpus, folder, self.device, Dist())
                batches = trainer.sampler.epoch(0)
                trainer.train_step(*next(batches), 1e-3)  # warm-up: allocations, kernel choice
                self._sync()
                steps, started = 0, time.perf_counter()
                while steps < 2 or time.perf_counter() - started < MEASURE_S:
                    xb, yb = next(batches, (None, None))
                    if xb is None:
                        batches = trainer.sampler.epoch(0)
                        continue
                    trainer.train_step(xb, yb, 1e-3)
                    steps += 1
                self._sync()
                return steps * c.batch_size * c.num_steps / (time.perf_counter() - started)
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if isinstance(exc, MemoryError) or "memory" in str(exc).lower():
                return 0.0
            raise

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def measure_corpus(corpus: str, *, device: str = "auto", recalibrate: bool = False, note=None,
                   normalize: str = "none"):
    """(prepared corpus, CorpusProfile, Calibration): `corpus` preprocessed as a planned run reads it
    (every character kept, unless `normalize` says otherwise), and this device's speed, measured as the planner asks."""
    from charlm.config import DataConfig
    from charlm.data.prepare import prepare_for_training
    from charlm.planning.planner import CorpusProfile, copy_share
    from charlm.device.runtime import resolve_device

    note = note or (lambda message: None)
    prepared = prepare_for_training(DataConfig(corpus=corpus, normalize=normalize), on_note=note)
    train = prepared.train
    middle = max(0, len(train) // 2 - COPY_SAMPLE // 2)  # a sample: the statistic settles well before 200k
    profile = CorpusProfile(corpus=corpus, train_tokens=len(train), vocab_size=len(prepared.vocab),
                            level=prepared.meta.get("level", "char"), val_tokens=len(prepared.val),
                            normalize=normalize, copy_share=copy_share(train[middle:middle + COPY_SAMPLE]))
    speed = Calibration(resolve_device(device), profile.vocab_size, recalibrate=recalibrate, note=note)
    return prepared, profile, speed


def plan_corpus(corpus: str, budget, *, device: str = "auto", recalibrate: bool = False, note=None,
                normalize: str = "none", **rules):
    """Preprocess `corpus` as a planned run reads it (every character kept), measure, and plan.

    `rules` go to `planner.plan` (`rules=Rules(...)`, `candidates=(...)`), for sweeps and tests.
    """
    from charlm.planning.planner import plan

    _, profile, speed = measure_corpus(corpus, device=device, recalibrate=recalibrate, note=note, normalize=normalize)
    return plan(profile, budget, speed, **rules)


def run_name(corpus: str) -> str:
    """A planned run's name: the built-in dataset's, or the text's folder name."""
    from charlm.data.corpus import folder_name
    from charlm.data.text import BUILTIN_DATASETS

    return corpus if corpus in BUILTIN_DATASETS else folder_name(corpus)


def planned_config(corpus: str, budget, overrides: list[str] | None = None, *, device: str = "auto",
                   recalibrate: bool = False, note=None):
    """(RunConfig, Plan): the plan for `corpus` as a run config named after the text, `overrides` on top.

    A `data.normalize=...` override is planned for: the text is measured as the run will read it.
    """
    from charlm.config import build_config

    from charlm.data.text import NORMALIZATIONS
    from charlm.errors import ConfigError

    normalize = next((o.split("=", 1)[1].strip() for o in overrides or [] if o.split("=", 1)[0].strip()
                      == "data.normalize" and "=" in o), "none")
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"data.normalize: {normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
    made = plan_corpus(corpus, budget, device=device, recalibrate=recalibrate, note=note, normalize=normalize)
    return build_config(made.config, overrides, name=run_name(corpus)), made
