"""The model registry and the forward/state contract, checked for every registered model."""

import io

import numpy as np
import pytest
import torch

from charlm.errors import ConfigError
from charlm.models.recurrent import trust_inputs_by_count
from charlm.models import (
    available_models,
    build_model,
    detach_state,
    model_options,
    register_model,
    restart_rows,
)

VOCAB = 11
# Small options for every family, as a config would give them.
RECURRENT = dict(hidden_size=16, num_layers=2, dropout=0.1)
SMALL_OPTIONS = {
    "rnn": RECURRENT, "gru": RECURRENT, "lstm": RECURRENT,
    "rnn_scratch": dict(hidden_size=16),  # a single layer by design
    "mlp": dict(hidden_size=16, dropout=0.1, context=4),
    "ngram": dict(order=3),
    # gpt has no one-hot input: its width is embedding_dim, split into heads.
    "gpt": dict(num_layers=2, dropout=0.1, embedding_dim=8, num_heads=2, context=4),
}


def make_model(name, seed=0, **overrides):
    torch.manual_seed(seed)
    model, model_args = build_model(name, VOCAB, **{**SMALL_OPTIONS[name], **overrides})
    if not model.trainable:
        model.fit(np.random.default_rng(seed).integers(0, VOCAB, size=500))
    return model, model_args


def random_ids(batch=3, steps=9, seed=1):
    return torch.randint(0, VOCAB, (batch, steps), generator=torch.Generator().manual_seed(seed))


def assert_states_equal(a, b):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b)
    else:
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_states_equal(x, y)


def test_registry_lists_every_family():
    assert available_models() == ["gpt", "gru", "lstm", "mlp", "ngram", "rnn", "rnn_scratch"]
    assert model_options("gpt") == {"num_layers", "num_heads", "embedding_dim", "context", "dropout",
                                    "positions", "tie_weights", "stride"}
    assert model_options("ngram") == {"order", "smoothing", "k"}
    assert model_options("mlp") == {"context", "embedding_dim", "hidden_size", "dropout"}
    recurrent = {"hidden_size", "num_layers", "dropout", "embedding_dim", "tie_weights"}
    assert model_options("lstm") == model_options("gru") == model_options("rnn") == recurrent


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'lstm'"):
        build_model("lstn", VOCAB)
    with pytest.raises(ConfigError, match="did you mean 'rnn_scratch'"):
        model_options("rnn_scrach")


def test_register_twice_is_a_programming_error():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("rnn")(type("Dup", (torch.nn.Module,), {"trainable": True}))


def test_build_model_refuses_other_families_options_and_reports_every_used_one():
    model, model_args = build_model("gru", VOCAB, hidden_size=8)
    assert model_args == {
        "hidden_size": 8,
        "num_layers": 1,
        "dropout": 0.0,
        "embedding_dim": None,
        "tie_weights": False,
    }
    assert model.rnn.hidden_size == 8 and model.rnn.input_size == VOCAB
    _, ngram_args = build_model("ngram", VOCAB, order=2)
    assert ngram_args == {"order": 2, "smoothing": "kneser_ney", "k": 1.0}
    with pytest.raises(ConfigError) as info:
        build_model("gru", VOCAB, hidden_size=8, order=7, context=2)
    assert str(info.value) == (
        "unknown config keys 'model.order' (an option of ngram), 'model.context' (an option of gpt, mlp) for "
        "model 'gru'; gru takes model.hidden_size, model.num_layers, model.dropout, model.embedding_dim, "
        "model.tie_weights")


