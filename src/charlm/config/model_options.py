"""Each model family's options: one frozen dataclass per family, with ranges and the checks between them.

The config validates `model.*` against the chosen family here, once, at load; the constructors in
charlm.models trust what they get. No torch in this module (the model classes import it), so a
mistyped model key answers at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from charlm.registry import Registry
from charlm.config.schema import bounded, closest, coerce_fields, field_names

_INT64_MAX = 2**63 - 1

# Model name → its options class. Filled by @family below; charlm.models checks at import that
# every family here has a model class registered under the same name, and nothing else.
FAMILIES: Registry[type[ModelOptions]] = Registry("model")


def family(*names: str):
    """Class decorator: `names` are models built from these options."""

    def add(cls: type[ModelOptions]) -> type[ModelOptions]:
        for name in names:
            FAMILIES.register(name)(cls)
        return cls

    return add


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """What every family's options hold besides its own: the registered model name."""

    name: str

    def problems(self, vocab_size: int | None = None) -> list[str]:
        """Constraints between options (and with the vocabulary size, once known); one line each."""
        return []

    def model_args(self) -> dict[str, Any]:
        """The constructor's options (name aside), as plain values a checkpoint stores."""
        args = dataclasses.asdict(self)
        args.pop("name")
        return args


_HIDDEN = bounded(1, 1 << 16)
_LAYERS = bounded(1, 64)
_DROPOUT = bounded(0.0, 1.0, hi_open=True)
_EMBEDDING = bounded(1, 1 << 16)
_CONTEXT = bounded(1, 4096)


@family("rnn", "gru", "lstm")
@dataclass(frozen=True, kw_only=True)
class RecurrentOptions(ModelOptions):
    """torch.nn's RNN/GRU/LSTM; embedding_dim null means one-hot input, as in the book."""

    hidden_size: int = field(default=256, metadata=_HIDDEN)
    num_layers: int = field(default=1, metadata=_LAYERS)
    dropout: float = field(default=0.0, metadata=_DROPOUT)
    embedding_dim: int | None = field(default=None, metadata=_EMBEDDING)
    tie_weights: bool = False

    def problems(self, vocab_size=None):
        if self.tie_weights and self.embedding_dim != self.hidden_size:
            return ["model.tie_weights needs model.embedding_dim == model.hidden_size "
                    f"(got embedding_dim={self.embedding_dim}, hidden_size={self.hidden_size}); "
                    "set embedding_dim to the hidden size or tie_weights to false"]
        return []


@family("rnn_scratch")
@dataclass(frozen=True, kw_only=True)
class ScratchRNNOptions(ModelOptions):
    """The book's hand-written RNN: one layer; embedding_dim null means one-hot input."""

    hidden_size: int = field(default=256, metadata=_HIDDEN)
    num_layers: int = field(default=1, metadata=_LAYERS)  # kept so its checkpoints read as they were
    embedding_dim: int | None = field(default=None, metadata=_EMBEDDING)

    def problems(self, vocab_size=None):
        if self.num_layers != 1:
            return [f"model rnn_scratch has a single layer (got model.num_layers={self.num_layers}); "
                    "use model 'rnn' for stacked layers"]
        return []


@family("mlp")
@dataclass(frozen=True, kw_only=True)
class MLPOptions(ModelOptions):
    """The Markov model of the last τ = context tokens; embedding_dim null means one-hot slots."""

    context: int = field(default=8, metadata=_CONTEXT)
    embedding_dim: int | None = field(default=None, metadata=_EMBEDDING)
    hidden_size: int = field(default=256, metadata=_HIDDEN)
    dropout: float = field(default=0.0, metadata=_DROPOUT)


@family("ngram")
@dataclass(frozen=True, kw_only=True)
class NGramOptions(ModelOptions):
    """Counts of order n, smoothed by add-k (pseudo-count k) or interpolated modified Kneser–Ney."""

    order: int = field(default=5, metadata=bounded(1, 12))
    smoothing: Literal["add_k", "kneser_ney"] = "kneser_ney"
    k: float = field(default=1.0, metadata=bounded(0.0, lo_open=True))

    def problems(self, vocab_size=None):
        # Keys of order-n grams go up to V**n − 1 in one int64.
        if vocab_size is not None and vocab_size**self.order > _INT64_MAX:
            return [f"an order-{self.order} n-gram over {vocab_size} tokens needs keys up to "
                    f"{vocab_size}**{self.order}, which overflows int64; lower model.order"]
        return []


@family("gpt")
@dataclass(frozen=True, kw_only=True)
class GPTOptions(ModelOptions):
    """A decoder-only transformer embedding_dim wide; stride null means context − context // 4."""

    num_layers: int = field(default=4, metadata=_LAYERS)
    num_heads: int = field(default=4, metadata=bounded(1, 1024))
    embedding_dim: int = field(default=128, metadata=_EMBEDDING)
    context: int = field(default=64, metadata=_CONTEXT)
    dropout: float = field(default=0.0, metadata=_DROPOUT)
    positions: Literal["learned", "rotary"] = "learned"
    tie_weights: bool = False
    stride: int | None = field(default=None, metadata=_CONTEXT)

    def problems(self, vocab_size=None):
        found = []
        if self.embedding_dim % self.num_heads:
            found.append(f"model.embedding_dim ({self.embedding_dim}) must be divisible by "
                         f"model.num_heads ({self.num_heads})")
        elif self.positions == "rotary" and (self.embedding_dim // self.num_heads) % 2:
            found.append("rotary positions need an even head size, got model.embedding_dim / model.num_heads = "
                         f"{self.embedding_dim // self.num_heads}")
        if self.stride is not None and self.stride > self.context:
            found.append(f"model.stride ({self.stride}) must be at most model.context ({self.context})")
        return found


def options_class(name: Any) -> type[ModelOptions]:
    """The options class of model `name`; a ConfigError naming the closest model otherwise."""
    return FAMILIES.get(name, key="model.name")


def option_names(name: str) -> list[str]:
    """The keys model `name` takes besides `name`, in the order its options class lists them."""
    return [key for key in field_names(options_class(name)) if key != "name"]


def _unknown_keys(name: str, leaves: list[str]) -> str:
    """One line for every key model `name` does not take: whose option each is, or the closest of its own."""
    keys = [f"model.{key}" for key in option_names(name)]
    named = []
    for leaf in leaves:
        owners = [other for other in FAMILIES.names() if leaf in option_names(other)]
        hint = f" (an option of {', '.join(owners)})" if owners else closest(f"model.{leaf}", keys)
        named.append(repr("model." + str(leaf)) + hint)
    what = "key" if len(named) == 1 else "keys"
    return f"unknown config {what} {', '.join(named)} for model {name!r}; {name} takes {', '.join(keys)}"


def build_options(name: str, values: dict[str, tuple[Any, bool]], problems: list[str],
                  vocab_size: int | None = None) -> ModelOptions | None:
    """Model `name`'s options from {key: (value, typed on the command line?)}; every problem, an
    unknown key for this family included, is appended to `problems` (None is returned then)."""
    cls = options_class(name)
    before = len(problems)
    unknown = [leaf for leaf in values if leaf not in field_names(cls)]
    if unknown:
        problems.append(_unknown_keys(name, unknown))
    kwargs = coerce_fields(cls, "model", values, problems)
    if len(problems) > before:
        return None
    options = cls(**{**kwargs, "name": name})
    problems.extend(options.problems(vocab_size))
    return options if len(problems) == before else None
