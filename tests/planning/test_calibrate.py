"""Calibration: measured once per machine key, then read from the cache."""

import json

import pytest

from charlm.errors import ConfigError
from charlm.planning import calibrate
from charlm.planning.calibrate import Calibration, machine_key, planned_config
from charlm.planning.planner import Budget, Candidate

TINY = Candidate(hidden_size=8, batch_size=2, num_steps=4, embedding_dim=4)
TINY_GPT = Candidate(hidden_size=32, num_layers=1, batch_size=2, num_steps=8, family="gpt")


def test_a_candidate_is_measured_once_then_read_from_the_cache(tmp_path):
    path = tmp_path / "throughput.json"
    first = Calibration("cpu", vocab_size=12, path=path)
    speed = first(TINY)
    assert speed > 0 and first.measured == [TINY.key]
    again = Calibration("cpu", vocab_size=12, path=path)
    assert again(TINY) == speed and again.measured == []
    assert json.loads(path.read_text())[machine_key(again.device, again.precision)][TINY.key] == speed


def test_a_transformer_candidate_is_measured_on_random_windows_of_its_context(tmp_path):
    speed = Calibration("cpu", vocab_size=12, path=tmp_path / "throughput.json")
    assert speed(TINY_GPT) > 0 and speed.measured == [TINY_GPT.key] and TINY_GPT.key.startswith("gpt-")


def test_recalibrate_measures_again(tmp_path):
    path = tmp_path / "throughput.json"
    Calibration("cpu", vocab_size=12, path=path)(TINY)
    fresh = Calibration("cpu", vocab_size=12, path=path, recalibrate=True)
    fresh(TINY)
    assert fresh.measured == [TINY.key]


def test_an_unreadable_cache_is_measured_again_not_an_error(tmp_path):
    path = tmp_path / "throughput.json"
    path.write_text("{not json")
    cal = Calibration("cpu", vocab_size=12, path=path)
    assert cal(TINY) > 0 and cal.measured == [TINY.key]


def test_a_model_too_large_for_memory_measures_zero(tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 10 GB")

    monkeypatch.setattr("charlm.models.build_model", no_memory)
    assert Calibration("cpu", vocab_size=12, path=tmp_path / "t.json")(TINY) == 0.0


def test_another_runtime_error_is_not_taken_for_a_misfit(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr("charlm.models.build_model", bug)
    with pytest.raises(RuntimeError, match="shape"):
        Calibration("cpu", vocab_size=12, path=tmp_path / "t.json")(TINY)


def test_the_cache_lives_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert calibrate.cache_path() == tmp_path / "charlm" / "throughput.json"


def test_a_normalize_override_is_planned_for_as_the_run_reads_the_text(tmp_path, monkeypatch, tiny_text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(tiny_text + "ÄÖÜ 123 !?\n", encoding="utf-8")
    kept, every = planned_config("corpus.txt", Budget(steps=2000))
    letters, made = planned_config("corpus.txt", Budget(steps=2000), ["data.normalize=letters"])
    assert (kept.data.normalize, letters.data.normalize, made.config["data"]["normalize"]) == ("none", "letters",
                                                                                            "letters")
    assert made.profile.vocab_size <= 28 < every.profile.vocab_size  # measured as letters, not every character
    with pytest.raises(ConfigError, match="data.normalize"):
        planned_config("corpus.txt", Budget(steps=2000), ["data.normalize=shout"])
