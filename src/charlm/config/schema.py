"""Typed config fields: ranges as field metadata, and checking a YAML or `--set` value against a field.

Shared by the run config (charlm.config) and the model families' options (charlm.models.options);
no torch here, so a mistyped key answers at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal

import yaml

from charlm.config import safe_yaml
from charlm.errors import ConfigError


FLOAT32_MAX = 3.4028234663852886e38


def bounded(lo: float | None = None, hi: float | None = None, *, lo_open=False, hi_open=False) -> dict:
    """Field metadata: the number must lie in [lo, hi] (open at an end when asked)."""
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}


def closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def quote(name: Any) -> str:
    """A user's key in quotes, on one line whatever it holds."""
    return repr(str(name))


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return f"{type_name(args[0])} or null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def coerce(key: str, value: Any, tp: Any, meta: dict, from_text: bool) -> Any:
    """Check `value` against the field type `tp`; strings from --set are read as YAML first, as the
    same value in a file is (`"\\n"` is a newline, quotes are dropped). A text field keeps the text as
    typed where YAML reads no string (`yes`, `1.0`): a file would need quotes, the shell took them."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
    base = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
    parsed = _read_yaml(key, value) if from_text and isinstance(value, str) else value
    if from_text and isinstance(value, str) and (base is str or typing.get_origin(base) is Literal):
        if optional and value.strip() in ("null", "~", "Null", "NULL"):
            return None
        value = parsed if isinstance(parsed, str) else value
        return coerce(key, value.strip() if base is not str else value, base, meta, False)
    value = parsed
    hints = typing.get_args(tp)
    if optional:
        if value is None:
            return None
        tp = base
        hints = typing.get_args(tp)
    if typing.get_origin(tp) is Literal:
        if from_text and not isinstance(value, str):
            value = str(value)
        if value not in hints:
            raise ConfigError(f"{key}: {value!r} is not one of {type_name(tp)}{closest(str(value), list(hints))}")
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
        raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}")
    try:
        value = tp(value)
    except OverflowError:  # float(10**400)
        raise ConfigError(f"{key}: {str(value)[:20]}... is too large for {type_name(tp)}") from None
    if tp is float and value in (math.inf, -math.inf):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    if tp is float and abs(value) > FLOAT32_MAX:  # it reaches a float32 tensor (Adam's lr, dropout's p…)
        raise ConfigError(f"{key}: {value!r} is beyond float32's range (±{FLOAT32_MAX:.4g})")
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


def _read_yaml(key: str, text: str) -> Any:
    """`text` as a YAML value, as if written after `key:` in a file; the text itself where it is not YAML."""
    try:
        return safe_yaml.loads(text, f"--set {key}") if text.strip() else text
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError):
        return text  # not YAML (e.g. "2024-13-45", a date with no 13th month): keep the text as is


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def coerce_fields(cls: type, section: str, values: dict[str, tuple[Any, bool]],
                  problems: list[str]) -> dict[str, Any]:
    """Each known field of `values` ({leaf: (value, from --set?)}) checked against `cls`; a bad
    value is appended to `problems` and left out. Unknown keys are the caller's to report."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for leaf, (value, from_text) in values.items():
        if leaf in fields:
            try:
                out[leaf] = coerce(f"{section}.{leaf}", value, hints[leaf], dict(fields[leaf].metadata), from_text)
            except ConfigError as exc:
                problems.append(str(exc))
    return out
