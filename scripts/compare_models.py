"""The material's walk from counting to latent state to attention, in one table: n-grams → MLP → RNNs → GPT.

Fits n-grams of order 1–6 (add-k and Kneser–Ney), the τ-window MLP, rnn_scratch, rnn, gru,
lstm and a small gpt on The Time Machine (letters) and Tiny Shakespeare (raw characters), each
with the same 90/10 split and the same fixed time budget (the cosine schedule anneals by it),
scored on the full validation split, then writes a Markdown table and a bar chart.

    python scripts/compare_models.py --budget 40 --out docs/
    python scripts/compare_models.py --steps 300 --out docs/   # equal steps: for a machine shared with other work

Every neural model reads 2,048 tokens a step (32 × 64; the MLP 64 × 32), so at equal steps
they have all seen the same text; at equal time the faster ones see more.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

from charlm.config import build_config
from charlm.train import train

CORPORA = {
    "timemachine": {"corpus": "timemachine", "normalize": "letters"},
    "tinyshakespeare": {"corpus": "tinyshakespeare", "normalize": "none"},
}
NEURAL = {
    "mlp τ=8": {"model": {"name": "mlp", "context": 8, "embedding_dim": 24, "hidden_size": 256, "dropout": 0.1},
                "data": {"sampling": "random", "batch_size": 64, "num_steps": 32}},
    "rnn_scratch 1×256": {"model": {"name": "rnn_scratch", "hidden_size": 256, "embedding_dim": 32}},
    "rnn 1×256": {"model": {"name": "rnn", "hidden_size": 256, "embedding_dim": 32}},
    "gru 1×256": {"model": {"name": "gru", "hidden_size": 256, "embedding_dim": 32}},
    "lstm 1×256": {"model": {"name": "lstm", "hidden_size": 256, "embedding_dim": 32}},
    # Random windows of the block size: a transformer carries no state from one batch to the next.
    "gpt 2×4 heads×128": {"model": {"name": "gpt", "num_layers": 2, "num_heads": 4, "embedding_dim": 128,
                                   "context": 64, "dropout": 0.0},
                         "data": {"sampling": "random", "batch_size": 32, "num_steps": 64},
                         "optim": {"name": "adamw", "weight_decay": 0.1}},
}


def size_of(model) -> tuple[int, str]:
    if getattr(model, "trainable", True):
        return sum(p.numel() for p in model.parameters()), "parameters"
    return sum(b.numel() for name, b in model.named_buffers() if name.startswith("keys_")), "n-grams"


def run_one(label: str, raw: dict, root: Path) -> dict:
    from charlm.checkpoint import load_model

    cfg = build_config(raw, name=label)
    started = time.perf_counter()
    result = train(cfg, run_dir=root / f"run{len(list(root.iterdir()))}", force=True, handle_signals=False)
    wall = time.perf_counter() - started
    size, unit = size_of(load_model(result.run_dir).model)
    ppl = result.best_val_perplexity
    return {"model": label, "size": size, "unit": unit, "seconds": wall, "perplexity": ppl,
            "bits": math.log2(ppl)}


def cases(budget: float | None, steps: int | None = None):
    for order in range(1, 7):
        for smoothing in ("add_k", "kneser_ney"):
            yield f"{order}-gram {'KN' if smoothing == 'kneser_ney' else 'add-1'}", {
                "model": {"name": "ngram", "order": order, "smoothing": smoothing, "k": 1.0},
                "train": {"max_steps": 1}}
    for label, raw in NEURAL.items():
        base = {"data": {"sampling": "sequential", "batch_size": 32, "num_steps": 64},
                "optim": {"name": "adam", "lr": 0.003, "grad_clip": 1.0, "schedule": "cosine",
                          "warmup_steps": 30, "min_lr": 0.0002},
                "train": {"max_time": budget, "max_steps": steps or 100000, "eval_every": 10**6}}
        for section, values in raw.items():
            base.setdefault(section, {}).update(values)
        yield label, base


def markdown(rows_by_corpus: dict[str, list[dict]], budget: str) -> str:
    lines = [f"Validation perplexity on the full last 10% of each corpus; neural models trained for {budget} each.",
             ""]
    for corpus, rows in rows_by_corpus.items():
        lines += [f"**{corpus}**", "", "| model | size | train time (s) | val perplexity | bits/char |",
                  "|---|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['model']} | {r['size']:,} {r['unit']} | {r['seconds']:.1f} | "
                         f"{r['perplexity']:.3f} | {r['bits']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def chart(rows_by_corpus: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows_by_corpus), figsize=(6.5 * len(rows_by_corpus), 5), dpi=110)
    for ax, (corpus, rows) in zip(axes if len(rows_by_corpus) > 1 else [axes], rows_by_corpus.items()):
        labels = [r["model"] for r in rows]
        colours = ["#9aa5b1" if "gram" in lab else "#d8803b" if lab.startswith("gpt") else "#3b7dd8" for lab in labels]
        ax.barh(labels, [r["bits"] for r in rows], color=colours)
        ax.invert_yaxis()
        ax.set_xlabel("validation bits/char (lower is better)")
        ax.set_title(corpus)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--budget", type=float, default=None, help="seconds of training per neural model (default 40)")
    limit.add_argument("--steps", type=int, default=None, help="steps per neural model instead of seconds")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    args = parser.parse_args()
    if args.steps is None and args.budget is None:
        args.budget = 40.0
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("CHARLM_DATA_HOME"):  # stays valid after the chdir below
        os.environ["CHARLM_DATA_HOME"] = str(Path(os.environ["CHARLM_DATA_HOME"]).resolve())
    rows_by_corpus = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # data/ and runs/ of this comparison stay out of the user's folders
        for corpus in args.corpora:
            rows = []
            for label, raw in cases(args.budget, args.steps):
                raw.setdefault("data", {}).update(CORPORA[corpus])
                root = Path(tmp) / f"runs-{corpus}"
                root.mkdir(exist_ok=True)
                rows.append(run_one(label, raw, root))
                r = rows[-1]
                print(f"{corpus:16} {label:20} {r['size']:>10,} {r['unit']:10} {r['seconds']:7.1f}s "
                      f"ppl {r['perplexity']:7.3f}  {r['bits']:.3f} bits/char", flush=True)
            rows_by_corpus[corpus] = rows
    budget = f"{args.steps} steps of 2,048 tokens" if args.steps else f"{args.budget:g} s"
    table = markdown(rows_by_corpus, budget)
    (args.out / "comparison.md").write_text(table + "\n", encoding="utf-8")
    chart(rows_by_corpus, args.out / "comparison.png")
    print(table)
    print(f"wrote {args.out / 'comparison.md'} and {args.out / 'comparison.png'}")


if __name__ == "__main__":
    main()
