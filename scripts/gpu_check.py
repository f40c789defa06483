"""The figures of scripts/gpu_check.sh: training tok/s, batch sweep, the 60 s GPU config, generation, memory.

    python scripts/gpu_check.py --out DIR [--dry-run] [--budget SECONDS] [--seconds S]

Every figure is measured in this run, on this machine, next to its baseline (a bare PyTorch loop
of the same charlm model on the same GPU; eager decoding for the CUDA-graph replay). Results go to
DIR/figures.json and DIR/figures.md after every section, so a run cut short keeps what it measured.
--dry-run does the same on the CPU with tiny models and a few steps, to check the logic quickly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from charlm.config import GenerateConfig, load_config
from charlm.data.prepare import prepare_for_training
from charlm.training.distributed import Dist
from charlm.generation.generate import generate
from charlm.inference import generate_from_checkpoint
from charlm.models import build_model
from charlm.device.precision import resolve_precision
from charlm.config.shipped import shipped_configs
from charlm.train import Trainer, make_optimizer, model_options, train

RECURRENT = {"rnn_scratch", "rnn", "gru", "lstm"}
NANOGPT_NATS = 1.4697  # nanoGPT's shakespeare_char validation loss (baby GPT, ~3 min on an A100)
TINY = dict(hidden_size=32, embedding_dim=8)  # --dry-run sizes
DRY_CONFIGS = {"d2l_rnn_scratch", "shakespeare_lstm", "shakespeare_lstm_gpu"}  # one of each code path


class Check:
    def __init__(self, args):
        self.args, self.out = args, Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.device = torch.device("cpu" if args.dry_run else "cuda")
        self.figures: dict = {"dry_run": args.dry_run}
        self.notes: list[str] = []

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.started)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**20, 1) if self.device.type == "cuda" else None

    def config(self, name, *changes):
        cfg = load_config(name)
        if self.args.dry_run and cfg.model.name in RECURRENT:  # tiny steps on the CPU: the logic, not the figures
            model = {k: v for k, v in TINY.items() if getattr(cfg.model, k, None) is not None}
            cfg = cfg.replace("model", **model).replace("data", batch_size=4, num_steps=16)
        cfg = cfg.replace("train", device=str(self.device), out=None)
        for section, values in changes:
            cfg = cfg.replace(section, **values)
        return cfg

    def save(self):
        self.out.mkdir(parents=True, exist_ok=True)
        self.figures["notes"] = self.notes
        (self.out / "figures.json").write_text(json.dumps(self.figures, indent=1), encoding="utf-8")
        (self.out / "figures.md").write_text(report(self.figures), encoding="utf-8")


def timed(step, seconds: float, sync, warmup: int = 3, least: int = 5) -> float:
    """Steps per second after `warmup` steps, over at least `seconds` and `least` steps."""
    for _ in range(warmup):
        step()
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < least:
        step()
        n += 1
    sync()
    return n / (time.perf_counter() - start)


def bare_rate(check, cfg, vocab_size, precision, seconds, compiled=False) -> float:
    """The ceiling: the same charlm model, cross-entropy and optimizer on one batch already on the GPU."""
    torch.manual_seed(0)
    model, _ = build_model(cfg.model.name, vocab_size, **model_options(cfg))
    model.to(check.device).train()
    net = torch.compile(model) if compiled else model
    opt = make_optimizer(model.parameters(), cfg)
    B, T = cfg.data.batch_size, cfg.data.num_steps
    x = torch.randint(vocab_size, (B, T), device=check.device)
    y = torch.randint(vocab_size, (B, T), device=check.device)
    autocast = resolve_precision(precision, check.device).autocast(check.device)

    def step():
        with autocast:
            logits, _ = net(x)
        loss = F.cross_entropy(logits.float().reshape(-1, vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    dry = check.args.dry_run
    return timed(step, seconds, check.sync, warmup=1 if dry else 3, least=2 if dry else 5) * B * T


def charlm_rate(check, cfg, corpus, seconds, run_dir) -> float:
    """charlm's own loop (Trainer.fit: sampler, upload, clipping, schedule, logging syncs) after two windows."""
    cfg = cfg.replace("train", max_steps=10**9, max_time=None, eval_every=10**9, eval_tokens=200,
                      log_every=2 if check.args.dry_run else 25)
    torch.manual_seed(0)
    model, _ = build_model(cfg.model.name, len(corpus.vocab), **model_options(cfg))
    model.to(check.device)
    stop, rows = threading.Event(), []

    def on_event(kind, info):
        if kind == "log":
            rows.append(info)
            if len(rows) > 2 and rows[-1]["elapsed"] - rows[2]["elapsed"] >= seconds:
                stop.set()

    trainer = Trainer(cfg, model, corpus, Path(run_dir), check.device, Dist(), on_event)
    trainer.folder.finish = lambda *args, **kwargs: None  # a plot per case would cost more than the case
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    trainer.fit(stop)
    first, last = rows[2], rows[-1]
    tokens = (last["step"] - first["step"]) * cfg.data.batch_size * cfg.data.num_steps
    return tokens / max(last["elapsed"] - first["elapsed"], 1e-9)


