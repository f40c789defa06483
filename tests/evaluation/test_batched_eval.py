"""Batched evaluation equals the B = 1 sequential pass: every family, several lengths, a model that never forgets."""

import numpy as np
import pytest
import torch
from torch import nn

from charlm.evaluation import batched_eval
from charlm.evaluation.batched_eval import LOGIT_FLOATS, plan, score_batched
from charlm.data.vocab import Vocab
from charlm.evaluation.evaluate import evaluate_ids, score_text
from charlm.models import build_model
from charlm.device.precision import cpu_has_native_bf16

V = 30
FAMILIES = {
    "rnn": dict(hidden_size=32, embedding_dim=8),
    "gru": dict(hidden_size=32, num_layers=2, embedding_dim=8),
    "lstm": dict(hidden_size=32, num_layers=2, embedding_dim=8),
    "rnn_scratch": dict(hidden_size=32),
    "mlp": dict(context=5, hidden_size=32, embedding_dim=8),
    "gpt": dict(num_layers=2, num_heads=2, embedding_dim=16, context=16, stride=5),
    "ngram": dict(order=3),
}


def model_of(name):
    torch.manual_seed(0)
    model, _ = build_model(name, V, **FAMILIES[name])
    if name == "ngram":  # counts from a text, so the model is not uniform
        model.fit(np.random.default_rng(1).integers(0, V, 3000))
    return model.eval()


def batched(model, ids, **kw):
    with torch.inference_mode():
        return score_batched(model, ids, "cpu", vocab_size=V, **kw)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("n", [2, 3, 60, 997, 4001])
def test_batched_equals_the_sequential_pass(name, n):
    model = model_of(name)
    ids = np.random.default_rng(n).integers(0, V, n)
    sequential = evaluate_ids(model, ids, segments=1)
    for segments in (None, 2, 7, 64):
        got = evaluate_ids(model, ids, segments=segments)
        assert got.perplexity == pytest.approx(sequential.perplexity, rel=1e-4), segments
        assert got.tokens == sequential.tokens and got.unknown == sequential.unknown
    if n > 100:  # the text really was cut into side-by-side segments
        assert batched(model, ids, segments=7).segments >= 7


class Counter(nn.Module):
    """State = how many 1s came so far (it never forgets); it predicts (count mod V) strongly.

    A warm-up from the zero state can never reach the true count, so only the self-check's
    reruns make the batched pass exact.
    """

    vocab_size = V

    def init_state(self, batch_size, device):
        return torch.zeros(1, batch_size, 1, device=device)

    def forward(self, ids, state):
        counts = state[0][:, None] + torch.cumsum((ids == 1).float(), 1)[..., None]  # (B, T, 1)
        logits = 3.0 * nn.functional.one_hot(counts[..., 0].long() % V, V).float()
        return logits, counts[:, -1:].transpose(0, 1).contiguous()


def test_a_model_that_never_forgets_is_made_exact_by_reruns():
    ids = np.random.default_rng(0).integers(0, 3, 5000)  # many 1s: the count moves all the time
    model = Counter()
    want = evaluate_ids(model, ids, segments=1).nats_per_token
    scored = batched(model, ids, segments=16, warmup=50)
    assert scored.reruns > 0 and scored.rounds <= 15
    assert scored.nats / (len(ids) - 1) == pytest.approx(want, rel=1e-6)


def test_without_the_self_check_the_warm_up_alone_is_wrong(monkeypatch):
    """The positive control of the test above: the warm-up estimate really is off for this model."""
    ids = np.random.default_rng(0).integers(0, 3, 5000)
    monkeypatch.setattr(batched_eval, "_far", lambda a, b, dims, *tolerance: torch.zeros(16 - 1, dtype=torch.bool))
    want = evaluate_ids(Counter(), ids, segments=1).nats_per_token
    assert batched(Counter(), ids, segments=16, warmup=50).nats / (len(ids) - 1) != pytest.approx(want, rel=1e-3)


def test_gpt_segments_start_in_phase_with_the_slide_schedule():
    model = model_of("gpt")  # context 16, stride 5
    H, B, S, W = plan(model, 4000, V, head=True)
    assert S % model.stride == 0 and S > model.context and (H - model.context) % model.stride == 0
    assert all(model.eval_history(H + b * S) == W for b in range(B))
    assert W == model.context


