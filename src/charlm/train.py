"""The training loop: sampler → model → loss → clip → step, with evaluation, checkpoints and resume."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from charlm import __version__, distributed
from charlm.distributed import resolve_device, state_batch_dims
from charlm.checkpoint import load_checkpoint, record_latest_run, save_checkpoint
from charlm.config import RESUMABLE_KEYS, RunConfig, changed_keys, config_from_dict, dump_yaml
from charlm.data.batches import make_sampler
from charlm.data.corpus import PreparedCorpus
from charlm.data.prepare import folder_settings, prepare_for_training
from charlm.errors import CharLMError, ConfigError
from charlm.evaluate import evaluate_ids
from charlm.models import build_model, detach_state, model_class
from charlm.precision import cast_state, resolve_precision, state_dtypes, to_float32
from charlm.tensorboard import TensorBoardLog, require_tensorboard

Event = Callable[[str, dict[str, Any]], None]


class TrainingDiverged(CharLMError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 1


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "finished" | "interrupted"
    step: int
    best_val_perplexity: float | None
    val_perplexity: float | None
    elapsed: float
    tokens_per_s: float


def lr_factor(step: int, cfg: RunConfig, total_steps: int | None, elapsed: float = 0.0) -> float:
    """The schedule as a pure function of the step and the training clock, both in the checkpoint.

    The cosine's progress is the fraction of whichever limit binds: steps (max_steps or epochs)
    or train.max_time, so a run stopped by its deadline has annealed to min_lr by then. A run
    without max_time depends on the step alone and resumes bit for bit.
    """
    o = cfg.optim
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "step":
        return o.gamma ** (step // o.step_size)
    max_time = cfg.train.max_time
    if o.schedule == "cosine" and (total_steps or max_time):
        by_steps = (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps) if total_steps else 0.0
        by_time = elapsed / max_time if max_time else 0.0
        progress = min(1.0, max(by_steps, by_time))
        floor = o.min_lr / o.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def run_progress(step: int, elapsed: float, cfg: RunConfig, total_steps: int | None) -> tuple[float, str]:
    """How far the run is towards the limit that binds first (0..1), and which one: "steps" or "time"."""
    by_steps = step / total_steps if total_steps else 0.0
    by_time = elapsed / cfg.train.max_time if cfg.train.max_time else 0.0
    return (min(1.0, by_time), "time") if by_time > by_steps else (min(1.0, by_steps), "steps")


def make_optimizer(params, cfg: RunConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, weight_decay=o.weight_decay)


def model_options(cfg: RunConfig) -> dict[str, Any]:
    options = cfg.to_dict()["model"]
    options.pop("name")
    return options


@contextmanager
def stop_on_signals(enabled: bool) -> Iterator[threading.Event]:
    """Turn the first SIGINT/SIGTERM into a request to stop after the current step; a second one kills."""
    requested = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        requested.set()
        for s, h in previous.items():
            signal.signal(s, h)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _check_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Refuse a run folder we must not use, before anything is written."""
    if resume:
        if not (run_dir / "last.pt").is_file():
            raise CharLMError(f"cannot resume: {run_dir / 'last.pt'} does not exist")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise CharLMError(f"run folder {run_dir} is a file")
    if run_dir.exists() and not force and any(run_dir.iterdir()):
        raise CharLMError(f"run folder {run_dir} already exists; continue it with --resume {run_dir} "
                          "or overwrite it with --force")


