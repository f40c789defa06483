"""A training checkpoint's fields checked before `--resume` uses any of them (a tampered or damaged
file is one line, never a traceback, and refused before a file of the run is touched)."""

from __future__ import annotations

import math
from typing import Any

import torch

from charlm.errors import CharLMError, CheckpointError


def check_train_state(saved, path, level: str) -> None:
    """Each field of `saved` (a TrainState) has the type and range the training loop relies on."""
    def bad(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"--resume: {path} is damaged or was edited: its {field} {why}")

    for field in ("step", "epoch", "batch"):
        value = getattr(saved, field)
        if not _is_int(value) or value < 0:
            raise bad(field, f"is {_show(value)}, not a count")
    for field in ("elapsed", "best_val"):
        value = getattr(saved, field)
        if value is None and field == "best_val":
            continue
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise bad(field, f"is {_show(value)}, not a finite number")
    if not isinstance(saved.data_dir, str):
        raise bad("data_dir", f"is {_show(saved.data_dir)}, not a folder's path")
    if not isinstance(saved.finished, bool):
        raise bad("finished", f"is {_show(saved.finished)}, not true or false")
    if not isinstance(saved.model_name, str) or not isinstance(saved.model_args, dict):
        raise bad("model", "description is not a name and its arguments")
    if not isinstance(saved.config, dict):
        raise bad("config", "is not a mapping")
    size = torch.get_rng_state().numel()
    if saved.rng is not None and not _is_rng(saved.rng, size):
        raise bad("rng", f"is {_show(saved.rng)}, not a random generator's state ({size} bytes)")
    for field in ("rng_ranks", "cuda_rng_ranks"):
        ranks = getattr(saved, field)
        if ranks is not None and (not isinstance(ranks, (list, tuple)) or not ranks or not all(
                _is_rng(r, size if field == "rng_ranks" else None) for r in ranks)):
            raise bad(field, "is not a list of random generators' states")
    if not _is_state(saved.carried_state):
        raise bad("carried_state", "is not a tensor or a tuple of tensors")
    _check_vocab(saved.vocab, level, bad)


def check_position(saved, batches_per_epoch: int, path) -> None:
    """The data position fits this run's epochs (a batch beyond the epoch would end the sampler at once)."""
    if saved.batch >= batches_per_epoch:
        raise CheckpointError(f"--resume: {path} is damaged or was edited: its batch {saved.batch} is beyond "
                              f"an epoch of {batches_per_epoch} batches")


def _check_vocab(vocab: Any, level: str, bad) -> None:
    from charlm.data.vocab import Vocab

    try:
        parsed = Vocab.from_dict(vocab) if isinstance(vocab, dict) else None
    except CharLMError as exc:
        raise bad("vocab", f"is invalid ({str(exc).split(' (')[0]})") from None
    if parsed is None:
        raise bad("vocab", "is not a mapping")
    if parsed.level != level:
        raise bad("vocab", f"is a {parsed.level}-level vocabulary but its config says data.level {level!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_rng(value: Any, size: int | None) -> bool:
    return (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1
            and (size is None or value.numel() == size))


def _is_state(value: Any) -> bool:
    if value is None or isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (tuple, list)) and all(_is_state(v) and v is not None for v in value)


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return repr(value)[:40]
