"""Whole-text NLL with carried state: exact values, chunking, per-token scores."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from charlm.data.vocab import Vocab
from charlm.errors import DataError
from charlm.evaluation.evaluate import EvalResult, evaluate_ids, evaluate_text, score_text


def char_vocab():
    return Vocab(["<unk>", "a", "b", "c", "d"], [0, 4, 3, 2, 1], level="char")


class Uniform(nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.modes = []

    def init_state(self, batch_size, device):
        return None

    def forward(self, ids, state=None):
        self.modes.append((self.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return torch.zeros(*ids.shape, self.vocab_size), state


class NextChar(nn.Module):
    """Puts logit s on id + 1 (a→b→c→d→a), 0 elsewhere: known probabilities, no state."""

    vocab_size = 5  # the model contract: logits are (B, T, vocab_size)

    def __init__(self, s=2.0):
        super().__init__()
        self.s = s

    def init_state(self, batch_size, device):
        return None

    def forward(self, ids, state=None):
        favoured = ids % 4 + 1  # (B, T)
        return nn.functional.one_hot(favoured, 5).float() * self.s, state


class TinyGRU(nn.Module):
    """A real recurrent model, so a dropped state between chunks would change the numbers."""

    def __init__(self, vocab_size=5, hidden=16):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab_size, 8)
        self.rnn = nn.GRU(8, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)
        self.dropout = nn.Dropout(0.5)  # must be off during evaluation
        self.hidden, self.vocab_size = hidden, vocab_size

    def init_state(self, batch_size, device):
        return torch.zeros(1, batch_size, self.hidden, device=device)

    def forward(self, ids, state=None):
        h, state = self.rnn(self.dropout(self.emb(ids)), state)
        return self.out(h), state


def test_uniform_model_has_perplexity_v():
    result = evaluate_ids(Uniform(7), np.array([1, 2, 3, 4, 5, 6, 0, 1]), chunk_len=3)
    assert result.tokens == 7
    assert result.nats_per_token == pytest.approx(math.log(7), abs=1e-6)
    assert result.bits_per_token == pytest.approx(math.log2(7), abs=1e-6)
    assert result.perplexity == pytest.approx(7.0, abs=1e-5)
    assert result.vocab_size == 7


def test_targets_are_the_next_token():
    # every next character is the favoured one: NLL = -log(e^s / (e^s + 4))
    s = 2.0
    want = -math.log(math.exp(s) / (math.exp(s) + 4))
    result = evaluate_text(NextChar(s), char_vocab(), "abcdabcdab")
    assert result.tokens == 9
    assert result.nats_per_token == pytest.approx(want, abs=1e-6)


def test_chunked_equals_one_pass():
    ids = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(0))
    model = TinyGRU()
    with torch.no_grad():
        logits, _ = model.eval()(ids[None, :-1])
        want = nn.functional.cross_entropy(logits[0], ids[1:]).item()
    for chunk_len in (1, 7, 64, 299, 10_000):
        got = evaluate_ids(model, ids, chunk_len=chunk_len).nats_per_token
        assert got == pytest.approx(want, abs=1e-6), chunk_len


def test_model_runs_in_eval_mode_without_autograd_and_gets_its_mode_back():
    model = Uniform(3)
    model.train()
    evaluate_ids(model, [1, 2, 1, 2], chunk_len=2)
    # (training, grad, inference mode): no_grad rather than inference_mode, where autocast caches no weight casts
    assert model.modes and all(m == (False, False, False) for m in model.modes)
    assert model.training
    model.eval()
    evaluate_ids(model, [1, 2, 1, 2])
    assert not model.training


def test_mean_of_scores_equals_evaluate():
    text = "abcabddcbaabcdacbd" * 5
    model = TinyGRU()
    result = evaluate_text(model, char_vocab(), text, chunk_len=16)
    scores = score_text(model, char_vocab(), text, chunk_len=5)
    assert scores.tokens == list(text)
    assert scores.surprisal_bits[0] is None and len(scores.surprisal_bits) == len(text)
    bits = scores.surprisal_bits[1:]
    assert sum(bits) == pytest.approx(scores.total_bits, abs=1e-9)
    assert sum(bits) / len(bits) * math.log(2) == pytest.approx(result.nats_per_token, abs=1e-6)
    assert scores.perplexity == pytest.approx(result.perplexity, rel=1e-6)


def test_surprisal_of_a_known_distribution():
    scores = score_text(NextChar(0.0), char_vocab(), "abc")  # uniform over 5
    assert scores.surprisal_bits[1:] == pytest.approx([math.log2(5)] * 2, abs=1e-6)


def test_json_keys_are_exactly_the_report_fields():
    result = evaluate_ids(Uniform(4), np.array([1, 2, 3], dtype=np.uint8))
    data = result.to_dict()
    assert set(data) == {"tokens", "nats_per_token", "bits_per_token", "perplexity", "unknown",
                         "vocab_size"}
    assert json.loads(json.dumps(data)) == data
    assert isinstance(result, EvalResult)


def test_unknown_characters_become_unk_and_are_counted_among_all_tokens():
    model = Uniform(5)
    result = evaluate_text(model, char_vocab(), "Qab7a")  # Q (unscored first token) and 7
    assert result.unknown == 2 and result.tokens == 4
    assert score_text(model, char_vocab(), "Qab7a").unknown == 2
    assert evaluate_ids(model, np.array([0, 0, 1, 0]), unk_id=None).unknown == 0


def test_normalization_applies_before_encoding():
    result = evaluate_text(Uniform(5), char_vocab(), "ABCD", normalize="lower")
    assert result.unknown == 0


@pytest.mark.parametrize("text", ["", "a"])
def test_too_short_text_is_a_data_error(text):
    with pytest.raises(DataError, match="at least 2"):
        evaluate_text(Uniform(5), char_vocab(), text)
    with pytest.raises(DataError, match="at least 2"):
        score_text(Uniform(5), char_vocab(), text)


def test_ids_beyond_the_model_vocabulary_are_a_data_error():
    with pytest.raises(DataError, match="token id 9 is outside the model's vocabulary of 5"):
        evaluate_ids(Uniform(5), np.array([1, 2, 9, 1]))


def _anonymous_bytes() -> int:
    """Memory the process holds that no file backs (a memory map's pages are file-backed)."""
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssAnon in /proc/self/status")


class AnonymousMemoryWatch(nn.Module):
    """Uniform over 5 tokens; records the most anonymous memory the process held at any chunk."""

    vocab_size = 5

    def __init__(self):
        super().__init__()
        self.peak = 0

    def init_state(self, batch_size, device):
        return None

    def forward(self, ids, state=None):
        self.peak = max(self.peak, _anonymous_bytes())
        return torch.zeros(*ids.shape, 5), state


def test_memmap_ids_are_read_in_chunks(tmp_path):
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux's /proc to see the process's memory")
    path = tmp_path / "val.bin"
    data = np.random.default_rng(0).integers(0, 5, 1000).astype(np.uint16)
    data.tofile(path)
    ids = np.memmap(path, dtype=np.uint16, mode="r")
    model = TinyGRU()
    assert evaluate_ids(model, ids, chunk_len=128).nats_per_token == pytest.approx(
        evaluate_ids(model, torch.from_numpy(data.astype(np.int64))).nats_per_token, abs=1e-6)
    # A copy of the ids, in numpy or in torch, is anonymous memory the size of the map or more
    # (8 MB here, 32 MB as int64); chunks of 4096 ids read from the map cost a few hundred kB.
    big = tmp_path / "big.bin"
    np.zeros(4_000_000, dtype=np.uint16).tofile(big)
    ids = np.memmap(big, dtype=np.uint16, mode="r")
    evaluate_ids(AnonymousMemoryWatch(), np.zeros(10_000, np.uint16), chunk_len=4096)  # first-call allocations
    watch, before = AnonymousMemoryWatch(), _anonymous_bytes()
    assert evaluate_ids(watch, ids, chunk_len=4096).tokens == len(ids) - 1
    assert watch.peak - before < ids.nbytes // 4, f"{(watch.peak - before) / 1e6:.1f} MB held while evaluating"