def _prepare_run_dir(run_dir: Path) -> None:
    """Create the folder and clear a previous run's outputs (--force); called once all checks passed."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "last.pt", "best.pt", "curves.png", "summary.json"):
            (run_dir / name).unlink(missing_ok=True)
    except OSError as exc:
        raise CharLMError(f"cannot write the run folder {run_dir}: {exc.strerror or exc}") from None


def _build(cfg: RunConfig, vocab_size: int):
    try:
        return build_model(cfg.model.name, vocab_size, **model_options(cfg))
    except (RuntimeError, MemoryError) as exc:  # torch's allocator: OutOfMemoryError is a RuntimeError
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ConfigError(f"model {cfg.model.name} with hidden_size {cfg.model.hidden_size}, num_layers "
                          f"{cfg.model.num_layers} does not fit in memory ({first})") from None


def _resume_config(cfg: RunConfig, payload: dict[str, Any]) -> RunConfig:
    saved = config_from_dict(payload["config"], name=cfg.name)
    forbidden = [k for k in changed_keys(saved, cfg) if k not in RESUMABLE_KEYS and k != "train.out"]
    if forbidden:
        raise ConfigError(f"--resume cannot change {', '.join(forbidden)} (only {', '.join(sorted(RESUMABLE_KEYS))}); "
                          "use --init-from to start a new run from these weights")
    return cfg


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from, so no step appears twice."""
    if not path.is_file():
        return
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                rows.append(line)
        except (ValueError, AttributeError):
            pass  # a row cut short by a kill: it belongs to the steps we are about to redo
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def train(cfg: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False, force: bool = False,
          init_from: str | Path | None = None, on_event: Event | None = None,
          handle_signals: bool = True) -> TrainResult:
    """Train `cfg` into `run_dir` (default runs/<config name>); see the README for the files it writes."""
    dist = distributed.setup(cfg.train.device)
    try:
        return _train(cfg, dist, run_dir, resume, force, init_from, on_event, handle_signals)
    finally:
        dist.close()


