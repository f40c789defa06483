"""YAML for configs and --set values: safe tags only, and bounded work whatever the input.

`yaml.safe_load` runs no code, but a few hundred bytes of nested aliases (`&a [*b, *b, ...]`)
stand for billions of values: harmless while shared, gigabytes once anything walks or prints
them (an error message, `dataclasses.asdict`). So the node graph is measured as if expanded
before a single value is built, and refused past MAX_VALUES; a file is read only up to MAX_BYTES.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from charlm.errors import ConfigError

MAX_VALUES = 10_000  # a charlm config holds a few dozen
MAX_BYTES = 1 << 20


def load_file(path: str | os.PathLike) -> Any:
    """Parse a YAML file as `loads` does; UnicodeDecodeError and yaml.YAMLError go to the caller."""
    path = Path(path)
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path} is not a regular file; give a YAML file")
    if info.st_size > MAX_BYTES:
        raise ConfigError(f"{path} is {info.st_size:,} bytes; a config is at most {MAX_BYTES:,} (a few hundred "
                          "bytes is usual)")
    with open(path, "rb") as handle:
        return loads(handle.read(MAX_BYTES + 1).decode("utf-8"), str(path))


def loads(text: str, where: str = "YAML") -> Any:
    """Safe-load one YAML document, refusing aliases that expand past MAX_VALUES (or into themselves)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Count the values `root` stands for with every alias expanded, in time linear in the graph."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the path from the root to the node being counted
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_VALUES:
                raise ConfigError(f"{where}: its YAML aliases expand to more than {MAX_VALUES:,} values; a config "
                                  "needs a few dozen (write the values out instead of nesting aliases)")
            continue
        if key in sizes:
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise ConfigError(f"{where}: a YAML alias refers to a value that contains it; write the values out")
            if id(child) not in sizes:
                stack.append((child, False))
