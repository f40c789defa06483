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
import json
import tempfile
from pathlib import Path

from bench_train import cpu_report
from compare_planner import score

from charlm.planning.calibrate import plan_corpus
from charlm.config import build_config
from charlm.planning.planner import CANDIDATES, Budget, parse_duration


def neighbours(planned) -> list[tuple[str, dict]]:
    """(label, config) for the plan and each one-factor change around it."""
    base, out = planned.config, [("plan", planned.config)]
    ladder = sorted({(c.num_layers, c.hidden_size) for c in CANDIDATES},
                    key=lambda s: next(c for c in CANDIDATES if (c.num_layers, c.hidden_size) == s).parameters(100))
    at = ladder.index((base["model"]["num_layers"], base["model"]["hidden_size"]))
    for step, label in ((-1, "smaller"), (1, "larger")):
        if 0 <= at + step < len(ladder):
            cfg = copy.deepcopy(base)
            cfg["model"]["num_layers"], cfg["model"]["hidden_size"] = ladder[at + step]
            out.append((f"{label} {ladder[at + step][0]}×{ladder[at + step][1]}", cfg))
    for factor in (0.5, 2.0):
        cfg = copy.deepcopy(base)
        cfg["optim"]["lr"] = base["optim"]["lr"] * factor
        cfg["optim"]["min_lr"] = base["optim"]["min_lr"] * factor
        out.append((f"lr ×{factor:g}", cfg))
    for delta in (-0.1, 0.1):
        dropout = round(base["model"]["dropout"] + delta, 3)
        if 0 <= dropout < 1:
            cfg = copy.deepcopy(base)
            cfg["model"]["dropout"] = dropout
            out.append((f"dropout {dropout:g}", cfg))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", nargs="+", help="text files (or built-in dataset names)")
    parser.add_argument("--time", nargs="+", default=["90s"], help="budgets (default 90s)")
    parser.add_argument("--out", type=Path, default=Path("sweep.jsonl"), help="rows appended here")
    args = parser.parse_args(argv)
    print("\n".join(cpu_report()))
    with tempfile.TemporaryDirectory() as tmp:
        for corpus in args.corpora:
            for budget in args.time:
                seconds = parse_duration(budget)
                planned = plan_corpus(corpus, Budget(seconds=seconds))
                print(f"\n**{Path(corpus).name}**, {seconds:g} s: {planned.summary()}\n")
                print("| variant | steps | nats/char |\n|---|---:|---:|")
                for i, (label, raw) in enumerate(neighbours(planned)):
                    nats, steps = score(build_config(raw, name="sweep"), Path(tmp), f"run{i}")
                    print(f"| {label} | {steps:,} | {nats:.4f} |", flush=True)
                    row = {"corpus": corpus, "seconds": seconds, "train_tokens": planned.profile.train_tokens,
                           "vocab_size": planned.profile.vocab_size, "variant": label, "config": raw,
                           "steps": steps, "nats_per_char": nats, "cpu": cpu_report()[0]}
                    with args.out.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
