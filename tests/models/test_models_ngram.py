"""The n-gram counting model: exact probabilities, normalisation, back-off at the start, storage."""

import io
import itertools
import math
import re
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charlm.errors import ConfigError, DataError
from charlm.models import build_model

def fitted(vocab, ids, **options):
    model, _ = build_model("ngram", vocab, **options)
    return model.fit(np.asarray(ids))


def next_token_probs(model, context):
    """P(· | context) from the model, feeding the context from the start of a stream."""
    log_probs, _ = model(torch.tensor([context]))
    return log_probs[0, -1].double().exp()


# --- a slow, obviously-correct reference (dicts and loops) -----------------------------------


def reference_probs(ids, vocab, order, smoothing, context, k=1.0):
    counts = {
        n: Counter(tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))
        for n in range(1, order + 1)
    }
    continuation = {n: Counter(g[1:] for g in counts[n + 1]) for n in range(1, order)}
    top = len(context) + 1

    def table(n):
        return counts[n] if n == top else continuation[n]

    def followers(n, ctx):
        return {g[-1]: c for g, c in table(n).items() if g[:-1] == ctx}

    if smoothing == "add_k":
        seen = followers(top, tuple(context))
        total = sum(seen.values())
        return [(seen.get(w, 0) + k) / (total + k * vocab) for w in range(vocab)]

    def discounts(n):
        # Chen & Goodman's estimates; when a count-of-counts is 0 (few distinct tokens at
        # low orders) the model falls back to Y, and it clamps each D_r to [0.1, r].
        of = Counter(table(n).values())
        y = of[1] / (of[1] + 2 * of[2]) if of[1] + 2 * of[2] else 0.5
        estimates = [r - (r + 1) * y * of[r + 1] / of[r] if of[r] else y for r in (1, 2, 3)]
        return tuple(min(max(d, 0.1), r) for r, d in zip((1, 2, 3), estimates))

    def prob(n, w, ctx):
        if n == 0:
            return 1 / vocab
        lower = prob(n - 1, w, ctx[1:])
        seen = followers(n, ctx)
        total = sum(seen.values())
        if total == 0:
            return lower
        d = (0.0,) + discounts(n)
        c = seen.get(w, 0)
        backoff = sum(d[min(x, 3)] for x in seen.values()) / total
        return max(c - d[min(c, 3)], 0) / total + backoff * lower

    return [prob(top, w, tuple(context)) for w in range(vocab)]


@pytest.fixture(scope="module")
def small_corpus():
    # Skewed so that counts 1..4 all occur at every order (the discounts are defined).
    rng = np.random.default_rng(0)
    return rng.choice(5, size=3000, p=[0.4, 0.3, 0.15, 0.1, 0.05]).tolist()


@pytest.mark.parametrize("smoothing", ["add_k", "kneser_ney"])
@pytest.mark.parametrize("context", [[2], [4, 4], [0, 1, 3], [1, 4, 4], [3, 1, 0]])
def test_matches_reference_implementation(small_corpus, smoothing, context):
    model = fitted(5, small_corpus, order=4, smoothing=smoothing, k=0.5)
    expected = reference_probs(small_corpus, 5, 4, smoothing, context, k=0.5)
    got = next_token_probs(model, context)
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("smoothing", ["add_k", "kneser_ney"])
def test_every_context_sums_to_one(smoothing):
    vocab, order = 6, 3
    ids = np.random.default_rng(1).integers(0, 4, size=400)  # tokens 4 and 5 never seen
    model = fitted(vocab, ids, order=order, smoothing=smoothing)
    sentinel = vocab
    contexts = [list(c) for c in itertools.product(range(vocab), repeat=order - 1)]
    states = torch.tensor([[sentinel, sentinel]] + [[sentinel, c] for c in range(vocab)] + contexts)
    # One step from each state: full contexts, unseen ones, and the start of a text.
    for token in range(vocab):
        log_probs, _ = model(torch.full((len(states), 1), token), states)
        totals = log_probs.exp().sum(-1)
        torch.testing.assert_close(totals, torch.ones(len(states), 1), atol=1e-5, rtol=0)
        assert (log_probs > -math.inf).all()  # unseen tokens keep some probability


@settings(max_examples=40, deadline=None)
@given(
    vocab=st.integers(1, 6),
    order=st.integers(1, 4),
    smoothing=st.sampled_from(["add_k", "kneser_ney"]),
    k=st.floats(0.01, 3.0),
    corpus_seed=st.integers(0, 2**16),
    corpus_size=st.integers(0, 60),
)
def test_any_corpus_gives_distributions(vocab, order, smoothing, k, corpus_seed, corpus_size):
    rng = np.random.default_rng(corpus_seed)
    corpus = rng.integers(0, vocab, size=corpus_size)
    model = fitted(vocab, corpus, order=order, smoothing=smoothing, k=k)
    # States with 0..n−1 start sentinels (always on the left), then a stream.
    states = rng.integers(0, vocab, size=(8, order - 1))
    for row, sentinels in enumerate(rng.integers(0, order, size=8)):
        states[row, :sentinels] = vocab
    states = torch.from_numpy(states)
    log_probs, _ = model(torch.from_numpy(rng.integers(0, vocab, size=(8, 5))), states)
    assert torch.isfinite(log_probs).all()
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(8, 5), atol=1e-5, rtol=0)


