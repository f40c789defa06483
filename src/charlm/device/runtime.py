"""Process set-up at the edges of a run: the device, the threads, the seeds, stop signals, a batch's upload."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from charlm.errors import ConfigError


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_threads() -> None:
    """torchrun exports OMP_NUM_THREADS=1 when it is unset, which idles most cores on a big
    machine; any other value is the user's choice and is kept."""
    if os.environ.get("OMP_NUM_THREADS", "1") == "1":
        torch.set_num_threads(max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def resolve_device(name: str) -> torch.device:
    """train.device (or --device) for one process: auto, cpu, cuda, cuda:N or mps."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):  # torch knows more, charlm runs on these
        raise ConfigError(f"train.device: unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("train.device: mps was asked for but this machine has no Apple GPU (use auto or cpu)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no CUDA GPU is available (use auto or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {name} does not exist; this machine has {torch.cuda.device_count()} "
                          "CUDA GPU(s), cuda:0 to cuda:N-1")
    return device


def training_device(name: str, world_size: int = 1) -> torch.device:
    """The device this process trains on; under torchrun each rank takes the GPU of its local rank."""
    if world_size == 1:
        return resolve_device(name)
    if name in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
        return device
    if name not in ("auto", "cpu"):
        raise ConfigError(f"train.device: '{name}' is not supported in a distributed run (use auto, cpu or cuda)")
    return torch.device("cpu")


def upload_batch(xb: np.ndarray, yb: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's inputs and targets on `device`, as int64 ids."""
    batch = torch.from_numpy(np.stack((xb, yb)).astype(np.int64))  # (2, B, T): one copy, not two
    if device.type == "cuda":
        # From pageable memory the copy is synchronous; pinned, it overlaps the running step
        # (the caching host allocator keeps the pinned block until the copy has run).
        batch = batch.pin_memory()
    batch = batch.to(device, non_blocking=True)
    return batch[0], batch[1]


def seed_rank(seed: int, rank: int, world_size: int) -> None:
    """Give each rank its own torch RNG stream, so dropout masks differ between ranks' rows.

    A single process keeps the stream `torch.manual_seed(seed)` started (the weights drew from it)."""
    if world_size > 1:
        torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Turn the first SIGINT/SIGTERM into a request to stop after the current step; a second one kills.

    The CLI wraps training in this and passes the event to `train(stop=...)`; a Python caller keeps
    its own handlers unless it does the same."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
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
