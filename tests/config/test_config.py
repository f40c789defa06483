import dataclasses

import pytest

import yaml

from charlm.config import (RESUMABLE_KEYS, build_config, changed_keys, config_from_dict, dump_yaml, load_config,
                           valid_keys)
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
    ({}, ["data.state_reset=1.5"], "data.state_reset: 1.5 is out of range [0.0, 1.0]"),
    ({}, ["data.normalize=lowr"], "did you mean 'lower'?"),
    ({}, ["optim.lr=0"], "optim.lr: 0.0 is out of range (0.0, inf]"),
    ({}, ["train.max_time=nan"], "train.max_time: nan is out of range"),
    ({}, ["optim.lr"], "--set expects section.key=value"),
    ({"model": {"name": "lsmt"}}, [], "model.name: unknown model 'lsmt'; did you mean 'lstm'?"),
    ({}, ["model.name=transformer"], "model.name: unknown model 'transformer'"),
    ({"model": {"name": "rnn_scratch", "num_layers": 2}}, [], "rnn_scratch has a single layer"),
    ({"model": {"name": "gpt", "embedding_dim": 10, "num_heads": 4}}, [], "must be divisible by model.num_heads"),
    ({"model": {"name": "lstm", "tie_weights": True}}, [], "model.tie_weights needs model.embedding_dim =="),
    ([1, 2], [], "must be a mapping"),
    ({"data": [1]}, [], "config section 'data' must be a mapping"),
])
def test_bad_values_name_the_key(raw, overrides, message):
    with pytest.raises(ConfigError) as info:
        build_config(raw, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_an_option_of_another_family_names_the_valid_keys():
    with pytest.raises(ConfigError) as info:
        build_config({"model": {"name": "lstm"}}, ["model.order=3"])
    assert str(info.value) == ("unknown config key 'model.order' (an option of ngram) for model 'lstm'; lstm takes "
                               "model.hidden_size, model.num_layers, model.dropout, model.embedding_dim, "
                               "model.tie_weights")
    with pytest.raises(ConfigError, match=r"'model.hiden_size' \(did you mean 'model.hidden_size'\?\) for model 'gru'"):
        build_config({"model": {"name": "gru", "hiden_size": 3}})
    # Each key is checked against the model named last, wherever the name comes from.
    assert build_config({"model": {"name": "lstm", "hidden_size": 8}}, ["model.name=gru"]).model.hidden_size == 8
    with pytest.raises(ConfigError, match="'model.hidden_size' .* for model 'ngram'"):
        build_config({"model": {"name": "lstm", "hidden_size": 8}}, ["model.name=ngram"])


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        build_config({"model": {"name": "gpt", "embedding_dim": 10, "stride": 100, "context": 8, "order": 2},
                      "data": {"batch_size": 0}}, ["optim.lr=0", "train.bogus=1"])
    message = str(info.value)
    for part in ("data.batch_size: 0 is out of range", "'model.order' (an option of ngram) for model 'gpt'",
                 "optim.lr: 0.0 is out of range", "unknown config key 'train.bogus'"):
        assert part in message
    assert "\n" not in message
    # Constraints between options are checked once the values themselves are valid.
    with pytest.raises(ConfigError) as info:
        build_config({"model": {"name": "gpt", "embedding_dim": 10, "stride": 100, "context": 8}})
    assert str(info.value) == ("model.embedding_dim (10) must be divisible by model.num_heads (4); "
                               "model.stride (100) must be at most model.context (8)")


def test_the_stored_config_holds_only_the_chosen_family():
    lstm = yaml.safe_load(dump_yaml(build_config({"model": {"name": "lstm"}})))["model"]
    assert lstm == {"name": "lstm", "hidden_size": 256, "num_layers": 1, "dropout": 0.0, "embedding_dim": None,
                    "tie_weights": False}
    ngram = yaml.safe_load(dump_yaml(build_config({"model": {"name": "ngram"}})))["model"]
    assert ngram == {"name": "ngram", "order": 5, "smoothing": "kneser_ney", "k": 1.0}
    switched = build_config({"model": {"name": "lstm", "hidden_size": 8}}).replace("model", name="ngram", order=3)
    assert switched.model.model_args() == {"order": 3, "smoothing": "kneser_ney", "k": 1.0}
    with pytest.raises(ConfigError, match="'model.order' .* for model 'lstm'"):
        build_config({}).replace("model", name="lstm", order=3)


# What charlm wrote into config.yaml and checkpoints before each family had its own options: every
# family's keys, whatever the model.
MERGED = {"name": "lstm", "hidden_size": 64, "num_layers": 2, "dropout": 0.0, "embedding_dim": 16, "tie_weights": False,
          "order": 5, "smoothing": "kneser_ney", "k": 1.0, "context": 8, "num_heads": 4, "positions": "learned",
          "stride": None}


def test_a_config_from_the_merged_schema_still_loads(tmp_path):
    cfg = config_from_dict({"model": MERGED})
    assert cfg.model.model_args() == {"hidden_size": 64, "num_layers": 2, "dropout": 0.0, "embedding_dim": 16,
                                      "tie_weights": False}
    old_run = tmp_path / "config.yaml"  # the gpt keys came later: a run from before gpt lacks them
    old_run.write_text(yaml.safe_dump({"model": {k: v for k, v in MERGED.items() if k not in ("num_heads", "stride")}}))
    assert load_config(old_run).model == cfg.model
    # A value set by hand for another family was silently ignored then; now it is refused.
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": {**MERGED, "order": 3, "smoothing": "add_k"}})
    assert str(info.value) == (
        "model.order is 3, but model 'lstm' has no such option (an older charlm ignored it); remove model.order; "
        "model.smoothing is 'add_k', but model 'lstm' has no such option (an older charlm ignored it); "
        "remove model.smoothing")
    # Only a whole merged section is read so: a hand-written key of another family stays an error.
    with pytest.raises(ConfigError, match="'model.order' .* for model 'lstm'"):
        config_from_dict({"model": {"name": "lstm", "order": 5}})


def test_a_checkpoint_from_the_merged_schema_still_loads(tmp_path):
    import torch

    from charlm.checkpoint import load_model, save_checkpoint
    from charlm.data.vocab import Vocab
    from charlm.models import build_model

    vocab = Vocab.build({"a": 3, "b": 2, "c": 1})
    model, model_args = build_model("lstm", len(vocab), hidden_size=64, num_layers=2, embedding_dim=16)
    old = {"model_name": "lstm", "model_args": model_args, "vocab": vocab.to_dict(), "model": model.state_dict(),
           "config": {**build_config({}).to_dict(), "model": MERGED}}
    save_checkpoint(tmp_path / "old.pt", old)
    loaded = load_model(tmp_path / "old.pt")
    assert loaded.config.model.name == "lstm" and not hasattr(loaded.config.model, "order")
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded.model(ids)[0], model.eval()(ids)[0])
    save_checkpoint(tmp_path / "set.pt", {**old, "config": {**old["config"], "model": {**MERGED, "k": 0.5}}})
    with pytest.raises(ConfigError, match="model.k is 0.5, but model 'lstm' has no such option"):
        load_model(tmp_path / "set.pt")


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
    c = build_config({"model": {"name": "ngram"}})  # another family: its keys and the old ones all differ
    assert changed_keys(a, c) == ["model.name", "model.hidden_size", "model.num_layers", "model.dropout",
                                  "model.embedding_dim", "model.tie_weights", "model.order", "model.smoothing",
                                  "model.k"]
    assert "train.max_steps" in RESUMABLE_KEYS and "optim.lr" not in RESUMABLE_KEYS
    assert set(RESUMABLE_KEYS) <= set(valid_keys())


