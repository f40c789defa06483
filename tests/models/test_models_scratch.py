"""rnn_scratch against nn.RNN with the same weights, and the one-step generation fast path."""

import pytest
import torch
import torch.nn.functional as F

from charlm.errors import ConfigError
from charlm.models import build_model

VOCAB, HIDDEN = 13, 24


def scratch_and_copied_rnn(embedding_dim=None):
    """An rnn_scratch model and an `rnn` model holding the same function."""
    torch.manual_seed(0)
    scratch, _ = build_model("rnn_scratch", VOCAB, hidden_size=HIDDEN, embedding_dim=embedding_dim)
    rnn, _ = build_model("rnn", VOCAB, hidden_size=HIDDEN, embedding_dim=embedding_dim)
    with torch.no_grad():
        rnn.rnn.weight_ih_l0.copy_(scratch.W_xh.T)  # (H, input) ← (input, H)
        rnn.rnn.weight_hh_l0.copy_(scratch.W_hh.T)
        rnn.rnn.bias_ih_l0.copy_(scratch.b_h)
        rnn.rnn.bias_hh_l0.zero_()  # scratch has one bias where nn.RNN has two
        rnn.decoder.weight.copy_(scratch.W_hq.T)  # (V, H) ← (H, V)
        rnn.decoder.bias.copy_(scratch.b_q)
        if embedding_dim is not None:
            rnn.embedding.weight.copy_(scratch.embedding.weight)
    return scratch, rnn


@pytest.mark.parametrize("embedding_dim", [None, 7])
def test_scratch_equals_nn_rnn_logits_and_gradients(embedding_dim):
    scratch, rnn = scratch_and_copied_rnn(embedding_dim)
    ids = torch.randint(0, VOCAB, (4, 10), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, VOCAB, (4, 10), generator=torch.Generator().manual_seed(2))
    h0 = torch.randn(4, HIDDEN, generator=torch.Generator().manual_seed(3)) * 0.5
    scratch_logits, scratch_h = scratch(ids, h0)
    rnn_logits, rnn_h = rnn(ids, h0.unsqueeze(0))  # nn.RNN's state is (layers, B, H)
    torch.testing.assert_close(scratch_logits, rnn_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scratch_h, rnn_h[0], atol=1e-5, rtol=1e-5)
    assert scratch_logits.abs().max() > 0.1  # not trivially equal

    for logits in (scratch_logits, rnn_logits):
        F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)).backward()
    grads = {
        "W_xh": (scratch.W_xh.grad, rnn.rnn.weight_ih_l0.grad.T),
        "W_hh": (scratch.W_hh.grad, rnn.rnn.weight_hh_l0.grad.T),
        "b_h": (scratch.b_h.grad, rnn.rnn.bias_ih_l0.grad),
        "W_hq": (scratch.W_hq.grad, rnn.decoder.weight.grad.T),
        "b_q": (scratch.b_q.grad, rnn.decoder.bias.grad),
    }
    if embedding_dim is not None:
        grads["embedding"] = (scratch.embedding.weight.grad, rnn.embedding.weight.grad)
    for name, (ours, theirs) in grads.items():
        assert ours.abs().max() > 0, name
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5, msg=name)
    # both of nn.RNN's biases get the same gradient: it only sees their sum
    torch.testing.assert_close(rnn.rnn.bias_hh_l0.grad, rnn.rnn.bias_ih_l0.grad)


