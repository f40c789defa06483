"""Benchmark `charlm preprocess` against a plain-numpy baseline on a generated corpus.

    python scripts/bench_preprocess.py            # 200 MB, char level, normalize none
    python scripts/bench_preprocess.py --mb 50 --normalize letters

Each implementation runs in its own subprocess, which reports its wall and CPU time
(imports excluded) and its peak RSS. On a busy machine compare CPU seconds, and use
--repeat. Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import codecs
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK_BYTES = 4 << 20
GOAL_RATIO, GOAL_MB_S, GOAL_RSS_MB = 1.5, 50.0, 500.0


def make_corpus(path: Path, megabytes: float) -> str:
    """Tiny Shakespeare (the copy shipped in the package) repeated up to the size."""
    from charlm.data.text import builtin_path

    target = int(megabytes * 1e6)
    block, what = builtin_path("tinyshakespeare").read_bytes(), "tinyshakespeare repeated"
    with open(path, "wb") as out:
        written = 0
        while written < target:
            piece = block[: target - written]
            out.write(piece)
            written += len(piece)
    return what


def run_baseline(source: Path, out_dir: Path) -> None:
    """The least a char-level encoder must do: count code points, then map and write ids."""
    import numpy as np

    def code_point_chunks():
        decoder = codecs.getincrementaldecoder("utf-8")()
        with open(source, "rb") as handle:
            while raw := handle.read(CHUNK_BYTES):
                yield np.frombuffer(decoder.decode(raw).encode("utf-32-le"), np.uint32)

    counts = np.zeros(0, np.int64)
    for points in code_point_chunks():
        chunk_counts = np.bincount(points)
        if len(chunk_counts) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(chunk_counts) - len(counts), np.int64)])
        counts[: len(chunk_counts)] += chunk_counts
    present = np.flatnonzero(counts)
    table = np.zeros(len(counts), np.uint8 if len(present) < 256 else np.uint32)
    table[present] = np.arange(1, len(present) + 1)
    with open(out_dir / "ids.bin", "wb") as out:
        for points in code_point_chunks():
            table[points].tofile(out)


def run_charlm(source: Path, out_dir: Path, level: str, normalize: str) -> None:
    from charlm.data.corpus import preprocess
    preprocess(source, out_dir / "corpus", level=level, normalize=normalize, chunk_bytes=CHUNK_BYTES)


def worker(args) -> None:
    source, out_dir = Path(args.input), Path(args.out)
    if args.worker == "charlm":
        import charlm.data.corpus  # noqa: F401  (imports are not what we time)
    import numpy  # noqa: F401
    start, cpu_start = time.perf_counter(), time.process_time()
    if args.worker == "baseline":
        run_baseline(source, out_dir)
    else:
        run_charlm(source, out_dir, args.level, args.normalize)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak_mb}))


def measure(impl: str, source: Path, args) -> dict:
    with tempfile.TemporaryDirectory(dir=source.parent) as out_dir:
        cmd = [sys.executable, __file__, "--worker", impl, "--input", str(source), "--out", out_dir,
               "--level", args.level, "--normalize", args.normalize]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{impl} failed:\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=200.0, help="corpus size in MB (default 200)")
    parser.add_argument("--level", default="char", choices=("char", "word"))
    parser.add_argument("--normalize", default="none", choices=("none", "lower", "letters"))
    parser.add_argument("--repeat", type=int, default=1, help="runs per implementation; the best time counts")
    parser.add_argument("--worker", choices=("baseline", "charlm"), help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory(prefix="charlm-bench-") as folder:
        source = Path(folder) / "corpus.txt"
        what = make_corpus(source, args.mb)
        size_mb = source.stat().st_size / 1e6
        results = {}
        for _ in range(args.repeat):
            for impl in ("baseline", "charlm"):
                run = measure(impl, source, args)
                best = results.setdefault(impl, run)
                best["seconds"] = min(best["seconds"], run["seconds"])
                best["cpu_seconds"] = min(best["cpu_seconds"], run["cpu_seconds"])
                best["peak_rss_mb"] = max(best["peak_rss_mb"], run["peak_rss_mb"])

    base = results["baseline"]["seconds"]
    print(f"corpus: {size_mb:.1f} MB ({what}), level={args.level}, normalize={args.normalize}, "
          f"best of {args.repeat}")
    print(f"{'impl':<10}{'seconds':>9}{'cpu s':>8}{'MB/s':>9}{'peak RSS MB':>13}{'vs baseline':>13}")
    for impl, run in results.items():
        print(f"{impl:<10}{run['seconds']:>9.2f}{run['cpu_seconds']:>8.2f}{size_mb / run['seconds']:>9.1f}"
              f"{run['peak_rss_mb']:>13.1f}{run['seconds'] / base:>12.2f}x")
    ours = results["charlm"]
    goals = {f"time <= {GOAL_RATIO}x baseline": ours["seconds"] <= GOAL_RATIO * base,
             f">= {GOAL_MB_S:g} MB/s": size_mb / ours["seconds"] >= GOAL_MB_S,
             f"peak RSS < {GOAL_RSS_MB:g} MB": ours["peak_rss_mb"] < GOAL_RSS_MB}
    print("goals: " + "; ".join(f"{name}: {'PASS' if ok else 'FAIL'}" for name, ok in goals.items()))
    sys.exit(0 if all(goals.values()) else 1)


if __name__ == "__main__":
    main()