@pytest.mark.parametrize("name", available_models())
def test_python_callers_and_configs_get_the_same_defaults(name):
    from charlm.config import build_config

    _, model_args = build_model(name, VOCAB)  # one set of defaults: the family's options class
    assert model_args == build_config({"model": {"name": name}}).model.model_args()


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("rnn", {"hidden_size": 0}, "hidden_size"),
        ("lstm", {"dropout": 1.5}, "dropout"),
        ("rnn_scratch", {"num_layers": 2}, "single layer"),
        ("mlp", {"context": 0}, "context"),
        ("ngram", {"smoothing": "kneser"}, "did you mean 'kneser_ney'"),
        ("ngram", {"k": 0}, "k"),
        ("rnn", {"hidden_size": [8]}, "model.hidden_size: expected an integer"),
        ("gpt", {"embedding_dim": None}, "model.embedding_dim: expected an integer, got None"),
        ("gpt", {"embedding_dim": 10, "num_heads": 4}, "divisible by model.num_heads"),
        ("gpt", {"embedding_dim": 12, "num_heads": 4, "positions": "rotary"}, "even head size"),
        ("gpt", {"embedding_dim": 8, "positions": "sinusoid"}, "'learned' | 'rotary'"),
        ("gpt", {"embedding_dim": 8, "context": 4, "stride": 5}, "at most model.context"),
        ("lstm", {"order": 3}, "an option of ngram"),
    ],
)
def test_invalid_options_raise_config_error(name, options, message):
    with pytest.raises(ConfigError) as info:
        build_model(name, VOCAB, **options)
    assert message in str(info.value)


def test_tie_weights_shares_the_embedding():
    tied, _ = build_model("lstm", VOCAB, hidden_size=12, embedding_dim=12, tie_weights=True)
    untied, _ = build_model("lstm", VOCAB, hidden_size=12, embedding_dim=12)
    assert tied.decoder.weight is tied.embedding.weight
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(untied) - n_params(tied) == VOCAB * 12
    assert "decoder.weight" in tied.state_dict()  # loads into an untied-then-tied model too
    for embedding_dim in (None, 8):
        with pytest.raises(ConfigError, match="model.embedding_dim == model.hidden_size"):
            build_model("rnn", VOCAB, hidden_size=12, embedding_dim=embedding_dim, tie_weights=True)


@pytest.mark.parametrize("name", available_models())
def test_forward_shapes_and_initial_state(name):
    model, _ = make_model(name)
    model.eval()
    ids = random_ids()
    logits, state = model(ids)
    assert logits.shape == (3, 9, VOCAB) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    explicit, explicit_state = model(ids, model.init_state(3, ids.device))
    torch.testing.assert_close(logits, explicit)
    assert_states_equal(state, explicit_state)


@pytest.mark.parametrize("name", available_models())
def test_carried_state_equals_one_pass(name):
    model, _ = make_model(name)
    model.eval()  # dropout off: chunks must give exactly what one pass gives
    ids = random_ids(steps=14)
    whole, whole_state = model(ids)
    state, pieces = None, []
    for chunk in ids.split([5, 1, 1, 7], dim=1):  # includes one-step chunks (the fast path)
        logits, state = model(chunk, state)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, atol=1e-5, rtol=1e-5)
    assert_states_equal(state, whole_state)


@pytest.mark.parametrize("name", available_models())
def test_detach_state_cuts_history_and_keeps_structure(name):
    model, _ = make_model(name)
    _, state = model(random_ids())
    detached = detach_state(state)
    parts = [detached] if isinstance(detached, torch.Tensor) else list(detached)
    assert type(detached) is type(state)
    assert all(not p.requires_grad and p.grad_fn is None for p in parts)
    # detaching does not copy: values are the same tensors' data
    originals = [state] if isinstance(state, torch.Tensor) else list(state)
    assert all(p.data_ptr() == o.data_ptr() for p, o in zip(parts, originals))


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm", "rnn_scratch"])
def test_restart_rows_gives_chosen_rows_the_initial_state_and_keeps_the_others(name):
    from charlm.training.distributed import state_batch_dims

    model, _ = make_model(name)
    model.eval()
    ids = random_ids(batch=3)
    _, carried = model(ids)
    rows = torch.tensor([False, True, False])
    state = restart_rows(carried, model.init_state(3), rows, state_batch_dims(model))
    # Row 1 now reads the next text as a fresh start would; rows 0 and 2 as if nothing happened.
    nxt = random_ids(batch=3, seed=2)
    restarted, _ = model(nxt, state)
    fresh, _ = model(nxt[1:2])
    kept, _ = model(nxt, carried)
    torch.testing.assert_close(restarted[1], fresh[0])
    torch.testing.assert_close(restarted[[0, 2]], kept[[0, 2]])
    assert not torch.allclose(restarted[1], kept[1])


