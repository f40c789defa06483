"""The decode loop with a tiny hand-made model: warming, batching, stop strings, unknowns."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from charlm.config import GenerateConfig
from charlm.data.vocab import Vocab
from charlm.errors import CharLMError, ConfigError
from charlm.evaluation.evaluate import evaluate_text
from charlm.generation.generate import generate, novelty, start_token, unescape, warm
from charlm.models import available_models, build_model, model_options

CHARS = ["a", "b", "c", "d"]
LETTERS = Vocab(["<unk>", " "] + list("abcdefghijklmnopqrstuvwxyz"), [0] + [1] * 27)


def gen(model, vocab, prompt, *, normalize="none", on_token=None, fast=True, **params):
    return generate(model, vocab, prompt, GenerateConfig(**params), normalize=normalize, on_token=on_token, fast=fast)


def char_vocab():
    return Vocab(["<unk>"] + CHARS, [0, 4, 3, 2, 1], level="char")


class PositionModel(nn.Module):
    """Favours token (n mod 4) + 1 after n tokens seen; the state is n per row.

    So greedy output depends on the state being carried, and every call is recorded.
    """

    def __init__(self, sharpness=20.0):
        super().__init__()
        self.sharpness = sharpness
        self.bias = nn.Parameter(torch.zeros(5))
        self.calls = []  # (ids, training, inference_mode) per forward

    def init_state(self, batch_size, device):
        return torch.zeros(batch_size, dtype=torch.long, device=device)

    def forward(self, ids, state=None):
        B, T = ids.shape
        self.calls.append((ids.clone(), self.training, torch.is_inference_mode_enabled()))
        if state is None:
            state = self.init_state(B, ids.device)
        seen = state[:, None] + torch.arange(1, T + 1)  # (B, T) tokens seen up to each position
        favoured = seen % 4 + 1
        logits = nn.functional.one_hot(favoured, 5).float() * self.sharpness + self.bias
        logits[..., 0] = -1e4  # never <unk>
        return logits, state + T


def expected_greedy(prefix_len, length):
    return "".join(CHARS[(prefix_len + t) % 4] for t in range(length))


def test_greedy_continues_from_the_carried_state():
    model = PositionModel()
    out = gen(model, char_vocab(), "ab", length=7, strategy="greedy")
    assert out.prefix == "ab"
    assert out.continuations == [expected_greedy(2, 7)] == ["cdabcda"]
    assert out.texts == ["abcdabcda"]
    assert out.stopped == [False] and out.mapped == []


def test_prefix_is_one_forward_then_single_tokens_fed_back():
    model = PositionModel(sharpness=1.0)
    out = gen(model, char_vocab(), "abca", length=6, num_samples=3, seed=0)
    shapes = [tuple(ids.shape) for ids, _, _ in model.calls]
    # one call over the whole prefix, then one (B, 1) call per new token except the last
    assert shapes == [(3, 4)] + [(3, 1)] * 5
    assert model.calls[0][0].tolist() == [[1, 2, 3, 1]] * 3
    vocab = char_vocab()
    for step, (ids, _, _) in enumerate(model.calls[1:]):
        fed = [vocab.decode(row) for row in ids.tolist()]
        assert fed == [c[step] for c in out.continuations]


def test_model_runs_in_eval_and_inference_mode_and_gets_its_mode_back():
    model = PositionModel()
    model.train()
    gen(model, char_vocab(), "a", length=3)
    assert all(not training and inference for _, training, inference in model.calls)
    assert model.training


def test_same_seed_same_text_other_seed_other_text():
    vocab = char_vocab()

    def run(seed):
        return gen(PositionModel(1.0), vocab, "ab", length=60, num_samples=2, seed=seed)

    first, again, other = run(7), run(7), run(8)
    assert first.continuations == again.continuations and first.seed == 7
    assert first.continuations != other.continuations


def test_unseeded_run_reports_a_seed_that_reproduces_it():
    vocab = char_vocab()
    out = gen(PositionModel(1.0), vocab, "ab", length=40)
    again = gen(PositionModel(1.0), vocab, "ab", length=40, seed=out.seed)
    assert again.continuations == out.continuations


def test_a_batch_of_samples_has_one_continuation_each():
    out = gen(PositionModel(1.0), char_vocab(), "ab", length=50, num_samples=5, seed=1)
    assert len(out.continuations) == 5
    assert all(len(c) == 50 and set(c) <= set(CHARS) for c in out.continuations)
    assert len(set(out.continuations)) == 5


def test_stop_string_may_start_in_the_prefix_and_is_included():
    vocab = char_vocab()
    out = gen(PositionModel(), vocab, "ab", length=20, strategy="greedy", stop="bc")
    assert out.continuations == ["c"] and out.stopped == [True]
    out = gen(PositionModel(), vocab, "ab", length=20, strategy="greedy", stop="da")
    assert out.continuations == ["cda"] and out.stopped == [True]


def test_stop_is_per_sample_and_the_loop_ends_when_all_stopped():
    model = PositionModel(sharpness=0.0)  # uniform over a-d
    streamed = [[] for _ in range(6)]

    def on_token(step, pieces):
        for b, piece in enumerate(pieces):
            streamed[b].append(piece)

    out = gen(model, char_vocab(), "a", length=500, num_samples=6, seed=3, stop="dd",
                   on_token=on_token)
    assert all(out.stopped)
    for text in out.continuations:
        assert text.endswith("dd") and text.find("dd") == len(text) - 2
    assert len(set(map(len, out.continuations))) > 1  # samples stopped at different steps
    # stopped samples stream nothing more; what was streamed is what is returned
    assert ["".join(p) for p in streamed] == out.continuations
    assert len(model.calls) == max(map(len, out.continuations))  # ended early, not at 500


def test_samples_that_never_stop_run_to_length():
    out = gen(PositionModel(), char_vocab(), "a", length=9, strategy="greedy", stop="aa")
    assert out.continuations == [expected_greedy(1, 9)] and out.stopped == [False]


def test_stop_string_the_model_cannot_produce_is_rejected():
    with pytest.raises(ConfigError, match=r"stop string has characters not in the vocabulary: '\\n'"):
        gen(PositionModel(), char_vocab(), "a", stop="\n")


def test_on_token_streams_every_step():
    seen = []
    out = gen(PositionModel(), char_vocab(), "ab", length=4, strategy="greedy",
                   num_samples=2, on_token=lambda step, pieces: seen.append((step, pieces)))
    assert seen == [(0, ["c", "c"]), (1, ["d", "d"]), (2, ["a", "a"]), (3, ["b", "b"])]
    assert out.continuations == ["cdab", "cdab"]


def test_unknown_prefix_characters_error_by_default():
    with pytest.raises(CharLMError) as err:
        gen(PositionModel(), char_vocab(), "a7bQ", length=3)
    assert str(err.value) == (
        "prefix has characters not in the vocabulary: '7', 'Q' "
        "(use --unknown map to replace them with <unk>)"
    )


def test_unknown_map_feeds_unk_and_reports_the_tokens():
    model = PositionModel()
    out = gen(model, char_vocab(), "a7bQ", length=3, strategy="greedy", unknown="map")
    assert out.mapped == ["7", "Q"]
    assert model.calls[0][0].tolist() == [[1, 0, 2, 0]]
    assert out.prefix == "a7bQ" and out.continuations == [expected_greedy(4, 3)]


def test_prefix_is_normalized_like_the_training_text():
    model = PositionModel()
    out = gen(model, char_vocab(), "AbC", normalize="lower", length=2, strategy="greedy")
    assert out.prefix == "abc"
    assert model.calls[0][0].tolist() == [[1, 2, 3]]
    with pytest.raises(CharLMError, match="'A', 'C'"):
        gen(PositionModel(), char_vocab(), "AbC", normalize="none")


def test_empty_prefix_starts_as_after_a_newline_never_from_unk():
    with_newline = Vocab(["<unk>", "a", "b", "\n", " "], [0, 4, 3, 2, 1])
    model = PositionModel()
    out = gen(model, with_newline, "", length=5, strategy="greedy", num_samples=2)
    assert model.calls[0][0].tolist() == [[3], [3]]  # "\n", not <unk> (0)
    assert out.prefix == "" and out.continuations == [with_newline.decode([2, 3, 4, 1, 2])] * 2
    assert start_token(Vocab(["<unk>", "a", " "], [0, 4, 1])) == 2  # no newline: a space
    assert start_token(char_vocab()) == 1  # neither: the most frequent token


class Newlines(nn.Module):
    """Always favours id 1 (a newline below), whatever it has seen."""

    def init_state(self, batch_size, device):
        return None

    def forward(self, ids, state=None):
        return torch.tensor([-9.0, 9.0, 0.0]).expand(*ids.shape, 3), state


def test_a_stop_string_never_matches_the_start_token():
    vocab = Vocab(["<unk>", "\n", "a"], [0, 1, 1])
    out = gen(Newlines(), vocab, "", length=3, strategy="greedy", stop="\n\n")
    assert out.continuations == ["\n\n"] and out.stopped == [True]  # not "\n": the start is not text


def test_a_long_prefix_warms_in_chunks_that_equal_one_piece(monkeypatch):
    torch.manual_seed(0)
    model, _ = build_model("lstm", len(LETTERS), hidden_size=16, embedding_dim=8)
    model.eval()
    ids = np.random.default_rng(0).integers(1, len(LETTERS), 1000)
    with torch.inference_mode():
        whole, whole_state = warm(model, ids, 2, "cpu", chunk=len(ids))
        pieces, pieces_state = warm(model, ids, 2, "cpu", chunk=7)
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pieces_state, whole_state, rtol=1e-5, atol=1e-6)
    prompt = LETTERS.decode(ids.tolist())
    params = GenerateConfig(length=100, num_samples=2, seed=4)
    chunked = gen(model, LETTERS, prompt, length=100, num_samples=2, seed=4).continuations
    monkeypatch.setattr("charlm.generation.generate.WARM_CHUNK", 10**9)
    assert generate(model, LETTERS, prompt, params).continuations == chunked


PEAK_SCRIPT = """
import resource, sys, torch
from charlm.config import GenerateConfig
from charlm.data.vocab import Vocab
from charlm.generation.generate import generate
from charlm.models import build_model
vocab = Vocab(["<unk>", " "] + list("abcdefghijklmnopqrstuvwxyz"), [0] + [1] * 27)
torch.manual_seed(0)
torch.set_num_threads(1)
model, _ = build_model("mlp", len(vocab), context=3, embedding_dim=8, hidden_size=16)  # no time loop: fast
generate(model, vocab, "ab" * 100, GenerateConfig(length=5))  # the libraries' own memory
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prompt = "the time traveller " * (int(sys.argv[1]) // 19)
out = generate(model, vocab, prompt, GenerateConfig(length=5, stop="xq"))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def test_memory_stays_flat_in_the_prefix_length():
    """A 2M-character prefix: in one piece its windows' (1, 2M, 3, 8) embeddings, (1, 2M, 16) hidden
    and (1, 2M, 28) logits alone are ~550 MB; in chunks the peak grows by the prefix's text and ids."""
    import subprocess
    import sys

    grown = float(subprocess.run([sys.executable, "-c", PEAK_SCRIPT, "2000000"], capture_output=True, text=True,
                                 check=True).stdout)
    assert grown < 100, f"peak RSS grew {grown:.0f} MB for a 2 MB prefix"


def test_escapes_are_read_and_a_bad_one_is_one_line():
    assert unescape(r"ROMEO:\n\tx\\n\x41\u00e9\U0001F600 \'q\"") == "ROMEO:\n\tx\\nAé\U0001F600 'q\""
    assert unescape("no escapes") == "no escapes"
    for bad in (r"\q", r"\x4", "end\\", r"\U00110000"):
        with pytest.raises(ConfigError, match=r"^--stop: bad escape .*and \\\\ for a backslash$"):
            unescape(bad, "--stop")


def test_length_zero_is_refused_like_everywhere_else():
    with pytest.raises(ConfigError, match="length must be at least 1, got 0"):
        gen(PositionModel(), char_vocab(), "ab", length=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"length": -1}, "length must be at least 1"),
        ({"num_samples": 0}, "num_samples must be at least 1"),
        ({"unknown": "skip"}, "unknown: 'skip' is not one of error, map"),
        ({"precision": "fp8"}, "precision: 'fp8' is not one of fp32, bf16, int8"),
        ({"seed": 1 << 64}, "seed must fit in 64 bits"),
        ({"strategy": "top_k"}, "needs top_k"),
        ({"temperature": -1.0}, "temperature"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        gen(PositionModel(), char_vocab(), "a", **kwargs)


def test_word_level_streams_and_joins_like_decode():
    vocab = Vocab(["<unk>", "the", " ", "cat", "sat"], [0, 2, 2, 1, 1], level="word")
    seen = []
    out = gen(PositionModel(), vocab, "the cat", length=3, strategy="greedy",
                   on_token=lambda step, pieces: seen.append(pieces[0]))
    assert out.prefix == "the cat"
    assert out.continuations == ["sat" + "the" + " "]  # ids 4, 1, 2 after 3 tokens seen
    assert "".join(seen) == out.continuations[0]


def brute_novelty(sample, text):
    best = ""
    for i in range(len(sample)):
        for j in range(i + len(best) + 1, len(sample) + 1):
            if sample[i:j] in text:
                best = sample[i:j]
    return len(best), best


def test_novelty_finds_the_longest_copied_substring():
    assert novelty("xxhello worldyy", "they said hello world!") == (11, "hello world")
    assert novelty("", "abc") == (0, "")
    assert novelty("xyz", "abc") == (0, "")
    assert novelty("abc", "abc") == (3, "abc")


def test_novelty_matches_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 40)))
        sample = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 25)))
        assert novelty(sample, text)[0] == brute_novelty(sample, text)[0], (sample, text)
        length, sub = novelty(sample, text)
        assert sub in sample and sub in text and len(sub) == length


