"""The planner's rules against made-up throughput tables: no device is measured here."""

from dataclasses import replace

import pytest

from charlm.config import build_config
from charlm.errors import ConfigError
from charlm.planning import planner
from charlm.planning.planner import CANDIDATES, RULES, Budget, CorpusProfile, copy_share, parse_duration, plan

SHAKESPEARE = CorpusProfile(corpus="tinyshakespeare", train_tokens=1_003_854, vocab_size=66)


def laptop(c):
    """A 2-core CPU: tokens/s falling with the recurrent weights, as measured on one."""
    return 3e10 / (c.hidden_size ** 2 * c.num_layers * 4 + 2e5) * {32: 1.0, 64: 1.15, 128: 1.2}[c.batch_size]


def gpu(c):
    return 2000 * laptop(c)


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400),
                                           ("2.5m", 150), (" 10S ", 10)])
def test_parse_duration_reads_seconds_minutes_and_hours(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m", "-5m", "0s", "5x", "1e400", "nan", "5m5"])
def test_parse_duration_refuses_what_is_not_a_positive_duration(text):
    with pytest.raises(ConfigError, match="--time"):
        parse_duration(text)


def test_a_faster_device_plans_a_larger_model_and_a_longer_budget_too():
    five_minutes = plan(SHAKESPEARE, Budget(seconds=300), laptop)
    one_hour = plan(SHAKESPEARE, Budget(seconds=3600), laptop)
    on_gpu = plan(SHAKESPEARE, Budget(seconds=300), gpu)
    assert five_minutes.parameters < one_hour.parameters <= on_gpu.parameters
    assert on_gpu.config["data"]["batch_size"] > five_minutes.config["data"]["batch_size"]


def test_the_chosen_model_gets_enough_tokens_per_parameter_and_the_next_size_would_not():
    chosen = plan(SHAKESPEARE, Budget(seconds=300), laptop)
    assert chosen.tokens >= RULES.tokens_per_parameter * chosen.parameters
    larger = [c for c in CANDIDATES if c.family == "lstm" and c.parameters(66) > chosen.parameters]
    assert larger and all(laptop(c) * RULES.train_seconds(300) < RULES.tokens_per_parameter * c.parameters(66)
                          for c in larger)


def test_more_epochs_of_a_small_text_get_more_dropout():
    small = CorpusProfile(corpus="words.txt", train_tokens=50_000, vocab_size=30)
    assert plan(small, Budget(seconds=600), laptop).config["model"]["dropout"] == RULES.max_dropout
    assert plan(SHAKESPEARE, Budget(seconds=60), laptop).config["model"]["dropout"] < RULES.max_dropout


def test_many_epochs_of_a_small_text_double_the_lr_of_the_same_model():
    small = CorpusProfile(corpus="small.txt", train_tokens=150_000, vocab_size=30)
    large = CorpusProfile(corpus="large.txt", train_tokens=50_000_000, vocab_size=30)
    many, few = plan(small, Budget(seconds=300), laptop), plan(large, Budget(seconds=300), laptop)
    assert many.tokens / small.train_tokens > RULES.many_epochs > few.tokens / large.train_tokens
    assert many.candidate == few.candidate  # the same model, so only the epochs differ
    assert many.config["optim"]["lr"] == pytest.approx(RULES.many_epochs_lr_factor * few.config["optim"]["lr"])
    assert "twice the lr" in many.describe() and "twice the lr" not in few.describe()


def test_a_short_budget_takes_the_smaller_batch_for_more_steps():
    short, long = plan(SHAKESPEARE, Budget(seconds=30), laptop), plan(SHAKESPEARE, Budget(seconds=3600), laptop)
    assert short.config["data"]["batch_size"] < long.config["data"]["batch_size"]


def test_a_budget_too_short_names_the_shortest_sensible_one_and_that_one_plans():
    with pytest.raises(ConfigError, match="shortest sensible budget is") as failure:
        plan(SHAKESPEARE, Budget(seconds=1), laptop)
    need = int(str(failure.value).rsplit(" ", 1)[1].rstrip("s"))
    assert plan(SHAKESPEARE, Budget(seconds=need), laptop).tokens >= RULES.min_tokens


def test_only_the_shapes_up_to_the_first_misfit_are_measured():
    asked = []
    plan(SHAKESPEARE, Budget(seconds=300), lambda c: asked.append(c) or laptop(c))
    chosen = plan(SHAKESPEARE, Budget(seconds=300), laptop)
    assert max(c.parameters(66) for c in asked) > chosen.parameters  # one size past the choice
    assert {c.family for c in asked} == {"lstm"}  # Shakespeare repeats little: only LSTMs are considered
    assert len({(c.num_layers, c.hidden_size) for c in asked}) < len({(c.num_layers, c.hidden_size)
                                                                      for c in CANDIDATES if c.family == "lstm"})


def test_a_model_that_does_not_fit_in_memory_is_never_planned():
    fits = plan(SHAKESPEARE, Budget(seconds=3600), lambda c: 0.0 if c.hidden_size >= 512 else gpu(c))
    assert fits.candidate.hidden_size < 512


def test_a_steps_budget_plans_without_measuring():
    planned = plan(SHAKESPEARE, Budget(steps=2000), None)
    assert planned.config["train"] == {"eval_every": 2000 // RULES.evaluations, "max_steps": 2000}
    assert planned.tokens == 2000 * planned.config["data"]["batch_size"] * planned.config["data"]["num_steps"]


def test_the_plan_is_a_complete_valid_config():
    planned = plan(SHAKESPEARE, Budget(seconds=300), laptop)
    cfg = build_config(planned.config, name="plan")
    assert (cfg.model.name, cfg.model.hidden_size, cfg.data.corpus, cfg.train.max_time) == (
        "lstm", planned.candidate.hidden_size, "tinyshakespeare", 300)
    assert "epochs of 1.0 M" in planned.summary() and f"lr {cfg.optim.lr:.3g}" in planned.summary()


def test_word_level_text_is_left_to_a_config():
    with pytest.raises(ConfigError, match="character-level"):
        plan(CorpusProfile("w", 10**6, 5000, level="word"), Budget(seconds=300), laptop)


@pytest.mark.parametrize("seconds, steps", [(None, None), (60.0, 100)])
def test_a_budget_is_a_time_or_a_step_count(seconds, steps):
    with pytest.raises(ConfigError, match="one budget"):
        Budget(seconds, steps)


def test_a_small_text_caps_the_model_whatever_the_device():
    words = CorpusProfile(corpus="words.txt", train_tokens=100_000, vocab_size=30)
    capped = plan(words, Budget(seconds=3600), gpu)
    assert capped.parameters <= RULES.parameters_per_train_token * words.train_tokens
    assert plan(SHAKESPEARE, Budget(seconds=3600), gpu).parameters > capped.parameters


def test_validation_samples_the_split_only_where_scoring_it_whole_would_overrun_its_share_of_the_time():
    small = plan(CorpusProfile("timemachine", 156_000, 28, val_tokens=17_343), Budget(seconds=180), laptop)
    assert "eval_tokens" not in small.config["train"]  # 12 whole-split scores fit in 5 % of 3 minutes
    large = plan(CorpusProfile("big.txt", 90_000_000, 66, val_tokens=10_000_000), Budget(seconds=300), laptop)
    sample = large.config["train"]["eval_tokens"]
    seconds = RULES.evaluations * sample / (RULES.eval_speedup * laptop(large.candidate))
    assert 10_000 <= sample < 10_000_000 and seconds <= 300 * RULES.eval_share
    assert "validation on" in large.describe()


def test_epochs_are_counted_at_the_speed_a_whole_run_realizes_not_the_bare_step():
    planned = plan(SHAKESPEARE, Budget(seconds=300), laptop)
    bare = laptop(planned.candidate) * 300 * (1 - RULES.eval_share)
    assert planned.tokens == int(bare * RULES.realized_speed) < bare


def test_copy_share_counts_the_characters_a_copy_from_the_last_window_predicts():
    def ids(text):
        return [ord(ch) for ch in text]

    words = "\n".join(["abandon", "abandoned", "abandoning", "abandonment", "abandons", "abase", "abased",
                        "abasement", "abash", "abashed", "abashes"] * 3)
    prose = "It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith"
    assert copy_share(ids(words)) > 0.5 > 0.1 > copy_share(ids(prose))
    assert copy_share(ids("abcd" * 50)) > 0.95  # a loop is all copies
    assert copy_share(ids("abcd" * 50), window=2) == 0  # but not when its period is past the window


def test_a_text_that_repeats_within_a_window_gets_a_transformer_on_random_windows():
    words = CorpusProfile(corpus="words.txt", train_tokens=1_000_000, vocab_size=60, copy_share=0.56)
    planned = plan(words, Budget(seconds=300), laptop)
    cfg = build_config(planned.config, name="plan")
    assert (cfg.model.name, cfg.data.sampling, cfg.model.context) == ("gpt", "random", cfg.data.num_steps)
    assert cfg.model.embedding_dim % cfg.model.num_heads == 0 and "a transformer: 56%" in planned.describe()
    assert planned.tokens >= RULES.tokens_per_parameter * planned.parameters or planned.candidate == min(
        (c for c in CANDIDATES if c.family == "gpt"), key=lambda c: (c.parameters(60), -c.batch_size))
    prose = plan(SHAKESPEARE, Budget(seconds=300), laptop)
    assert prose.config["model"]["name"] == "lstm" and "an LSTM:" in prose.describe()


def test_a_transformer_warms_up_for_its_100_steps_where_an_lstm_takes_5_percent():
    words = CorpusProfile(corpus="words.txt", train_tokens=1_000_000, vocab_size=60, copy_share=0.56)
    transformer, lstm = plan(words, Budget(steps=2000), None), plan(SHAKESPEARE, Budget(steps=1000), None)
    assert transformer.config["optim"]["warmup_steps"] == RULES.gpt_warmup_steps == 100
    assert lstm.config["optim"]["warmup_steps"] == 1000 // 20
    assert plan(words, Budget(steps=300), None, rules=replace(RULES, min_tokens=1)).config["optim"][
        "warmup_steps"] == 300 // 4  # a short run warms up for a quarter of it
    assert transformer.config["optim"]["min_lr"] == pytest.approx(transformer.config["optim"]["lr"] / 10)


def test_a_transformer_gets_less_dropout_than_an_lstm_for_the_same_epochs():
    def plans(copy):
        text = CorpusProfile(corpus="t.txt", train_tokens=2_000_000, vocab_size=60, copy_share=copy)
        return [plan(text, Budget(seconds=s), laptop) for s in (120, 3600)]

    gpt_short, gpt_long = plans(0.6)
    assert gpt_short.config["model"]["name"] == "gpt" and gpt_short.epochs < 4
    assert gpt_short.config["model"]["dropout"] == 0.0 < gpt_long.config["model"]["dropout"]
    for e in (0.5, 2, 3, 6, 12, 30):  # at equal epochs, never more than an LSTM's
        assert planner._dropout(e, RULES, "gpt") <= planner._dropout(e, RULES, "lstm")
