"""Next-token strategies on hand-made logits."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charlm.errors import ConfigError
from charlm.generation.sampling import (
    available_strategies,
    get_strategy,
    top_k_mask,
    top_p_mask,
    validate_sampling,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def counts(strategy, logits, n=2000, **kw):
    """How often each id is drawn over n draws of a (n, V) batch."""
    batch = logits.expand(n, -1)
    ids = get_strategy(strategy)(batch, gen(1), **kw)
    assert ids.shape == (n,) and ids.dtype == torch.long
    return torch.bincount(ids, minlength=logits.shape[-1])


def test_registry_lists_the_four_strategies():
    assert available_strategies() == ["greedy", "sample", "top_k", "top_p"]


def test_unknown_strategy_names_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'top_k'"):
        get_strategy("topk")


def test_greedy_picks_the_argmax_per_row():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    assert get_strategy("greedy")(logits, gen()).tolist() == [1, 0]


def test_sample_follows_the_softmax():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    freq = counts("sample", logits, n=20000).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.02)


def test_draws_are_exactly_torch_multinomials():
    probs = torch.softmax(torch.randn(64, 50, generator=gen(9)), -1)
    ours, theirs = gen(4), gen(4)
    for _ in range(20):
        want = torch.multinomial(probs, 1, generator=theirs).view(-1)
        assert torch.equal(get_strategy("sample")(probs.log(), ours), want)


def test_same_generator_seed_same_draws():
    logits = torch.randn(64, 30, generator=gen(5))
    a = get_strategy("sample")(logits, gen(3))
    b = get_strategy("sample")(logits, gen(3))
    assert torch.equal(a, b)


def test_temperature_zero_is_greedy_for_every_sampler():
    logits = torch.randn(50, 12, generator=gen(2))
    want = logits.argmax(-1)
    assert torch.equal(get_strategy("sample")(logits, gen(), temperature=0.0), want)
    assert torch.equal(get_strategy("top_k")(logits, gen(), temperature=0.0, top_k=5), want)
    assert torch.equal(get_strategy("top_p")(logits, gen(), temperature=0.0, top_p=0.5), want)


@pytest.mark.parametrize("temperature", [1e-3, 1e-8, 1e-30, 1e-40])
def test_tiny_temperature_approaches_greedy_without_nan(temperature):
    logits = torch.tensor([[1.0, 1.5, 0.2, 1.4]])
    assert counts("sample", logits, n=500, temperature=temperature).tolist() == [0, 500, 0, 0]


def test_high_temperature_flattens():
    logits = torch.log(torch.tensor([[0.9, 0.1]]))
    freq = counts("sample", logits, n=20000, temperature=100.0).float() / 20000
    assert abs(freq[0].item() - 0.5) < 0.03


def test_neg_inf_logits_are_never_drawn():
    logits = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf")]])
    for name, kw in [("sample", {}), ("top_k", {"top_k": 3}), ("top_p", {"top_p": 0.99})]:
        c = counts(name, logits, n=1000, **kw)
        assert c[1] == 0 and c[3] == 0, name


def test_all_neg_inf_row_does_not_crash():
    logits = torch.full((2, 4), float("-inf"))
    ids = get_strategy("sample")(logits, gen())
    assert ((ids >= 0) & (ids < 4)).all()


def test_top_k_never_leaves_the_k_largest():
    logits = torch.tensor([[0.0, 2.0, 1.0, 3.0, -1.0, 2.5]])
    c = counts("top_k", logits, n=5000, top_k=3)
    assert set(torch.nonzero(c).flatten().tolist()) == {1, 3, 5}


def test_top_k_mask_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert top_k_mask(logits, 2).sum().item() == 2
    assert top_k_mask(logits, 10).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.1, 0.3, 0.05]])
    logits = probs.log()
    # sorted: 0.5 (id 1), 0.3 (id 3), 0.1 (id 2), ...
    assert top_p_mask(logits, 0.5).nonzero()[:, 1].tolist() == [1]
    assert top_p_mask(logits, 0.51).nonzero()[:, 1].tolist() == [1, 3]
    assert top_p_mask(logits, 0.8).nonzero()[:, 1].tolist() == [1, 3]
    assert top_p_mask(logits, 0.85).nonzero()[:, 1].tolist() == [1, 2, 3]
    assert top_p_mask(logits, 1e-9).nonzero()[:, 1].tolist() == [1]
    c = counts("top_p", logits, n=5000, top_p=0.8)
    assert set(torch.nonzero(c).flatten().tolist()) == {1, 3}
    # renormalised within the nucleus: 0.5 / 0.8 and 0.3 / 0.8
    assert abs(c[1].item() / 5000 - 0.625) < 0.03


def test_top_p_one_keeps_everything():
    logits = torch.log(torch.tensor([[0.97, 0.01, 0.01, 0.01]]))
    c = counts("top_p", logits, n=5000, top_p=1.0)
    assert (c > 0).all()


@pytest.mark.parametrize(
    "args, match",
    [
        (("sample", -0.1, None, None), "temperature"),
        (("sample", math.nan, None, None), "temperature"),
        (("top_k", 1.0, 0, None), "top_k must be"),
        (("top_k", 1.0, None, None), "needs top_k"),
        (("top_p", 1.0, None, 0.0), r"top_p must be in \(0, 1\]"),
        (("top_p", 1.0, None, 1.5), "top_p must be"),
        (("top_p", 1.0, None, None), "needs top_p"),
        (("nucleus", 1.0, None, None), "unknown sampling strategy"),
    ],
)
def test_invalid_settings_raise_config_error(args, match):
    with pytest.raises(ConfigError, match=match):
        validate_sampling(*args)


def test_valid_settings_pass():
    validate_sampling("greedy", 0.0)
    validate_sampling("top_k", 0.7, top_k=1)
    validate_sampling("top_p", 2.0, top_p=1.0)


logit_rows = st.lists(
    st.one_of(st.floats(-30, 30), st.just(float("-inf"))), min_size=1, max_size=12
).filter(lambda row: any(math.isfinite(v) for v in row))


@settings(max_examples=60, deadline=None)
@given(
    row=logit_rows,
    k=st.integers(1, 15),
    p=st.floats(0.01, 1.0),
    temperature=st.sampled_from([0.0, 0.1, 1.0, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_draws_stay_in_range_and_in_the_kept_set(row, k, p, temperature, seed):
    logits = torch.tensor([row]).expand(16, -1)
    V = len(row)
    finite = torch.isfinite(logits[0])
    # Judged by value, not index: among tied logits any one may be the one kept.
    kth = logits[0].topk(min(k, V)).values[-1]
    nucleus_min = logits[0][top_p_mask(logits, p, temperature)[0]].min()
    for name, kw, allowed in [
        ("sample", {}, finite),
        ("top_k", {"top_k": k}, (logits[0] >= kth) & finite),
        ("top_p", {"top_p": p}, (logits[0] >= nucleus_min) & finite),
    ]:
        ids = get_strategy(name)(logits, gen(seed), temperature=temperature, **kw)
        assert ((ids >= 0) & (ids < V)).all()
        if temperature == 0:
            # argmax of the row is always in every kept set
            assert (ids == logits[0].argmax()).all()
        else:
            assert allowed[ids].all(), (name, ids.tolist())