def test_novelty_is_fast_on_megabytes():
    # random text: nearly every window fails after a few characters, the costly case
    rng = random.Random(1)
    text = "".join(rng.choices("abcdefghij ", k=1_000_000))
    sample = text[1000:1300] + "".join(rng.choices("abcdefghij ", k=500))
    length, sub = novelty(sample, text)
    assert length >= 300 and sub.startswith(text[1000:1300])


@pytest.mark.parametrize("name", available_models())
def test_every_registered_model_serves_generate_and_evaluate(name):
    """The real models through the contract: carried state must equal one long pass."""
    vocab = Vocab(["<unk>", " "] + list("abcdefghijklmnopqrstuvwxyz"), [0] + [1] * 27)
    torch.manual_seed(0)
    small = dict(hidden_size=16, num_layers=1, embedding_dim=8, context=3, order=3)
    model, _ = build_model(name, len(vocab), **{k: v for k, v in small.items() if k in model_options(name)})
    out = gen(model, vocab, "the time", length=12, num_samples=3, seed=0, stop="e")
    assert len(out.continuations) == 3
    assert all(len(c) <= 12 and (s == c.endswith("e")) for c, s in zip(out.continuations, out.stopped))
    assert gen(model, vocab, "", length=5, seed=0).continuations[0] != ""
    text = "the time traveller for so it will be convenient to speak of him"
    short, long = (evaluate_text(model, vocab, text, chunk_len=n).nats_per_token for n in (5, 100))
    assert short == pytest.approx(long, abs=1e-5)


