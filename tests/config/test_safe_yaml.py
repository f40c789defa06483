"""Tests for charlm.config.safe_yaml: YAML whose aliases would expand without bound is refused before it is built."""

from __future__ import annotations

import pytest

from charlm.errors import ConfigError
from charlm.config.safe_yaml import MAX_BYTES, MAX_VALUES, load_file, loads


def bomb(levels: int, width: int = 9) -> str:
    """`levels` of nested aliases, `width` each: a few hundred bytes for width**levels values."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_any_value_is_built():
    text = bomb(9)  # 9**10 values: billions
    assert len(text) < 600
    with pytest.raises(ConfigError, match=f"aliases expand to more than {MAX_VALUES:,} values"):
        loads(text, "bomb.yaml")


def test_aliases_that_stay_small_still_work():
    data = loads(bomb(2, width=3))
    assert data["a2"] == [[["lol"] * 3] * 3] * 3
    assert loads("base: &b {lr: 0.1}\nother: *b\n") == {"base": {"lr": 0.1}, "other": {"lr": 0.1}}
    assert loads("") is None and loads("x: 1") == {"x": 1}


def test_a_recursive_alias_is_refused():
    with pytest.raises(ConfigError, match="refers to a value that contains it"):
        loads("a: &a [1, *a]\n")


def test_files_past_the_size_limit_and_pipes_are_refused(tmp_path):
    import os

    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (MAX_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match="a config is at most"):
        load_file(big)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_file(tmp_path / "fifo")
    (tmp_path / "ok.yaml").write_text("train: {max_steps: 3}\n")
    assert load_file(tmp_path / "ok.yaml") == {"train": {"max_steps": 3}}
