"""The transformer: causality, its KV cache against re-running the window, strided evaluation."""

import math

import pytest
import torch
import torch.nn.functional as F

from charlm.errors import ConfigError
from charlm.evaluation.evaluate import evaluate_ids
from charlm.models import build_model
from charlm.models.gpt import rotate

VOCAB, CONTEXT = 13, 8


def make_gpt(seed=0, **options):
    torch.manual_seed(seed)
    options = {"num_layers": 2, "num_heads": 2, "embedding_dim": 16, "context": CONTEXT, "dropout": 0.2,
               **options}
    model, _ = build_model("gpt", VOCAB, **options)
    return model.eval()


def ids_of(length, batch=1, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def window_start(i, context, stride):
    """Where the window of input position i starts: 0 in the first window, then it moves by stride."""
    return 0 if i < context else stride * ((i - context) // stride + 1)


WINDOWS = [("learned", None), ("rotary", None), ("learned", 1), ("rotary", 3), ("learned", CONTEXT)]


@pytest.mark.parametrize("positions, stride", WINDOWS)
def test_cached_generation_equals_rerunning_the_window(positions, stride):
    model = make_gpt(positions=positions, stride=stride)
    ids = ids_of(3 * CONTEXT + 5, batch=2, seed=1)  # well past the context length
    stride = model.stride
    with torch.inference_mode():
        logits, state = model(ids[:, :5])  # the prefix in one call, then one token per call
        cached = [logits[:, -1]]
        for i in range(5, ids.shape[1]):
            logits, state = model(ids[:, i:i + 1], state)
            cached.append(logits[:, -1])
            assert state[0].shape[1] <= CONTEXT and state[1].shape[2] == state[0].shape[1]
        for i in range(4, ids.shape[1]):
            start = window_start(i, CONTEXT, stride)
            fresh, _ = model(ids[:, start:i + 1])  # no cache: the window run from scratch
            torch.testing.assert_close(cached[i - 4], fresh[:, -1], atol=1e-5, rtol=1e-5)
    if stride == 1:  # nanoGPT's crop: always exactly the last `context` tokens
        assert [window_start(i, CONTEXT, 1) for i in (CONTEXT - 1, CONTEXT, 20)] == [0, 1, 20 - CONTEXT + 1]


@pytest.mark.parametrize("positions, stride", WINDOWS)
def test_sliding_evaluation_equals_a_brute_force_window(positions, stride):
    model = make_gpt(positions=positions, stride=stride)
    ids = ids_of(5 * CONTEXT + 3, seed=2)[0]
    x, y = ids[:-1], ids[1:]
    # The usual strided evaluation (as in Hugging Face's perplexity guide): windows of `context`
    # inputs starting every `stride`, each scoring only the targets no earlier window scored.
    total, scored, previous_end = 0.0, 0, 0
    for begin in range(0, len(x), model.stride):
        end = min(begin + CONTEXT, len(x))
        new = end - previous_end
        with torch.no_grad():
            logits, _ = model(x[None, begin:end])
        total += F.cross_entropy(logits[0, -new:], y[end - new:end], reduction="sum").item()
        scored, previous_end = scored + new, end
        if end == len(x):
            break
    assert scored == len(y)
    for chunk_len in (3, CONTEXT, 100):
        result = evaluate_ids(model, ids, chunk_len=chunk_len, unk_id=None)
        assert result.nats_per_token == pytest.approx(total / len(y), abs=1e-5)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_a_position_sees_itself_and_the_past_only(positions):
    model = make_gpt(positions=positions)
    ids = ids_of(CONTEXT)
    logits, _ = model(ids)
    t = 4
    for position, should_change in [(t + 1, False), (CONTEXT - 1, False), (t, True), (0, True)]:
        perturbed = ids.clone()
        perturbed[0, position] = (perturbed[0, position] + 1) % VOCAB
        changed = not torch.allclose(model(perturbed)[0][:, t], logits[:, t])
        assert changed == should_change, f"perturbing position {position}"


def test_positions_matter():
    for positions in ("learned", "rotary"):
        model = make_gpt(positions=positions)
        ids = torch.tensor([[1, 2, 1, 2, 3]])
        swapped = torch.tensor([[2, 1, 1, 2, 3]])  # same multiset before the last token
        assert not torch.allclose(model(ids)[0][:, -1], model(swapped)[0][:, -1]), positions


def test_rotary_scores_depend_only_on_the_offset():
    torch.manual_seed(0)
    model = make_gpt(positions="rotary")
    q, k = torch.randn(1, 1, 1, model.head_dim), torch.randn(1, 1, 1, model.head_dim)

    def score(m, n):  # q at position m, k at position n
        at = lambda x, p: rotate(x, model.cos[p:p + 1], model.sin[p:p + 1])  # noqa: E731
        return (at(q, m) * at(k, n)).sum().item()

    assert score(5, 2) == pytest.approx(score(3, 0), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
    assert score(0, 0) == pytest.approx((q * k).sum().item(), abs=1e-6)  # position 0: no rotation


def test_rotary_has_no_position_weights_and_learned_has_one_row_per_position():
    learned, rotary = make_gpt(positions="learned"), make_gpt(positions="rotary")
    assert learned.position.weight.shape == (CONTEXT, 16)
    assert rotary.position is None and "cos" not in rotary.state_dict()
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(learned) - n_params(rotary) == CONTEXT * 16


def test_tie_weights_shares_the_embedding():
    tied, untied = make_gpt(tie_weights=True), make_gpt()
    assert tied.decoder.weight is tied.embedding.weight
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(untied) - n_params(tied) == VOCAB * 16


def test_dropout_is_active_in_training_only():
    model = make_gpt(dropout=0.5)
    ids = ids_of(CONTEXT)
    assert torch.equal(model(ids)[0], model(ids)[0])
    model.train()
    assert not torch.equal(model(ids)[0], model(ids)[0])


def test_the_cache_follows_the_weights_dtype():
    model = make_gpt(positions="rotary").to(torch.bfloat16)
    with torch.inference_mode():
        logits, state = model(ids_of(CONTEXT + 3, batch=2))
        logits, state = model(ids_of(1, batch=2), state)
    assert logits.dtype == torch.bfloat16 and all(s.dtype == torch.bfloat16 for s in state[1:])


def test_training_refuses_carried_state_and_windows_past_the_context():
    model = make_gpt()
    model.check_training(CONTEXT, carries_state=False)
    with pytest.raises(ConfigError, match="data.sampling: random"):
        model.check_training(CONTEXT, carries_state=True)
    with pytest.raises(ConfigError, match=r"data.num_steps \(9\) is longer than model.context \(8\)"):
        model.check_training(CONTEXT + 1, carries_state=False)


def test_a_transformer_learns_to_copy_from_far_back():
    # Next token = the token 6 back: attention finds it; a uniform guess scores ln 13 ≈ 2.56.
    torch.manual_seed(0)
    model, _ = build_model("gpt", VOCAB, num_layers=2, num_heads=2, embedding_dim=32, context=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        start = torch.randint(0, VOCAB, (32, 6))
        seq = torch.cat([start, start, start], 1)[:, :17]  # (32, 17), period 6
        logits, _ = model(seq[:, :-1])
        loss = F.cross_entropy(logits[:, 6:].reshape(-1, VOCAB), seq[:, 7:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 < math.log(VOCAB)
