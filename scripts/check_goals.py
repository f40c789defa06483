"""Train each shipped config that carries a quality goal within its time limit, and say whether it met it.

Each goal is a shipped config, a limit on training time (train.max_time: the cosine schedule
anneals by it) and a bound on nats/char over the full validation split, scored from the run's
best.pt exactly as `charlm evaluate --checkpoint RUN` does. The goals were set for a quiet
2-core CPU; on a machine shared with other work the same seconds buy fewer steps, so the
script prints the steps each run got next to its score.

    python scripts/check_goals.py [--only shakespeare_lstm gru] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import cpu_report  # noqa: E402  (a sibling script)

from charlm.config import build_config, load_config  # noqa: E402
from charlm.inference import evaluate_checkpoint  # noqa: E402
from charlm.config.shipped import shipped_configs  # noqa: E402
from charlm.train import train  # noqa: E402


@dataclass(frozen=True)
class Goal:
    config: str
    seconds: float  # train.max_time for the run
    nats: float  # the full-split nats/char to reach (at most, or below when `strict`)
    why: str  # the goal in the project's own terms, printed beside the verdict
    strict: bool = False  # "beat": strictly below

    def met(self, nats: float) -> bool:
        return nats < self.nats if self.strict else nats <= self.nats


GOALS = [
    Goal("shakespeare_lstm", 75, 1.45, "Tiny Shakespeare in 75 s"),
    Goal("shakespeare_5min", 300, 1.40, "Tiny Shakespeare in 5 minutes (nanoGPT on an A100: 1.4697)"),
    Goal("shakespeare_gpt", 180, 1.75, "the CPU GPT in 3 minutes (nanoGPT's CPU recipe: 1.88)"),
    Goal("lstm", 280, math.log(3.755), "beat lstm.yaml's earlier val perplexity 3.755", strict=True),
    Goal("gru", 280, math.log(3.839), "beat gru.yaml's earlier val perplexity 3.839", strict=True),
]


def run_goal(goal: Goal, root: Path, quick: bool) -> dict:
    cfg = load_config(shipped_configs()[goal.config].path)
    raw = cfg.to_dict()
    raw["train"]["max_time"] = goal.seconds
    if quick:  # a tiny model for a second: checks the script, not the goal
        raw["train"].update(max_time=1, eval_every=10**6, eval_tokens=500)
        if "hidden_size" in raw["model"]:  # each family records only its own options
            raw["model"]["hidden_size"] = 16
        if cfg.model.name == "gpt":
            raw["model"].update(embedding_dim=16, num_layers=1, context=8)
        raw["data"].update(batch_size=4, num_steps=8)
    result = train(build_config(raw, name=goal.config), run_dir=root / goal.config, force=True)
    scores = evaluate_checkpoint(result.run_dir)  # best.pt, the whole validation split
    return {"nats": scores.nats_per_token, "perplexity": scores.perplexity, "steps": result.step,
            "seconds": result.elapsed, "met": goal.met(scores.nats_per_token)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=[g.config for g in GOALS], help="only these configs' goals")
    parser.add_argument("--quick", action="store_true", help="tiny models for a second each: checks the script")
    args = parser.parse_args(argv)
    goals = [g for g in GOALS if not args.only or g.config in args.only]
    for line in cpu_report():
        print(line)
    print("each config trained for its time limit, best.pt scored on the full validation split"
          + (" (--quick: tiny models for 1 s, the goals cannot be met)" if args.quick else ""))
    print(f"{'config':18} {'limit s':>7} {'goal nats':>10} {'nats/char':>9} {'val ppl':>8} {'steps':>6} "
          f"{'train s':>7}  result")
    home = os.environ.get("CHARLM_DATA_HOME")
    if home:  # stays valid after the chdir below
        os.environ["CHARLM_DATA_HOME"] = str(Path(home).resolve())
    start, missed = Path.cwd(), 0
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # data/ and runs/ stay out of the user's folders
        try:
            for goal in goals:
                r = run_goal(goal, Path(tmp), args.quick)
                missed += not r["met"]
                bound = ("< " if goal.strict else "<= ") + f"{goal.nats:.4f}"
                print(f"{goal.config:18} {goal.seconds:7g} {bound:>10} {r['nats']:9.4f} {r['perplexity']:8.3f} "
                      f"{r['steps']:6d} {r['seconds']:7.1f}  {'met' if r['met'] else 'NOT met'}  ({goal.why})",
                      flush=True)
        finally:
            os.chdir(start)
    print(f"{len(goals) - missed} of {len(goals)} goals met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
