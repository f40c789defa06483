"""Benchmark generate(): characters/s of the decode step, fast path against the model's own forward.

    python scripts/bench_generate.py [--threads N] [--repeats R] [--clock cpu] [--quick]

Randomly initialised models at the shipped configs' sizes (V = 28, letters + space + <unk>).
At each batch size and length it prints characters/s for:
  plain  generate(..., fast=False): the model's own forward on (B, 1) with the state carried,
         the baseline every other column is a ratio to;
  fp32   charlm.generation.fastgen's step, the default (bit-for-bit the plain path's text);
  bf16, int8  the opt-in `generate --precision` weights of the recurrent step;
and, at batch 1, "naive": re-running the whole text at every step (the lesson of carrying state).
Before the table, the floor measured in the same run: a bare rnn 1x512 step (recurrent addmv +
tanh + decoder addmv, no sampling, no Python beyond the loop) in steps/s; after it, every batch-1
row's best rate as a share of that floor, so charlm generate / floor reads the same on any machine.
Then the shipped gpt sizes against an lstm at batch 1: with one thread and with torch's, and where
a gpt's time goes (re-running the window when it slides, the key/value cache's torch.cat).
Goals: rnn 1x512 >= 35,000 chars/s in fp32, lstm 1x512 >= 10,000 in its best precision,
both at batch 1 and flat in length.
"""

from __future__ import annotations

import argparse
import string
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import cpu_report  # noqa: E402  (a sibling script)

from charlm.config import GenerateConfig  # noqa: E402
from charlm.data.vocab import Vocab  # noqa: E402
from charlm.generation.generate import generate  # noqa: E402
from charlm.models import build_model  # noqa: E402
from charlm.generation.sampling import get_strategy  # noqa: E402

PREFIX = "time traveller"
CONFIGS = {  # label: (model name, options)
    "rnn 1x512": ("rnn", {"hidden_size": 512, "num_layers": 1, "embedding_dim": 64}),
    "gru 1x512": ("gru", {"hidden_size": 512, "num_layers": 1, "embedding_dim": 64}),
    "lstm 2x256": ("lstm", {"hidden_size": 256, "num_layers": 2, "embedding_dim": 64}),
    "lstm 1x512": ("lstm", {"hidden_size": 512, "num_layers": 1, "embedding_dim": 64}),
}
QUICK = {"rnn 1x16": ("rnn", {"hidden_size": 16, "num_layers": 1, "embedding_dim": 8})}
# label: (chars/s at batch 1, the precisions that may reach it)
GOALS = {"rnn 1x512": (35_000, ("fp32",)), "lstm 1x512": (10_000, ("fp32", "bf16", "int8"))}
PRECISIONS = ("fp32", "bf16", "int8")


def best_time(fn, repeats: int, clock) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def naive(model, vocab, length: int) -> None:
    """The slow way: every step re-runs prefix + everything generated so far from a fresh state."""
    pick, gen = get_strategy("sample"), torch.Generator().manual_seed(0)
    prefix = vocab.encode(list(PREFIX))
    buf = torch.zeros(1, len(prefix) + length, dtype=torch.long)
    buf[0, : len(prefix)] = torch.tensor(prefix)
    with torch.inference_mode():
        model.eval()
        for t in range(len(prefix), len(prefix) + length):
            logits, _ = model(buf[:, :t], model.init_state(1, "cpu"))  # (1, t, V)
            buf[:, t] = pick(logits[:, -1], gen, temperature=0.8)


def rate(model, vocab, batch: int, length: int, repeats: int, clock, *, fast: bool, precision: str = "fp32") -> float:
    params = GenerateConfig(length=length, temperature=0.8, num_samples=batch, seed=0, precision=precision)

    def run():
        return generate(model, vocab, PREFIX, params, fast=fast)

    run()  # warm-up: allocator, lazy init, the step's tables
    return batch * length / best_time(run, repeats, clock)


