"""The benchmark scripts' --quick modes run and print the tables the README quotes."""

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    sys.path.insert(0, str(SCRIPTS))  # bench_precision imports its sibling bench_train
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


def table_rows(out: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    return lines[:at], [line.split() for line in lines[at + 1:] if line.strip()]


def number(text: str) -> float:
    return float(text.replace(",", "").rstrip("%"))


@pytest.mark.slow
def test_bench_train_prints_cpu_flags_and_fp32_bf16_side_by_side(capsys):
    load_script("bench_train").main(["--quick", "--only", "tiny"])
    preamble, rows = table_rows(capsys.readouterr().out, "config")
    assert any(line.startswith("cpu: ") for line in preamble)
    flags = next(line for line in preamble if line.startswith("flags: "))
    assert "_is_mkldnn_bf16_supported(): " in flags
    if Path("/proc/cpuinfo").exists():
        assert re.search(r"avx512_bf16 (yes|no), amx_bf16 (yes|no)", flags)
    assert [row[0] for row in rows] == ["tiny"]
    name, model, shape, bare, fp32, bf16, ratio, vs_bare = rows[0]
    assert (model, shape) == ("rnn", "4x8")  # --quick shrinks the batch to 4 x 8
    assert min(number(bare), number(fp32), number(bf16)) > 0
    # printed with rounding: the ratio is bf16/fp32 of the two printed rates
    assert number(ratio) == pytest.approx(number(bf16) / number(fp32), abs=0.01, rel=0.01)
    assert number(vs_bare) == pytest.approx(number(fp32) / number(bare), abs=0.01, rel=0.01)


def test_bench_train_covers_every_trainable_shipped_config_except_gpu_ones():
    names = [name for name, _ in load_script("bench_train").bench_cases(quick=True)]
    assert "shakespeare_lstm" in names and "shakespeare_gpt" in names and "rnn" in names
    assert "ngram" not in names and not any(n.endswith("_gpu") for n in names)


@pytest.mark.slow
def test_bench_precision_scores_both_precisions_on_the_full_validation_split(capsys):
    load_script("bench_precision").main(["--quick", "--only", "tiny"])
    preamble, rows = table_rows(capsys.readouterr().out, "config")
    assert any("full validation split" in line for line in preamble)
    assert [row[:3] for row in rows] == [["tiny", "rnn", "3"]]
    fp32, bf16, change, within = number(rows[0][3]), number(rows[0][4]), number(rows[0][5]), rows[0][-1]
    assert 1 < fp32 < 30 and 1 < bf16 < 30 and math.isfinite(change)  # V = 28: untrained is ~28
    assert change == pytest.approx(100 * (bf16 / fp32 - 1), abs=0.02)
    assert within == ("yes" if change <= 1 else "no")


@pytest.mark.slow
def test_bench_eval_prints_eval_and_training_rates_side_by_side(capsys):
    load_script("bench_eval").main(["--quick", "--only", "tiny"])
    preamble, rows = table_rows(capsys.readouterr().out, "config")
    assert any(line.startswith("cpu: ") for line in preamble)
    assert [row[:4] for row in rows] == [["tiny", "rnn", "random", "3,000"]]
    fp32, bf16, one, many, low, speedup, vs_fp32, vs_bf16 = (number(cell) for cell in rows[0][6:14])
    assert min(fp32, bf16, one, many, low) > 0
    assert speedup == pytest.approx(many / one, rel=0.01, abs=0.01)
    assert vs_fp32 == pytest.approx(many / fp32, rel=0.01, abs=0.01)
    assert vs_bf16 == pytest.approx(low / bf16, rel=0.01, abs=0.01)  # bf16 evaluation over bf16 training


@pytest.mark.slow
def test_bench_eval_scores_a_trained_run_on_its_own_validation_split(tmp_path, capsys, monkeypatch, corpus_dir):
    from charlm.config import build_config, load_config
    from charlm.config.shipped import shipped_configs
    from charlm.train import train

    monkeypatch.setenv("CHARLM_DATA_HOME", str(tmp_path / "data"))
    raw = load_config(shipped_configs()["tiny"].path).to_dict()
    raw["data"]["corpus"] = str(corpus_dir / "timemachine.txt")
    raw["train"].update(max_steps=2, eval_every=2)
    train(build_config(raw, name="tiny"), run_dir=tmp_path / "runs" / "tiny", force=True)
    load_script("bench_eval").main(["--quick", "--only", "tiny", "--runs", str(tmp_path / "runs")])
    _, rows = table_rows(capsys.readouterr().out, "config")
    assert rows[0][:3] == ["tiny", "rnn", "trained"]
    assert number(rows[0][3]) > 10_000  # the Time Machine's validation split, not the quick 3,000 random ids


def test_check_goals_covers_the_project_goals_and_beating_means_strictly_below():
    goals = {g.config: g for g in load_script("check_goals").GOALS}
    assert {name: (g.seconds, g.nats) for name, g in goals.items() if not g.strict} == {
        "shakespeare_lstm": (75, 1.45), "shakespeare_5min": (300, 1.40), "shakespeare_gpt": (180, 1.75)}
    assert set(goals) <= set(load_script("bench_train").shipped_configs())
    lstm = goals["lstm"]
    assert lstm.strict and lstm.nats == pytest.approx(math.log(3.755))
    assert lstm.met(math.log(3.70)) and not lstm.met(math.log(3.755))


def test_check_goals_says_each_goal_in_its_own_terms_never_by_an_issue_number():
    goals = load_script("check_goals").GOALS
    assert all(g.why and not re.search(r"issue|#\d", g.why, re.I) for g in goals), [g.why for g in goals]


@pytest.mark.slow
def test_check_goals_prints_score_steps_and_verdict_per_goal(capsys):
    code = load_script("check_goals").main(["--quick", "--only", "lstm"])
    out = capsys.readouterr().out
    preamble, rows = table_rows(out, "config")
    assert any(line.startswith("cpu: ") for line in preamble)
    assert rows[0][:3] == ["lstm", "280", "<"] and number(rows[0][3]) == pytest.approx(math.log(3.755), abs=1e-4)
    nats, ppl, steps = number(rows[0][4]), number(rows[0][5]), int(rows[0][6])
    assert ppl == pytest.approx(math.exp(nats), rel=1e-3) and steps >= 1
    assert rows[0][8:10] == ["NOT", "met"] and code == 1  # a tiny model for a second cannot beat 3.755
    assert rows[-1] == "0 of 1 goals met".split()


@pytest.mark.slow
def test_bench_generate_prints_each_precision_against_the_plain_forward(capsys):
    load_script("bench_generate").main(["--quick", "--batches", "1"])
    out, gpt_section = capsys.readouterr().out.split("\ngpt against lstm", 1)
    preamble, rows = table_rows(out, "model")
    assert any(line.startswith("cpu: ") for line in preamble)
    floor = next(line for line in preamble if line.startswith("floor: bare rnn 1x512 step"))
    assert number(floor.split(": ")[-1].split()[0]) > 0
    ratios = [row for row in rows if row[:2] == ["vs", "floor:"]]
    assert [row[2:6] for row in ratios] == [["rnn", "1x16", "B=1", "length"]] * 2
    rows = [row for row in rows if row[0] == "rnn"]
    assert [row[:4] for row in rows] == [["rnn", "1x16", "1", "20"], ["rnn", "1x16", "1", "40"]]
    plain, fp32, bf16, int8, fp32_ratio, best_ratio = (number(cell.rstrip("x")) for cell in rows[0][4:10])
    assert min(plain, fp32, bf16, int8) > 0
    assert fp32_ratio == pytest.approx(fp32 / plain, rel=0.01, abs=0.01)
    assert best_ratio == pytest.approx(max(fp32, bf16, int8) / plain, rel=0.01, abs=0.01)
    assert number(rows[0][10]) > 0 and len(rows[1]) == 10  # naive only at the first length
    # The gpt section: one thread against torch's, and where a gpt's time goes.
    _, gpt_rows = table_rows(gpt_section, "model")
    assert [row[:2] for row in gpt_rows] == [["lstm", "1x16"], ["gpt", "1x8"]]
    one, many, ratio = number(gpt_rows[1][3]), number(gpt_rows[1][4]), number(gpt_rows[1][5].rstrip("x"))
    assert ratio == pytest.approx(one / many, rel=0.05, abs=0.06)
    assert all(0 <= number(cell) <= 100 and cell.endswith("%") for cell in gpt_rows[1][6:8])
    assert gpt_rows[1][9:] == ["the", "lstm's", "chars/s"]


def test_bench_serve_prints_one_client_and_many_with_the_ratio(capsys):
    pytest.importorskip("uvicorn")
    load_script("bench_serve").main(["--quick"])
    out = capsys.readouterr().out
    assert "cpu: " in out and "load average before" in out and "POST /api/generate length 200" in out
    table = out[out.index("clients  requests"):].splitlines()[1:3]
    rows = [line.split() for line in table]
    assert [row[0] for row in rows] == ["1", "4"] and all(float(row[2]) > 0 for row in rows)
    assert "4 clients: " in out and "x the requests/s of one client" in out


@pytest.mark.slow
def test_compare_planner_scores_the_plan_beside_the_baselines_on_the_full_split(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # the data folders it preprocesses
    assert load_script("compare_planner").main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "nats/char" not in line]
    labels = [row[0].strip() for row in rows]
    assert labels[0].startswith("planned: lstm 1×16") and labels[1].startswith("ngram.yaml")
    assert {"shakespeare_5min.yaml by hand", "shakespeare_gpt.yaml by hand"} <= set(labels)
    assert all(0 < float(row[2]) < math.log(40) for row in rows)  # better than uniform over the text's characters
    assert "plan: lstm 1×16" in out and out.startswith("cpu: ")


@pytest.mark.parametrize("copy_share, family, size_keys", [(0.1, "lstm", {"hidden_size", "num_layers"}),
                                                            (0.6, "gpt", {"embedding_dim", "num_heads", "num_layers"})])
def test_plan_sweep_changes_one_factor_at_a_time_around_the_plan(copy_share, family, size_keys):
    from charlm.config import build_config
    from charlm.planning.planner import Budget, CorpusProfile, plan

    planned = plan(CorpusProfile("t.txt", 1_000_000, 66, copy_share=copy_share), Budget(steps=3000), None)
    variants = {label: raw for label, raw, _ in load_script("plan_sweep").neighbours(planned)}
    assert variants.pop("plan") == planned.config and planned.candidate.family == family
    assert {label.split()[0] for label in variants} == {"smaller", "larger", "lr", "dropout"}
    for label, raw in variants.items():
        changed = {(section, key) for section in raw for key in raw[section]
                   if raw[section][key] != planned.config[section][key]}
        allowed = size_keys | {"lr", "min_lr", "dropout"}
        assert changed and {key for _, key in changed} <= allowed, label
        assert build_config(raw, name="sweep").model.name == family


def test_plan_sweep_trains_each_variant_the_steps_its_speed_buys_not_until_a_clock():
    from charlm.planning.planner import RULES, Budget, CorpusProfile, plan

    def speed(c):  # tokens/s falling with the recurrent weights
        return 40_000 * 512 ** 2 / (c.hidden_size ** 2 * c.num_layers)

    planned = plan(CorpusProfile("t.txt", 1_000_000, 66), Budget(seconds=300), speed)
    sweep = load_script("plan_sweep")
    configs = {label: sweep.equal_steps(raw, shape, 300, speed) for label, raw, shape in sweep.neighbours(planned)}
    runs = {label: config["train"] for label, config in configs.items()}
    tokens = speed(planned.candidate) * RULES.train_seconds(300)
    batch = planned.config["data"]["batch_size"] * planned.config["data"]["num_steps"]
    assert runs["plan"]["max_steps"] == int(tokens) // batch and runs["plan"]["max_time"] is None

    def trained_tokens(label):  # each size keeps its own planned batch, so compare tokens, not steps
        data = configs[label]["data"]
        return runs[label]["max_steps"] * data["batch_size"] * data["num_steps"]

    larger = next(label for label in runs if label.startswith("larger"))
    smaller = next(label for label in runs if label.startswith("smaller"))
    assert trained_tokens(smaller) > trained_tokens("plan") > trained_tokens(larger)
    assert runs["lr ×2"]["max_steps"] == runs["plan"]["max_steps"]


def test_plan_sweep_writes_a_row_per_variant_with_the_steps_its_speed_buys(tmp_path, monkeypatch, capsys):
    from charlm.planning.planner import CorpusProfile

    sweep = load_script("plan_sweep")
    profile = CorpusProfile("t.txt", 1_000_000, 66, val_tokens=100_000)
    monkeypatch.setattr(sweep, "measure_corpus", lambda corpus, normalize: (None, profile, lambda c: 20_000.0))
    trained = []

    def fake_score(cfg, root, label):  # compare_planner.score's shape: (nats/char, steps, derailed starts)
        trained.append(cfg)
        return 1.5, cfg.train.max_steps, "0 of 4,225"

    monkeypatch.setattr(sweep, "score", fake_score)
    out = tmp_path / "sweep.jsonl"
    assert sweep.main(["t.txt", "--time", "300", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["variant"] for row in rows][0] == "plan" and len(rows) == len(trained) >= 5
    assert all(cfg.train.max_time is None and row["steps"] == cfg.train.max_steps and row["derailed"] == "0 of 4,225"
               for cfg, row in zip(trained, rows))
    assert "| plan |" in capsys.readouterr().out
