"""torch.distributed set-up for torchrun: DDP wrapping, rank-0-only side effects, reductions."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist

from charlm.errors import ConfigError


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no CUDA GPU is available (use auto or cpu)")
    return device


@dataclass
class Dist:
    """One process's view of the job; a single process is the world_size == 1 case of it."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def device(self, name: str) -> torch.device:
        if name in ("auto", "cuda") and torch.cuda.is_available():
            device = torch.device("cuda", local_rank())
            torch.cuda.set_device(device)
            return device
        if name not in ("auto", "cpu"):
            raise ConfigError(f"train.device: '{name}' is not supported in a distributed run (use auto, cpu or cuda)")
        return torch.device("cpu")

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [local_rank()] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.active:
            value = value.clone()
            torch_dist.all_reduce(value, op=torch_dist.ReduceOp.AVG if value.is_cuda else torch_dist.ReduceOp.SUM)
            if not value.is_cuda:  # gloo has no AVG
                value /= self.world_size
        return value

    def any_stop(self, flag: bool) -> bool:
        """True on every rank when any rank was asked to stop, so all stop after the same step."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._collective_device())
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return bool(t.item())

    def evaluate(self, model: torch.nn.Module, ids: np.ndarray, device: torch.device) -> float:
        """Validation perplexity; each rank scores one contiguous share and the NLL sums are reduced."""
        import math

        from charlm.evaluate import evaluate_ids

        if not self.active:
            return evaluate_ids(model, ids, device=device).perplexity
        share = len(ids) // self.world_size
        part = ids[self.rank * share:(self.rank + 1) * share + 1]  # +1: the next share's first token is a target
        result = evaluate_ids(model, part, device=device)
        totals = torch.tensor([result.nats_per_token * result.tokens, float(result.tokens)], dtype=torch.float64,
                              device=self._collective_device())
        torch_dist.all_reduce(totals)
        return math.exp(totals[0].item() / totals[1].item())

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", local_rank()) if torch_dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.active and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def setup() -> Dist:
    """Join the torchrun job if there is one: nccl on CUDA, gloo on CPU."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist()
    if not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch_dist.init_process_group(backend=backend)
    return Dist(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size())


def launch(nproc: int, argv: list[str]) -> int:
    """`charlm train --nproc N ...` is `torchrun --standalone --nproc_per_node N -m charlm train ...`."""
    import subprocess
    import sys

    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "charlm", *args]
    return subprocess.call(command)
