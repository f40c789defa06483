import pytest

from charlm.config import RESUMABLE_KEYS, build_config, changed_keys, dump_yaml, load_config, valid_keys
from charlm.errors import ConfigError


def test_defaults_and_overrides_are_typed():
    cfg = build_config({"model": {"name": "lstm", "hidden_size": 64}},
                       ["train.max_steps=5", "data.normalize=letters", "model.embedding_dim=null",
                        "optim.lr=1e-3", "train.compile=true"])
    assert cfg.model.hidden_size == 64 and cfg.model.name == "lstm"
    assert cfg.train.max_steps == 5 and cfg.data.normalize == "letters"
    assert cfg.model.embedding_dim is None
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.train.compile is True


@pytest.mark.parametrize("raw, overrides, message", [
    ({}, ["modle.name=x"], "unknown config key 'modle.name' (did you mean 'model.name'?)"),
    ({}, ["model.hiden_size=3"], "did you mean 'model.hidden_size'?"),
    ({"model": {"hiden_size": 3}}, [], "unknown config key 'model.hiden_size'"),
    ({"optimizer": {}}, [], "unknown config section 'optimizer' (did you mean 'optim'?)"),
    ({}, ["model.hidden_size=abc"], "model.hidden_size: expected an integer, got 'abc'"),
    ({"model": {"hidden_size": 1.5}}, [], "model.hidden_size: expected an integer"),
    ({"model": {"tie_weights": "yes"}}, [], "model.tie_weights: expected true or false"),
    ({}, ["model.dropout=1"], "model.dropout: 1.0 is out of range [0.0, 1.0)"),
    ({}, ["data.batch_size=0"], "data.batch_size: 0 is out of range"),
    ({}, ["data.num_steps=-3"], "data.num_steps: -3 is out of range"),
    ({}, ["data.normalize=lowr"], "did you mean 'lower'?"),
    ({}, ["optim.lr=0"], "optim.lr: 0.0 is out of range (0.0, inf]"),
    ({}, ["train.max_time=nan"], "train.max_time: nan is out of range"),
    ({}, ["optim.lr"], "--set expects section.key=value"),
    ([1, 2], [], "must be a mapping"),
    ({"data": [1]}, [], "config section 'data' must be a mapping"),
])
def test_bad_values_name_the_key(raw, overrides, message):
    with pytest.raises(ConfigError) as info:
        build_config(raw, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_files(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("model:\n  name: gru\n  hidden_size: 32\ntrain:\n  max_steps: 3\n")
    cfg = load_config(good)
    assert cfg.name == "good" and cfg.model.name == "gru" and cfg.train.max_steps == 3
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  name: [gru\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(broken)
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(evil)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)


def test_round_trip_through_yaml(tmp_path):
    cfg = build_config({"model": {"name": "lstm", "embedding_dim": 16}, "train": {"max_time": 2.5}})
    path = tmp_path / "again.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path).to_dict() == cfg.to_dict()


def test_changed_keys_and_resumable_set():
    a = build_config({})
    b = build_config({}, ["train.max_steps=10", "optim.lr=0.1"])
    assert changed_keys(a, b) == ["optim.lr", "train.max_steps"]
    assert "train.max_steps" in RESUMABLE_KEYS and "optim.lr" not in RESUMABLE_KEYS
    assert set(RESUMABLE_KEYS) <= set(valid_keys())


def test_every_shipped_config_loads():
    from charlm.shipped import shipped_configs

    configs = shipped_configs()
    assert {"rnn", "lstm", "gru", "tiny", "shakespeare_lstm"} <= set(configs)
    for item in configs.values():
        cfg = load_config(item.name)  # by bare name, as `charlm train --config rnn` does
        assert cfg.name == item.name
        assert cfg.train.max_steps or cfg.train.epochs or cfg.train.max_time, item.path


def test_every_shipped_config_builds_its_model_and_batches():
    from charlm.data.batches import make_sampler
    from charlm.models import build_model
    from charlm.shipped import shipped_configs
    from charlm.train import model_options

    import numpy as np

    configs = shipped_configs()
    assert {"shakespeare_gpt", "shakespeare_gpt_gpu"} <= set(configs)
    for item in configs.values():
        cfg = load_config(item.name)
        model, _ = build_model(cfg.model.name, 66, **model_options(cfg))  # option errors are ConfigErrors
        check = getattr(model, "check_training", None)
        if check is not None:
            sampler = make_sampler(cfg.data.sampling, np.zeros(10**6, np.uint8), cfg.data.batch_size,
                                   cfg.data.num_steps, 0)
            check(cfg.data.num_steps, sampler.carries_state)
