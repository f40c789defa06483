"""The planner against hand-picked configs at equal time, on texts the configs were not tuned for.

For each corpus: the planned run (`charlm train TEXT --time T`), the Kneser–Ney 5-gram
(`ngram.yaml` with every character kept, as the planned run keeps them), and the shipped
`shakespeare_5min` and `shakespeare_gpt` configs pointed at the corpus with the same time limit;
every best.pt scored on the full validation split and checked for derailing starts (`charlm starts`).
Prints a Markdown table per corpus with the CPU.

    python scripts/compare_planner.py --time 5m /work/corpora/kjv.txt /work/corpora/linux_c.txt ...
    python scripts/compare_planner.py --quick   # seconds: a tiny text and tiny budgets, for the tests
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_train import cpu_report

from charlm.planning.calibrate import plan_corpus
from charlm.config import build_config, load_config
from charlm.evaluation.derail import check_checkpoint
from charlm.inference import evaluate_checkpoint
from charlm.planning.planner import Budget, Candidate, Rules, parse_duration
from charlm.config.shipped import shipped_configs
from charlm.train import train

BY_HAND = ("shakespeare_5min", "shakespeare_gpt")


def hand_config(name: str, corpus: str, seconds: float, quick: bool):
    """A shipped config applied to `corpus` by hand: the corpus and the time limit changed, nothing else."""
    raw = load_config(shipped_configs()[name].path).to_dict()
    raw["data"]["corpus"] = corpus
    raw["train"].update(max_time=seconds, max_steps=raw["train"].get("max_steps") or 10**6)
    if quick:
        raw["model"].update({"embedding_dim": 16} if name.endswith("gpt") else {"hidden_size": 32})
        raw["data"].update(batch_size=4, num_steps=16)
        if name.endswith("gpt"):
            raw["model"].update(context=16, num_layers=1)
        raw["train"]["eval_tokens"] = None
    return build_config(raw, name=name)


def score(cfg, root: Path, label: str) -> tuple[float, int, str]:
    """(nats per character, steps, derailed starts) of best.pt after training `cfg`."""
    result = train(cfg, run_dir=root / label, force=True)
    scored = evaluate_checkpoint(result.run_dir)
    starts = check_checkpoint(result.run_dir)
    return scored.nats_per_token, result.step, f"{starts.derailed:,} of {starts.starts:,}"


def compare(corpus: str, seconds: float, root: Path, quick: bool = False) -> list[tuple[str, float, int, str]]:
    rows = []
    small = {"rules": Rules(min_tokens=1000), "candidates": (Candidate(16, batch_size=4, num_steps=16),)}
    planned = plan_corpus(corpus, Budget(seconds=seconds), **(small if quick else {}))
    print("  " + planned.describe().replace("\n", "\n  "), flush=True)
    rows.append(("planned: " + planned.candidate.describe(), *score(build_config(planned.config, name="plan"),
                                                                    root, "plan")))
    ngram = build_config({**load_config(shipped_configs()["ngram"].path).to_dict(),
                          "data": {"corpus": corpus, "normalize": "none"}}, name="ngram")
    rows.append(("ngram.yaml (KN 5-gram, every character)", *score(ngram, root, "ngram")))
    for name in BY_HAND:
        rows.append((f"{name}.yaml by hand", *score(hand_config(name, corpus, seconds, quick), root, name)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", nargs="*", help="text files (or built-in dataset names)")
    parser.add_argument("--time", default="5m", help="each run's training time (default 5m)")
    parser.add_argument("--quick", action="store_true", help="a tiny text and tiny budgets: checks the script runs")
    args = parser.parse_args(argv)
    print("\n".join(cpu_report()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpora, seconds = args.corpora, parse_duration(args.time)
        if args.quick:
            text = root / "quick.txt"
            text.write_text(("the quick brown fox jumps over the lazy dog. " * 40 + "\n") * 30, encoding="utf-8")
            corpora, seconds = [str(text)], 4.0
        for corpus in corpora:
            print(f"\n**{Path(corpus).name}**, {seconds:g} s each, best.pt on the full validation split\n", flush=True)
            rows = compare(corpus, seconds, root / Path(corpus).stem, quick=args.quick)
            print("| run | steps | nats/char | derailed starts |\n|---|---:|---:|---:|")
            for label, nats, steps, derailed in rows:
                print(f"| {label} | {steps:,} | {nats:.4f} | {derailed} |")
            best = min(rows, key=lambda row: row[1])
            print(f"\nbest: {best[0]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
