"""Benchmark `charlm serve`: requests/s and latency of a 200-character generation, 1 client vs 20.

    python scripts/bench_serve.py [--config rnn] [--clients 20] [--requests 200] [--max-seconds 300] [--quick]

Trains the config for one step (the speed of a generation does not depend on what was learnt;
the model has the config's size), starts `charlm serve` on it in its own process on 127.0.0.1,
and sends non-streaming POST /api/generate requests of `length` 200 from client threads here:
first from one client one at a time (the baseline), then from `--clients` at once. It prints
requests/s, p50 and p95 latency for each, and the many-client throughput as a ratio to the one.
Loopback only; bounded in requests and in seconds (whichever ends first).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import cpu_report  # noqa: E402  (a sibling script)

LENGTH = 200


def train_one_step(config: str, root: Path) -> Path:
    from charlm.config import load_config
    from charlm.train import train

    cfg = load_config(config, [f"train.out={root / 'run'}", "train.max_steps=1", "train.eval_every=1",
                               "train.eval_tokens=200", "train.log_every=1"])
    return train(cfg).run_dir


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def generate_once(port: int, seed: int) -> float:
    body = json.dumps({"length": LENGTH, "seed": seed, "stream": False}).encode()
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/api/generate", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    if response.status != 200 or len(json.loads(answer)["continuation"]) != LENGTH:
        raise RuntimeError(f"answer {response.status}: {answer[:200]!r}")
    return time.perf_counter() - start


def load(port: int, clients: int, requests: int, deadline: float) -> tuple[float, list[float]]:
    """(requests/s, latencies) for `requests` sent by `clients` threads, stopping at `deadline`."""
    def client(first: int) -> list[float]:
        times = []
        for seed in range(first, requests, clients):
            if time.monotonic() > deadline:
                break
            times.append(generate_once(port, seed))
        return times

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for times in pool.map(client, range(clients)) for t in times]
    return len(latencies) / (time.perf_counter() - start), sorted(latencies)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="rnn")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--quick", action="store_true", help="tiny config, 4 clients, 12 requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.config, args.clients, args.requests = "tiny", 4, 12
    for line in cpu_report():
        print(line)
    print(f"load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs "
          "(other work on the machine shares them)")
    with tempfile.TemporaryDirectory(prefix="charlm-bench-serve-") as tmp:
        run = train_one_step(args.config, Path(tmp))
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "charlm", "serve", str(run), "--host", "127.0.0.1",
                                   "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while True:  # ready once a generation answers (the first also loads the model)
                try:
                    generate_once(port, 0)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"serve did not start: {server.stderr.read().decode()[-500:]}") from None
                    time.sleep(0.2)
            end = time.monotonic() + args.max_seconds
            one_rate, one = load(port, 1, max(10, args.requests // 10), end)
            many_rate, many = load(port, args.clients, args.requests, end)
        finally:
            server.terminate()
            server.wait(30)
    print(f"model: {args.config} (one training step), POST /api/generate length {LENGTH}, stream false")
    print(f"{'clients':>8} {'requests':>9} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'chars/s':>8}")
    for clients, rate, times in ((1, one_rate, one), (args.clients, many_rate, many)):
        print(f"{clients:>8} {len(times):>9} {rate:>7.1f} {percentile(times, 0.5) * 1000:>8.0f} "
              f"{percentile(times, 0.95) * 1000:>8.0f} {rate * LENGTH:>8.0f}")
    print(f"{args.clients} clients: {many_rate / one_rate:.2f}x the requests/s of one client")


if __name__ == "__main__":
    main()
