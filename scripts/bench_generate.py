"""Benchmark generate(): carried-state decoding vs re-running the whole text at every step.

    python scripts/bench_generate.py [--threads N] [--repeats R]

Randomly initialised models at the configs/rnn.yaml and configs/lstm.yaml sizes (V = 28,
letters + space + <unk>). Goals at batch 1: >= 20k chars/s for the 1x512 RNN, >= 8k for the
1x512 LSTM. "step us" is the model's own (B=1, T=1) forward, so "loop us" minus it is the
decode loop's overhead per token.
"""

from __future__ import annotations

import argparse
import string
import time

import torch
from torch import nn

from charlm.data.vocab import Vocab
from charlm.generate import generate
from charlm.sampling import get_strategy

PREFIX = "time traveller"
CONFIGS = {  # label: (model name, options)
    "rnn 1x512": ("rnn", {"hidden_size": 512, "num_layers": 1, "embedding_dim": 64}),
    "lstm 2x256": ("lstm", {"hidden_size": 256, "num_layers": 2, "embedding_dim": 64}),
    "lstm 1x512": ("lstm", {"hidden_size": 512, "num_layers": 1, "embedding_dim": 64}),
}
GOALS = {"rnn 1x512": 20_000, "lstm 1x512": 8_000}


class StandIn(nn.Module):
    """nn.RNN/nn.LSTM behind the model contract, for when charlm.models is not there yet."""

    def __init__(self, kind, vocab_size, hidden_size, num_layers, embedding_dim):
        super().__init__()
        self.kind, self.num_layers, self.hidden_size = kind, num_layers, hidden_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        cell = nn.LSTM if kind == "lstm" else nn.RNN
        self.rnn = cell(embedding_dim, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def init_state(self, batch_size, device):
        h = torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device)
        return (h, h.clone()) if self.kind == "lstm" else h

    def forward(self, ids, state=None):
        out, state = self.rnn(self.embedding(ids), state)
        return self.head(out), state


def build(name: str, options: dict, vocab_size: int) -> tuple[nn.Module, str]:
    try:
        from charlm.models import build_model
    except ImportError:
        return StandIn(name, vocab_size, **options), "stand-in (charlm.models missing)"
    model, _ = build_model(name, vocab_size, **options)
    return model, "charlm.models"


def best_time(fn, repeats: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def naive(model, vocab, length: int, seed: int) -> None:
    """The slow way: every step re-runs prefix + everything generated so far from a fresh state."""
    pick, gen = get_strategy("sample"), torch.Generator().manual_seed(seed)
    prefix = vocab.encode(list(PREFIX))
    buf = torch.zeros(1, len(prefix) + length, dtype=torch.long)
    buf[0, : len(prefix)] = torch.tensor(prefix)
    with torch.inference_mode():
        model.eval()
        for t in range(len(prefix), len(prefix) + length):
            logits, _ = model(buf[:, :t], model.init_state(1, "cpu"))  # (1, t, V)
            buf[:, t] = pick(logits[:, -1], gen, temperature=0.8)


def step_us(model, clock, steps: int = 300) -> float:
    """Microseconds per (1, 1) forward with a carried state: the model's share of a step."""
    with torch.inference_mode():
        model.eval()
        x, state = torch.ones(1, 1, dtype=torch.long), model.init_state(1, "cpu")
        for _ in range(20):
            _, state = model(x, state)

        def run() -> None:
            nonlocal state
            for _ in range(steps):
                _, state = model(x, state)

        return best_time(run, 3, clock) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--naive-lengths", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time, steadier on a shared machine with --threads 1")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    vocab = Vocab(["<unk>", " "] + list(string.ascii_lowercase), [0] + [1] * 27)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, V={len(vocab)}, "
          f"prefix {PREFIX!r}, strategy sample T=0.8, best of {args.repeats}, {args.clock} clock")
    header = f"{'model':<11} {'B':>3} {'length':>6} {'carried c/s':>12} {'naive c/s':>10} " \
             f"{'speed-up':>8} {'loop us':>8} {'step us':>8}"
    for label, (name, options) in CONFIGS.items():
        model, source = build(name, options, len(vocab))
        model_us = step_us(model, clock)
        print(f"\n{label}: {source}, {sum(p.numel() for p in model.parameters()):,} parameters")
        print(header)
        for batch in (1, 64):
            for length in args.lengths:
                def run(model=model, length=length, batch=batch):
                    return generate(model, vocab, PREFIX, length=length, temperature=0.8, num_samples=batch, seed=0)

                run()  # warm-up: allocator, lazy init
                secs = best_time(run, args.repeats, clock)
                rate = batch * length / secs
                naive_cell, ratio_cell = "", ""
                if batch == 1 and length in args.naive_lengths:
                    naive_secs = best_time(lambda m=model, n=length: naive(m, vocab, n, 0), 1, clock)
                    naive_cell = f"{length / naive_secs:,.0f}"
                    ratio_cell = f"{naive_secs / secs:.1f}x"
                loop = secs / length * 1e6
                print(f"{label:<11} {batch:>3} {length:>6} {rate:>12,.0f} {naive_cell:>10} "
                      f"{ratio_cell:>8} {loop:>8.0f} {model_us if batch == 1 else float('nan'):>8.0f}")
        if label in GOALS:
            print(f"goal at B=1: >= {GOALS[label]:,} chars/s")


if __name__ == "__main__":
    main()