def test_start_of_text_backs_off_to_the_context_it_has():
    ids = [0, 1, 2, 0, 1, 3, 0, 1, 2]
    model = fitted(4, ids, order=3, smoothing="add_k", k=1.0)
    # First position: only "0" is known, so the bigram P(· | 0) = (c(0,·) + 1) / (3 + 4).
    expected = torch.tensor([1, 4, 1, 1], dtype=torch.float64) / 7
    torch.testing.assert_close(next_token_probs(model, [0]), expected, atol=1e-6, rtol=0)
    # Second position: the trigram context (0, 1) was followed by 2, 3, 2.
    expected = torch.tensor([1, 1, 3, 2], dtype=torch.float64) / 7
    torch.testing.assert_close(next_token_probs(model, [0, 1]), expected, atol=1e-6, rtol=0)


def test_state_is_the_last_tokens_and_chunks_equal_one_pass(small_corpus):
    model = fitted(5, small_corpus, order=4)
    ids = torch.tensor([small_corpus[:30], small_corpus[100:130]])
    whole, state = model(ids)
    assert torch.equal(state, ids[:, -3:])
    first, mid = model(ids[:, :2])
    assert mid.tolist() == [[5] + ids[0, :2].tolist(), [5] + ids[1, :2].tolist()]
    rest, _ = model(ids[:, 2:], mid)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole)


def test_unigram_ignores_state():
    model = fitted(3, [0, 1, 1, 2, 2, 2], order=1, smoothing="add_k")
    log_probs, state = model(torch.tensor([[0, 2]]))
    assert state.shape == (1, 0)
    expected = torch.tensor([2, 3, 4]) / 9.0
    torch.testing.assert_close(log_probs[0].exp(), expected.expand(2, 3), check_dtype=False)


def test_checkpoint_loads_into_an_unfitted_model(small_corpus):
    model = fitted(5, small_corpus, order=5)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh, _ = build_model("ngram", 5, order=5)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    ids = torch.tensor([small_corpus[:40]])
    assert torch.equal(fresh(ids)[0], model(ids)[0])
    assert fresh.num_tokens.item() == 3000 and fresh.keys_5.numel() == model.keys_5.numel()


def test_unfitted_model_is_uniform_and_invalid_input_is_reported():
    model, _ = build_model("ngram", 4, order=2)
    torch.testing.assert_close(model(torch.tensor([[1, 2]]))[0].exp(), torch.full((1, 2, 4), 0.25))
    with pytest.raises(DataError, match=r"\[0, 4\)"):
        model.fit(np.array([0, 1, 4]))
    with pytest.raises(ConfigError, match="overflows int64"):
        build_model("ngram", 100, order=10)
    model.fit(np.array([0, 1, 2, 3, 0], dtype=np.uint16))  # memmapped corpora are small ints
    assert model.keys_2.tolist() == [1, 6, 11, 12]  # base-4 keys of 01, 12, 23, 30


def perplexity(model, ids, chunk=512):
    x, y = torch.from_numpy(ids[:-1]).view(1, -1), torch.from_numpy(ids[1:])
    state, nll = None, 0.0
    for start in range(0, x.shape[1], chunk):
        log_probs, state = model(x[:, start : start + chunk], state)
        nll -= log_probs[0].gather(1, y[start : start + chunk, None]).sum().item()
    return math.exp(nll / len(y))


def test_kneser_ney_beats_add_k_on_held_out_text(corpus_dir):
    text = re.sub("[^A-Za-z]+", " ", (corpus_dir / "timemachine.txt").read_text()).lower()
    alphabet = {c: i + 1 for i, c in enumerate(sorted(set(text)))}  # id 0 = <unk>
    ids = np.array([alphabet[c] for c in text])
    split = int(len(ids) * 0.9)
    scores = {}
    for smoothing in ("add_k", "kneser_ney"):
        model = fitted(len(alphabet) + 1, ids[:split], order=5, smoothing=smoothing)
        scores[smoothing] = perplexity(model, ids[split:])
    # Measured: add-k (Laplace) 6.29, modified KN 3.89.
    assert 3.7 < scores["kneser_ney"] < 4.1
    assert scores["add_k"] > scores["kneser_ney"] + 1.5