def throughput(check, work: Path, compiled_only: bool):
    """(a) tok/s of every shipped recurrent config: fp32, bf16, bf16 + compile, each next to its bare loop."""
    table = check.figures.setdefault("throughput", {})
    seconds = 0.0 if check.args.dry_run else check.args.seconds
    modes = [("bf16+compile", "bf16", True)] if compiled_only else [("fp32", "fp32", False), ("bf16", "bf16", False)]
    for name in shipped_configs():
        cfg = check.config(name)
        if cfg.model.name not in RECURRENT or (check.args.dry_run and name not in DRY_CONFIGS):
            continue
        corpus = prepare_for_training(cfg.data)
        row = table.setdefault(name, {"model": f"{cfg.model.name} {cfg.model.num_layers}x{cfg.model.hidden_size}",
                                      "batch": f"{cfg.data.batch_size}x{cfg.data.num_steps}"})
        for label, precision, compiled in modes:
            if check.left() < (60 if compiled else 15):
                check.notes.append(f"throughput {name} {label}: skipped, out of time budget")
                continue
            if compiled and check.args.dry_run:
                row[label] = "skipped in --dry-run (compiling on a CPU takes minutes)"
                continue
            try:
                check.reset_peak()
                bare = bare_rate(check, cfg, len(corpus.vocab), precision, seconds, compiled)
                c = cfg.replace("train", precision=precision, compile=compiled)
                ours = charlm_rate(check, c, corpus, seconds, work / "runs" / f"tp-{name}-{label}")
                row[label] = {"bare_tok_s": round(bare), "charlm_tok_s": round(ours), "ratio": round(ours / bare, 3),
                              "peak_mib": check.peak_mib()}
            except Exception as exc:  # one case failing must not cost the others
                row[label] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            print(f"  {name:22} {label:13} {row[label]}", flush=True)
            check.save()


def batch_sweep(check, work: Path):
    """(b) tok/s of shakespeare_lstm.yaml as the batch grows: where the GPU stops getting busier."""
    sizes = [4, 8] if check.args.dry_run else [64, 128, 256, 512, 1024, 2048, 4096]
    seconds = 0.0 if check.args.dry_run else 1.5
    rates = {}
    for batch in sizes:
        if check.left() < 15:
            check.notes.append(f"batch sweep stopped before batch {batch}: out of time budget")
            break
        cfg = check.config("shakespeare_lstm", ("data", {"batch_size": batch}))
        corpus = prepare_for_training(cfg.data)
        check.reset_peak()
        rate = charlm_rate(check, cfg, corpus, seconds, work / "runs" / f"batch-{batch}")
        rates[batch] = {"tok_s": round(rate), "peak_mib": check.peak_mib()}
        print(f"  batch {batch:5}: {rates[batch]}", flush=True)
    best = max(r["tok_s"] for r in rates.values()) if rates else 0
    useful = next((b for b, r in rates.items() if r["tok_s"] >= 0.9 * best), None)
    check.figures["batch_sweep"] = {"config": "shakespeare_lstm.yaml (num_steps 64, precision auto)",
                                    "rates": rates, "smallest_batch_within_10pct_of_best": useful}
    check.save()


