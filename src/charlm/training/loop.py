"""The training loop's named steps: a train step, a logged window, evaluate-and-save; `Trainer.fit` runs them."""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from charlm.checkpoint import TrainState, load_optimizer_state, load_weights, vocab_digest
from charlm.training.checkpoint_checks import check_position
from charlm.config import RunConfig
from charlm.data.batches import make_sampler
from charlm.training.distributed import Dist
from charlm.errors import CharLMError, CheckpointError
from charlm.models import detach_state, restart_rows, state_batch_dims
from charlm.device.precision import resolve_precision, scoring_precision
from charlm.training.result import ScoringStopped, TrainResult, score_whole_split
from charlm.training.resume import capture_streams, restore_streams
from charlm.training.rundir import RunDir
from charlm.device.runtime import upload_batch
from charlm.training.schedule import lr_factor, make_optimizer, run_progress

Event = Callable[[str, dict[str, Any]], None]
MAX_LOSS = math.log(sys.float_info.max)  # ~709.8 nats: beyond it exp(loss), the perplexity, overflows
IGNORED = -100  # a target not scored (F.cross_entropy's ignore_index): see Trainer.random_starts


class TrainingDiverged(CharLMError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 1


class Window:
    """The steps since the last log line: their summed loss stays on the device until it is logged."""

    def __init__(self, device: torch.device):
        self.loss, self.clipped, self.steps = torch.zeros((), device=device), 0, 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, clipped) -> None:
        self.loss += loss
        self.clipped += clipped
        self.steps += 1