def test_scratch_init_and_shapes():
    torch.manual_seed(0)
    model, model_args = build_model("rnn_scratch", VOCAB, hidden_size=100)
    assert model_args == {"hidden_size": 100, "num_layers": 1, "embedding_dim": None}
    assert model.W_xh.shape == (VOCAB, 100) and model.W_hh.shape == (100, 100)
    assert model.W_hq.shape == (100, VOCAB) and model.b_q.shape == (VOCAB,)
    # uniform ±1/√H like nn.RNN: bound 0.1, and the draws come close to it
    for p in model.parameters():
        assert p.abs().max() <= 0.1 and p.abs().max() > 0.09
    assert model.init_state(5, "cpu").shape == (5, 100)
    with pytest.raises(ConfigError, match="use model 'rnn'"):
        build_model("rnn_scratch", VOCAB, num_layers=3)


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("num_layers, embedding_dim", [(1, None), (2, None), (2, 9)])
def test_fast_single_step_equals_sequence_forward(name, num_layers, embedding_dim):
    torch.manual_seed(0)
    options = dict(hidden_size=HIDDEN, num_layers=num_layers, embedding_dim=embedding_dim)
    model, _ = build_model(name, VOCAB, dropout=0.3, **options)
    model.eval()
    ids = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        whole, whole_state = model(ids)  # T > 1: the nn.RNN/GRU/LSTM path
        state, steps = None, []
        for t in range(ids.shape[1]):
            logits, state = model(ids[:, t : t + 1], state)  # T == 1 in eval: the fast path
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), whole, atol=1e-6, rtol=1e-6)
    expected = whole_state if isinstance(whole_state, tuple) else (whole_state,)
    got = state if isinstance(state, tuple) else (state,)
    for a, b in zip(got, expected):
        assert a.shape == b.shape == (num_layers, 3, HIDDEN)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_single_step_while_training_uses_the_layer_and_keeps_dropout():
    torch.manual_seed(0)
    model, _ = build_model("lstm", VOCAB, hidden_size=HIDDEN, num_layers=2, dropout=0.5)
    model.train()
    ids = torch.randint(0, VOCAB, (64, 1))
    first, _ = model(ids)
    second, _ = model(ids)
    assert not torch.allclose(first, second)  # dropout is active: not the eval fast path


@pytest.mark.parametrize("embedding_dim", [None, 7])
def test_scoring_without_grad_takes_the_fused_loop_and_equals_the_books_loop(embedding_dim, monkeypatch):
    from charlm.models import scratch_fused

    scratch, _ = scratch_and_copied_rnn(embedding_dim)
    ids = torch.randint(0, VOCAB, (3, 17), generator=torch.Generator().manual_seed(4))
    h0 = torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(5)) * 0.5
    with torch.no_grad():
        assert scratch_fused.applies(scratch, ids)
        fused_logits, fused_h = scratch(ids, h0)
        monkeypatch.setattr(scratch_fused, "applies", lambda model, ids: False)
        loop_logits, loop_h = scratch(ids, h0)
    torch.testing.assert_close(fused_logits, loop_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_h, loop_h, atol=1e-5, rtol=1e-5)
    assert loop_logits.abs().max() > 0.1


def test_fused_loop_under_bf16_autocast_stays_at_bf16_resolution_of_the_books_loop(monkeypatch):
    from charlm.models import scratch_fused

    scratch, _ = scratch_and_copied_rnn()
    ids = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(6))
    h0 = torch.zeros(2, HIDDEN)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused_logits, fused_h = scratch(ids, h0)
        monkeypatch.setattr(scratch_fused, "applies", lambda model, ids: False)
        loop_logits, loop_h = scratch(ids, h0)
    assert fused_h.dtype == loop_h.dtype == torch.bfloat16
    torch.testing.assert_close(fused_logits.float(), loop_logits.float(), atol=3e-2, rtol=3e-2)


def test_training_and_one_step_calls_keep_the_books_loop():
    from charlm.models import scratch_fused

    scratch, _ = scratch_and_copied_rnn()
    ids = torch.zeros(2, 5, dtype=torch.long)
    assert not scratch_fused.applies(scratch, ids)  # grad enabled: the loop autograd records
    with torch.no_grad():
        assert not scratch_fused.applies(scratch, ids[:, :1])  # generation's single step
    big, _ = build_model("rnn_scratch", 40, hidden_size=8)  # V > H: the one-hot product would dominate
    with torch.no_grad():
        assert not scratch_fused.applies(big, ids)
