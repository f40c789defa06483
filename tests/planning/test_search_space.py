"""The search's space: the plan for what the search leaves, its neighbouring sizes, and trial lengths."""

from charlm.planning import planner, search_space
from charlm.planning.planner import CANDIDATES, Budget, CorpusProfile

SHAKESPEARE = CorpusProfile("tinyshakespeare", train_tokens=1_003_854, vocab_size=65)


def laptop(c):
    """A made-up CPU: tokens/s falls with the parameters, the larger batch a little faster."""
    return 5e9 / c.parameters(65) * (1 + c.batch_size / 256)


def test_the_space_is_the_plan_for_the_rest_and_its_neighbouring_sizes():
    space = search_space.search_space(SHAKESPEARE, Budget(seconds=400), laptop, share=0.25)
    rest = planner.plan(SHAKESPEARE, Budget(seconds=300), laptop)
    assert space.sizes[space.center].config == rest.config  # the plan for what is left after the search
    ladder = list(dict.fromkeys(f"{c.num_layers}x{c.hidden_size}"
                                for c in sorted(CANDIDATES, key=lambda c: c.parameters(65)) if c.family == "lstm"))
    here = ladder.index(space.center)
    assert list(space.sizes) == ladder[here - 1:here + 2]
    assert (space.search, space.trial) == (100.0, 100.0 / search_space.TRIALS)
    d = rest.config["model"]["dropout"]
    assert space.dropout == (round(max(0, d - 0.2), 2), round(d + 0.2, 2))


def test_a_neighbour_that_does_not_fit_in_memory_is_not_tried():
    space = search_space.search_space(SHAKESPEARE, Budget(seconds=400), laptop, share=0.25)
    larger = list(space.sizes)[-1]
    fits = search_space.search_space(
        SHAKESPEARE, Budget(seconds=400), lambda c: 0.0 if f"{c.num_layers}x{c.hidden_size}" == larger else laptop(c),
        share=0.25)
    assert larger not in fits.sizes and len(fits.sizes) == len(space.sizes) - 1


def test_a_trial_lasts_its_share_of_seconds_at_its_own_measured_speed():
    space = search_space.search_space(SHAKESPEARE, Budget(seconds=400), laptop, share=0.25)
    for size, made in space.sizes.items():
        tokens = made.tokens_per_s * space.trial
        expected = tokens / (made.candidate.batch_size * made.candidate.num_steps)
        steps = space.trial_steps(size)
        assert steps % search_space.RUNGS == 0 and abs(steps - expected) <= search_space.RUNGS


def test_a_planned_transformer_searches_among_transformer_sizes():
    words = CorpusProfile("words.txt", train_tokens=1_000_000, vocab_size=60, copy_share=0.6)
    space = search_space.search_space(words, Budget(seconds=4000), laptop, share=0.25)
    assert space.center.startswith("gpt ") and len(space.sizes) > 1
    assert {made.candidate.family for made in space.sizes.values()} == {"gpt"}
