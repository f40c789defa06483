"""Evaluation tokens/s (batched and batch-1) beside the same config's training tokens/s, in one run.

For every trainable shipped config (its model; random weights and random ids of its vocabulary
size; a text as long as its validation split) the script times, in alternating rounds:
charlm's training step in fp32 and in bf16 (as scripts/bench_train.py does), `evaluate_ids`
batched (the default) in fp32 and in bf16, and `evaluate_ids(segments=1)`, the B = 1 sequential
pass in fp32. Each variant keeps its best round, so a busy machine slows all alike and the ratios
stay same-run ratios. The last columns: batched evaluation over training in the same precision,
fp32 and bf16 (bf16 is what train.precision auto picks, and evaluation follows, on a CPU with
native bf16).

    python scripts/bench_eval.py [--rounds 3] [--steps 20] [--only lstm] [--clock wall|cpu] [--quick]

`--runs DIR` uses trained weights where DIR holds a run of the config (DIR/<config name>, made by
`charlm train --config configs/<name>.yaml --out DIR/<name>`), and its real validation split: a
trained recurrent model's state takes longer to forget its start than a random one's, which is
what the self-check's rescoring pays for (the `weights` column says which).

`--checkpoint RUN [--data FILE]` instead measures how long a warm-up a trained recurrent model
needs: for W tokens of warm-up from the zero state, at 64 points of its validation split (or of
FILE), the share of warm-up states within the self-check's tolerance of the sequential pass's
state there, and the largest difference; then the batched pass's segments, reruns and time
against the B = 1 pass, and both perplexities.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_train import bench_cases, cpu_report, make_step, pick_clock, rate, vocab_of
from charlm.evaluation.batched_eval import TOLERANCE, _differ, _view, score_batched
from charlm.training.distributed import state_batch_dims
from charlm.evaluation.evaluate import evaluate_ids
from charlm.models import build_model
from charlm.train import model_options

# Validation split of each shipped corpus at val_fraction 0.1, in tokens.
VAL_TOKENS = {"timemachine": 17_343, "tinyshakespeare": 111_540}


def eval_rate(model, ids, segments, clock=time.perf_counter, precision="fp32") -> float:
    start = clock()
    evaluate_ids(model, ids, segments=segments, precision=precision)
    return (len(ids) - 1) / max(clock() - start, 1e-9)


def trained(run: Path, cfg):
    """(model, validation ids) of a run of this config, or None where `run` is no such run."""
    from charlm.inference import open_checkpoint, training_ids

    if not (run / "config.yaml").exists():
        return None
    loaded = open_checkpoint(str(run), "cpu")
    if loaded.config.to_dict()["model"] != cfg.to_dict()["model"]:
        print(f"{run}: not a run of this config's model; random weights instead")
        return None
    return loaded.model.eval(), np.asarray(training_ids(loaded, "val"), dtype=np.int64)


def measure(cfg, steps: int, rounds: int, folder: Path, tokens: int, clock=time.perf_counter, run=None) -> dict:
    vocab = vocab_of(cfg)
    torch.manual_seed(0)
    model, _ = build_model(cfg.model.name, vocab, **model_options(cfg))
    ids = np.random.default_rng(0).integers(0, vocab, tokens).astype(np.uint8)
    if run is not None:
        model, ids = run
        vocab = model.vocab_size
    one = ids[:min(tokens, 20_000)]  # the B = 1 pass's rate does not depend on the length
    variants = {"train fp32": make_step(cfg, vocab, "fp32", folder),
                "train bf16": make_step(cfg, vocab, "bf16", folder)}
    for step in variants.values():  # warm-up: allocator, oneDNN primitive caches
        rate(step, 2)
    evaluate_ids(model, ids[:2000])
    best = dict.fromkeys([*variants, "eval batched", "eval bf16", "eval B=1"], 0.0)
    batch = cfg.data.batch_size * cfg.data.num_steps
    for _ in range(rounds):
        for key, step in variants.items():
            best[key] = max(best[key], rate(step, steps, clock) * batch)
        best["eval batched"] = max(best["eval batched"], eval_rate(model, ids, None, clock))
        best["eval bf16"] = max(best["eval bf16"], eval_rate(model, ids, None, clock, "bf16"))
        best["eval B=1"] = max(best["eval B=1"], eval_rate(model, one, 1, clock))
    with torch.inference_mode():
        scored = score_batched(model.eval(), ids, "cpu", vocab_size=vocab)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            in_bf16 = score_batched(model, ids, "cpu", vocab_size=vocab, tolerance=TOLERANCE["bf16"])
    n = len(ids) - 1
    return {**best, "segments": scored.segments, "tokens": len(ids),
            "rescored": f"{scored.rescored / n:.0%}/{in_bf16.rescored / n:.0%}"}


def warmup_profile(checkpoint: str, data: str | None, points: int = 64, precision: str = "fp32") -> None:
    """Print, per warm-up length, how many warm-up states match the sequential pass's (in `precision`)."""
    from charlm.inference import open_checkpoint, training_ids

    loaded = open_checkpoint(checkpoint, "cpu")
    model = loaded.model.eval()
    if data:
        from charlm.data.vocab import encode_text

        ids = np.asarray(encode_text(loaded.vocab, Path(data).read_text(encoding="utf-8"), loaded.normalize).ids)
    else:
        ids = np.asarray(training_ids(loaded, "val"), dtype=np.int64)
    n, dims = len(ids) - 1, state_batch_dims(model)
    where = [n * (b + 1) // (points + 1) for b in range(points)]
    tolerance = TOLERANCE[precision]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        state, true, at = model.init_state(1, "cpu"), [], 0
        for p in where:  # the sequential pass's state at each point
            _, state = model(torch.from_numpy(ids[at:p])[None], state)
            true.append(state)
            at = p
        true = tuple(torch.cat([t[i] for t in true], d) for i, d in enumerate(dims)) if isinstance(state, tuple) \
            else torch.cat(true, dims)
        print(f"{checkpoint}: {loaded.config.model.name}, {n:,} tokens, {precision}; "
              f"tolerance {tolerance[0]:g} + {tolerance[1]:g}·|x|")
        print(f"{'warm-up W':>9} {'within':>7} {'max |diff|':>10}")
        for W in (8, 16, 32, 64, 128, 256, 512, 1024):
            history = torch.from_numpy(np.stack([ids[p - W:p] for p in where if p >= W]))
            _, warm = model(history, model.init_state(len(history), "cpu"))
            keep = torch.tensor([i for i, p in enumerate(where) if p >= W])
            ref = tuple(t.index_select(d, keep) for t, d in zip(true, dims)) if isinstance(true, tuple) \
                else true.index_select(dims, keep)
            far = _differ(model, warm, ref, dims, tolerance)
            seen, want = _view(model, warm), _view(model, ref)  # compared as the self-check compares them
            diff = max(float((a - b).abs().max()) for a, b in zip(*((seen, want) if isinstance(seen, tuple)
                                                                    else ((seen,), (want,)))))
            print(f"{W:9} {1 - far.float().mean().item():7.0%} {diff:10.2e}", flush=True)
        start = time.perf_counter()
        scored = score_batched(model, ids, "cpu", vocab_size=model.vocab_size, tolerance=tolerance)
        batched_s = time.perf_counter() - start
    start = time.perf_counter()
    one = evaluate_ids(model, ids, segments=1, precision=precision)
    one_s = time.perf_counter() - start
    ppl = float(np.exp(scored.nats / n))
    print(f"batched: {scored.segments} segments, {scored.reruns} reruns in {scored.rounds} rounds "
          f"({scored.rescored / n:.0%} of the positions scored again), {batched_s:.2f}s, "
          f"perplexity {ppl:.6f}; B = 1: {one_s:.2f}s, perplexity {one.perplexity:.6f} "
          f"(relative difference {abs(ppl / one.perplexity - 1):.1e}); {one_s / batched_s:.2f}x")
    if precision != "fp32":
        fp32 = evaluate_ids(model, ids, segments=1).perplexity
        print(f"fp32 B = 1: perplexity {fp32:.6f}; batched {precision} against it: {ppl / fp32 - 1:+.1e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each variant keeps its best")
    parser.add_argument("--only", default=None, help="only configs whose name contains this")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 steps x 1 round, 3,000 tokens")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: one thread's CPU seconds (time.thread_time), steadier on a shared machine")
    parser.add_argument("--runs", type=Path, default=None, help="a folder of trained runs named like the configs")
    parser.add_argument("--checkpoint", default=None, help="measure a trained run's warm-up instead (see above)")
    parser.add_argument("--data", default=None, help="with --checkpoint: a text file instead of the validation split")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="with --checkpoint")
    args = parser.parse_args(argv)
    if args.checkpoint:
        return warmup_profile(args.checkpoint, args.data, precision=args.precision)
    if args.quick:
        args.steps, args.rounds = 2, 1
    clock = pick_clock(args.clock)
    for line in cpu_report():
        print(line)
    print(f"best of {args.rounds} alternating rounds, {args.clock} clock; trained weights and their validation split "
          "where --runs has a run of the config, else random weights and ids, as many as its validation split"
          + (" (--quick: tiny models, 3,000 tokens)" if args.quick else ""))
    print("again: positions the self-check scored again, fp32/bf16; eval/B=1: batched over the B = 1 pass (fp32); "
          "fp32x, bf16x: batched evaluation over training in the same precision")
    print(f"{'config':18} {'model':12} {'weights':7} {'tokens':>8} {'B':>3} {'again':>7} {'train fp32':>10} "
          f"{'train bf16':>10} "
          f"{'eval B=1':>9} {'eval fp32':>9} {'eval bf16':>9} {'eval/B=1':>8} {'fp32x':>6} {'bf16x':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in bench_cases(args.only, args.quick):
            tokens = 3000 if args.quick else VAL_TOKENS.get(cfg.data.corpus, 100_000)
            run = trained(args.runs / name, cfg) if args.runs else None
            r = measure(cfg, args.steps, args.rounds, Path(tmp), tokens, clock, run)
            fp32, bf16, one, many, low = (r[k] for k in ("train fp32", "train bf16", "eval B=1", "eval batched",
                                                         "eval bf16"))
            print(f"{name:18} {cfg.model.name:12} {'trained' if run else 'random':7} {r['tokens']:8,} "
                  f"{r['segments']:3} {r['rescored']:>7} {fp32:10,.0f} "
                  f"{bf16:10,.0f} {one:9,.0f} {many:9,.0f} {low:9,.0f} {many / one:8.2f} {many / fp32:6.2f} "
                  f"{low / bf16:6.2f}", flush=True)


if __name__ == "__main__":
    main()
