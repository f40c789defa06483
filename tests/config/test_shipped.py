"""Tests for charlm.config.shipped: configs that travel inside the package, found by bare name."""

from pathlib import Path

import pytest

from charlm.errors import ConfigError
from charlm.config.shipped import copy_config, find_config, shipped_configs
from cli_helpers import invoke, one_error_line

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_every_file_in_configs_is_shipped_with_a_one_line_description():
    shipped = shipped_configs()
    assert sorted(shipped) == sorted(p.stem for p in REPO_CONFIGS.glob("*.yaml"))
    for item in shipped.values():
        assert item.path.read_bytes() == (REPO_CONFIGS / f"{item.name}.yaml").read_bytes()
        assert item.description.endswith(".") and "\n" not in item.description
        assert 10 < len(item.description) < 120, item
    assert shipped["tiny"].description == "A seconds-long run for tests and smoke checks."


def test_a_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("rnn") == shipped_configs()["rnn"].path
    assert find_config("rnn.yaml") == shipped_configs()["rnn"].path
    (tmp_path / "rnn.yaml").write_text("model: {name: gru}\n")
    assert find_config("rnn.yaml") == Path("rnn.yaml")  # the user's own file in the working folder
    assert find_config(tmp_path / "rnn.yaml") == tmp_path / "rnn.yaml"


def test_unknown_names_suggest_the_closest_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"config file not found: lsmt \(did you mean 'lstm'\?\)"):
        find_config("lsmt")
    with pytest.raises(ConfigError, match=r"shipped configs: .*rnn.*tiny"):
        find_config("wxyz")
    with pytest.raises(ConfigError, match="config file not found: sub/rnn.yaml"):
        find_config("sub/rnn.yaml")  # a path with a folder is never a shipped name
    with pytest.raises(ConfigError, match="is a directory"):
        find_config(tmp_path)


def test_copy_writes_the_shipped_file_and_never_overwrites_without_force(tmp_path):
    target = copy_config("lstm", tmp_path)
    assert target == tmp_path / "lstm.yaml"
    assert target.read_bytes() == shipped_configs()["lstm"].path.read_bytes()
    target.write_text("# my edits\n")
    with pytest.raises(ConfigError, match="exists; pass --force"):
        copy_config("lstm", target)
    assert target.read_text() == "# my edits\n"
    copy_config("lstm", target, force=True)
    assert target.read_bytes() == shipped_configs()["lstm"].path.read_bytes()
    assert copy_config("rnn.yaml", tmp_path / "mine.yaml").read_bytes() == shipped_configs()["rnn"].path.read_bytes()
    with pytest.raises(ConfigError, match=r"no shipped config named 'lsmt' \(did you mean 'lstm'\?\)"):
        copy_config("lsmt", tmp_path)
    with pytest.raises(ConfigError, match="no such folder"):
        copy_config("rnn", tmp_path / "absent" / "x.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lstm.yaml", "mine.yaml"]


def test_configs_command_lists_every_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("configs")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for item in shipped_configs().values():
        assert any(line.split()[:1] == [item.name] and item.description in line for line in lines), item.name


def test_configs_copy_command_writes_a_file_to_edit_and_refuses_to_clobber(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("configs", "copy", "tiny")
    assert result.exit_code == 0 and "wrote tiny.yaml" in result.output
    assert (tmp_path / "tiny.yaml").read_bytes() == shipped_configs()["tiny"].path.read_bytes()
    assert "exists; pass --force" in one_error_line(invoke("configs", "copy", "tiny"))
    assert "did you mean 'tiny'" in one_error_line(invoke("configs", "copy", "tinny"))


def test_train_by_bare_name_from_an_empty_folder_uses_the_shipped_config_and_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "--config", "tiny", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "tiny" / "best.pt").is_file()
    assert (tmp_path / "data").is_dir()  # the embedded The Time Machine, preprocessed here
    generated = invoke("generate", "--length", "12", "--seed", "1")
    assert generated.exit_code == 0 and generated.output.startswith("time")
