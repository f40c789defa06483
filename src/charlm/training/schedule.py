"""The learning-rate schedule and the optimizer: pure functions of the config, the step and the clock."""

from __future__ import annotations

import math

import torch

from charlm.config import RunConfig


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
