"""The model registry: every model family registers here, and nothing else switches on names."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from charlm.errors import ConfigError
from charlm.registry import Registry

# The one piece of module-level mutable state the library allows: filled at import time by
# @register_model in the model modules imported at the bottom of this file.
_REGISTRY: Registry[type[nn.Module]] = Registry("model")

# Values a checkpoint can store and torch.load(weights_only=True) can read back.
_PLAIN_TYPES = (bool, int, float, str, type(None))


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make the model buildable as `name`."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if not isinstance(getattr(cls, "trainable", None), bool):
            raise TypeError(f"{cls.__name__} must set the class attribute `trainable: bool`")
        return _REGISTRY.register(name)(cls)

    return decorator


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return _REGISTRY.names()


def model_class(name: str) -> type[nn.Module]:
    """The class registered as `name`; ConfigError naming the closest valid name otherwise."""
    return _REGISTRY.get(name, key="model.name")


def _constructor_parameters(name: str) -> dict[str, inspect.Parameter]:
    params = inspect.signature(model_class(name).__init__).parameters
    return {
        key: p
        for key, p in params.items()
        if key not in ("self", "vocab_size")
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def model_options(name: str) -> set[str]:
    """Option names the model's constructor accepts (besides vocab_size)."""
    return set(_constructor_parameters(name))


def build_model(name: str, vocab_size: int, **options: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Build `name` from the options it accepts; others are ignored.

    Returns (model, model_args): model_args holds every constructor option with the value
    used (defaults filled in), so `build_model(name, vocab_size, **model_args)` rebuilds
    the same architecture even if a default changes later.
    """
    params = _constructor_parameters(name)
    model_args = {key: p.default for key, p in params.items()}
    model_args.update({key: value for key, value in options.items() if key in params})
    missing = sorted(key for key, value in model_args.items() if value is inspect.Parameter.empty)
    if missing:
        raise ConfigError(f"model {name!r} needs option(s): {', '.join(missing)}")
    for key, value in model_args.items():
        if not isinstance(value, _PLAIN_TYPES):
            raise ConfigError(
                f"model option {key}={value!r} must be a bool, int, float, str or null"
            )
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    model = model_class(name)(vocab_size, **model_args)
    return model, model_args


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


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Validate an integer model option; a ConfigError says which one and why."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"model option {name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_dropout(value: Any) -> float:
    """Validate a dropout probability."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"model option dropout must be a number in [0, 1), got {value!r}")
    return float(value)


# Imported last so their @register_model calls find the registry defined above.
from charlm.models import gpt, mlp, ngram, recurrent, rnn_scratch  # noqa: E402, F401
