"""Search within the budget: what it tries, how it spends its share, what it writes, and its mistakes."""

import csv
import json
import math
import sys

import pytest
import yaml

import charlm.planning.planner as planner
from charlm.planning import tune
from charlm.planning.planner import Budget
from cli_helpers import invoke, one_error_line

optuna = pytest.importorskip("optuna")

@pytest.fixture
def workdir(tmp_path, monkeypatch, corpus_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "corpus.txt").write_text((corpus_dir / "timemachine.txt").read_text()[:40000])
    return tmp_path


@pytest.fixture
def tiny_ladder(monkeypatch):
    """Three tiny sizes, so a trial is a fraction of a second; the shipped rules otherwise."""
    monkeypatch.setattr(planner, "CANDIDATES", tuple(
        planner.Candidate(h, batch_size=4, num_steps=16, embedding_dim=8) for h in (8, 16, 32)))
    monkeypatch.setattr(planner, "RULES", planner.Rules(min_tokens=100))


def written(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_without_optuna_search_is_one_line_naming_the_extra_and_writes_nothing(workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    before = written(workdir)
    line = one_error_line(invoke("train", "corpus.txt", "--time", "5m", "--search"))
    assert line == "error: --search needs Optuna: pip install 'charlm[tune]'"
    assert written(workdir) == before


@pytest.mark.parametrize("args, message", [
    (["corpus.txt", "--search"], "spends a share of a budget"),
    (["--config", "tiny.yaml", "--time", "5m", "--search"], "takes no --config"),
    (["corpus.txt", "--time", "5m", "--search", "--resume", "runs/x"], "takes no --config"),
    (["corpus.txt", "--time", "5m", "--search", "--search-share", "0.9"], "at most 0.8, got 0.9"),
    (["corpus.txt", "--time", "5m", "--search", "--search-share", "0"], "above 0"),
    (["corpus.txt", "--time", "5m", "--search-share", "0.3"], "--search-share goes with --search"),
    (["corpus.txt", "--time", "5m", "--search", "--set", "optim.lr=0.1"], "--search chooses optim.lr"),
])
def test_search_mistakes_are_one_line_and_write_nothing(workdir, args, message):
    (workdir / "tiny.yaml").write_text("model: {name: lstm}\n")
    before = written(workdir)
    assert message in one_error_line(invoke("train", *args))
    assert written(workdir) == before


def test_search_trains_trials_prunes_the_trailing_and_trains_the_best_for_the_rest(workdir, tiny_ladder):
    result = invoke("train", "corpus.txt", "--steps", "400", "--search", "--search-share", "0.5", "-q")
    assert result.exit_code == 0, result.output
    run = workdir / "runs" / "corpus"
    rows = list(csv.DictReader((run / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == list(range(len(rows))) and len(rows) >= 3
    assert sum(line.startswith("trial ") for line in result.stdout.splitlines()) == len(rows)
    states = [r["state"] for r in rows]
    assert "pruned" in states and "complete" in states
    assert (rows[0]["size"], float(rows[0]["lr_factor"])) == ("1x16", 1.0)  # the plan is trial 0
    full = max(int(r["steps"]) for r in rows)
    assert all(int(r["steps"]) < full for r in rows if r["state"] == "pruned")
    assert all(2.0 < float(r["val_loss"]) < 5.0 and float(r["seconds"]) > 0 for r in rows)
    best = min((r for r in rows if r["state"] == "complete"), key=lambda r: float(r["val_loss"]))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert f"{saved['model']['num_layers']}x{saved['model']['hidden_size']}" == best["size"]
    assert saved["model"]["dropout"] == float(best["dropout"])
    assert saved["optim"]["lr"] == pytest.approx(float(best["lr"]), abs=1e-5)
    # the search spent its 200 steps at most, the final run the rest of the 400
    assert saved["train"]["max_steps"] == 400 - sum(int(r["steps"]) for r in rows) >= 200
    assert "trials.csv" in (run / ".charlm-files").read_text().split()  # --force replaces it with the run
    assert "**" in (run / "trials.md").read_text()

    again = invoke("train", "--config", "runs/corpus/config.yaml", "--set", "train.out=runs/again", "-q")
    assert again.exit_code == 0, again.output
    losses = [[row.get("loss") for row in map(json.loads, (workdir / "runs" / name / "metrics.jsonl").open())]
              for name in ("corpus", "again")]
    assert losses[0] == losses[1] and any(losses[0])  # its config.yaml alone reproduces it

    resumed = invoke("train", "--resume", "runs/corpus", "--steps", str(saved["train"]["max_steps"] + 8), "-q")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "summary.json").read_text())["step"] == saved["train"]["max_steps"] + 8
    scored = invoke("evaluate", "--checkpoint", "runs/corpus", "--json")
    assert scored.exit_code == 0 and json.loads(scored.stdout)["perplexity"] > 1


class PruneAfterFirst(optuna.pruners.BasePruner):
    """Every trial but the first is pruned at its first report."""

    def prune(self, study, trial):
        return trial.number > 0


def test_a_pruned_trial_stops_at_its_first_rung_and_never_wins(workdir, tiny_ladder):
    seen = []
    cfg, found = tune.search_config("corpus.txt", Budget(steps=400), share=0.5, pruner=PruneAfterFirst(),
                                    on_event=lambda kind, info: seen.append(kind))
    first, *others = found.trials
    assert first.state == "complete" and first.steps == found.space.trial_steps(first.size)
    assert others and all(t.state == "pruned" for t in others)
    # the trainer stops after the step in progress when the pruner speaks: one step past the first rung
    assert all(t.steps == found.space.trial_steps(t.size) // tune.RUNGS + 1 for t in others)
    assert found.best is first and cfg.optim.lr == pytest.approx(first.lr, abs=1e-5)
    assert seen == ["plan", *["trial"] * len(found.trials), "result"]
    assert not (workdir / "runs").exists()  # the library searches; the run is the caller's to train


def test_the_best_trial_not_the_plan_is_planned_for_the_rest(workdir, tiny_ladder, monkeypatch):
    # A made-up loss, lowest at twice the planned lr on 1x8, a size the plan (1x16) did not choose.
    def objective(cfg, corpus, scratch, asked, trial, steps):
        trial.steps, trial.state = steps, "complete"
        trial.val_loss = abs(math.log(trial.lr_factor / 2)) + trial.dropout + (trial.size != "1x8")

    monkeypatch.setattr(tune, "_run_trial", objective)
    cfg, found = tune.search_config("corpus.txt", Budget(steps=400), share=0.5)
    best = min(found.trials, key=lambda t: t.val_loss)
    assert found.best is best and best.number > 0 and best.lr_factor != 1.0
    planned = found.space.sizes[best.size]
    assert cfg.optim.lr == round(planned.config["optim"]["lr"] * best.lr_factor, 5)
    assert cfg.optim.min_lr == round(cfg.optim.lr / 50, 6) and cfg.model.dropout == best.dropout
    assert f"{cfg.model.num_layers}x{cfg.model.hidden_size}" == best.size
    assert (cfg.data.batch_size, cfg.train.max_steps) == (planned.candidate.batch_size, 400 - found.spent)
    assert "searched: trial" in found.plan.describe()


def test_a_time_budget_stops_starting_trials_when_the_share_is_spent(workdir, tiny_ladder, monkeypatch):
    import charlm.planning.calibrate

    ticks = iter(range(10**6))
    monkeypatch.setattr(tune, "clock", lambda: float(next(ticks)))  # each reading is 1 s later
    monkeypatch.setattr(charlm.planning.calibrate, "Calibration", lambda *args, **kwargs: (lambda c: 640.0))
    cfg, found = tune.search_config("corpus.txt", Budget(seconds=40), share=0.25)
    # 10 s of search in trials of 2 s; the clock is read three times per trial (its start, its end, the
    # search's total), so each trial adds 3 s: a trial starts only while its 2 s estimate still fits
    assert (found.space.search, found.space.trial) == (10.0, 2.0)
    assert len(found.trials) == 3 and found.spent == 9.0
    assert all(t.steps <= found.space.trial_steps(t.size) == 20 for t in found.trials)
    assert cfg.train.max_time == pytest.approx(40 - found.spent)


@pytest.mark.parametrize("args, message", [
    (["--search", "--search-share", "1.5"], "at most 0.8, got 1.5"),
    (["--search-share", "0.5"], "--search-share goes with --search"),
])
def test_plan_checks_the_share_before_measuring_anything(workdir, args, message):
    before = written(workdir)
    assert message in one_error_line(invoke("plan", "corpus.txt", "--time", "5m", *args))
    assert written(workdir) == before  # no data folder, no calibration cache


def test_plan_search_says_what_the_search_would_try(workdir, tiny_ladder):
    result = invoke("plan", "corpus.txt", "--steps", "400", "--search")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # the plan for the whole budget, then the plan for what the search leaves, and the search
    assert lines[0].startswith("plan: lstm") and lines[2].startswith("plan: lstm")
    assert lines[4].startswith("search: 100 steps of 400 steps (share 0.25) in trials of 12 steps")
    assert "same 4,000 validation tokens" in lines[4] and "sizes lstm 1×8, lstm 1×16 (planned), lstm 1×32" in lines[4]