def _train(cfg, dist, run_dir, resume, force, init_from, on_event, handle_signals) -> TrainResult:
    # Only rank 0 reports: the other ranks' events would repeat its numbers.
    emit = (on_event if dist.is_main else None) or (lambda kind, info: None)
    run_dir = Path(run_dir or cfg.train.out or Path("runs") / cfg.name)
    # Every check comes before the first write, so a mistake never touches an existing run.
    _check_run_dir(run_dir, resume, force)
    payload = None
    if resume:
        payload = load_checkpoint(run_dir / "last.pt")
        cfg = _resume_config(cfg, payload)
    t = cfg.train
    if not (t.max_steps or t.epochs or t.max_time) and getattr(model_class(cfg.model.name), "trainable", True):
        raise ConfigError("set train.epochs, train.max_steps or train.max_time, or training never stops")
    if t.tensorboard:
        require_tensorboard()
    # Rank 0 preprocesses if needed; the others then load what it wrote.
    corpus: PreparedCorpus = dist.main_first(
        lambda: prepare_for_training(cfg.data, on_note=lambda message: emit("note", {"message": message}),
                                     resume_from=payload and payload.get("data_dir")))
    cfg = cfg.replace("data", **folder_settings(cfg.data, corpus))  # config.yaml says what it trained on
    vocab = corpus.vocab
    device = resolve_device(cfg.train.device) if dist.world_size == 1 else dist.device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    model, model_args = _build(cfg, len(vocab))
    if init_from is not None:
        start = load_checkpoint(init_from)
        if start["model_args"] != model_args or start["model_name"] != cfg.model.name:
            raise ConfigError(f"--init-from {init_from}: its model ({start['model_name']}, {start['model_args']}) "
                              f"differs from the config's ({cfg.model.name}, {model_args})")
        model.load_state_dict(start["model"])
    model.to(device)
    dist.seed(cfg.train.seed)
    trainer = None
    if getattr(model, "trainable", True):
        trainer = Trainer(cfg, model, corpus, run_dir, device, dist, None, emit)  # checks batch against corpus
    if not resume:
        dist.main_first(lambda: _prepare_run_dir(run_dir) if dist.is_main else None)
    if dist.is_main:
        (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
        vocab.save(run_dir / "vocab.json")

    base = {"model_name": cfg.model.name, "model_args": model_args, "vocab": vocab.to_dict(),
            "charlm_version": __version__, "data_dir": str(Path(corpus.folder).resolve())}
    if trainer is None:
        return _fit_counting_model(cfg, model, corpus, run_dir, device, base, emit, dist.is_main)
    trainer.base = base
    if payload is not None:
        trainer.restore(payload)
        _truncate_metrics(run_dir / "metrics.jsonl", trainer.step) if dist.is_main else None
    with stop_on_signals(handle_signals) as stop_requested:
        return trainer.run(stop_requested)


def _fit_counting_model(cfg, model, corpus, run_dir, device, base, emit, main=True) -> TrainResult:
    started = time.perf_counter()
    emit("start", {"run_dir": str(run_dir), "total_steps": 0, "device": str(device), "parameters": 0,
                   "model": cfg.model.name, "vocab_size": len(corpus.vocab)})
    model.fit(np.asarray(corpus.train))
    elapsed = time.perf_counter() - started
    val = evaluate_ids(model, corpus.val, device=device).perplexity if len(corpus.val) > 1 else None
    result = TrainResult(run_dir, "finished", 0, val, val, elapsed, len(corpus.train) / max(elapsed, 1e-9))
    if not main:  # every rank counts (cheap, identical); one writes
        return result
    payload = {**base, "model": model.state_dict(), "config": cfg.to_dict(), "step": 0, "epoch": 0,
               "best_val": val, "elapsed": elapsed, "finished": True}
    save_checkpoint(run_dir / "last.pt", payload)
    save_checkpoint(run_dir / "best.pt", payload)
    row = {"step": 0, "epoch": 0, "val_perplexity": val, "elapsed": elapsed, "tokens_per_s": result.tokens_per_s}
    (run_dir / "metrics.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    if cfg.train.tensorboard:
        board = TensorBoardLog(run_dir)
        board.write(row)
        board.close()
    emit("eval", row)
    record_latest_run(run_dir)
    emit("end", {"result": result})
    return result


class Trainer:
    """The state of one training run; `run` is the loop, `restore` resumes it exactly."""

    def __init__(self, cfg, model, corpus, run_dir, device, dist, base, emit):
        self.cfg, self.model, self.corpus, self.run_dir = cfg, model, corpus, run_dir
        self.device, self.dist, self.base, self.emit = device, dist, base, emit
        self.sampler = make_sampler(cfg.data.sampling, corpus.train, cfg.data.batch_size, cfg.data.num_steps,
                                    cfg.train.seed, dist.rank, dist.world_size)
        check_training = getattr(model, "check_training", None)  # a model's own limits on batches
        if check_training is not None:
            check_training(cfg.data.num_steps, self.sampler.carries_state)
        self.optimizer = make_optimizer(model.parameters(), cfg)
        self.net = dist.wrap(model)
        if cfg.train.compile:
            self.net = torch.compile(self.net)
        # Only the forward pass is autocast; weights, Adam's moments, loss and clipping stay fp32.
        self.precision = resolve_precision(cfg.train.precision, device, cfg.train.amp)
        self.autocast = self.precision.autocast(device)
        self.step = self.epoch = self.batch = 0
        self.elapsed = self.schedule_clock = 0.0  # seconds of training; the schedule's clock (see run)
        self.best_val: float | None = None
        self.state = None  # carried across batches by the sequential sampler
        self.state_dims = state_batch_dims(model) if self.sampler.carries_state else None

    def total_steps(self) -> int | None:
        t = self.cfg.train
        limits = [n for n in (t.max_steps, t.epochs and t.epochs * self.sampler.batches_per_epoch()) if n]
        return min(limits) if limits else None

    def restore(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.step, self.epoch, self.batch = payload["step"], payload["epoch"], payload["batch"]
        self.elapsed, self.best_val = payload["elapsed"], payload["best_val"]
        self.schedule_clock = self.elapsed
        rngs = payload.get("rng_ranks")
        torch.set_rng_state(rngs[self.dist.rank] if rngs and len(rngs) == self.dist.world_size else payload["rng"])
        if self.dist.active and not (rngs and len(rngs) == self.dist.world_size):
            self.dist.seed(self.cfg.train.seed + self.step)  # another world size: fresh, distinct streams
        # Dropout on a GPU draws from the device's own generator: without its state a resumed
        # run would draw other masks. A checkpoint from another device or world size keeps the seed's.
        cuda_rngs = payload.get("cuda_rng_ranks")
        if self.device.type == "cuda" and cuda_rngs and len(cuda_rngs) == self.dist.world_size:
            torch.cuda.set_rng_state(cuda_rngs[self.dist.rank], self.device)
        # The checkpoint holds the global batch's state, so any world size can take its rows.
        state = self.dist.shard_state(payload.get("carried_state"), self.state_dims)
        # Stored as fp32; back to the dtype the forward pass produced it in (bf16 under autocast).
        state = cast_state(state, payload.get("carried_dtypes"))
        self.state = _to_device(state, self.device) if state is not None else None

    def checkpoint(self, finished: bool = False) -> dict[str, Any]:
        """Collective in a distributed run: every rank calls it, rank 0 writes the result."""
        state = self.dist.gather_state(self.state, self.state_dims)  # rows in rank order = the global batch
        rngs = self.dist.gather_rng()
        extra = {"rng_ranks": rngs} if self.dist.active else {}
        if self.device.type == "cuda":
            extra["cuda_rng_ranks"] = self.dist.gather_rng(torch.cuda.get_rng_state(self.device))
        return {**self.base, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "config": self.cfg.to_dict(), "step": self.step, "epoch": self.epoch, "batch": self.batch,
                "elapsed": self.elapsed, "best_val": self.best_val, "rng": rngs[0], **extra,
                "carried_state": to_float32(_to_device(state, "cpu")) if state is not None else None,
                "carried_dtypes": state_dtypes(state), "finished": finished}

    def save(self, val: float | None, finished: bool = False) -> None:
        # The best is updated before the payload is built, so last.pt and best.pt both hold the
        # best including this evaluation: a resumed run then compares against the true best.
        is_best = val is not None and val <= (self.best_val if self.best_val is not None else math.inf)
        if is_best:
            self.best_val = val
        payload = self.checkpoint(finished)
        if not self.dist.is_main:
            return
        save_checkpoint(self.run_dir / "last.pt", payload)
        if is_best:
            save_checkpoint(self.run_dir / "best.pt", payload)

    def validate(self) -> float | None:
        # eval_tokens caps the final evaluation too: best.pt is then chosen among comparable
        # numbers, and a 100 MB validation split cannot stall the end of a run. `charlm evaluate`
        # scores the whole split.
        val_ids = self.corpus.val
        if self.cfg.train.eval_tokens:
            val_ids = val_ids[:self.cfg.train.eval_tokens]
        if len(val_ids) < 2:
            return None
        return self.dist.evaluate(self.model, val_ids, self.device)

    def train_step(self, xb: np.ndarray, yb: np.ndarray, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._upload(xb, yb)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        state = self.state if self.sampler.carries_state else None
        with self.autocast:
            logits, state = self.net(x, state)  # (B, T, V)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.optim.grad_clip
        # clip_grad_norm_ returns the norm before clipping: g <- min(1, clip/||g||) g
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        self.optimizer.step()
        if self.sampler.carries_state:
            self.state = detach_state(state)
        return loss.detach(), grad_norm.detach()

    def _upload(self, xb: np.ndarray, yb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        batch = torch.from_numpy(np.stack((xb, yb)).astype(np.int64))  # (2, B, T): one copy, not two
        if self.device.type == "cuda":
            # From pageable memory the copy is synchronous; pinned, it overlaps the running step
            # (the caching host allocator keeps the pinned block until the copy has run).
            batch = batch.pin_memory()
        batch = batch.to(self.device, non_blocking=True)
        return batch[0], batch[1]

    def draw_curves(self) -> None:
        from charlm.plot import MATPLOTLIB_HINT, have_matplotlib, plot_run

        if have_matplotlib():
            plot_run(self.run_dir)
        else:
            self.emit("note", {"message": f"{MATPLOTLIB_HINT}; skipped curves.png"})

    def run(self, stop_requested: threading.Event) -> TrainResult:
        cfg, t = self.cfg, self.cfg.train
        total = self.total_steps()
        self.model.train()
        params = sum(p.numel() for p in self.model.parameters())
        self.emit("start", {"run_dir": str(self.run_dir), "total_steps": total, "device": str(self.device),
                            "parameters": params, "model": cfg.model.name, "vocab_size": len(self.corpus.vocab),
                            "step": self.step, "batches_per_epoch": self.sampler.batches_per_epoch(),
                            "world_size": self.dist.world_size, "precision": self.precision.name,
                            "precision_reason": self.precision.reason, "max_time": t.max_time,
                            "progress": run_progress(self.step, self.elapsed, cfg, total)[0]})
        tokens_per_step = cfg.data.batch_size * cfg.data.num_steps
        window_loss, window_clipped, window_steps = torch.zeros((), device=self.device), 0, 0
        window_start, status, val = time.perf_counter(), "finished", None
        clock = time.perf_counter()
        metrics = self.run_dir / "metrics.jsonl"
        board = TensorBoardLog(self.run_dir) if t.tensorboard and self.dist.is_main else None
        batches = self.sampler.epoch(self.epoch, self.batch)
        # Only `stopping` ends the loop once it runs: ranks' clocks differ, so max_time must be agreed.
        more = (total is None or self.step < total) and (t.max_time is None or self.elapsed < t.max_time)
        while more:
            xb, yb = next(batches)
            lr = cfg.optim.lr * lr_factor(self.step, cfg, total, self.schedule_clock)
            loss, grad_norm = self.train_step(xb, yb, lr)
            self.step, self.batch = self.step + 1, self.batch + 1
            if self.batch >= self.sampler.batches_per_epoch():
                # A new epoch has a new offset: carried state would belong to other text.
                self.epoch, self.batch, self.state = self.epoch + 1, 0, None
                batches = self.sampler.epoch(self.epoch)
            window_loss += loss
            clipped = cfg.optim.grad_clip > 0 and grad_norm > cfg.optim.grad_clip
            window_clipped += clipped
            window_steps += 1
            now = time.perf_counter()
            self.elapsed += now - clock
            clock = now
            at_total = total is not None and self.step >= total
            last = at_total or (t.max_time is not None and self.elapsed >= t.max_time)
            stopping = last or stop_requested.is_set()
            if self.dist.active:
                # Ranks must stop after the same step. Agreeing is a collective and a host sync, so
                # they compare notes only on logging steps and the last one (the same on every rank).
                if self.step % t.log_every == 0 or at_total:
                    last, stopping = self.dist.agree(last, stopping)
                    # Every rank must use the same learning rate: the schedule follows one clock.
                    self.elapsed = self.schedule_clock = self.dist.max_float(self.elapsed)
                else:
                    last = stopping = False
            else:
                self.schedule_clock = self.elapsed
            evaluate_now = self.step % t.eval_every == 0 or stopping
            if self.step % t.log_every == 0 or evaluate_now:
                mean_loss = self.dist.mean(window_loss / window_steps).item()  # the one host sync
                # On a GPU `now` was taken when the window's steps were queued; after the sync
                # they have run, so the window's speed is measured from here.
                synced = time.perf_counter()
                if not math.isfinite(mean_loss):
                    self.emit("diverged", {"step": self.step})
                    raise TrainingDiverged(f"loss became {mean_loss} near step {self.step}; training stopped, "
                                           f"the last good checkpoint is {self.run_dir / 'last.pt'} "
                                           "(try a lower optim.lr or optim.grad_clip)")
                row = {"step": self.step, "epoch": self.epoch, "loss": mean_loss, "perplexity": math.exp(mean_loss),
                       "lr": lr, "grad_norm": float(grad_norm), "clipped": int(window_clipped),
                       "tokens_per_s": window_steps * tokens_per_step / max(synced - window_start, 1e-9),
                       "elapsed": self.elapsed}
                row["progress"], row["bound_by"] = run_progress(self.step, self.elapsed, cfg, total)
                if evaluate_now:
                    val = self.validate()
                    row["val_perplexity"] = val
                    self.save(val, finished=last)
                    clock = time.perf_counter()  # evaluation and saving do not count as training speed
                if self.dist.is_main:
                    with metrics.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
                    if board is not None:
                        board.write(row)
                self.emit("log", row)
                window_loss, window_clipped, window_steps = torch.zeros((), device=self.device), 0, 0
                window_start = time.perf_counter()
            if stopping:
                status = "finished" if last else "interrupted"
                break
        if board is not None:
            board.close()
        result = TrainResult(self.run_dir, status, self.step, self.best_val, val, self.elapsed,
                             self.step * tokens_per_step / max(self.elapsed, 1e-9))
        if self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(
                {"status": status, "step": self.step, "best_val_perplexity": self.best_val,
                 "val_perplexity": val, "elapsed": self.elapsed, "tokens_per_s": result.tokens_per_s,
                 "precision": self.precision.name}, indent=1),
                encoding="utf-8")
            record_latest_run(self.run_dir)
            self.draw_curves()
        self.emit("end", {"result": result})
        return result


def _to_device(state, device):
    if isinstance(state, torch.Tensor):
        return state.to(device)
    return tuple(_to_device(s, device) for s in state)
