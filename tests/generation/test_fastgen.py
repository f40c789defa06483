"""The generation fast path against the models' own forward: same text for the same seed."""

import pytest
import torch

from charlm.generation import fastgen
from charlm.config import GenerateConfig
from charlm.data.vocab import Vocab
from charlm.errors import ConfigError
from charlm.generation.generate import generate
from charlm.models import build_model

VOCAB = Vocab(["<unk>", " ", "\n"] + list("abcdefghijklmnopqrstuvwxyz"), [0] + [1] * 28)
FAST = ["rnn", "gru", "lstm", "rnn_scratch"]
SHAPES = [(None, 1), (8, 1), (8, 2)]  # (embedding_dim, num_layers): one-hot and embedded, stacked


def model_of(name, embedding_dim=8, num_layers=1, seed=0, hidden_size=24):
    torch.manual_seed(seed)
    options = dict(hidden_size=hidden_size, embedding_dim=embedding_dim, num_layers=num_layers)
    if name == "gpt":
        options = dict(embedding_dim=16, num_heads=2, num_layers=2, context=16)
    model, _ = build_model(name, len(VOCAB), **options)
    with torch.no_grad():  # sharper than the init, so the text depends on the weights
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval()


def stepped_logits(model, ids, precision="fp32", fast=True):
    """Logits after each of `ids` (B, T): the first from the forward, the rest by steps."""
    with torch.inference_mode():
        logits, state = model(ids[:, :1], model.init_state(ids.shape[0], "cpu"))
        logits = logits[:, -1]
        step = fastgen.stepper(model, state, precision) if fast else fastgen.plain_stepper(model, state)
        out = [logits]
        for t in range(1, ids.shape[1]):
            out.append(step(ids[:, t]))
    return torch.stack(out, 1)  # (B, T, V)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("embedding_dim, num_layers", SHAPES)
def test_fast_step_gives_the_plain_paths_text_for_the_same_seed(name, embedding_dim, num_layers):
    if name == "rnn_scratch" and num_layers > 1:
        pytest.skip("rnn_scratch has one layer")
    model = model_of(name, embedding_dim, num_layers)
    assert fastgen._fast_builder(model) is not None  # the fast path is the one under test
    for seed in range(3):
        params = GenerateConfig(length=300, num_samples=3, seed=seed, temperature=1.0)
        fast = generate(model, VOCAB, "the time", params)
        plain = generate(model, VOCAB, "the time", params, fast=False)
        assert fast.continuations == plain.continuations
    greedy = GenerateConfig(length=200, strategy="greedy")
    assert generate(model, VOCAB, "a", greedy).continuations == generate(model, VOCAB, "a", greedy,
                                                                            fast=False).continuations


@pytest.mark.parametrize("name", FAST)
def test_fast_step_logits_equal_the_forward_in_fp32(name):
    model = model_of(name, 8, 1 if name == "rnn_scratch" else 2)
    ids = torch.randint(1, len(VOCAB), (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = model(ids)
    fast, plain = stepped_logits(model, ids), stepped_logits(model, ids, fast=False)
    torch.testing.assert_close(plain, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)


def test_models_without_a_fast_step_use_their_forward_and_refuse_reduced_precision():
    model = model_of("gpt")
    assert fastgen._fast_builder(model) is None
    params = GenerateConfig(length=40, num_samples=2, seed=1)
    assert generate(model, VOCAB, "ab", params).continuations == generate(model, VOCAB, "ab", params,
                                                                           fast=False).continuations
    with pytest.raises(ConfigError, match="precision bf16 is for the recurrent step"):
        generate(model, VOCAB, "ab", GenerateConfig(length=3, precision="bf16"))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("hidden_size", [24, 32])  # 32: torch's int8 kernel; 24: its dequantized stand-in
def test_reduced_precision_steps_stay_close_to_fp32(name, precision, hidden_size):
    model = model_of(name, 8, 1, hidden_size=hidden_size)
    with torch.no_grad():  # back to the init's scale: typical trained logits, not saturated gates
        for p in model.parameters():
            p.div_(3.0)
    ids = torch.randint(1, len(VOCAB), (2, 30), generator=torch.Generator().manual_seed(1))
    exact = stepped_logits(model, ids)
    reduced = stepped_logits(model, ids, precision)
    assert not torch.equal(reduced, exact)  # the weights really were rounded
    torch.testing.assert_close(reduced, exact, rtol=0, atol=0.05)


def test_int8_rows_round_each_row_to_its_own_scale():
    weight = torch.tensor([[1.0, -0.5, 0.25], [100.0, 50.0, -100.0]])
    q, scale = fastgen.int8_rows(weight)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    torch.testing.assert_close(q.float() * scale[:, None], weight, rtol=0, atol=float(scale.max()) / 2)


def test_weights_changed_between_calls_are_seen():
    model = model_of("lstm")
    params = GenerateConfig(length=50, strategy="greedy")
    before = generate(model, VOCAB, "the", params).continuations
    with torch.no_grad():
        model.decoder.bias[VOCAB.id_of("z")] += 100.0
    after = generate(model, VOCAB, "the", params).continuations
    assert before != after and after == ["z" * 50]


@pytest.mark.parametrize("batch, threads_in_steps", [(1, 1), (fastgen.ONE_THREAD_BATCH + 1, 2)])
def test_a_small_batch_generates_in_one_thread_and_gives_the_threads_back(monkeypatch, batch, threads_in_steps):
    # Dozens of tiny ops a token, each split over threads that wait on each other: on a busy CPU
    # that made a gpt's generation 12-20 times slower than one thread (scripts/bench_generate.py).
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.manual_seed(0)
    vocab = Vocab(["<unk>", " ", "a", "b", "c"], [0, 1, 1, 1, 1])
    model, _ = build_model("gpt", len(vocab), num_layers=1, num_heads=1, embedding_dim=8, context=8)
    seen = []
    model.register_forward_hook(lambda module, args, output: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generate(model, vocab, "ab", GenerateConfig(length=12, num_samples=batch, seed=0))
        assert set(seen) == {threads_in_steps} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
