"""Minibatch strategies over memory-mapped token ids: `random` and `sequential`, in a registry."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from charlm.errors import ConfigError, DataError
from charlm.registry import Registry

_STRATEGIES: Registry[type["BatchSampler"]] = Registry("minibatch strategy")


def register_sampling(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        cls.name = name
        return _STRATEGIES.register(name)(cls)

    return add


def available_samplings() -> list[str]:
    return _STRATEGIES.names()


def make_sampler(name: str, ids: np.ndarray, batch_size: int, num_steps: int, seed: int,
                 rank: int = 0, world_size: int = 1, state_reset: float = 0.0) -> "BatchSampler":
    sampler = _STRATEGIES.get(name, key="data.sampling")(ids, batch_size, num_steps, seed, rank, world_size)
    sampler.state_reset = state_reset
    return sampler


RANDOM_START_TOKENS = 4  # a restarted row starts with 1 to 4 random tokens (random_starts)


class BatchSampler:
    """Yields (inputs, targets) pairs of shape (local_batch, num_steps) for one epoch at a time.

    Every epoch is a pure function of (seed, epoch), so a resumed run only needs the epoch and
    the index of the next batch. `batch_size` is the global batch: with `world_size` ranks each
    rank gets its own contiguous block of rows, so together they see exactly one global batch.
    """

    name = "?"
    carries_state = False
    state_reset = 0.0  # the share of rows whose carried state restarts at each batch (see fresh_rows)

    def __init__(self, ids: np.ndarray, batch_size: int, num_steps: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ConfigError(f"data.batch_size ({batch_size}) must be divisible by the number of processes "
                              f"({world_size})")
        if len(ids) < num_steps + 2:
            raise DataError(f"data.num_steps ({num_steps}) is too long for the training split "
                            f"({len(ids)} tokens); lower data.num_steps or use a larger corpus")
        self.ids, self.batch_size, self.num_steps, self.seed = ids, batch_size, num_steps, seed
        self.local_rows = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)
        if self.batches_per_epoch() < 1:
            raise DataError(
                f"data.batch_size ({batch_size}) × data.num_steps ({num_steps}) needs more tokens than the "
                f"training split has ({len(ids)}); lower one of them")

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def batches_per_epoch(self) -> int:
        raise NotImplementedError

    def fresh_rows(self, epoch: int, batch: int) -> np.ndarray | None:
        """This rank's rows (bool, local_batch) whose carried state restarts before `batch`, or None.

        Carried state alone, a model meets its initial state once an epoch and never learns to read
        from it, yet every prompt starts there. Each row restarts with probability `state_reset`,
        drawn for the global batch from (seed, epoch, batch): resume and any world size agree.
        """
        if not self.carries_state or self.state_reset <= 0:
            return None
        draw = np.random.default_rng([self.seed, epoch, batch, 1]).random(self.batch_size)
        rows = (draw < self.state_reset)[self.local_rows]
        return rows if rows.any() else None

    def random_starts(self, epoch: int, batch: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Per local row, a length in 1..RANDOM_START_TOKENS and that many random ids (1..V−1), padded.

        A restarted row reads these before its text, as a prompt may start with anything: the
        model learns to recover from an arbitrary start instead of meeting one first at a prompt
        (docs/derailing.md). Drawn for the global batch from (seed, epoch, batch), like fresh_rows.
        """
        rng = np.random.default_rng([self.seed, epoch, batch, 2])
        lengths = rng.integers(1, RANDOM_START_TOKENS + 1, self.batch_size)[self.local_rows]
        tokens = rng.integers(1, max(2, vocab_size), (self.batch_size, RANDOM_START_TOKENS))[self.local_rows]
        return lengths, tokens

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def tokens_per_epoch(self) -> int:
        return self.batches_per_epoch() * self.batch_size * self.num_steps


@register_sampling("random")
class RandomSampler(BatchSampler):
    """D2L's random sampling: a random offset, non-overlapping subsequences in random order.

    The model state starts fresh every batch, since neighbouring rows are unrelated text.
    """

    def _subsequences(self) -> int:
        # The offset can be up to num_steps - 1, so count for the worst case: the number of
        # batches per epoch must not depend on the epoch.
        return (len(self.ids) - self.num_steps) // self.num_steps

    def batches_per_epoch(self) -> int:
        return self._subsequences() // self.batch_size

    def epoch(self, epoch, start=0):
        rng = self._rng(epoch)
        offset = int(rng.integers(0, self.num_steps))
        count = self._subsequences()
        # Shuffle int32 in place: an int64 permutation would be 8 bytes per subsequence per epoch.
        order = np.arange(count, dtype=np.int32 if count < 2**31 else np.int64)
        rng.shuffle(order)
        steps = np.arange(self.num_steps)
        for b in range(start, self.batches_per_epoch()):
            starts = offset + order[b * self.batch_size:(b + 1) * self.batch_size][self.local_rows].astype(np.int64) \
                * self.num_steps
            index = starts[:, None] + steps  # (local_batch, num_steps)
            yield self.ids[index], self.ids[index + 1]


@register_sampling("sequential")
class SequentialSampler(BatchSampler):
    """D2L's sequential partitioning: `batch_size` contiguous streams read left to right.

    Consecutive batches continue each stream, so the trainer carries (and detaches) the state.
    """

    carries_state = True

    def _stream_len(self) -> int:
        return (len(self.ids) - self.num_steps) // self.batch_size

    def batches_per_epoch(self) -> int:
        return self._stream_len() // self.num_steps

    def epoch(self, epoch, start=0):
        offset = int(self._rng(epoch).integers(0, self.num_steps))
        n = self._stream_len() * self.batch_size
        # Views of the memory map: only the rows of one batch are ever read into memory.
        xs = self.ids[offset:offset + n].reshape(self.batch_size, -1)[self.local_rows]
        ys = self.ids[offset + 1:offset + 1 + n].reshape(self.batch_size, -1)[self.local_rows]
        for b in range(start, self.batches_per_epoch()):
            cols = slice(b * self.num_steps, (b + 1) * self.num_steps)
            yield np.asarray(xs[:, cols]), np.asarray(ys[:, cols])
