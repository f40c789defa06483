import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from charlm.data.batches import available_samplings, make_sampler
from charlm.errors import ConfigError, DataError


def collect(sampler, epoch):
    return [(x.copy(), y.copy()) for x, y in sampler.epoch(epoch)]


def test_registry_names_and_unknown_suggestion():
    assert available_samplings() == ["random", "sequential"]
    with pytest.raises(ConfigError, match="did you mean 'random'"):
        make_sampler("randon", np.arange(100), 2, 5, 0)


def test_random_targets_are_inputs_shifted_and_subsequences_disjoint():
    ids = np.arange(1000, dtype=np.uint16)
    sampler = make_sampler("random", ids, 4, 10, seed=3)
    starts = []
    for x, y in sampler.epoch(0):
        assert x.shape == (4, 10)
        np.testing.assert_array_equal(y, x + 1)
        np.testing.assert_array_equal(np.diff(x, axis=1), 1)  # contiguous subsequences
        starts.extend(x[:, 0].tolist())
    assert len(starts) == len(set(starts)) == sampler.batches_per_epoch() * 4
    assert len({s % 10 for s in starts}) == 1  # one offset per epoch, steps of num_steps
    assert not sampler.carries_state


def test_random_epochs_differ_but_repeat_by_seed():
    ids = np.arange(500)
    a, b = make_sampler("random", ids, 2, 7, seed=1), make_sampler("random", ids, 2, 7, seed=1)
    first = collect(a, 0)
    assert all((p[0] == q[0]).all() for p, q in zip(first, collect(b, 0)))
    assert any((p[0] != q[0]).any() for p, q in zip(first, collect(a, 1)))


def test_sequential_streams_continue_across_batches():
    ids = np.arange(1000)
    sampler = make_sampler("sequential", ids, 4, 10, seed=0)
    batches = collect(sampler, 0)
    assert sampler.carries_state
    for (x0, _), (x1, _) in zip(batches, batches[1:]):
        np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)  # each row picks up where it stopped
    for x, y in batches:
        np.testing.assert_array_equal(y, x + 1)


def test_resume_mid_epoch_gives_the_same_batches():
    ids = np.arange(2000)
    for name in available_samplings():
        sampler = make_sampler(name, ids, 4, 8, seed=5)
        full = collect(sampler, 2)
        rest = [(x.copy(), y.copy()) for x, y in sampler.epoch(2, start=3)]
        assert len(rest) == len(full) - 3
        for (a, _), (b, _) in zip(full[3:], rest):
            np.testing.assert_array_equal(a, b)


def test_ranks_split_the_global_batch():
    ids = np.arange(3000)
    for name in available_samplings():
        whole = collect(make_sampler(name, ids, 4, 6, seed=2), 0)
        parts = [collect(make_sampler(name, ids, 4, 6, seed=2, rank=r, world_size=2), 0) for r in range(2)]
        for i, (x, _) in enumerate(whole):
            np.testing.assert_array_equal(np.concatenate([parts[0][i][0], parts[1][i][0]]), x)
    with pytest.raises(ConfigError, match="divisible"):
        make_sampler("random", ids, 3, 6, 0, rank=0, world_size=2)


def test_too_little_data_is_a_clear_error():
    with pytest.raises(DataError, match="num_steps \\(50\\) is too long"):
        make_sampler("random", np.arange(20), 1, 50, 0)
    with pytest.raises(DataError, match="batch_size \\(64\\)"):
        make_sampler("sequential", np.arange(200), 64, 10, 0)


def test_memmap_input_is_not_copied_whole(tmp_path):
    # tracemalloc sees numpy's allocations but not the memory map's pages: a copy of the ids is at
    # least n bytes; a sampler's own arrays (the random order: 4 bytes per 256-token subsequence)
    # and a batch are a few kB.
    n = 4_000_000
    path = tmp_path / "ids.bin"
    np.zeros(n, dtype=np.uint8).tofile(path)
    ids = np.memmap(path, dtype=np.uint8, mode="r")
    for name in available_samplings():
        tracemalloc.start()
        try:
            x, y = next(make_sampler(name, ids, 4, 256, 0).epoch(0))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert isinstance(x, np.ndarray) and x.shape == y.shape == (4, 256) and x.dtype == np.uint8
        assert peak < n // 8, f"{name}: {peak} bytes allocated for one batch"


@settings(max_examples=60, deadline=None)
@given(n=st.integers(60, 800), batch=st.integers(1, 5), steps=st.integers(1, 9), epoch=st.integers(0, 3),
       name=st.sampled_from(["random", "sequential"]))
def test_every_position_at_most_once_per_epoch(n, batch, steps, epoch, name):
    ids = np.arange(n)
    try:
        sampler = make_sampler(name, ids, batch, steps, seed=7)
    except DataError:
        return
    seen = np.concatenate([x.ravel() for x, _ in sampler.epoch(epoch)])
    assert len(seen) == len(np.unique(seen)) == sampler.tokens_per_epoch()
    assert seen.max() < n - 1  # every input has a target


def test_fresh_rows_are_a_pure_function_of_seed_epoch_and_batch_and_split_across_ranks():
    ids = np.arange(5000)
    sampler = make_sampler("sequential", ids, 8, 10, seed=4, state_reset=0.3)
    again = make_sampler("sequential", ids, 8, 10, seed=4, state_reset=0.3)
    draws = [sampler.fresh_rows(e, b) for e in range(2) for b in range(20)]
    assert all(np.array_equal(a, again.fresh_rows(e, b)) if a is not None else again.fresh_rows(e, b) is None
               for a, (e, b) in zip(draws, [(e, b) for e in range(2) for b in range(20)]))
    chosen = np.concatenate([d if d is not None else np.zeros(8, bool) for d in draws])
    assert 0.15 < chosen.mean() < 0.45  # about state_reset of the rows
    # Two ranks draw the same global rows and each keeps its own half.
    halves = [make_sampler("sequential", ids, 8, 10, seed=4, rank=r, world_size=2, state_reset=0.3) for r in (0, 1)]
    for b in range(20):
        whole = sampler.fresh_rows(1, b)
        parts = [h.fresh_rows(1, b) for h in halves]
        parts = [p if p is not None else np.zeros(4, bool) for p in parts]
        np.testing.assert_array_equal(whole if whole is not None else np.zeros(8, bool), np.concatenate(parts))


def test_no_fresh_rows_without_carried_state_or_at_rate_zero():
    ids = np.arange(5000)
    assert make_sampler("random", ids, 8, 10, seed=0, state_reset=1.0).fresh_rows(0, 3) is None
    assert make_sampler("sequential", ids, 8, 10, seed=0, state_reset=0.0).fresh_rows(0, 3) is None
    assert make_sampler("sequential", ids, 8, 10, seed=0, state_reset=1.0).fresh_rows(0, 3).all()
