"""Run configuration: frozen dataclasses loaded from YAML and `--set` overrides, validated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from charlm.config import safe_yaml
from charlm.errors import ConfigError
from charlm.config.model_options import FAMILIES, ModelOptions, RecurrentOptions, build_options, option_names
from charlm.config.schema import bounded, closest, coerce_fields, field_names, quote


@dataclass(frozen=True)
class DataConfig:
    corpus: str = "timemachine"
    normalize: Literal["none", "lower", "letters"] = "none"
    level: Literal["char", "word"] = "char"
    sampling: str = "random"
    # sequential only: the share of rows whose carried state restarts from the initial state at each
    # batch, so the model also learns to read text from there, as a prompt does (charlm.evaluation.derail)
    state_reset: float = field(default=0.05, metadata=bounded(0.0, 1.0))
    batch_size: int = field(default=32, metadata=bounded(1))
    num_steps: int = field(default=35, metadata=bounded(1))
    val_fraction: float = field(default=0.1, metadata=bounded(0.0, 0.5))
    min_freq: int = field(default=1, metadata=bounded(1))
    errors: Literal["strict", "replace"] = "strict"  # invalid UTF-8: stop, or read it as U+FFFD


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = field(default=0.002, metadata=bounded(0.0, lo_open=True))
    weight_decay: float = field(default=0.0, metadata=bounded(0.0))
    momentum: float = field(default=0.0, metadata=bounded(0.0, 1.0, hi_open=True))
    grad_clip: float = field(default=1.0, metadata=bounded(0.0))
    schedule: Literal["constant", "cosine", "step"] = "constant"
    warmup_steps: int = field(default=0, metadata=bounded(0))
    min_lr: float = field(default=0.0, metadata=bounded(0.0))
    step_size: int = field(default=1000, metadata=bounded(1))
    gamma: float = field(default=0.5, metadata=bounded(0.0, 1.0, lo_open=True))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int | None = field(default=None, metadata=bounded(1))
    max_steps: int | None = field(default=None, metadata=bounded(1))
    max_time: float | None = field(default=None, metadata=bounded(0.0, lo_open=True))
    eval_every: int = field(default=200, metadata=bounded(1))
    eval_tokens: int | None = field(default=None, metadata=bounded(1))
    log_every: int = field(default=10, metadata=bounded(1))
    seed: int = field(default=0, metadata=bounded(0, 2**63 - 1))  # torch.manual_seed takes 64 bits
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    compile: bool = False
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # see charlm.device.precision
    amp: bool = True  # older switch: false means fp32 when precision is auto
    tensorboard: bool = False  # also write metrics as TensorBoard scalars (needs charlm[tensorboard])
    out: str | None = None


@dataclass(frozen=True)
class GenerateConfig:
    """Everything `generate` takes: the config's defaults, overridden by `charlm generate`'s flags."""

    prefix: str = ""
    length: int = field(default=200, metadata=bounded(1))
    strategy: str = "sample"
    temperature: float = field(default=1.0, metadata=bounded(0.0))
    top_k: int | None = field(default=None, metadata=bounded(1))
    top_p: float | None = field(default=None, metadata=bounded(0.0, 1.0, lo_open=True))
    num_samples: int = field(default=1, metadata=bounded(1))
    seed: int | None = field(default=None, metadata=bounded(-(2**63), 2**64 - 1))
    stop: str | None = None
    unknown: Literal["error", "map"] = "error"
    precision: Literal["fp32", "bf16", "int8"] = "fp32"  # of the recurrent step; see charlm.generation.fastgen


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = DataConfig()
    model: ModelOptions = RecurrentOptions(name="rnn")  # the chosen family's options (charlm.config.model_options)
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    generate: GenerateConfig = GenerateConfig()
    name: str = "run"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("name")
        return out

    def replace(self, section: str, **changes: Any) -> "RunConfig":
        if section == "model":  # checked like the file: another model starts from its own defaults
            values = changes if changes.get("name", self.model.name) != self.model.name else {
                **dataclasses.asdict(self.model), **changes}
            return dataclasses.replace(self, model=_model_section(values, from_text=False))
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


# The model section is checked against the chosen family (charlm.config.model_options), the others here.
SECTIONS: dict[str, type | None] = {"data": DataConfig, "model": None, "optim": OptimConfig, "train": TrainConfig,
                                    "generate": GenerateConfig}
# With --resume only these may change: they decide when to stop and what to log, not what is learnt.
RESUMABLE_KEYS = frozenset({"train.max_steps", "train.max_time", "train.epochs", "train.eval_every",
                            "train.log_every", "train.eval_tokens", "train.precision"})

# Before each family had its own options, one merged model section held them all, and config.yaml and
# checkpoints recorded all of them whatever the model. A section holding all the keys below is
# such a record: another family's key at its old default was never used and is dropped; at any
# other value it was set by hand and silently ignored, which is now refused.
_MERGED_DEFAULTS = {"hidden_size": 256, "num_layers": 1, "dropout": 0.0, "embedding_dim": None, "tie_weights": False,
                    "order": 5, "smoothing": "kneser_ney", "k": 1.0, "context": 8}
_MERGED_LATER = {"num_heads": 4, "positions": "learned", "stride": None}  # added with gpt


def valid_keys(model: str | None = None) -> list[str]:
    """Every section.key; the model's keys for `model` only, or for every family."""
    keys = []
    for section, cls in SECTIONS.items():
        if cls is not None:
            keys += [f"{section}.{leaf}" for leaf in field_names(cls)]
            continue
        names = [model] if model is not None else FAMILIES.names()
        leaves = ["name"] + [leaf for n in names for leaf in option_names(n)]
        keys += [f"model.{leaf}" for leaf in dict.fromkeys(leaves)]
    return keys


