"""Validation quality of bf16 against fp32 at equal steps, for every trainable shipped config.

Each config is trained twice from the same seed for the same number of steps (no time limit,
so both runs see the same batches and the same schedule), once under train.precision fp32 and
once under bf16, and each run's final checkpoint is scored on the full validation split
exactly as `charlm evaluate` does. bf16 passes where its perplexity is within 1% of fp32's;
whether it is also faster is bench_train.py's same-run ratio (the seconds printed here are
one run each and move with the machine's load).

    python scripts/bench_precision.py [--steps 300] [--only lstm] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import bench_cases, cpu_report  # noqa: E402  (a sibling script)

from charlm.config import build_config  # noqa: E402
from charlm.inference import evaluate_checkpoint  # noqa: E402
from charlm.train import train  # noqa: E402

TOLERANCE = 0.01  # bf16 may be auto's choice only within 1% of fp32's perplexity at equal steps


def run(name: str, cfg, precision: str, steps: int, root: Path) -> dict:
    raw = cfg.to_dict()
    raw["train"].update(max_steps=steps, max_time=None, epochs=None, eval_every=steps, eval_tokens=2000,
                        precision=precision, device="cpu", compile=False, tensorboard=False)
    result = train(build_config(raw, name=name), run_dir=root / f"{name}-{precision}", force=True,
                   handle_signals=False)
    scores = evaluate_checkpoint(result.run_dir / "last.pt")
    return {"perplexity": scores.perplexity, "nats": scores.nats_per_token, "seconds": result.elapsed,
            "steps_per_s": result.step / max(result.elapsed, 1e-9)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (both precisions)")
    parser.add_argument("--only", default=None, help="only configs whose name contains this")
    parser.add_argument("--quick", action="store_true", help="tiny models for a few steps: checks the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 3
    for line in cpu_report():
        print(line)
    print(f"{args.steps} steps per run from seed 0, final checkpoint scored on the full validation split"
          + (" (--quick: tiny models)" if args.quick else ""))
    print(f"{'config':18} {'model':12} {'steps':>6} {'fp32 ppl':>9} {'bf16 ppl':>9} {'bf16-fp32':>9} "
          f"{'fp32 s':>7} {'bf16 s':>7} {'within 1%':>9}")
    home = os.environ.get("CHARLM_DATA_HOME")
    if home:  # stays valid after the chdir below
        os.environ["CHARLM_DATA_HOME"] = str(Path(home).resolve())
    start = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # data/ and runs/ of the benchmark stay out of the user's folders
        try:
            for name, cfg in bench_cases(args.only, args.quick):
                fp32 = run(name, cfg, "fp32", args.steps, Path(tmp))
                bf16 = run(name, cfg, "bf16", args.steps, Path(tmp))
                change = bf16["perplexity"] / fp32["perplexity"] - 1
                print(f"{name:18} {cfg.model.name:12} {args.steps:6d} {fp32['perplexity']:9.3f} "
                      f"{bf16['perplexity']:9.3f} {change:+9.2%} {fp32['seconds']:7.1f} {bf16['seconds']:7.1f} "
                      f"{'yes' if change <= TOLERANCE else 'no':>9}", flush=True)
        finally:
            os.chdir(start)


if __name__ == "__main__":
    main()
