"""Tokens/s of charlm's training step for every shipped config, in fp32 and in bf16, side by side.

For each trainable shipped config (its model, batch and sequence length; random ids of its
vocabulary size) the script times charlm's whole step (sampler reading a memory map, model,
loss, clipping, optimizer) under train.precision fp32 and bf16, and a bare PyTorch loop of the
same recurrent architecture in fp32 (the kernel ceiling: embedding → nn.RNN/GRU/LSTM → linear
on ids already in a tensor). The precisions are timed in alternating rounds and each keeps its
best round, so a busy machine slows both alike and the bf16/fp32 ratio stays a same-run ratio.
On a machine shared with other work, `--clock cpu` runs one thread and counts the CPU seconds
that thread spent (time.thread_time) instead of wall time: tokens per CPU-second, which other
processes barely move, though one thread is not two (see the README).

    python scripts/bench_train.py [--rounds 3] [--steps 20] [--only lstm] [--clock wall|cpu] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from charlm.config import build_config, load_config
from charlm.training.distributed import Dist
from charlm.models import build_model, model_class
from charlm.config.shipped import shipped_configs
from charlm.train import Trainer, model_options

# Vocabulary sizes of the shipped corpora as the configs normalise them (with <unk>).
VOCAB = {("timemachine", "letters"): 28, ("tinyshakespeare", "none"): 66}
BARE = {"rnn": nn.RNN, "rnn_scratch": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def cpu_report() -> list[str]:
    """The CPU and what decides whether bf16 can pay on it."""
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in (platform.machine(), platform.processor(), ""):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:  # not Linux: the model from platform, no flags
        pass
    from charlm.device.precision import cpu_has_native_bf16

    have = {f: ("yes" if f in flags else "no") for f in ("avx512_bf16", "amx_bf16", "avx512f")} if flags else {}
    return [f"cpu: {model}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
            f"capability {torch.backends.cpu.get_cpu_capability()}",
            "flags: " + (", ".join(f"{k} {v}" for k, v in have.items()) if have else "unknown (no /proc/cpuinfo)")
            + f"; torch.ops.mkldnn._is_mkldnn_bf16_supported(): {cpu_has_native_bf16()}"]


class Bare(nn.Module):
    def __init__(self, kind, vocab, hidden_size, embedding_dim, num_layers=1):
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding_dim)
        self.rnn = BARE[kind](embedding_dim, hidden_size, num_layers, batch_first=True)
        self.out = nn.Linear(hidden_size, vocab)

    def forward(self, x):
        return self.out(self.rnn(self.embed(x))[0])


def bench_cases(only: str | None = None, quick: bool = False):
    """(name, config) for every shipped config with a trained model; --quick shrinks each to seconds."""
    for name, item in shipped_configs().items():
        cfg = load_config(item.path)
        if not getattr(model_class(cfg.model.name), "trainable", True) or (only and only not in name):
            continue
        if name.endswith("_gpu"):
            continue  # sized for a GPU: minutes per step on a CPU
        if quick:
            raw = cfg.to_dict()
            raw["data"].update(batch_size=min(cfg.data.batch_size, 4), num_steps=min(cfg.data.num_steps, 8))
            if "hidden_size" in raw["model"]:  # each family records only its own options
                raw["model"]["hidden_size"] = min(raw["model"]["hidden_size"], 32)
            if cfg.model.name == "gpt":
                raw["model"].update(embedding_dim=32, num_layers=1, context=8)
            cfg = build_config(raw, name=name)
        yield name, cfg


def pick_clock(kind: str):
    """wall: time.perf_counter with torch's threads; cpu: one thread and its CPU seconds (shared machines)."""
    if kind == "cpu":
        torch.set_num_threads(1)
        return time.thread_time
    return time.perf_counter


def vocab_of(cfg) -> int:
    return VOCAB.get((cfg.data.corpus, cfg.data.normalize), 66)