def _drop_merged_keys(name: str, values: dict[str, tuple[Any, bool]], problems: list[str]) -> None:
    if not set(_MERGED_DEFAULTS) <= set(values):
        return
    own = set(option_names(name))
    for leaf, default in {**_MERGED_DEFAULTS, **_MERGED_LATER}.items():
        if leaf in values and leaf not in own:
            value = values.pop(leaf)[0]
            if value != default or type(value) is not type(default):
                problems.append(f"model.{leaf} is {value!r}, but model {name!r} has no such option (an older "
                                f"charlm ignored it); remove model.{leaf}")


def _model_section(values: dict[str, Any], from_text: bool, problems: list[str] | None = None) -> ModelOptions:
    """The model section from {key: value} (raising) or, with `problems`, {key: (value, from_text)}."""
    raising = problems is None
    problems = [] if raising else problems
    if raising:
        values = {leaf: (value, from_text) for leaf, value in values.items()}
    values = dict(values)
    name_value, name_text = values.pop("name", (RunConfig.model.name, False))
    name = coerce_fields(ModelOptions, "model", {"name": (name_value, name_text)}, problems).get("name")
    options = None
    if name is not None:
        try:
            _drop_merged_keys(name, values, problems)
            options = build_options(name, values, problems)
        except ConfigError as exc:  # an unknown model name: its keys cannot be checked
            problems.append(str(exc))
    if raising and problems:
        raise ConfigError("; ".join(problems))
    return options


def build_config(raw: Any, overrides: list[str] | None = None, name: str = "run") -> RunConfig:
    """Validate a parsed YAML mapping plus `section.key=value` overrides into a RunConfig.

    Every problem is reported, in one line: a key's, a value's, or between values.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of sections (data, model, ...), got a {type(raw).__name__}")
    sections: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for section, values in raw.items():
        if section not in SECTIONS:
            problems.append(f"unknown config section {quote(section)}{closest(str(section), list(SECTIONS))}")
            continue
        if values is None:
            values = {}
        if not isinstance(values, dict):
            problems.append(f"config section '{section}' must be a mapping of keys, got {values!r}")
            continue
        sections[section] = {k: (v, False) for k, v in values.items()}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        section, dot, leaf = key.strip().partition(".")
        if not sep or not dot or not leaf:
            problems.append(f"--set expects section.key=value, got {item!r}")
        elif section not in SECTIONS:
            problems.append(f"unknown config key {quote(key.strip())}{closest(key.strip(), valid_keys())}")
        else:
            sections.setdefault(section, {})[leaf] = (value, True)
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = sections.get(section, {})
        if cls is None:
            built[section] = _model_section(values, True, problems)
            continue
        for leaf in values:
            if leaf not in field_names(cls):
                key = f"{section}.{leaf}"
                problems.append(f"unknown config key {quote(key)}{closest(key, valid_keys())}")
        built[section] = cls(**coerce_fields(cls, section, values, problems))
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))
    return RunConfig(**built, name=name)


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                corpus: str | Path | None = None) -> RunConfig:
    """Read a YAML config (a path, or a shipped config's bare name) and apply overrides.

    `corpus` (a text file, a built-in dataset or a preprocessed folder) replaces data.corpus, as
    `--set data.corpus=...` does. A config's data.normalize belongs to its own corpus: trained on
    another one, the text is kept as is (normalize none) unless data.normalize is set as well, so
    a shipped config applied to your text scores it as every other run on it does.
    Safe loader only; every problem is a ConfigError.
    """
    overrides = list(overrides or [])
    keys = [item.partition("=")[0].strip() for item in overrides]
    if corpus is not None:
        if "data.corpus" in keys:
            raise ConfigError(f"the corpus is given twice: {str(corpus)!r} and --set data.corpus; give it once")
        overrides.append(f"data.corpus={corpus}")
    if path is None:
        return build_config({}, overrides)
    cfg = _load_file_config(path, overrides)
    if cfg.data.normalize != "none" and "data.normalize" not in keys:
        own = _load_file_config(path, []).data
        if cfg.data.corpus != own.corpus:
            cfg = cfg.replace("data", normalize="none")
    return cfg


def _load_file_config(path: str | Path, overrides: list[str]) -> RunConfig:
    from charlm.config.shipped import find_config

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
    """section.key of every value that differs; a key only one of them has (another model's) counts."""
    a, b = old.to_dict(), new.to_dict()
    missing = object()
    return [f"{s}.{k}" for s in a for k in dict.fromkeys([*a[s], *b[s]])
            if a[s].get(k, missing) != b[s].get(k, missing)]


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
