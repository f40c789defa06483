"""scripts/gpu_check.sh: its shell parses, and its --dry-run measures every section on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_check_script_parses():
    done = subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_the_dry_run_fills_every_section_of_the_figures(tmp_path):
    # The shell's own steps (pytest -m cuda, then this) run the same way; here the Python part
    # runs alone, since running pytest inside pytest would double the cost.
    env = {**os.environ, "GPU_CHECK_WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--dry-run", "--out",
                           str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads((tmp_path / "out" / "figures.json").read_text())
    assert figures["dry_run"] and not figures["notes"], figures["notes"]
    for name in ("d2l_rnn_scratch", "shakespeare_lstm", "shakespeare_lstm_gpu"):
        row = figures["throughput"][name]
        assert all(row[mode]["charlm_tok_s"] > 0 and row[mode]["bare_tok_s"] > 0 for mode in ("fp32", "bf16")), row
        assert "skipped" in row["bf16+compile"]
    assert figures["batch_sweep"]["smallest_batch_within_10pct_of_best"] in (4, 8)
    gpu = figures["gpu_config"]
    assert gpu["steps"] > 0 and 0 < gpu["evaluate"]["nats_per_token"] < 5 and gpu["sample"].startswith("ROMEO:")
    assert (tmp_path / "out" / "gpu_config_metrics.jsonl").is_file()
    row = figures["generation"]["shakespeare_lstm"]
    assert row["generate_b1_chars_s"] > 0 and row["greedy_step_b4"]["eager_chars_s"] > 0
    assert "## Training tokens/s" in (tmp_path / "out" / "figures.md").read_text()
    assert not (REPO / "runs").exists() or not (REPO / "runs" / "shakespeare_lstm_gpu").exists()
