"""Run configuration: frozen dataclasses loaded from YAML and `--set` overrides, validated."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from charlm import safe_yaml
from charlm.errors import ConfigError

def _range(lo: float | None = None, hi: float | None = None, *, lo_open=False, hi_open=False):
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}


@dataclass(frozen=True)
class DataConfig:
    corpus: str = "timemachine"
    normalize: Literal["none", "lower", "letters"] = "none"
    level: Literal["char", "word"] = "char"
    sampling: str = "random"
    batch_size: int = field(default=32, metadata=_range(1))
    num_steps: int = field(default=35, metadata=_range(1))
    val_fraction: float = field(default=0.1, metadata=_range(0.0, 0.5))
    min_freq: int = field(default=1, metadata=_range(1))


@dataclass(frozen=True)
class ModelConfig:
    name: str = "rnn"
    hidden_size: int = field(default=256, metadata=_range(1, 1 << 16))
    num_layers: int = field(default=1, metadata=_range(1, 64))
    dropout: float = field(default=0.0, metadata=_range(0.0, 1.0, hi_open=True))
    embedding_dim: int | None = field(default=None, metadata=_range(1, 1 << 16))
    tie_weights: bool = False
    order: int = field(default=5, metadata=_range(1, 12))
    smoothing: Literal["add_k", "kneser_ney"] = "kneser_ney"
    k: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    context: int = field(default=8, metadata=_range(1, 4096))
    num_heads: int = field(default=4, metadata=_range(1, 1024))
    positions: Literal["learned", "rotary"] = "learned"
    stride: int | None = field(default=None, metadata=_range(1, 4096))


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = field(default=0.002, metadata=_range(0.0, lo_open=True))
    weight_decay: float = field(default=0.0, metadata=_range(0.0))
    momentum: float = field(default=0.0, metadata=_range(0.0, 1.0, hi_open=True))
    grad_clip: float = field(default=1.0, metadata=_range(0.0))
    schedule: Literal["constant", "cosine", "step"] = "constant"
    warmup_steps: int = field(default=0, metadata=_range(0))
    min_lr: float = field(default=0.0, metadata=_range(0.0))
    step_size: int = field(default=1000, metadata=_range(1))
    gamma: float = field(default=0.5, metadata=_range(0.0, 1.0, lo_open=True))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int | None = field(default=None, metadata=_range(1))
    max_steps: int | None = field(default=None, metadata=_range(1))
    max_time: float | None = field(default=None, metadata=_range(0.0, lo_open=True))
    eval_every: int = field(default=200, metadata=_range(1))
    eval_tokens: int | None = field(default=None, metadata=_range(1))
    log_every: int = field(default=10, metadata=_range(1))
    seed: int = field(default=0, metadata=_range(0, 2**63 - 1))  # torch.manual_seed takes 64 bits
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    compile: bool = False
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # see charlm.precision
    amp: bool = True  # older switch: false means fp32 when precision is auto
    tensorboard: bool = False  # also write metrics as TensorBoard scalars (needs charlm[tensorboard])
    out: str | None = None


@dataclass(frozen=True)
class GenerateConfig:
    prefix: str = ""
    length: int = field(default=200, metadata=_range(1))
    strategy: str = "sample"
    temperature: float = field(default=1.0, metadata=_range(0.0))
    top_k: int | None = field(default=None, metadata=_range(1))
    top_p: float | None = field(default=None, metadata=_range(0.0, 1.0, lo_open=True))


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    generate: GenerateConfig = GenerateConfig()
    name: str = "run"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("name")
        return out

    def replace(self, section: str, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig,
            "generate": GenerateConfig}
# With --resume only these may change: they decide when to stop and what to log, not what is learnt.
RESUMABLE_KEYS = frozenset({"train.max_steps", "train.max_time", "train.epochs", "train.eval_every",
                            "train.log_every", "train.eval_tokens", "train.precision"})


def valid_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _quote(name: Any) -> str:
    """A user's key in quotes, on one line whatever it holds."""
    return repr(str(name))


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return f"{_type_name(args[0])} or null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp: Any, meta: dict, from_text: bool) -> Any:
    """Check `value` against the field type `tp`; strings from --set are parsed as YAML first,
    except for text fields, which take the text as typed (YAML would make "yes" True, " the" "the")."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
    base = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
    if from_text and isinstance(value, str) and (base is str or typing.get_origin(base) is Literal):
        if optional and value.strip() in ("null", "~", "Null", "NULL"):
            return None
        return _coerce(key, value.strip() if base is not str else value, base, meta, False)
    if from_text and isinstance(value, str):
        try:
            value = safe_yaml.loads(value, f"--set {key}") if value.strip() else value
        except (yaml.YAMLError, ValueError, OverflowError, RecursionError):
            pass  # not YAML (e.g. "2024-13-45", a date with no 13th month): keep the text as is
    hints = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in hints if a is not type(None))
        hints = typing.get_args(tp)
    if typing.get_origin(tp) is Literal:
        if from_text and not isinstance(value, str):
            value = str(value)
        if value not in hints:
            raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}{_closest(str(value), list(hints))}")
        return value
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str) or (from_text and value is not None),
    }[tp]
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    try:
        value = tp(value)
    except OverflowError:  # float(10**400)
        raise ConfigError(f"{key}: {str(value)[:20]}... is too large for {_type_name(tp)}") from None
    if tp is float and value in (math.inf, -math.inf):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    if tp in (int, float) and meta:
        lo, hi = meta["lo"], meta["hi"]
        if value != value or (lo is not None and (value < lo or (meta["lo_open"] and value == lo))) or (
            hi is not None and (value > hi or (meta["hi_open"] and value == hi))
        ):
            left = "(" if meta["lo_open"] else "["
            right = ")" if meta["hi_open"] else "]"
            span = f"{left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{right}"
            raise ConfigError(f"{key}: {value!r} is out of range {span}")
    return value


def _section_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=False)


def build_config(raw: Any, overrides: list[str] | None = None, name: str = "run") -> RunConfig:
    """Validate a parsed YAML mapping plus `section.key=value` overrides into a RunConfig."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of sections (data, model, ...), got a {type(raw).__name__}")
    sections: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {_quote(section)}{_closest(str(section), list(SECTIONS))}")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping of keys, got {values!r}")
        sections[section] = {k: (v, False) for k, v in values.items()}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        section, dot, leaf = key.strip().partition(".")
        if not sep or not dot or not leaf:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        if section not in SECTIONS:
            raise ConfigError(f"unknown config key {_quote(key.strip())}{_closest(key.strip(), valid_keys())}")
        sections.setdefault(section, {})[leaf] = (value, True)
    built = {}
    for section, cls in SECTIONS.items():
        hints = _section_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for leaf, (value, from_text) in sections.get(section, {}).items():
            key = f"{section}.{leaf}"
            if leaf not in fields:
                raise ConfigError(f"unknown config key {_quote(key)}{_closest(key, valid_keys())}")
            kwargs[leaf] = _coerce(key, value, hints[leaf], dict(fields[leaf].metadata), from_text)
        built[section] = cls(**kwargs)
    return RunConfig(**built, name=name)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (a path, or a shipped config's bare name) and apply overrides.

    Safe loader only; every problem is a ConfigError.
    """
    if path is None:
        return build_config({}, overrides)
    from charlm.shipped import find_config

    path = find_config(path)
    try:
        raw = safe_yaml.load_file(path)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except ValueError as exc:  # a constructor refused a value, e.g. the date 2024-13-45
        raise ConfigError(f"{path}: invalid YAML: {(str(exc) or repr(exc)).splitlines()[0]}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}") from None
    if path.stem in (".", ".."):  # the run folder would be runs/.., the working folder itself
        raise ConfigError(f"{path}: a config's file name names its run (runs/<name>); rename the file")
    return build_config(raw, overrides, name=path.stem)


def config_from_dict(raw: dict[str, Any], name: str = "run") -> RunConfig:
    return build_config(raw, name=name)


def changed_keys(old: RunConfig, new: RunConfig) -> list[str]:
    a, b = old.to_dict(), new.to_dict()
    return [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s][k]]


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