def test_many_samples_run_in_batches_of_at_most_sample_batch_and_the_same_seed_repeats(monkeypatch):
    import charlm.generation.generate as generate_module

    monkeypatch.setattr(generate_module, "SAMPLE_BATCH", 4)
    vocab = char_vocab()
    model, _ = build_model("rnn", len(vocab), hidden_size=8)
    batches = []
    real_init = model.init_state
    monkeypatch.setattr(model, "init_state", lambda batch, device: batches.append(batch) or real_init(batch, device))
    first = gen(model, vocab, "ab", length=6, num_samples=10, seed=3, strategy="sample")
    assert batches == [4, 4, 2]  # the state is never made for more than a batch of samples
    assert len(first.continuations) == len(first.stopped) == 10 and all(len(c) == 6 for c in first.continuations)
    assert gen(model, vocab, "ab", length=6, num_samples=10, seed=3, strategy="sample") == first


def test_more_tokens_than_one_generation_returns_is_one_line_naming_the_limit(monkeypatch):
    import charlm.generation.generate as generate_module

    monkeypatch.setattr(generate_module, "MAX_TOKENS", 100)
    vocab = char_vocab()
    model, _ = build_model("rnn", len(vocab), hidden_size=8)
    with pytest.raises(ConfigError, match=r"101 sample\(s\) of 1 tokens is 101 tokens, over the 100 one generation"):
        gen(model, vocab, "ab", length=1, num_samples=101)
    assert len(gen(model, vocab, "ab", length=1, num_samples=100).continuations) == 100


