"""Tests for charlm.data.vocab.Vocab."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charlm.data.text import LEVELS, NORMALIZATIONS, normalize, tokenize
from charlm.data.vocab import UNK, Vocab
from charlm.errors import DataError


def test_order_is_count_then_token_with_unk_first():
    vocab = Vocab.build({"b": 2, "a": 2, "c": 5, " ": 1}, "char")
    assert vocab.tokens == (UNK, "c", "a", "b", " ")
    assert vocab.counts == (0, 5, 2, 2, 1)
    assert len(vocab) == 5 and vocab.level == "char"


def test_build_is_deterministic_whatever_the_insertion_order():
    counts = {chr(97 + i): 3 for i in range(20)}
    reversed_counts = dict(reversed(list(counts.items())))
    assert Vocab.build(counts) == Vocab.build(reversed_counts)
    assert Vocab.build(counts).tokens[1:4] == ("a", "b", "c")


def test_min_freq_folds_rare_tokens_into_unk():
    vocab = Vocab.build({"a": 1, "b": 3, "c": 2, "d": 1}, min_freq=2)
    assert vocab.tokens == (UNK, "b", "c")
    assert vocab.counts == (2, 3, 2)
    assert vocab.encode("abcd") == [0, 1, 2, 0]
    with pytest.raises(DataError, match="min_freq"):
        Vocab.build({"a": 1}, min_freq=0)


def test_encode_decode_and_unknowns():
    vocab = Vocab.build(Counter("hello"), "char")
    ids = vocab.encode("help!")
    assert ids[-2:] == [vocab.id_of("p"), 0] == [0, 0]
    assert vocab.decode(ids) == "hel\ufffd\ufffd"
    assert vocab.decode(ids, unk="<unk>") == "hel<unk><unk>"
    assert vocab.decode(np.array(vocab.encode("hello"), np.uint8)) == "hello"
    assert vocab.unknown("help! yelp") == [" ", "!", "p", "y"]
    assert "h" in vocab and "z" not in vocab
    with pytest.raises(DataError, match="outside this vocabulary of 5 tokens"):
        vocab.decode([1, 5])
    with pytest.raises(DataError, match="-1"):
        vocab.decode([-1])


@pytest.mark.parametrize("size, dtype", [(1, np.uint8), (256, np.uint8), (257, np.uint16),
                                         (65536, np.uint16), (65537, np.uint32)])
def test_dtype_is_the_smallest_that_holds_every_id(size, dtype):
    vocab = Vocab([UNK] + [f"t{i}" for i in range(size - 1)], [0] * size, "word")
    assert vocab.dtype == np.dtype(dtype)
    assert vocab.encode_array(["t0", f"t{size - 2}", "nope"]).dtype == dtype


def test_cjk_with_thousands_of_characters_is_uint16():
    text = "".join(chr(0x4E00 + i) for i in range(3000)) * 2 + "abc"
    vocab = Vocab.build(Counter(text), "char")
    assert len(vocab) == 3004 and vocab.dtype == np.uint16
    ids = vocab.encode_array(text + "\u3042")
    assert ids.dtype == np.uint16
    assert ids.tolist() == vocab.encode(text) + [0]
    assert vocab.decode(ids[:-1]) == text


def test_char_table_is_built_once_and_sized_by_the_vocabulary():
    vocab = Vocab.build(Counter("abc\U0010ffff"), "char")
    text = "a\U0010ffff\U0001f600zc"
    assert vocab.encode_array(text).tolist() == [vocab.id_of("a"), vocab.id_of("\U0010ffff"), 0, 0,
                                                 vocab.id_of("c")]
    assert vocab.char_table() is vocab.char_table()
    ascii_vocab = Vocab.build(Counter("abc"), "char")
    assert ascii_vocab.encode_array("\U0010ffff\U0001f600a").tolist() == [0, 0, ascii_vocab.id_of("a")]
    assert len(ascii_vocab.char_table()) == ord("c") + 2  # no 1.1M-entry table for unseen code points


def test_word_level_encode_array_tokenizes_strings():
    vocab = Vocab.build(Counter(tokenize("the cat, the hat", "word")), "word")
    ids = vocab.encode_array("the bat, the cat")
    assert vocab.decode(ids) == "the \ufffd, the cat"
    assert vocab.id_of("the") == 2  # " " (3) then "the" (2) by count


def test_dict_and_file_round_trip(tmp_path):
    vocab = Vocab.build({"é": 3, "中": 2, "\n": 1}, "char", min_freq=2)
    assert Vocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded == vocab and loaded.counts == (1, 3, 2) and loaded.level == "char"
    assert "中" in (tmp_path / "vocab.json").read_text(encoding="utf-8")


def test_bad_vocabularies_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no vocabulary"):
        Vocab.load(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read vocabulary"):
        Vocab.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="malformed"):
        Vocab.from_dict({"tokens": [UNK]})
    with pytest.raises(DataError, match="format_version 9"):
        Vocab.from_dict({"format_version": 9, "tokens": [UNK], "counts": [0]})
    with pytest.raises(DataError, match="start with <unk>"):
        Vocab(["a"], [1])
    with pytest.raises(DataError, match="twice"):
        Vocab([UNK, "a", "a"], [0, 1, 1])
    with pytest.raises(DataError, match="level"):
        Vocab([UNK], [0], "byte")


@given(st.text(), st.sampled_from(NORMALIZATIONS), st.sampled_from(LEVELS))
def test_decode_encode_round_trips_normalized_text(text, mode, level):
    normalized = normalize(text, mode)
    tokens = tokenize(normalized, level)
    vocab = Vocab.build(Counter(tokens), level)
    assert vocab.decode(vocab.encode(tokens)) == normalized
    assert vocab.decode(vocab.encode_array(normalized)) == normalized


def test_decoding_a_few_ids_costs_nothing_in_the_vocabulary_size():
    import tracemalloc

    tokens = ["<unk>"] + [f"w{i}" for i in range(1_000_000)]
    vocab = Vocab(tokens, [0] * len(tokens), level="word")
    tracemalloc.start()
    try:
        text = vocab.decode([1, 0, 2])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert text == "w0\ufffdw1" and vocab.decode([0], unk="?") == "?"
    assert vocab.texts()[5] == vocab.decode([5]) == "w4"
    assert peak < 100_000  # a copy of the token list would be 8 MB