def test_every_shipped_config_loads():
    from charlm.config.shipped import shipped_configs

    configs = shipped_configs()
    assert {"rnn", "lstm", "gru", "tiny", "shakespeare_lstm"} <= set(configs)
    for item in configs.values():
        cfg = load_config(item.name)  # by bare name, as `charlm train --config rnn` does
        assert cfg.name == item.name
        assert cfg.train.max_steps or cfg.train.epochs or cfg.train.max_time, item.path


def test_every_shipped_config_builds_its_model_and_batches():
    from charlm.data.batches import make_sampler
    from charlm.models import build_model
    from charlm.config.shipped import shipped_configs
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


def test_set_reads_a_quoted_string_as_a_yaml_file_does(tmp_path):
    # generate.prefix="\n" in a file is a newline; on --set it was the four characters "\n" with quotes.
    (tmp_path / "c.yaml").write_text('generate:\n  prefix: "\\n"\n  stop: \'a b\'\n')
    from_file = load_config(tmp_path / "c.yaml").generate
    from_set = build_config({}, ['generate.prefix="\\n"', "generate.stop='a b'"]).generate
    assert from_file.prefix == from_set.prefix == "\n" and from_file.stop == from_set.stop == "a b"
    # Text YAML reads as no string stays as typed (a file would need quotes; the shell ate them).
    assert build_config({}, ["generate.prefix=yes", "data.corpus=2024.txt"]).generate.prefix == "yes"


def test_a_shipped_config_on_another_corpus_keeps_the_text_as_is():
    # ngram.yaml normalizes The Time Machine to letters (as D2L does); on your text that would
    # silently score another, smaller alphabet than your other runs on it.
    assert load_config("ngram").data.normalize == "letters"
    assert load_config("ngram", ["data.corpus=kjv.txt"]).data.normalize == "none"
    assert load_config("ngram", corpus="kjv.txt").data.normalize == "none"
    assert load_config("ngram", corpus="kjv.txt").data.corpus == "kjv.txt"
    assert load_config("ngram", ["data.corpus=kjv.txt", "data.normalize=letters"]).data.normalize == "letters"
    assert load_config("ngram", ["data.corpus=timemachine"]).data.normalize == "letters"  # its own corpus
    with pytest.raises(ConfigError, match="given twice"):
        load_config("ngram", ["data.corpus=a.txt"], corpus="b.txt")


def test_every_unbounded_float_is_checked_within_float32_naming_the_key():
    """A float beyond float32 reaches a tensor (Adam's lr, clipping, sampling) and overflows there."""
    import typing

    from charlm.config import SECTIONS

    keys = [f"{section}.{f.name}" for section, cls in SECTIONS.items() if cls is not None
            for f in dataclasses.fields(cls) if float in (typing.get_type_hints(cls)[f.name],
                                                         *typing.get_args(typing.get_type_hints(cls)[f.name]))
            and (f.metadata.get("hi") is None)]
    assert {"optim.lr", "optim.min_lr", "optim.weight_decay", "optim.grad_clip", "generate.temperature"} <= set(keys)
    for key in keys:
        with pytest.raises(ConfigError, match=rf"^{key}: 1e\+39 is beyond float32's range"):
            build_config({}, [f"{key}=1e39"])
    assert build_config({}, ["optim.lr=3e38"]).optim.lr == 3e38  # float32's largest is still a float32


def test_a_learning_rate_beyond_float32_is_one_line_at_the_command_line(tmp_path, monkeypatch):
    from cli_helpers import invoke, one_error_line

    monkeypatch.chdir(tmp_path)
    line = one_error_line(invoke("train", "--config", "tiny", "--set", "optim.lr=1e39"))
    assert line == "error: optim.lr: 1e+39 is beyond float32's range (±3.403e+38)"
    assert not (tmp_path / "runs").exists()