def test_streaming_setup_decodes_each_token_once_not_once_per_vocabulary_entry(monkeypatch):
    tokens = ["<unk>", "a", "b"] + [f"w{i}" for i in range(3000)]
    vocab = Vocab(tokens, [0] * len(tokens), level="word")
    model, _ = build_model("rnn", len(vocab), hidden_size=8)
    decodes = []
    real_decode = vocab.decode
    monkeypatch.setattr(vocab, "decode", lambda ids, **kw: decodes.append(1) or real_decode(ids, **kw))
    pieces = []
    result = gen(model, vocab, "a", length=5, seed=0, on_token=lambda step, p: pieces.append(p[0]))
    assert len(decodes) == 1  # the final text only; the streamed pieces come from one shared table
    assert "".join(pieces) == result.continuations[0]


def test_copied_lines_finds_generated_words_that_are_lines_of_the_training_text():
    from charlm.generation.generate import copied_lines

    dictionary = {"save", "saved", "light", ""}
    # prefix "\n", then three generated words; the last was cut by the length, so it is no whole line.
    assert copied_lines("\nsave\nsavx\nlig", 1, False, dictionary) == (2, ["save"])
    assert copied_lines("\nsave\nsavx\nlight", 1, True, dictionary) == (3, ["save", "light"])  # stopped there
    # A line wholly in the prefix is not the model's; one it ended (its newline generated) is.
    assert copied_lines("save\nsaved\n", 4, False, dictionary) == (2, ["save", "saved"])
    assert copied_lines("save\nsaved\n", 5, False, dictionary) == (1, ["saved"])
    # The longest shared substring says 5 characters for a word that is no entry at all.
    assert novelty("saved", "save\nx") == (4, "save") and copied_lines("\nsavex\n", 1, False, {"save"}) == (1, [])
