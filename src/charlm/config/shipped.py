"""The configs shipped inside the package: find one by bare name, list them, copy one out to edit."""

from __future__ import annotations

import difflib
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

from charlm.errors import ConfigError
from charlm.safe_write import check_destination, write_atomic

_CONFIGS = importlib.resources.files("charlm") / "configs"


@dataclass(frozen=True)
class ShippedConfig:
    name: str
    path: Path
    description: str


def shipped_configs() -> dict[str, ShippedConfig]:
    """Every shipped config by name (the file name without .yaml), sorted by name."""
    folder = Path(str(_CONFIGS))
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    return {p.stem: ShippedConfig(p.stem, p, _description(p)) for p in files}


def _description(path: Path) -> str:
    """The first sentence of the config's leading comment: a config explains itself at its top."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


def find_config(name_or_path: str | os.PathLike) -> Path:
    """A config file path as given, or else the shipped config of that bare name (`rnn`, `rnn.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config file not found: {path} (it is a directory)")
    shipped = shipped_configs()
    name = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and name in shipped:
        return shipped[name].path
    match = difflib.get_close_matches(name, list(shipped), n=1, cutoff=0.5)
    hint = f" (did you mean '{match[0]}'?)" if match else f"; shipped configs: {', '.join(shipped)}"
    raise ConfigError(f"config file not found: {path}{hint}")


def copy_config(name: str, dest: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Write the shipped config `name` to `dest` (a file, or a folder to put <name>.yaml in)."""
    shipped = shipped_configs()
    if name.removesuffix(".yaml") not in shipped:
        match = difflib.get_close_matches(name, list(shipped), n=1, cutoff=0.5)
        hint = f" (did you mean '{match[0]}'?)" if match else ""
        raise ConfigError(f"no shipped config named {name!r}{hint}; shipped configs: {', '.join(shipped)}")
    source = shipped[name.removesuffix(".yaml")]
    target = Path(dest) if dest is not None else Path(f"{source.name}.yaml")
    if target.is_dir():
        target = target / f"{source.name}.yaml"
    check_destination(target)  # a link, a device or a folder is never written through, even with --force
    if os.path.lexists(target):
        if not force:
            raise ConfigError(f"{target} exists; pass --force to overwrite it")
        if target.suffix not in (".yaml", ".yml"):
            raise ConfigError(f"{target} exists and is not a .yaml file; --force replaces only a config file")
    if not target.parent.is_dir():
        raise ConfigError(f"no such folder: {target.parent}")
    write_atomic(target, source.path.read_bytes())
    return target