def gpu_config(check, work: Path):
    """(b) configs/shakespeare_lstm_gpu.yaml: 60 s of training, then `charlm evaluate` on the full validation split."""
    changes = [("train", {"max_time": 2.0, "eval_every": 20, "eval_tokens": 500})] if check.args.dry_run else []
    cfg = check.config("shakespeare_lstm_gpu", *changes)
    run_dir = work / "runs" / "shakespeare_lstm_gpu"

    def on_event(kind, info):
        if kind == "log" and "val_perplexity" in info:
            print(f"  step {info['step']:6} {info['elapsed']:6.1f} s  loss {info['loss']:.4f}  "
                  f"val ppl {info['val_perplexity']:.3f}  {info['tokens_per_s']:,.0f} tok/s", flush=True)

    check.reset_peak()
    result = train(cfg, run_dir=run_dir, force=True, on_event=on_event, handle_signals=False)
    peak = check.peak_mib()
    command = [sys.executable, "-m", "charlm", "evaluate", "--checkpoint", str(run_dir), "--json",
               "--device", str(check.device)]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300)
    scores = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-500:]}
    nats = scores.get("nats_per_token")
    check.figures["gpu_config"] = {
        "config": "configs/shakespeare_lstm_gpu.yaml", "steps": result.step, "training_s": round(result.elapsed, 1),
        "tokens_per_s": round(result.tokens_per_s), "peak_mib": peak, "evaluate": scores,
        "command": "charlm evaluate --checkpoint runs/shakespeare_lstm_gpu --json --device " + str(check.device),
        "nanogpt_nats": NANOGPT_NATS, "beats_nanogpt": nats is not None and nats < NANOGPT_NATS}
    shutil.copy(run_dir / "metrics.jsonl", check.out / "gpu_config_metrics.jsonl")
    sample = generate_from_checkpoint(run_dir, seed=0, length=300, device=str(check.device))
    check.figures["gpu_config"]["sample"] = sample.result.texts[0]
    print(f"  {check.figures['gpu_config']}", flush=True)
    check.save()


def copy_state(dst, src):
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    else:
        for d, s in zip(dst, src):
            copy_state(d, s)


def greedy_block_rates(check, model, batch, unroll=32, blocks=20) -> dict:
    """chars/s of `unroll` greedy steps launched one by one, and replayed as one CUDA graph."""
    device = check.device
    with torch.inference_mode():
        ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        state = model.init_state(batch, device)
        out = torch.empty(batch, unroll, dtype=torch.long, device=device)

        def block():
            cur, st = ids, state
            for k in range(unroll):
                logits, st = model(cur, st)
                nxt = logits[:, -1].argmax(-1)  # (B,)
                out[:, k].copy_(nxt)
                cur = nxt[:, None]
            ids.copy_(cur)
            copy_state(state, st)

        dry = check.args.dry_run
        rate = timed(block, 0.0 if dry else 1.0, check.sync, warmup=1 if dry else 3, least=1 if dry else 5)
        rates = {"eager_chars_s": round(rate * batch * unroll)}
        if device.type != "cuda":
            rates["graph_chars_s"] = "skipped: no CUDA"
            return rates
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                block()
                block()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                block()
            rates["graph_chars_s"] = round(timed(graph.replay, 1.0, check.sync) * batch * unroll)
        except Exception as exc:
            rates["graph_chars_s"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return rates


def generation(check):
    """(c) chars/s of charlm.generation.generate at batch 1 and 256, and a greedy step replayed as a CUDA graph."""
    table = check.figures.setdefault("generation", {})
    corpus = prepare_for_training(check.config("shakespeare_lstm").data)
    length = 16 if check.args.dry_run else 500
    for name in ("shakespeare_lstm", "shakespeare_lstm_gpu"):
        if check.left() < 20:
            check.notes.append(f"generation {name}: skipped, out of time budget")
            continue
        cfg = check.config(name)
        torch.manual_seed(0)
        model, _ = build_model(cfg.model.name, len(corpus.vocab), **model_options(cfg))
        model.to(check.device).eval()
        row = table.setdefault(name, {"model": f"{cfg.model.name} {cfg.model.num_layers}x{cfg.model.hidden_size}"})
        for batch in (1, 4) if check.args.dry_run else (1, 256):
            generate(model, corpus.vocab, "ROMEO:", GenerateConfig(length=8, num_samples=batch, seed=0))
            check.sync()
            start = time.perf_counter()
            generate(model, corpus.vocab, "ROMEO:", GenerateConfig(length=length, num_samples=batch, seed=0))
            check.sync()
            row[f"generate_b{batch}_chars_s"] = round(batch * length / (time.perf_counter() - start))
            unroll = 4 if check.args.dry_run else 32
            row[f"greedy_step_b{batch}"] = greedy_block_rates(check, model, batch, unroll=unroll)
            print(f"  {name:22} batch {batch:4}: {row[f'generate_b{batch}_chars_s']:,} chars/s (generate, sample); "
                  f"greedy steps {row[f'greedy_step_b{batch}']}", flush=True)
        check.save()


def environment(check) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else "?"
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu, "cores": os.cpu_count(),
           "device": str(check.device)}
    if check.device.type == "cuda":
        p = torch.cuda.get_device_properties(check.device)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported(including_emulation=False))
    return env