def make_step(cfg, vocab: int, precision: str, folder: Path):
    """One of charlm's training steps on random ids, as a zero-argument function."""
    ids_path = folder / f"train-{vocab}.bin"
    if not ids_path.exists():
        np.random.default_rng(0).integers(vocab, size=2_000_000, dtype=np.uint8).tofile(ids_path)
    ids = np.memmap(ids_path, dtype=np.uint8, mode="r")
    raw = cfg.to_dict()
    raw["train"].update(device="cpu", precision=precision, max_steps=10**9, compile=False)
    run_cfg = build_config(raw)
    torch.manual_seed(0)
    model, _ = build_model(run_cfg.model.name, vocab, **model_options(run_cfg))
    corpus = SimpleNamespace(train=ids, val=ids[:0], vocab=list(range(vocab)))
    trainer = Trainer(run_cfg, model, corpus, folder, "cpu", Dist())
    batches = iter(())

    def step():
        nonlocal batches
        try:
            xb, yb = next(batches)
        except StopIteration:
            batches = trainer.sampler.epoch(0)
            xb, yb = next(batches)
        trainer.train_step(xb, yb, run_cfg.optim.lr)

    return step


def make_bare_step(cfg, vocab: int):
    m = cfg.model
    torch.manual_seed(0)
    model = Bare(m.name, vocab, m.hidden_size, m.embedding_dim or 64, m.num_layers if m.name != "rnn_scratch" else 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(vocab, (cfg.data.batch_size, cfg.data.num_steps))
    y = torch.randint(vocab, (cfg.data.batch_size, cfg.data.num_steps))

    def step():
        loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def rate(step, steps: int, clock=time.perf_counter) -> float:
    """Steps per second of `clock` over `steps` steps."""
    start = clock()
    for _ in range(steps):
        step()
    return steps / max(clock() - start, 1e-9)


def measure(cfg, steps: int, rounds: int, folder: Path, clock=time.perf_counter) -> dict[str, float]:
    """Tokens/s per variant: the best of `rounds` alternating rounds of `steps` steps each."""
    vocab = vocab_of(cfg)
    variants = {"fp32": make_step(cfg, vocab, "fp32", folder), "bf16": make_step(cfg, vocab, "bf16", folder)}
    if cfg.model.name in BARE:
        variants["bare"] = make_bare_step(cfg, vocab)
    for step in variants.values():  # warm-up: allocator, oneDNN primitive caches
        rate(step, 2)
    best = dict.fromkeys(variants, 0.0)
    for _ in range(rounds):
        for key, step in variants.items():
            best[key] = max(best[key], rate(step, steps, clock))
    tokens = cfg.data.batch_size * cfg.data.num_steps
    return {key: r * tokens for key, r in best.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each variant keeps its best")
    parser.add_argument("--only", default=None, help="only configs whose name contains this")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: seconds on the clock, all threads; cpu: one thread's CPU seconds (shared machines)")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 steps x 1 round: checks the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 2, 1
    clock = pick_clock(args.clock)
    for line in cpu_report():
        print(line)
    print(f"best of {args.rounds} alternating rounds of {args.steps} steps; random ids, each config's batch; "
          + ("tokens per wall-clock second" if args.clock == "wall" else "tokens per CPU-second of one thread")
          + (" (--quick: tiny models)" if args.quick else ""))
    header = f"{'config':18} {'model':12} {'B x T':>8} {'bare fp32':>10} {'fp32 tok/s':>11} {'bf16 tok/s':>11} " \
             f"{'bf16/fp32':>9} {'fp32/bare':>9}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in bench_cases(args.only, args.quick):
            r = measure(cfg, args.steps, args.rounds, Path(tmp), clock)
            bare = f"{r['bare']:10,.0f}" if "bare" in r else f"{'-':>10}"
            vs_bare = f"{r['fp32'] / r['bare']:9.2f}" if "bare" in r else f"{'-':>9}"
            shape = f"{cfg.data.batch_size}x{cfg.data.num_steps}"
            print(f"{name:18} {cfg.model.name:12} {shape:>8} {bare} {r['fp32']:11,.0f} {r['bf16']:11,.0f} "
                  f"{r['bf16'] / r['fp32']:9.2f} {vs_bare}", flush=True)


if __name__ == "__main__":
    main()