def test_detach_state_handles_none_and_nesting():
    x = torch.ones(2, requires_grad=True) * 2
    nested = detach_state((x, [x, None]))
    assert detach_state(None) is None
    assert isinstance(nested, tuple) and isinstance(nested[1], list)
    assert nested[0].grad_fn is None and nested[1][0].grad_fn is None and nested[1][1] is None
    with pytest.raises(TypeError):
        detach_state("h")


@pytest.mark.parametrize("name", [n for n in available_models() if n != "ngram"])
def test_gradients_reach_every_parameter(name):
    model, _ = make_model(name, embedding_dim=8)
    model.train()
    ids = random_ids(steps=6)
    logits, _ = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    loss.backward()
    assert model.trainable
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_counting_model_has_no_parameters():
    model, _ = make_model("ngram")
    assert model.trainable is False and list(model.parameters()) == []


@pytest.mark.parametrize("name", available_models())
def test_checkpoint_round_trip(name):
    model, model_args = make_model(name, seed=3)
    model.eval()
    buffer = io.BytesIO()
    torch.save({"model_args": model_args, "weights": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    torch.manual_seed(99)  # a fresh model with other random weights
    rebuilt, rebuilt_args = build_model(name, VOCAB, **saved["model_args"])
    assert rebuilt_args == model_args
    rebuilt.load_state_dict(saved["weights"])
    rebuilt.eval()
    ids = random_ids()
    torch.testing.assert_close(rebuilt(ids)[0], model(ids)[0], atol=0, rtol=0)


@pytest.mark.parametrize("name", available_models())
def test_vocab_size_is_part_of_the_contract(name):
    """evaluate and generate read model.vocab_size instead of probing with a forward pass."""
    model, _ = make_model(name)
    logits, _ = model(random_ids())
    assert model.vocab_size == VOCAB == logits.shape[-1]


def test_rare_tokens_read_as_their_row_blended_with_the_mean_row_by_count():
    torch.manual_seed(0)
    model, _ = build_model("lstm", 5, hidden_size=8, embedding_dim=4)
    weight = model.embedding.weight.detach().clone()
    ids = torch.arange(5)[None]
    torch.testing.assert_close(model.input_rows(ids)[0], weight, rtol=0, atol=0)  # a model as built trusts every row
    trust_inputs_by_count(model, [0, 50, 100, 1000, 7])  # RARE_TOKEN_COUNT = 100
    assert torch.equal(model.embedding.weight, weight)  # the weights are not touched: the reading is
    trust = torch.tensor([0.0, 0.5, 1.0, 1.0, 0.07])
    mean = (trust @ weight) / trust.sum()
    read = model.input_rows(ids)[0]
    assert torch.equal(read[2:4], weight[2:4])
    torch.testing.assert_close(read[0], mean)  # never seen: the mean row
    torch.testing.assert_close(read[1], 0.5 * weight[1] + 0.5 * mean)
    state = model.state_dict()
    assert torch.equal(state["row_trust"], trust)  # saved with the weights, so evaluation reads the same
    del state["row_trust"]  # a checkpoint from before the blend: every row trusted, as its model did
    model.load_state_dict(state)
    assert torch.equal(model.row_trust, torch.ones(5))


def test_the_scratch_rnns_rare_rows_start_scaled_toward_zero():
    torch.manual_seed(0)
    model, _ = build_model("rnn_scratch", 5, hidden_size=8, embedding_dim=4)
    before = model.embedding.weight.detach().clone()
    trust_inputs_by_count(model, [0, 50, 100, 1000, 7])
    after = model.embedding.weight.detach()
    assert torch.equal(after[2:4], before[2:4]) and not after[0].any()
    torch.testing.assert_close(after[[1, 4]], before[[1, 4]] * torch.tensor([[0.5], [0.07]]))
    gpt, _ = build_model("gpt", 5, num_layers=1, num_heads=1, embedding_dim=4, context=8)
    kept = gpt.embedding.weight.detach().clone()
    trust_inputs_by_count(gpt, [0] * 5)  # a windowed model starts every window afresh: left as built
    assert torch.equal(gpt.embedding.weight, kept)