def report(figures: dict) -> str:
    lines = ["# gpu_check figures", "", "```", json.dumps(figures.get("environment", {}), indent=1), "```", ""]
    if "throughput" in figures:
        lines += ["## Training tokens/s: charlm's loop / bare loop of the same model", "",
                  "| config | model | batch | fp32 | bf16 | bf16+compile |", "|---|---|---|---|---|---|"]
        for name, row in figures["throughput"].items():
            cells = []
            for mode in ("fp32", "bf16", "bf16+compile"):
                v = row.get(mode, "-")
                cells.append(f"{v['charlm_tok_s']:,} / {v['bare_tok_s']:,} = {v['ratio']:.2f}" if isinstance(v, dict)
                             else str(v))
            lines.append(f"| {name} | {row['model']} | {row['batch']} | " + " | ".join(cells) + " |")
        lines.append("")
    for key in ("batch_sweep", "gpu_config", "generation", "notes"):
        if figures.get(key):
            lines += [f"## {key}", "", "```", json.dumps(figures[key], indent=1, ensure_ascii=False), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    parser.add_argument("--dry-run", action="store_true", help="tiny models, a few steps, on the CPU")
    parser.add_argument("--budget", type=float, default=330.0, help="seconds for all sections together")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per throughput case")
    parser.add_argument("--sections", default="gpu_config,throughput,batch,generation,compile")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA GPU (use --dry-run to check the logic on a CPU)")
    check = Check(args)
    check.figures["environment"] = environment(check)
    print(json.dumps(check.figures["environment"]), flush=True)
    # data/ and runs/ go to a scratch folder: never into the repository, nor into --out (whose
    # few files are what comes back from a GPU machine).
    work = Path(os.environ.get("GPU_CHECK_WORK") or tempfile.mkdtemp(prefix="charlm-gpu-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    try:
        run_sections(check, work, args.sections.split(","))
    finally:
        os.chdir(check.out)
        if not os.environ.get("GPU_CHECK_WORK"):
            shutil.rmtree(work, ignore_errors=True)
    print(report(check.figures), flush=True)


def run_sections(check, work: Path, names: list[str]) -> None:
    sections = {"gpu_config": lambda: gpu_config(check, work), "throughput": lambda: throughput(check, work, False),
                "batch": lambda: batch_sweep(check, work), "generation": lambda: generation(check),
                "compile": lambda: throughput(check, work, True)}
    for name in names:
        print(f"== {name} ({time.perf_counter() - check.started:.0f} s in, {check.left():.0f} s of budget left)",
              flush=True)
        try:
            sections[name]()
        except Exception as exc:  # report and go on: the other sections' figures still matter
            check.notes.append(f"{name} failed: {type(exc).__name__}: {exc}")
            print(f"  {name} failed: {exc!r}", flush=True)
        check.save()


if __name__ == "__main__":
    main()
