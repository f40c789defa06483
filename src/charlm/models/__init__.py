"""The model registry: every model family registers here, and nothing else switches on names."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from charlm.errors import ConfigError
from charlm.config.model_options import FAMILIES, build_options, option_names
from charlm.registry import Registry

# The one piece of module-level mutable state the library allows: filled at import time by
# @register_model in the model modules imported at the bottom of this file.
_REGISTRY: Registry[type[nn.Module]] = Registry("model")


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make the model buildable as `name`, from the options charlm.config.model_options
    registers for `name`; the class is built as `cls(vocab_size, options)`."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if not isinstance(getattr(cls, "trainable", None), bool):
            raise TypeError(f"{cls.__name__} must set the class attribute `trainable: bool`")
        if name not in FAMILIES.names():
            raise TypeError(f"model {name!r} has no options class: add one to charlm.config.model_options")
        return _REGISTRY.register(name)(cls)

    return decorator


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return _REGISTRY.names()


def model_class(name: str) -> type[nn.Module]:
    """The class registered as `name`; ConfigError naming the closest valid name otherwise."""
    return _REGISTRY.get(name, key="model.name")


def model_options(name: str) -> set[str]:
    """Option names model `name` takes (besides vocab_size)."""
    return set(option_names(name))


def build_model(name: str, vocab_size: int, **options: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Build `name` from its options, checked as the config checks them (an unknown one is an error).

    Returns (model, model_args): model_args holds every option with the value used (defaults
    filled in), so `build_model(name, vocab_size, **model_args)` rebuilds the same architecture
    even if a default changes later.
    """
    cls = model_class(name)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    problems: list[str] = []
    built = build_options(name, {key: (value, False) for key, value in options.items()}, problems, vocab_size)
    if problems:
        raise ConfigError("; ".join(problems))
    return cls(vocab_size, built), built.model_args()


State = torch.Tensor | tuple[Any, ...] | list[Any] | None


def detach_state(state: State) -> State:
    """Cut the autograd history of a carried state (tensors, nested tuples/lists, or None)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(part) for part in state)
    raise TypeError(f"cannot detach a state of type {type(state).__name__}")


def restart_rows(state: State, fresh: State, rows: torch.Tensor, dims) -> State:
    """`state` with the batch rows where `rows` (bool, B) is true taken from `fresh` (an init_state);
    `dims` gives each leaf's batch dim (state_batch_dims)."""
    if isinstance(state, torch.Tensor):
        shape = [1] * state.dim()
        shape[dims] = -1
        return torch.where(rows.view(shape), fresh.to(state.dtype), state)
    return type(state)(restart_rows(s, f, rows, d) for s, f, d in zip(state, fresh, dims))


def state_batch_dims(model: nn.Module):
    """Which dim of each carried-state tensor is the batch: (L, B, H) → 1, (B, H) → 0, per leaf."""
    def dims(one, two):
        if isinstance(one, torch.Tensor):
            return next(d for d in range(one.dim()) if one.shape[d] != two.shape[d])
        return tuple(dims(a, b) for a, b in zip(one, two))

    return dims(model.init_state(1, "cpu"), model.init_state(2, "cpu"))


def model_device(model: nn.Module) -> torch.device:
    """Where the model's tensors are (CPU for a model that has none)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


# Imported last so their @register_model calls find the registry defined above.
from charlm.models import gpt, mlp, ngram, recurrent, rnn_scratch  # noqa: E402, F401

_unpaired = set(FAMILIES.names()) ^ set(available_models())
if _unpaired:  # options with no model class, or the reverse
    raise TypeError(f"model options and model classes differ: {sorted(_unpaired)}")