class Trainer:
    """One run's state and the named steps of its loop: `fit` runs them, `restore` resumes exactly.

    A counting model (n-gram) has no steps: `fit` counts once, then evaluates, saves and logs
    through the same methods as a trained one.
    """

    def __init__(self, cfg: RunConfig, model: torch.nn.Module, corpus, run: RunDir | str | Path,
                 device: torch.device | str = "cpu", dist: Dist | None = None, emit: Event | None = None,
                 model_args: dict[str, Any] | None = None):
        self.cfg, self.model, self.corpus = cfg, model, corpus
        self.folder = run if isinstance(run, RunDir) else RunDir(run)
        self.device, self.dist = torch.device(device), dist or Dist()
        self.emit, self.model_args = emit or (lambda kind, info: None), model_args
        self.trainable = getattr(model, "trainable", True)
        self.step = self.epoch = self.batch = 0
        self.elapsed = self.schedule_clock = 0.0  # seconds of training; the schedule's clock (see agree_to_stop)
        self.validation_s = 0.0
        self.best_val: float | None = None  # on the sample when val_sample_tokens is set
        self.state = None  # carried across batches by the sequential sampler
        self.stop: threading.Event | None = None  # fit's stop request, which also ends the final whole-split pass
        self.optimizer = None
        self.total: int | None = 0
        # Validation scores as `charlm evaluate` does by default, so the two numbers agree.
        self.eval_precision = scoring_precision("auto", cfg.train.precision, self.device, cfg.train.amp)
        if not self.trainable:
            return
        self.sampler = make_sampler(cfg.data.sampling, corpus.train, cfg.data.batch_size, cfg.data.num_steps,
                                    cfg.train.seed, self.dist.rank, self.dist.world_size, cfg.data.state_reset)
        check_training = getattr(model, "check_training", None)  # a model's own limits on batches
        if check_training is not None:
            check_training(cfg.data.num_steps, self.sampler.carries_state)
        self.optimizer = make_optimizer(model.parameters(), cfg)
        self.net = self.dist.wrap(model)
        if cfg.train.compile:
            self.net = torch.compile(self.net)
        # Only the forward pass is autocast; weights, Adam's moments, loss and clipping stay fp32.
        self.precision = resolve_precision(cfg.train.precision, self.device, cfg.train.amp)
        self.autocast = self.precision.autocast(self.device)
        self.state_dims = state_batch_dims(model) if self.sampler.carries_state else None
        t = cfg.train
        limits = [n for n in (t.max_steps, t.epochs and t.epochs * self.sampler.batches_per_epoch()) if n]
        self.total = min(limits) if limits else None
        self.tokens_per_step = cfg.data.batch_size * cfg.data.num_steps

    @property
    def val_sample_tokens(self) -> int | None:
        """How many validation tokens an evaluation during training scores, when not the whole split."""
        n = self.cfg.train.eval_tokens
        return n if self.trainable and n and n < len(self.corpus.val) else None

    def fit(self, stop: threading.Event | None = None) -> TrainResult:
        """The loop: a step, then on logging steps a window's line, on evaluation steps a checkpoint."""
        stop, t = stop or threading.Event(), self.cfg.train
        self.stop = stop
        self.emit("start", self.start_info())
        self.folder.open_log(t.tensorboard)
        if not self.trainable:
            return self.count()
        self.model.train()
        batches = self.sampler.epoch(self.epoch, self.batch)
        window, val, self.clock = Window(self.device), None, time.perf_counter()
        # train() refuses a resume at its limit unless the run lacks its final summary; it then just finishes.
        stopping = last = self.limit_reached()
        if last:
            val = self.folder.last_logged("val_perplexity")
        while not stopping:
            xb, yb = next(batches)
            lr = self.cfg.optim.lr * lr_factor(self.step, self.cfg, self.total, self.schedule_clock)
            loss, grad_norm = self.train_step(xb, yb, lr)
            batches = self.advance(batches)
            window.add(loss, self.cfg.optim.grad_clip > 0 and grad_norm > self.cfg.optim.grad_clip)
            self.tick()
            last, stopping = self.agree_to_stop(stop)
            evaluate_now = self.step % t.eval_every == 0 or last
            # Stopped on request between evaluations: save and exit at once, without an evaluation the
            # uninterrupted run would not have made (the resumed run then continues exactly).
            save_only = stopping and not evaluate_now
            if self.step % t.log_every == 0 or evaluate_now or save_only:
                row = self.log_window(window, lr, grad_norm)
                if evaluate_now:
                    row["val_perplexity"] = val = self.evaluate_and_save(finished=last)
                    if self.val_sample_tokens:
                        row["val_sample_tokens"] = self.val_sample_tokens
                elif save_only:
                    self.folder.save(self.train_state(), best=False)
                self.folder.log(row)
                self.emit("log", row)
                window = Window(self.device)
        return self.finish("finished" if last else "interrupted", val)

    def random_starts(self, x: torch.Tensor, y: torch.Tensor, fresh: np.ndarray):
        """Restarted rows read 1-4 random tokens first; predicting those random tokens is not scored."""
        lengths, tokens = self.sampler.random_starts(self.epoch, self.batch, self.model.vocab_size)
        x, y = x.clone(), y.clone()
        for r in np.flatnonzero(fresh):
            k = int(lengths[r])
            x[r, :k] = torch.from_numpy(tokens[r, :k]).to(x)
            y[r, :k - 1] = IGNORED  # y[t] is x[t + 1]: the next random token, no lesson in it
        return x, y

    def train_step(self, xb: np.ndarray, yb: np.ndarray, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = upload_batch(xb, yb, self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        state = self.state if self.sampler.carries_state else None
        fresh = self.sampler.fresh_rows(self.epoch, self.batch) if state is not None else None
        if fresh is not None:  # some rows start afresh, as every prompt does, and from random tokens
            rows = torch.from_numpy(fresh).to(self.device)
            state = restart_rows(state, self.model.init_state(len(fresh), self.device), rows, self.state_dims)
            x, y = self.random_starts(x, y, fresh)
        with self.autocast:
            logits, state = self.net(x, state)  # (B, T, V)
        # Over all B·T positions, the ignored ones counting 0: each rank's loss then has the same
        # denominator, so DDP's average of rank gradients is the single-process gradient.
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORED,
                               reduction="sum") / y.numel()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.optim.grad_clip
        # clip_grad_norm_ returns the norm before clipping: g <- min(1, clip/||g||) g
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        self.optimizer.step()
        if self.sampler.carries_state:
            self.state = detach_state(state)
        return loss.detach(), grad_norm.detach()

    def advance(self, batches):
        """Count the step; a new epoch has a new offset, so carried state would belong to other text."""
        self.step, self.batch = self.step + 1, self.batch + 1
        if self.batch < self.sampler.batches_per_epoch():
            return batches
        self.epoch, self.batch, self.state = self.epoch + 1, 0, None
        return self.sampler.epoch(self.epoch)

    def tick(self) -> None:
        """Add the time since the last tick to the training clock (evaluation and saving restart it)."""
        now = time.perf_counter()
        self.elapsed += now - self.clock
        self.clock = now

    def limit_reached(self) -> bool:
        t = self.cfg.train
        return (self.total is not None and self.step >= self.total) or (
            t.max_time is not None and self.elapsed >= t.max_time)

    def agree_to_stop(self, stop: threading.Event) -> tuple[bool, bool]:
        """(last, stopping) after this step: a limit was reached; the run ends, at a limit or on request.

        Ranks must stop after the same step and follow one schedule clock. Agreeing is a collective
        and a host sync, so they compare notes only on logging steps and at the step limit.
        """
        t = self.cfg.train
        at_total = self.total is not None and self.step >= self.total
        last = self.limit_reached()
        stopping = last or stop.is_set()
        if not self.dist.active:
            self.schedule_clock = self.elapsed
            return last, stopping
        if self.step % t.log_every != 0 and not at_total:
            return False, False
        last, stopping = self.dist.agree(last, stopping)
        self.elapsed = self.schedule_clock = self.dist.max_float(self.elapsed)
        return last, stopping

    def log_window(self, window: Window, lr: float, grad_norm: torch.Tensor) -> dict[str, Any]:
        """The window's metrics row; its mean loss is the loop's one host sync."""
        mean_loss = self.dist.mean(window.loss / window.steps).item()
        # On a GPU the steps were only queued until this sync; the window's speed is measured from here.
        synced = time.perf_counter()
        if not mean_loss <= MAX_LOSS:  # NaN, infinite, or so large that its perplexity overflows
            self.diverged(f"loss became {mean_loss:.6g} near step {self.step}")
        row = {"step": self.step, "epoch": self.epoch, "loss": mean_loss, "perplexity": math.exp(mean_loss),
               "lr": lr, "grad_norm": float(grad_norm), "clipped": int(window.clipped),
               "tokens_per_s": window.steps * self.tokens_per_step / max(synced - window.start, 1e-9),
               "elapsed": self.elapsed}
        row["progress"], row["bound_by"] = run_progress(self.step, self.elapsed, self.cfg, self.total)
        return row

    def diverged(self, what: str):
        self.emit("diverged", {"step": self.step})
        kept = f"the last good checkpoint is {self.folder.last}" if self.folder.last.is_file() else "nothing was saved"
        raise TrainingDiverged(f"{what}; training stopped, {kept} (try a lower optim.lr or optim.grad_clip)")

    def validate(self) -> float | None:
        # eval_tokens caps every evaluation during training, the last one too, so best.pt is chosen
        # among comparable numbers; finish() then scores best.pt on the whole split once.
        val_ids = self.corpus.val
        if self.val_sample_tokens:
            val_ids = val_ids[:self.val_sample_tokens]
        if len(val_ids) < 2:
            return None
        return self.dist.evaluate(self.model, val_ids, self.device, self.eval_precision)

    def evaluate_and_save(self, finished: bool = False) -> float | None:
        """Validate, then write last.pt (and best.pt on a new best); a collective in a distributed run."""
        started = time.perf_counter()
        val = self.validate()
        self.validation_s += time.perf_counter() - started
        if val is not None and not math.isfinite(val) and self.trainable:
            self.diverged(f"validation perplexity became {val} at step {self.step}")  # never an infinite best.pt
        # The best is updated before the state is taken, so last.pt and best.pt both hold the
        # best including this evaluation: a resumed run then compares against the true best.
        is_best = val is not None and val <= (self.best_val if self.best_val is not None else math.inf)
        if is_best:
            self.best_val = val
        self.folder.save(self.train_state(finished), best=is_best)
        self.clock = time.perf_counter()  # evaluation and saving do not count as training time
        return val

    def train_state(self, finished: bool = False) -> TrainState:
        """What the checkpoint holds now. Collective in a distributed run: every rank gathers."""
        streams = capture_streams(self.dist, self.device, self.state, self.state_dims) if self.trainable else {}
        vocab = self.corpus.vocab.to_dict()
        return TrainState(
            model_name=self.cfg.model.name, model_args=self.model_args, vocab=vocab, vocab_sha256=vocab_digest(vocab),
            config=self.cfg.to_dict(), model=self.model.state_dict(), data_dir=str(Path(self.corpus.folder).resolve()),
            step=self.step, epoch=self.epoch, batch=self.batch, elapsed=self.elapsed, best_val=self.best_val,
            finished=finished,
            optimizer=self.optimizer.state_dict() if self.optimizer is not None else None, **streams)

    def restore(self, saved: TrainState) -> None:
        what = f"--resume {self.folder.last}"
        check_position(saved, self.sampler.batches_per_epoch(), self.folder.last)
        load_weights(self.model, saved.model, what)
        load_optimizer_state(self.optimizer, saved.optimizer, what)
        self.step, self.epoch, self.batch = saved.step, saved.epoch, saved.batch
        self.elapsed = self.schedule_clock = saved.elapsed
        self.best_val = saved.best_val
        try:
            self.state = restore_streams(saved, self.dist, self.device, self.state_dims, self.cfg.train.seed)
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"{what}: its random streams or carried state do not fit this run "
                                  f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None

    def count(self) -> TrainResult:
        """A counting model's training: one pass of counts, then evaluated, saved and logged as one step."""
        started = time.perf_counter()
        self.model.fit(np.asarray(self.corpus.train))
        self.elapsed = time.perf_counter() - started
        self.clock = time.perf_counter()
        val = self.evaluate_and_save(finished=True)
        row = {"step": 0, "epoch": 0, "val_perplexity": val, "elapsed": self.elapsed,
               "tokens_per_s": self.tokens_per_s()}
        self.folder.log(row)
        self.emit("eval", row)
        return self.finish("finished", val)

    def tokens_per_s(self) -> float:
        tokens = self.step * self.tokens_per_step if self.trainable else len(self.corpus.train)
        return tokens / max(self.elapsed, 1e-9)

    def start_info(self) -> dict[str, Any]:
        info = {"run_dir": str(self.folder), "total_steps": self.total, "device": str(self.device),
                "parameters": sum(p.numel() for p in self.model.parameters()), "model": self.cfg.model.name,
                "vocab_size": len(self.corpus.vocab), "step": self.step, "world_size": self.dist.world_size,
                "corpus": self.cfg.data.corpus, "data_dir": str(self.corpus.folder),
                "normalize": self.corpus.meta.get("normalize", self.cfg.data.normalize)}
        if self.trainable:
            info.update(val_sample_tokens=self.val_sample_tokens, val_tokens=len(self.corpus.val),
                        batches_per_epoch=self.sampler.batches_per_epoch(), precision=self.precision.name,
                        precision_reason=self.precision.reason, max_time=self.cfg.train.max_time,
                        progress=run_progress(self.step, self.elapsed, self.cfg, self.total)[0])
        return info

    def needs_whole_split_score(self, status: str) -> bool:
        """Whether the run ends with best.pt scored on the whole split: it finished, evaluating a sample."""
        return status == "finished" and bool(self.val_sample_tokens) and self.best_val is not None

    def score_best(self) -> float | None:
        """best.pt on the whole validation split; None when a stop request (Ctrl-C, SIGTERM) cut the pass short."""
        whole = self.corpus.val
        self.emit("note", {"message": f"scoring best.pt on the whole validation split ({len(whole):,} tokens)"})
        try:
            best, seconds = score_whole_split(self.model, self.folder.best, whole, self.device, self.dist,
                                              stop=self.stop, precision=self.eval_precision)
        except ScoringStopped as stopped:
            self.validation_s += stopped.seconds
            self.emit("note", {"message": "stopped before best.pt's whole-split score; "
                                          f"`charlm train --resume {self.folder.path}` computes it"})
            return None
        self.validation_s += seconds
        return best

    def finish(self, status: str, val: float | None) -> TrainResult:
        """summary.json (first with the sample's best, marked pending, while best.pt's whole-split score
        runs: a kill during that pass leaves a summary, and --resume completes it), runs/LATEST, curves.png."""
        self.folder.close_log()
        sample = self.val_sample_tokens
        result = TrainResult(self.folder.path, status, self.step, None if sample else self.best_val, val,
                             self.elapsed, self.tokens_per_s(), sample, self.best_val if sample else None,
                             self.validation_s, self.precision.name if self.trainable else None)
        if self.needs_whole_split_score(status):
            result.pending = True
            self.folder.write_summary(result.summary())
            result.best_val_perplexity = self.score_best()
            result.validation_s, result.pending = self.validation_s, result.best_val_perplexity is None
        self.folder.finish(result.summary(), curves=self.trainable, note=lambda m: self.emit("note", {"message": m}))
        self.emit("end", {"result": result})
        return result
