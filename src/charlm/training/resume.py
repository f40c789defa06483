"""Exact resume: the random streams and the carried state a checkpoint keeps, across ranks, devices and dtypes."""

from __future__ import annotations

from typing import Any

import torch

from charlm.device import runtime
from charlm.checkpoint import TrainState
from charlm.training.distributed import Dist
from charlm.device.precision import cast_state, state_dtypes, to_float32


def capture_streams(dist: Dist, device: torch.device, state, state_dims) -> dict[str, Any]:
    """TrainState's rng and carried-state fields now. A collective in a distributed run: every rank calls it."""
    rngs = dist.gather_rng()
    state = dist.gather_state(state, state_dims)  # rows in rank order = the global batch
    cuda_rngs = dist.gather_rng(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None
    return {"rng": rngs[0], "rng_ranks": rngs if dist.active else None, "cuda_rng_ranks": cuda_rngs,
            # bf16 -> fp32 is exact; the dtypes beside it let a resumed run cast back
            "carried_state": to_float32(map_state(state, "cpu")) if state is not None else None,
            "carried_dtypes": state_dtypes(state)}


def restore_streams(saved: TrainState, dist: Dist, device: torch.device, state_dims, seed: int):
    """Set this rank's random streams from `saved`; returns its rows of the carried state (or None)."""
    rngs, world = saved.rng_ranks, dist.world_size
    torch.set_rng_state(rngs[dist.rank] if rngs and len(rngs) == world else saved.rng)
    if dist.active and not (rngs and len(rngs) == world):
        runtime.seed_rank(seed + saved.step, dist.rank, world)  # another world size: fresh, distinct streams
    # Dropout on a GPU draws from the device's own generator: without its state a resumed
    # run would draw other masks. A checkpoint from another device or world size keeps the seed's.
    cuda_rngs = saved.cuda_rng_ranks
    if device.type == "cuda" and cuda_rngs and len(cuda_rngs) == world:
        torch.cuda.set_rng_state(cuda_rngs[dist.rank], device)
    # The checkpoint holds the global batch's state, so any world size can take its rows; stored
    # as fp32, it goes back to the dtype the forward pass produced it in (bf16 under autocast).
    state = cast_state(dist.shard_state(saved.carried_state, state_dims), saved.carried_dtypes)
    return map_state(state, device) if state is not None else None


def map_state(state, device):
    """A carried state (a tensor or nested tuples of them) on `device`."""
    if isinstance(state, torch.Tensor):
        return state.to(device)
    return tuple(map_state(s, device) for s in state)
