"""The runs the planner's rules are read from: the plan and its neighbours, one factor at a time.

For each corpus and budget, trains the planned config and, changing one thing at a time, the next
smaller and larger model of the ladder, the learning rate halved and doubled, and dropout 0.1
lower and higher; every best.pt scored on the full validation split. Where a neighbour wins, the
rule behind that factor (`charlm.planning.planner.Rules`) is off for that text and budget. Prints a table
per corpus and budget with the CPU, and appends every row to a JSON lines file for refitting.

    python scripts/plan_sweep.py --time 90s 5m --out sweep.jsonl CORPUS...
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace
import json
import tempfile
from pathlib import Path

from bench_train import cpu_report
from compare_planner import score

from charlm.planning.calibrate import measure_corpus
from charlm.config import build_config
from charlm.planning.planner import CANDIDATES, RULES, Budget, Candidate, model_config, parse_duration, plan


def neighbours(planned) -> list[tuple[str, dict, Candidate]]:
    """(label, config, model shape) for the plan and each one-factor change around it."""
    base, chosen = planned.config, planned.candidate
    out = [("plan", base, chosen)]
    shapes = {(c.num_layers, c.hidden_size): c for c in CANDIDATES if c.family == chosen.family}
    ladder = sorted(shapes, key=lambda shape: shapes[shape].parameters(100))
    at = ladder.index((chosen.num_layers, chosen.hidden_size))
    for step, label in ((-1, "smaller"), (1, "larger")):
        if 0 <= at + step < len(ladder):
            cfg = copy.deepcopy(base)
            near = replace(chosen, num_layers=ladder[at + step][0], hidden_size=ladder[at + step][1])
            cfg["model"] = model_config(near, base["model"]["dropout"])
            out.append((f"{label} {near.num_layers}×{near.hidden_size}", cfg, near))
    for factor in (0.5, 2.0):
        cfg = copy.deepcopy(base)
        cfg["optim"]["lr"] = base["optim"]["lr"] * factor
        cfg["optim"]["min_lr"] = base["optim"]["min_lr"] * factor
        out.append((f"lr ×{factor:g}", cfg, chosen))
    for delta in (-0.1, 0.1):
        dropout = round(base["model"]["dropout"] + delta, 3)
        if 0 <= dropout < 1:
            cfg = copy.deepcopy(base)
            cfg["model"]["dropout"] = dropout
            out.append((f"dropout {dropout:g}", cfg, chosen))
    return out


def equal_steps(raw: dict, shape: Candidate, seconds: float, speed) -> dict:
    """`raw`, whose model is `shape`, trained for the steps `seconds` buy it at the calibrated speed, with no clock."""
    steps = max(1, int(speed(shape) * RULES.train_seconds(seconds)) // (shape.batch_size * shape.num_steps))
    return {**raw, "train": {**raw["train"], "max_time": None, "max_steps": steps,
                             "eval_every": max(1, steps // RULES.evaluations)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", nargs="+", help="text files (or built-in dataset names)")
    parser.add_argument("--time", nargs="+", default=["90s"], help="budgets (default 90s)")
    parser.add_argument("--steps", nargs="+", type=int, default=None, help="step budgets instead of --time")
    parser.add_argument("--out", type=Path, default=Path("sweep.jsonl"), help="rows appended here")
    parser.add_argument("--normalize", default="none", help="data.normalize for every run (default none)")
    parser.add_argument("--clock", action="store_true", help="train until the time is up, not the steps it buys")
    args = parser.parse_args(argv)
    print("\n".join(cpu_report()))
    with tempfile.TemporaryDirectory() as tmp:
        for corpus in args.corpora:
            budgets = [Budget(steps=n) for n in args.steps] if args.steps else \
                [Budget(seconds=parse_duration(t)) for t in args.time]
            for budget in budgets:
                seconds = budget.seconds
                _, profile, speed = measure_corpus(corpus, normalize=args.normalize)
                planned = plan(profile, budget, speed)
                length = f"{seconds:g} s" if seconds else f"{budget.steps} steps"
                print(f"\n**{Path(corpus).name}**, {length}: {planned.summary()}\n")
                print("| variant | steps | nats/char | derailed starts |\n|---|---:|---:|---:|")
                for i, (label, raw, shape) in enumerate(neighbours(planned)):
                    if seconds and not args.clock:
                        raw = equal_steps(raw, shape, seconds, speed)
                    nats, steps, derailed = score(build_config(raw, name="sweep"), Path(tmp), f"run{i}")
                    print(f"| {label} | {steps:,} | {nats:.4f} | {derailed} |", flush=True)
                    row = {"corpus": corpus, "normalize": args.normalize, "seconds": seconds,
                           "steps_budget": budget.steps, "clock": args.clock,
                           "train_tokens": planned.profile.train_tokens, "vocab_size": planned.profile.vocab_size,
                           "variant": label, "config": raw,
                           "steps": steps, "nats_per_char": nats, "derailed": derailed, "cpu": cpu_report()[0]}
                    with args.out.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