class Watch(nn.Module):
    """A recurrent model over a huge vocabulary that records the largest logits tensor it made."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size, self.largest = vocab_size, 0
        self.w = nn.Parameter(torch.full((1,), 0.5))

    def init_state(self, batch_size, device):
        return torch.zeros(1, batch_size, 1, device=device)

    def forward(self, ids, state):
        h = state[0][:, None] * self.w + ids[..., None].float().cumsum(1) * 1e-6  # (B, T, 1)
        logits = torch.zeros(*ids.shape, self.vocab_size) + h
        self.largest = max(self.largest, logits.numel())
        return logits, h[:, -1:].transpose(0, 1).contiguous()


@pytest.mark.parametrize("segments", [None, 1])
def test_logits_memory_is_bounded_whatever_the_vocabulary(segments):
    vocab = 1_800_000  # a word-level vocabulary: 512 positions would be 3.7 GB of logits
    model = Watch(vocab)
    result = evaluate_ids(model, np.arange(40) * 1000, segments=segments)
    assert result.tokens == 39 and result.perplexity == pytest.approx(vocab, rel=1e-4)
    assert 0 < model.largest <= max(LOGIT_FLOATS, vocab)


def test_score_text_batched_gives_the_sequential_surprisals_and_alternatives():
    vocab = Vocab(["<unk>"] + [chr(97 + i) for i in range(V - 1)], [0] + [1] * (V - 1), level="char")
    text = "".join(chr(97 + i) for i in np.random.default_rng(3).integers(0, V - 1, 3000))
    model = model_of("lstm")
    one = score_text(model, vocab, text, segments=1, top=3)
    many = score_text(model, vocab, text, segments=9, top=3)
    assert many.surprisal_bits[0] is None
    assert many.surprisal_bits[1:] == pytest.approx(one.surprisal_bits[1:], abs=1e-4)
    def likeliest(scores):
        return [[token for token, _ in alt] for alt in scores.alternatives[1:]]

    assert likeliest(many) == likeliest(one)
    assert many.total_bits == pytest.approx(one.total_bits, rel=1e-5)


native_bf16_only = pytest.mark.skipif(not cpu_has_native_bf16(), reason="bf16 evaluation is used only on a CPU "
                                      "with native bf16 (AVX512-BF16 or AMX)")


@native_bf16_only
@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"ngram"}))
def test_bf16_evaluation_stays_within_a_thousandth_of_fp32(name):
    model = model_of(name)
    ids = np.random.default_rng(7).integers(0, V, 4001)
    fp32 = evaluate_ids(model, ids, segments=1).perplexity
    got = evaluate_ids(model, ids, precision="bf16").perplexity
    assert got != fp32  # the forward pass really ran in bf16
    assert got == pytest.approx(fp32, rel=1e-3)
    assert got == pytest.approx(evaluate_ids(model, ids, segments=1, precision="bf16").perplexity, rel=1e-4)



def test_rescoring_stops_where_the_state_has_caught_up():
    """A model that forgets fast is rescored for a checkpoint or two per segment, not whole segments."""
    model = model_of("rnn")
    ids = np.random.default_rng(5).integers(0, V, 20_000)
    scored = batched(model, ids, segments=16)
    assert scored.reruns == 15  # every segment but the first started from a wrong (zero) state
    assert 0 < scored.rescored <= 15 * 4 * batched_eval.FIRST_CHECKPOINT  # ≤ 64 of each segment's 1,250
    want = evaluate_ids(model, ids, segments=1).nats_per_token
    assert scored.nats / (len(ids) - 1) == pytest.approx(want, rel=1e-6)


def test_an_lstm_cell_is_compared_through_tanh():
    """Saturated cells that differ (|c| ~ 100, tanh equal) do not count as a different state; h always does."""
    model = model_of("lstm")
    h = torch.zeros(2, 3, 32)
    c = torch.full((2, 3, 32), 100.0)
    dims = (1, 1)
    assert not batched_eval._differ(model, (h, c), (h, c + 0.5), dims, (1e-4, 1e-4)).any()
    assert batched_eval._differ(model, (h, c), (h + 0.5, c), dims, (1e-4, 1e-4)).all()
    small = torch.zeros(2, 3, 32)
    assert batched_eval._differ(model, (h, small), (h, small + 0.5), dims, (1e-4, 1e-4)).all()