def floor_rate(steps: int, repeats: int, clock, hidden: int = 512, vocab: int = 28) -> float:
    """Steps/s of the least a batch-1 rnn step can do: h = tanh(W_hh h + x_proj[id]), logits = W_hq h + b_q."""
    torch.manual_seed(0)
    x_proj, w_hh = torch.randn(vocab, hidden) * 0.05, torch.randn(hidden, hidden) * 0.05
    w_hq, b_q = torch.randn(vocab, hidden) * 0.05, torch.zeros(vocab)
    h, logits = torch.zeros(hidden), torch.empty(vocab)

    def run():
        nonlocal h
        for t in range(steps):
            h = torch.tanh(torch.addmv(x_proj[t % vocab], w_hh, h))
            torch.addmv(b_q, w_hq, h, out=logits)

    with torch.inference_mode():
        return steps / best_time(run, repeats, clock)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time, steadier on a shared machine with --threads 1")
    parser.add_argument("--quick", action="store_true", help="one tiny model, short texts: checks the script")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs, lengths, repeats = (QUICK, [20, 40], 1) if args.quick else (CONFIGS, args.lengths, args.repeats)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    vocab = Vocab(["<unk>", " "] + list(string.ascii_lowercase), [0] + [1] * 27)
    print("\n".join(cpu_report()))
    floor = floor_rate(200 if args.quick else 5000, repeats, clock)
    print(f"floor: bare rnn 1x512 step (recurrent addmv + tanh + decoder addmv, no sampling): {floor:,.0f} steps/s")
    print(f"V={len(vocab)}, prefix {PREFIX!r}, strategy sample T=0.8, best of {repeats}, {args.clock} clock; "
          "chars/s, ratios to plain")
    print(f"{'model':<11} {'B':>3} {'length':>6} {'plain':>9} {'fp32':>9} {'bf16':>9} {'int8':>9} "
          f"{'fp32/plain':>10} {'best/plain':>10} {'naive':>7}")
    verdicts, floors = [], []
    for label, (name, options) in configs.items():
        torch.manual_seed(0)
        model, _ = build_model(name, len(vocab), **options)
        for batch in args.batches:
            for length in lengths:
                plain = rate(model, vocab, batch, length, repeats, clock, fast=False)
                fast = {p: rate(model, vocab, batch, length, repeats, clock, fast=True, precision=p)
                        for p in PRECISIONS}
                naive_cell = ""
                if batch == 1 and length == lengths[0]:
                    naive_cell = f"{length / best_time(lambda m=model, n=length: naive(m, vocab, n), 1, clock):,.0f}"
                print(f"{label:<11} {batch:>3} {length:>6} {plain:>9,.0f} " + " ".join(
                    f"{fast[p]:>9,.0f}" for p in PRECISIONS) + f" {fast['fp32'] / plain:>9.2f}x "
                      f"{max(fast.values()) / plain:>9.2f}x {naive_cell:>7}")
                if batch == 1:
                    floors.append(f"{label} B=1 length {length}: best {max(fast.values()):,.0f} chars/s = "
                                  f"{max(fast.values()) / floor:.2f} of the floor")
                if batch == 1 and label in GOALS:
                    goal, allowed = GOALS[label]
                    got, how = max((fast[p], p) for p in allowed)
                    verdicts.append(f"{label} B=1 length {length}: {got:,.0f} chars/s ({how}), goal >= {goal:,}: "
                                    + ("met" if got >= goal else "NOT met"))
    for line in floors:
        print("vs floor: " + line)
    for line in verdicts:
        print("goal: " + line)
    gpt_section(vocab, clock, repeats, args.quick)


# The shipped gpt configs' sizes, and the lstm they are compared with (label: model name, options).
GPT_CONFIGS = {
    "lstm 2x512": ("lstm", {"hidden_size": 512, "num_layers": 2, "embedding_dim": 64}),
    "gpt 4x128 c64": ("gpt", {"num_layers": 4, "num_heads": 4, "embedding_dim": 128, "context": 64}),
    "gpt 6x384 c256": ("gpt", {"num_layers": 6, "num_heads": 6, "embedding_dim": 384, "context": 256}),
}
GPT_QUICK = {"lstm 1x16": ("lstm", {"hidden_size": 16, "num_layers": 1, "embedding_dim": 8}),
             "gpt 1x8 c8": ("gpt", {"num_layers": 1, "num_heads": 1, "embedding_dim": 8, "context": 8})}


def gpt_section(vocab, clock, repeats: int, quick: bool) -> None:
    """Where a gpt's generation time goes at batch 1, past its context: threads, window re-runs, the cache."""
    from charlm.generation import fastgen

    length = 40 if quick else 400
    print(f"\ngpt against lstm, B=1, {length} chars from {PREFIX!r} (past the context): chars/s with one thread "
          f"(generate's default up to B={fastgen.ONE_THREAD_BATCH}) and with torch's {torch.get_num_threads()}; "
          "for a gpt, the share of its forward time spent re-running the window when it slides, and in torch.cat "
          "(the growing key/value cache)")
    print(f"{'model':<15} {'1 thread':>9} {'torch':>9} {'1/torch':>8} {'slides':>7} {'cat':>6}")
    base = None
    for label, (name, options) in (GPT_QUICK if quick else GPT_CONFIGS).items():
        torch.manual_seed(0)
        model, _ = build_model(name, len(vocab), **options)
        one = rate(model, vocab, 1, length, repeats, clock, fast=True)
        saved, fastgen.ONE_THREAD_BATCH = fastgen.ONE_THREAD_BATCH, 0  # the old way: torch's threads
        try:
            many = rate(model, vocab, 1, length, repeats, clock, fast=True)
        finally:
            fastgen.ONE_THREAD_BATCH = saved
        base = base or one
        slides = cat = ""
        if name == "gpt":
            slide_share, cat_share = _gpt_split(model, length, clock)
            slides, cat = f"{slide_share:.0%}", f"{cat_share:.0%}"
        print(f"{label:<15} {one:>9,.0f} {many:>9,.0f} {one / many:>7.1f}x {slides:>7} {cat:>6}"
              + (f"   {one / base:.2f}x the lstm's chars/s" if name == "gpt" else ""))


def _gpt_split(model, length: int, clock) -> tuple[float, float]:
    """Shares of `length` one-token forwards (one thread) spent in the steps that slide the window and in torch.cat."""
    slide = total = cat_time = 0.0
    real_cat = torch.cat

    def timed_cat(*args, **kwargs):
        nonlocal cat_time
        start = clock()
        try:
            return real_cat(*args, **kwargs)
        finally:
            cat_time += clock() - start

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model.eval()
    try:
        with torch.inference_mode():
            state, ids = model.init_state(1, "cpu"), torch.zeros(1, 1, dtype=torch.long)
            torch.cat = timed_cat
            for _ in range(length):
                sliding = state[0].shape[1] == model.context
                start = clock()
                _, state = model(ids, state)
                spent = clock() - start
                total += spent
                slide += spent if sliding else 0.0
    finally:
        torch.cat = real_cat
        torch.set_num_threads(before)
    return slide / total, cat_time / total


if __name__ == "__main__":
    main()
