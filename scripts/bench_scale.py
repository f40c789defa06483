"""Peak memory and speed of `charlm train` as the corpus grows from 1 MB to 1 GB.

Writes prepared corpus folders of random uint8 ids (train.bin/val.bin and the JSON files
`load_corpus` reads) in a temporary folder, trains a small LSTM for a fixed number of steps in
one child process per size and sampler, and reports per child: peak RSS (ru_maxrss), peak
anonymous RSS (sampled from /proc; RSS also counts the memory map's file pages, which the kernel
can drop at will) and training tokens/s, each against the 1 MB run.

    python scripts/bench_scale.py [--sizes 1MB,100MB,1GB] [--steps 200] [--sampling random,sequential]
                                  [--threads 1]

One thread per child by default: the point is the ratio between sizes, and a single thread is
far less disturbed by whatever else the machine runs than OpenMP threads spinning for cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from charlm.config import build_config, dump_yaml
from charlm.data.corpus import write_corpus
from charlm.data.vocab import Vocab

UNITS = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
TOKENS = ["<unk>", " ", *string.ascii_lowercase]  # normalize=letters, so configs match the folder
CHUNK = 1 << 26


def parse_size(text: str) -> int:
    return int(float(text[:-2]) * UNITS[text[-2:].upper()])


def make_corpus(folder: Path, n_tokens: int, val_fraction: float = 0.1, seed: int = 0) -> None:
    """A folder as `charlm preprocess` writes it, filled with uniform random ids, chunk by chunk."""
    rng = np.random.default_rng(seed)
    n_val = int(n_tokens * val_fraction)

    def chunks(n: int):
        for start in range(0, n, CHUNK):
            yield rng.integers(1, len(TOKENS), min(CHUNK, n - start), dtype=np.uint8)

    vocab = Vocab(TOKENS, [0] + [n_tokens // (len(TOKENS) - 1)] * (len(TOKENS) - 1))
    write_corpus(folder, vocab, chunks(n_tokens - n_val), chunks(n_val), source="bench_scale (random ids)",
                 normalize="letters", val_fraction=val_fraction)


def rss_anon_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def train_child(work: Path, corpus: Path, sampling: str, steps: int, threads: int) -> dict:
    """One `charlm train` in a child process; its peak RSS comes from wait4, not from our own."""
    run = work / f"run-{corpus.name}-{sampling}"
    cfg = build_config({
        "data": {"corpus": str(corpus), "normalize": "letters", "sampling": sampling, "batch_size": 32,
                 "num_steps": 64},
        "model": {"name": "lstm", "hidden_size": 128, "num_layers": 1, "embedding_dim": 32},
        "train": {"max_steps": steps, "eval_every": max(1, steps // 2), "log_every": 50,
                  "eval_tokens": 32768, "device": "cpu", "out": str(run)}})
    config = work / f"{run.name}.yaml"
    config.write_text(dump_yaml(cfg), encoding="utf-8")
    started = time.perf_counter()
    log = work / f"{run.name}.log"
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-m", "charlm", "train", "--config", str(config), "-q"],
                                 stdout=out, stderr=subprocess.STDOUT,
                                 env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    peak_anon = 0
    while True:  # wait4 rather than Popen.wait: it returns this child's own rusage
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        peak_anon = max(peak_anon, rss_anon_kb(child.pid))
        time.sleep(0.02)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"training on {corpus.name} failed:\n{log.read_text()}")
    summary = json.loads((run / "summary.json").read_text())
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "peak_anon_mb": peak_anon / 1024,
            "tokens_per_s": summary["tokens_per_s"], "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1MB,100MB,1GB")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--sampling", default="random,sequential")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still remove the gigabyte of corpora
    sizes = args.sizes.split(",")
    with tempfile.TemporaryDirectory(prefix="charlm-bench-scale-") as tmp:
        work = Path(tmp)
        print(f"{'corpus':>7} {'sampling':>10} {'peak RSS MB':>12} {'x 1st':>6} {'peak anon MB':>13} "
              f"{'x 1st':>6} {'tok/s':>9} {'x 1st':>6} {'wall s':>7}", flush=True)
        for sampling in args.sampling.split(","):
            base = None
            for size in sizes:
                corpus = work / f"corpus-{size}"
                if not corpus.exists():
                    made = time.perf_counter()
                    make_corpus(corpus, parse_size(size))
                    print(f"# wrote {size} corpus in {time.perf_counter() - made:.1f}s", file=sys.stderr)
                r = train_child(work, corpus, sampling, args.steps, args.threads)
                base = base or r
                rss_ratio = r['peak_rss_mb'] / base['peak_rss_mb']
                print(f"{size:>7} {sampling:>10} {r['peak_rss_mb']:>12.0f} {rss_ratio:>6.2f} "
                      f"{r['peak_anon_mb']:>13.0f} {r['peak_anon_mb'] / base['peak_anon_mb']:>6.2f} "
                      f"{r['tokens_per_s']:>9,.0f} {r['tokens_per_s'] / base['tokens_per_s']:>6.2f} "
                      f"{r['wall_s']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
