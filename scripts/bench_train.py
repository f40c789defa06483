"""Tokens/s of charlm's full training step next to a bare PyTorch loop of the same architecture.

The bare loop (embedding → nn.RNN/GRU/LSTM → linear, cross-entropy, Adam, on ids already in a
tensor) is the kernel ceiling; charlm's step adds the sampler reading a memory map, clipping,
the schedule and state handling. Both are measured in this run, on this machine.

    python scripts/bench_train.py [--seconds 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from charlm.config import build_config
from charlm.distributed import Dist
from charlm.train import Trainer

# (label, config overrides, vocabulary size) — the sizes of configs/rnn.yaml and configs/shakespeare_lstm.yaml.
CASES = [
    ("rnn.yaml: rnn 1x512 emb64", "rnn", dict(hidden_size=512, num_layers=1, embedding_dim=64), 28, 32, 64),
    ("rnn.yaml size: rnn_scratch", "rnn_scratch", dict(hidden_size=512, embedding_dim=64), 28, 32, 64),
    ("rnn.yaml size: gru", "gru", dict(hidden_size=512, num_layers=1, embedding_dim=64), 28, 32, 64),
    ("rnn.yaml size: lstm", "lstm", dict(hidden_size=512, num_layers=1, embedding_dim=64), 28, 32, 64),
    ("shakespeare_lstm.yaml: lstm 1x512", "lstm", dict(hidden_size=512, num_layers=1, embedding_dim=64), 65, 64, 64),
    ("shakespeare size: rnn", "rnn", dict(hidden_size=512, num_layers=1, embedding_dim=64), 65, 64, 64),
    ("shakespeare size: gru", "gru", dict(hidden_size=512, num_layers=1, embedding_dim=64), 65, 64, 64),
]


class Bare(nn.Module):
    def __init__(self, kind, vocab, hidden_size, embedding_dim, num_layers=1):
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding_dim)
        cell = {"rnn": nn.RNN, "rnn_scratch": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind]
        self.rnn = cell(embedding_dim, hidden_size, num_layers, batch_first=True)
        self.out = nn.Linear(hidden_size, vocab)

    def forward(self, x):
        return self.out(self.rnn(self.embed(x))[0])


def timed(step, seconds: float, device) -> float:
    """Steps per second after a warm-up, over at least `seconds`."""
    for _ in range(3):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 5:
        step()
        n += 1
    sync()
    return n / (time.perf_counter() - start)


def bare_rate(kind, options, vocab, batch, steps, seconds, device) -> float:
    torch.manual_seed(0)
    model = Bare(kind, vocab, options["hidden_size"], options["embedding_dim"], options.get("num_layers", 1)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(vocab, (batch, steps), device=device)
    y = torch.randint(vocab, (batch, steps), device=device)

    def step():
        loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(step, seconds, device) * batch * steps


def charlm_rate(name, options, vocab, batch, steps, seconds, device, folder: Path) -> float:
    ids_path = folder / f"train-{vocab}.bin"
    np.random.default_rng(0).integers(vocab, size=2_000_000, dtype=np.uint8).tofile(ids_path)
    ids = np.memmap(ids_path, dtype=np.uint8, mode="r")
    cfg = build_config({"data": {"sampling": "sequential", "batch_size": batch, "num_steps": steps},
                        "model": {"name": name, **options},
                        "train": {"device": str(device), "max_steps": 10**9}})
    from charlm.models import build_model

    torch.manual_seed(0)
    model, args = build_model(name, vocab, **options)
    corpus = SimpleNamespace(train=ids, val=ids[:0], vocab=list(range(vocab)))
    trainer = Trainer(cfg, model.to(device), corpus, folder, device, Dist())
    batches = iter(())

    def step():
        nonlocal batches
        try:
            xb, yb = next(batches)
        except StopIteration:
            batches = trainer.sampler.epoch(0)
            xb, yb = next(batches)
        trainer.train_step(xb, yb, 1e-3)

    return timed(step, seconds, device) * batch * steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default=None, help="run only cases whose label contains this")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"{'case':36} {'bare tok/s':>12} {'charlm tok/s':>13} {'ratio':>6}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, options, vocab, batch, steps in CASES:
            if args.only and args.only not in label:
                continue
            bare = bare_rate(name, options, vocab, batch, steps, args.seconds, device)
            ours = charlm_rate(name, options, vocab, batch, steps, args.seconds, device, Path(tmp))
            results[label] = ours
            print(f"{label:36} {bare:12,.0f} {ours:13,.0f} {ours / bare:6.2f}", flush=True)
    if "rnn.yaml: rnn 1x512 emb64" in results and "rnn.yaml size: rnn_scratch" in results:
        ratio = results["rnn.yaml size: rnn_scratch"] / results["rnn.yaml: rnn 1x512 emb64"]
        print(f"rnn_scratch / rnn tokens/s: {ratio:.2f}")


if __name__ == "__main__":
    main()
