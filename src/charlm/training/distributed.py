"""torch.distributed set-up for torchrun: DDP wrapping, rank-0-only side effects, reductions."""

from __future__ import annotations

import math
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from charlm.errors import CharLMError
from charlm.safe_write import write_atomic
from charlm.device.runtime import available_cores, local_rank, set_threads
from charlm.device.runtime import resolve_device  # noqa: F401  (its old home: callers may import it from here)
from charlm.models import state_batch_dims

# `charlm train --nproc` tells its workers where to leave their pids, so it can signal them directly.
PID_DIR_ENV = "CHARLM_WORKER_PIDS"


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Rank 0, or not distributed: usable before `setup`, e.g. to keep other ranks' CLI quiet."""
    return os.environ.get("RANK", "0") == "0"


def _row(state, index: int, dims):
    """Row `index` of a batched state, on the model's side of the collective."""
    if isinstance(state, torch.Tensor):
        return state.narrow(dims, index, 1)
    return tuple(_row(s, index, d) for s, d in zip(state, dims))


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

    def main_first(self, fn):
        """`fn()` on rank 0, then on the others; rank 0's CharLMError is raised on every rank.

        Without this, a mistake found only by rank 0 (the run folder exists, the corpus is bad)
        leaves the others in a collective until torchrun kills them with a gloo traceback.
        """
        error, result = None, None
        if self.is_main:
            try:
                result = fn()
            except CharLMError as exc:
                error = exc
        if self.active:
            box = [None if error is None else (str(error), error.exit_code)]
            torch_dist.broadcast_object_list(box, src=0)
            if box[0] is not None and not self.is_main:
                failed = CharLMError(box[0][0])
                failed.exit_code = box[0][1]
                raise failed
        if error is not None:
            raise error
        return result if self.is_main else fn()

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

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag true on every rank when it is true on any; every rank must call this together."""
        if not self.active:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([float(f) for f in flags], device=self._collective_device())
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    def max_float(self, value: float) -> float:
        """The largest of every rank's `value` (e.g. their training clocks); a collective."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return float(t.item())

    def evaluate(self, model: torch.nn.Module, ids: np.ndarray, device: torch.device, precision: str = "fp32") -> float:
        """Validation perplexity; each rank scores one contiguous share and the NLL sums are reduced.

        Shares overlap by one token so every target is scored exactly once; each share starts from
        the state one pass reaches there (charlm.evaluation.batched_eval.score_share), so the score equals one pass.
        """
        from charlm.evaluation.evaluate import evaluate_ids, evaluate_share

        if not self.active or len(ids) < 2 * self.world_size:
            return evaluate_ids(model, ids, device=device, precision=precision).perplexity
        share = (len(ids) - 1) // self.world_size
        stop = len(ids) if self.rank == self.world_size - 1 else (self.rank + 1) * share + 1
        dims = state_batch_dims(model)

        def previous(end_state):  # the end state of the rank before this one, gathered from all
            rows = self.gather_state(end_state, dims)
            return None if self.rank == 0 else _row(rows, self.rank - 1, dims)

        nats = evaluate_share(model, ids, self.rank * share, stop, device, previous, self.agree, precision)
        totals = torch.tensor([nats, float(stop - self.rank * share - 1)], dtype=torch.float64,
                              device=self._collective_device())
        torch_dist.all_reduce(totals)
        try:
            return math.exp(totals[0].item() / totals[1].item())
        except OverflowError:
            return math.inf

    def gather_state(self, state, dims):
        """Every rank's carried-state rows, in rank order: the state of the whole global batch."""
        if not self.active or state is None:
            return state
        if isinstance(state, torch.Tensor):
            state = state.to(self._collective_device()).contiguous()
            parts = [torch.empty_like(state) for _ in range(self.world_size)]
            torch_dist.all_gather(parts, state)
            return torch.cat(parts, dim=dims)
        return tuple(self.gather_state(s, d) for s, d in zip(state, dims))

    def shard_state(self, state, dims):
        """This rank's rows of a global-batch state (the inverse of `gather_state`)."""
        if not self.active or state is None:
            return state
        if isinstance(state, torch.Tensor):
            return state.chunk(self.world_size, dim=dims)[self.rank].clone()
        return tuple(self.shard_state(s, d) for s, d in zip(state, dims))

    def gather_rng(self, rng: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every rank's RNG state (the CPU generator's unless given), so a resume with the same world size is exact."""
        rng = torch.get_rng_state() if rng is None else rng
        if not self.active:
            return [rng]
        local = rng.to(self._collective_device())
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, local)
        return [p.cpu() for p in parts]

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", local_rank()) if torch_dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.active and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def setup(device: str = "auto") -> Dist:
    """Join the torchrun job if there is one: nccl on CUDA, gloo on CPU."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist()
    if not torch_dist.is_initialized():
        set_threads()
        if device in ("auto", "cuda") and torch.cuda.is_available():
            # Binding the GPU before init keeps NCCL barriers off GPU 0 on every rank.
            gpu = torch.device("cuda", local_rank())
            torch.cuda.set_device(gpu)
            torch_dist.init_process_group(backend="nccl", device_id=gpu)
        else:
            torch_dist.init_process_group(backend="gloo")
    dist = Dist(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size())
    if os.environ.get(PID_DIR_ENV):
        pid_file = Path(os.environ[PID_DIR_ENV]) / str(dist.rank)
        write_atomic(pid_file, str(os.getpid()))  # the launcher never reads half a pid
    return dist


def check_launch(cfg, nproc: int) -> None:
    """What `--nproc` needs of the config, checked before torchrun starts (one line, not N ranks' and torchrun's)."""
    from charlm.errors import ConfigError

    if cfg.data.batch_size % nproc:
        raise ConfigError(f"data.batch_size ({cfg.data.batch_size}) must be divisible by the number of processes "
                          f"({nproc})")
    if cfg.train.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device: '{cfg.train.device}' is not supported in a distributed run "
                          "(use auto, cpu or cuda)")


def report_to_launcher(message: str, exit_code: int) -> bool:
    """In a worker that `launch` started: leave the error for it to print once, and say so.

    Every rank raises rank 0's error (see Dist.main_first); printed by each, and followed by
    torchrun's report of failed children, one mistake would be thirty lines.
    """
    folder = os.environ.get(PID_DIR_ENV)
    if not folder or not launched_by_torchrun():
        return False
    import json

    path = Path(folder) / f"error-{os.environ['RANK']}.json"
    try:
        write_atomic(path, json.dumps({"message": message, "exit_code": exit_code}))
    except (OSError, CharLMError):
        return False
    return True


def _worker_error(pid_dir: Path) -> CharLMError | None:
    import json

    reports = sorted(pid_dir.glob("error-*.json"), key=lambda p: int(p.stem.split("-")[1]))  # rank 0 first
    if not reports:
        return None
    data = json.loads(reports[0].read_text(encoding="utf-8"))
    error = CharLMError(str(data["message"]))
    error.exit_code = int(data["exit_code"])
    return error


def launch(nproc: int, argv: list[str]) -> int:
    """`charlm train --nproc N ...` is `torchrun --standalone --nproc_per_node N -m charlm train ...`.

    Ctrl-C or SIGTERM here goes to the workers themselves: they finish the step, save and exit 0,
    so torchrun exits 0 too (signalling torchrun makes it exit 1 whatever the workers did).
    """
    import subprocess
    import sys
    import tempfile

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
    env = {"OMP_NUM_THREADS": str(max(1, available_cores() // nproc)), **os.environ}
    with tempfile.TemporaryDirectory(prefix="charlm-workers-") as pid_dir:
        env[PID_DIR_ENV] = pid_dir
        # A session of its own keeps the terminal's Ctrl-C away from torchrun; we forward it.
        child = subprocess.Popen(command, env=env, start_new_session=True, stderr=subprocess.PIPE)
        relay = threading.Thread(target=_relay_stderr, args=(child.stderr, Path(pid_dir)), daemon=True)
        relay.start()

        def forward(signum, frame):
            pids = [int(p.read_text()) for p in Path(pid_dir).iterdir() if not p.suffix] or [child.pid]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = child.wait()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        relay.join(timeout=5)
        error = _worker_error(Path(pid_dir))
        if error is not None:
            raise error
        return code


def _relay_stderr(stream, pid_dir: Path) -> None:
    """Pass the workers' and torchrun's stderr through until a worker reports a charlm error: what
    follows is torchrun's account of the failed children, which the one error line replaces."""
    import sys

    for line in iter(stream.readline, b""):
        if not any(pid_dir.glob("error-*.json")):
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()
    stream.close()
