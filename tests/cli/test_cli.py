"""End to end through the real command line, on a small slice of The Time Machine."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cli_helpers import invoke, one_error_line


@pytest.fixture
def workdir(tmp_path, monkeypatch, corpus_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text((corpus_dir / "timemachine.txt").read_text()[:40000])
    (tmp_path / "tiny.yaml").write_text(
        "data: {corpus: corpus.txt, normalize: letters, batch_size: 8, num_steps: 16}\n"
        "model: {name: lstm, hidden_size: 32, embedding_dim: 8}\n"
        "optim: {lr: 0.01}\n"
        "train: {max_steps: 10, eval_every: 5, log_every: 5}\n"
        "generate: {prefix: the, length: 12}\n")
    return tmp_path


@pytest.fixture
def trained(workdir):
    result = invoke("train", "--config", "tiny.yaml", "--quiet")
    assert result.exit_code == 0, result.output
    return workdir


def test_version_and_help_never_import_torch():
    # torch's import is what makes a command slow to answer (~1 s); wall-clock bounds flake on a
    # busy machine, so the test checks the cause, not a time.
    code = ("import sys; sys.argv = ['charlm', '--help']\n"
            "from charlm.cli import app\n"
            "try: app()\n"
            "except SystemExit: pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stderr.split()[-1] == "False"
    assert "preprocess" in done.stdout and "generate" in done.stdout
    assert "charlm 0.1.0" in invoke("--version").output
    for command in ("preprocess", "train", "evaluate", "generate", "score", "plot"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output, command


def test_config_errors_exit_2_without_torch(workdir):
    code = ("import sys; sys.argv = ['charlm', 'train', '--config', 'tiny.yaml', '--set', 'model.hiden_size=3']\n"
            "from charlm.cli import app\n"
            "try: app()\n"
            "except SystemExit as e: print(e.code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=workdir)
    assert done.stdout.split() == ["2", "False"]
    assert "did you mean 'model.hidden_size'" in done.stderr and "Traceback" not in done.stderr


def test_preprocess_prints_statistics(workdir):
    result = invoke("preprocess", "timemachine", "--normalize", "letters")
    assert result.exit_code == 0, result.output
    assert "173,428 char tokens" in result.output and "vocabulary 28" in result.output
    assert "' th' 3,522" in result.output and "Zipf slope" in result.output
    assert (workdir / "data" / "timemachine" / "train.bin").stat().st_size == 156085
    again = invoke("preprocess", "timemachine", "--normalize", "letters")
    assert again.exit_code == 2 and "--force" in again.output
    stats = invoke("preprocess", "--stats-only", "corpus.txt")
    assert stats.exit_code == 0 and not (workdir / "data" / "corpus").exists()


def test_preprocess_letters_warns_when_most_of_the_text_became_spaces(workdir):
    (workdir / "ru.txt").write_text("Мой дядя самых честных правил (Pushkin)\n" * 50, encoding="utf-8")
    result = invoke("preprocess", "ru.txt", "--normalize", "letters", "--stats-only")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "became spaces" in warning[0] and "--normalize lower" in warning[0]
    assert "warning" not in invoke("preprocess", "corpus.txt", "--normalize", "letters", "--stats-only").output
    assert "only a-z" in " ".join(invoke("preprocess", "--help").output.split())


def test_preprocess_says_which_tokens_min_freq_sent_to_unk(workdir):
    (workdir / "rare.txt").write_text("aaabbbx" * 2 + "abxq", encoding="utf-8")
    result = invoke("preprocess", "rare.txt", "--min-freq", "3", "--val-fraction", str(4 / 18), "--stats-only")
    assert "validation tokens unseen in training, mapped to <unk>: 1 ('q')" in result.output
    assert "validation tokens seen fewer than --min-freq 3 times in training, mapped to <unk>: 1 ('x')" in result.output


def test_train_generate_evaluate_score(trained):
    run = trained / "runs" / "tiny"
    assert (run / "best.pt").is_file() and (run / "curves.png").is_file()
    gen = invoke("generate", "--prefix", "Time Traveller", "--length", "30", "--seed", "3")
    assert gen.exit_code == 0, gen.output
    text = gen.output.strip()
    assert text.startswith("time traveller") and len(text) == len("time traveller") + 30
    assert invoke("generate", "--prefix", "Time Traveller", "--length", "30", "--seed", "3").output == gen.output
    cont = invoke("generate", "--prefix", "time", "--length", "10", "--continuation-only", "--strategy", "greedy")
    assert len(cont.output.strip("\n")) == 10
    many = invoke("generate", "-n", "3", "--length", "8", "--seed", "1")
    assert many.output.count("--- sample") == 3
    ev = invoke("evaluate", "--json")
    assert ev.exit_code == 0, ev.output
    metrics = json.loads(ev.output)
    assert set(metrics) == {"tokens", "nats_per_token", "bits_per_token", "perplexity", "unknown", "vocab_size"}
    assert metrics["vocab_size"] == 28 and 1 < metrics["perplexity"] < 28
    (trained / "other.txt").write_text("The Time Traveller smiled. Are you sure?")
    ev_file = json.loads(invoke("evaluate", "--data", "other.txt", "--json").output)
    sc = json.loads(invoke("score", "--file", "other.txt", "--json").output)
    nats = [b * 0.6931471805599453 for b in sc["surprisal_bits"][1:]]
    assert ev_file["tokens"] == len(nats)
    assert sum(nats) / len(nats) == pytest.approx(ev_file["nats_per_token"], rel=1e-6)
    shown = invoke("score", "the time machine")
    assert shown.exit_code == 0 and "surprisal" in shown.output and "perplexity" in shown.output
    table = invoke("evaluate")
    assert "perplexity" in table.output and "bits/char" in table.output


def test_generate_rejects_unknown_characters_and_bad_sampling(trained):
    # The run's text is normalized to letters: a prefix is normalized the same way first (" 42"
    # becomes one space), so nothing in it is unknown; a stop string is taken as typed.
    normalized = invoke("generate", "--prefix", "time 42", "--length", "5", "--seed", "0")
    assert normalized.exit_code == 0 and normalized.output.startswith("time ")
    assert len(normalized.output.strip("\n")) == len("time ") + 5
    unknown = invoke("generate", "--stop", "42")
    assert unknown.exit_code == 2 and "not in the vocabulary: '2', '4'" in unknown.output
    for args, message in ((["--temperature", "-1"], "temperature"),
                          (["--strategy", "top_p", "--top-p", "1.5"], "top_p"),
                          (["--strategy", "top_k", "--top-k", "0"], "top_k"), (["--strategy", "beam"], "beam")):
        result = invoke("generate", *args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_interrupt_then_resume_through_the_cli(trained, monkeypatch):
    from charlm.cli.report import TrainingDisplay

    shown = TrainingDisplay.on_event

    def ctrl_c_after_step_5(self, kind, info):
        shown(self, kind, info)
        if kind == "log" and info["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; the CLI's handler asks for a stop

    with monkeypatch.context() as patched:
        patched.setattr(TrainingDisplay, "on_event", ctrl_c_after_step_5)
        cut = invoke("train", "--config", "tiny.yaml", "--set", "train.out=runs/cut", "--quiet")
    assert cut.exit_code == 0, cut.output
    stopped = re.search(r"interrupted at step (\d+)", cut.output)
    assert stopped and 5 <= int(stopped[1]) < 10, cut.output  # after the step under way when the signal came
    assert "charlm train --resume runs/cut" in cut.output
    result = invoke("train", "--resume", "runs/cut", "--quiet")
    assert result.exit_code == 0, result.output
    assert "finished at step 10" in result.output

    # As if never stopped: the same weights and validation as the fixture's uninterrupted run of this config
    # (the interrupted run also logged, and evaluated, the step it stopped at).
    import torch

    whole, cut = (torch.load(trained / "runs" / run / "last.pt", weights_only=True) for run in ("tiny", "cut"))
    assert whole["step"] == cut["step"] == 10
    assert all(torch.equal(whole["model"][k], cut["model"][k]) for k in whole["model"])

    def val_at_10(run):
        rows = [json.loads(line) for line in (trained / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        return [r["val_perplexity"] for r in rows if r["step"] == 10 and "val_perplexity" in r]

    assert val_at_10("cut") == val_at_10("tiny") != []
    refused = invoke("train", "--resume", "runs/cut", "--set", "optim.lr=0.5")
    assert refused.exit_code == 2 and "--resume cannot change optim.lr" in refused.output
    plot = invoke("plot", "runs/cut")
    assert plot.exit_code == 0 and "curves.png" in plot.output


def test_sigterm_saves_and_exits_0(workdir):
    long = (workdir / "tiny.yaml").read_text().replace("max_steps: 10", "max_steps: 100000")
    (workdir / "long.yaml").write_text(long)
    proc = subprocess.Popen([sys.executable, "-m", "charlm", "train", "--config", "long.yaml", "--quiet"],
                            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "runs" / "long" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.is_file() and metrics.stat().st_size):
        time.sleep(0.1)
    proc.terminate()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "interrupted at step" in stdout and "charlm train --resume runs/long" in stdout
    assert (workdir / "runs" / "long" / "last.pt").is_file()


# ---------------------------------------------------------------- one set of habits across commands

def test_short_flags_mean_one_thing_in_every_command():
    import typer

    group = typer.main.get_command(__import__("charlm.cli", fromlist=["app"]).app)
    meaning: dict[str, set[str]] = {}

    def walk(command, name):
        for sub_name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{name} {sub_name}")
        for param in getattr(command, "params", []):
            longs = [o for o in param.opts if o.startswith("--")]
            for short in (o for o in param.opts + param.secondary_opts if o[:1] == "-" and o[:2] != "--"):
                meaning.setdefault(short, set()).update(longs)

    walk(group, "charlm")
    assert {k: v for k, v in meaning.items() if len(v) != 1} == {}
    expected = {"-c": "--config", "-C": "--checkpoint", "-o": "--out", "-d": "--data", "-f": "--file",
                "-n": "--num-samples", "-q": "--quiet"}  # and -h, --help, from click
    assert {k: meaning[k] for k in expected if k in meaning} == {k: {v} for k, v in expected.items()}
    for command in ("evaluate", "generate", "score"):  # every command that reads a checkpoint
        params = group.commands[command].params
        assert any("-C" in p.opts and "--checkpoint" in p.opts for p in params), command


def test_short_flags_work(trained):
    result = invoke("evaluate", "-C", "runs/tiny", "-d", "corpus.txt", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tokens"] > 1000
    assert invoke("generate", "-C", "runs/tiny", "--length", "5", "--seed", "1").exit_code == 0
    assert invoke("score", "-C", "runs/tiny", "the time").exit_code == 0
    assert invoke("preprocess", "corpus.txt", "-o", "elsewhere").exit_code == 0 and (trained / "elsewhere").is_dir()


def test_plot_defaults_to_the_latest_run(trained):
    (trained / "runs" / "tiny" / "curves.png").unlink()
    result = invoke("plot")
    assert result.exit_code == 0, result.output
    assert (trained / "runs" / "tiny" / "curves.png").is_file() and "curves.png" in result.stdout


def test_train_without_a_config_asks_for_one(workdir):
    result = invoke("train", "--set", "train.max_steps=3")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: give a budget or a config: `charlm train TEXT --time 5m` plans one, "
                                    "--config NAME takes a shipped one"), result.output
    assert sorted(p.name for p in workdir.iterdir()) == ["corpus.txt", "tiny.yaml"]  # nothing trained or written


def test_piped_output_is_not_wrapped_at_80_columns(workdir):
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run([sys.executable, "-m", "charlm", "preprocess", "timemachine", "--normalize", "letters",
                           "--stats-only"], cwd=workdir, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert len(first) > 80 and first.startswith("timemachine: 173,428") and first.endswith("vocabulary 28 (with <unk>)")


def test_train_labels_sampled_validation_and_ends_on_the_whole_split(workdir):
    result = invoke("train", "--config", "tiny.yaml", "--set", "train.eval_tokens=300")
    assert result.exit_code == 0, result.output
    assert "score the first 300 of" in result.output
    assert re.search(r"val (ppl|perplexity) ≈\d", result.output)
    summary = json.loads((workdir / "runs/tiny/summary.json").read_text())
    final = result.output.strip().splitlines()[-1]
    assert f"best val perplexity {summary['best_val_perplexity']:.3f}" in final
    assert "on the whole split (≈" in final and "300-token sample" in final


def test_the_last_progress_frame_shows_the_runs_tokens_per_second(workdir):
    result = invoke("train", "--config", "tiny.yaml")
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "runs/tiny/summary.json").read_text())
    frames = re.findall(r"([\d.]+)k tok/s", result.output)
    assert frames and frames[-1] == f"{summary['tokens_per_s'] / 1000:.1f}"


def test_train_takes_your_text_and_says_so_in_its_first_line(workdir):
    # The shipped rnn config trains on The Time Machine, letters only; given a text, it trains on
    # that text as it is, and the first line names the text and its data folder.
    (workdir / "psalms.txt").write_text("The LORD is my shepherd; I shall not want.\n" * 200)
    result = invoke("train", "psalms.txt", "--config", "rnn", "--set", "train.max_steps=2",
                    "--set", "model.hidden_size=8", "--set", "train.eval_every=1")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert "on psalms.txt (data/psalms, text as is, vocabulary 26)" in first, first
    saved = yaml.safe_load((workdir / "runs/rnn/config.yaml").read_text())
    assert saved["data"]["corpus"] == "psalms.txt" and saved["data"]["normalize"] == "none"
    assert (workdir / "data/psalms/meta.json").is_file()


def test_train_help_shows_training_on_your_own_text():
    result = invoke("train", "--help")
    assert result.exit_code == 0
    assert "[TEXT]" in result.output and "charlm train my_text.txt --config rnn" in result.output


def test_the_corpus_is_given_once(workdir):
    result = invoke("train", "corpus.txt", "--config", "tiny.yaml", "--set", "data.corpus=corpus.txt")
    assert one_error_line(result) == ("error: the corpus is given twice: 'corpus.txt' and --set data.corpus; "
                                      "give it once")


def test_serve_help_names_the_extra_it_needs():
    result = invoke("serve", "--help")
    assert "(needs charlm[serve])" in " ".join(result.output.split())


def test_plain_prints_many_samples_one_per_line(trained):
    result = invoke("generate", "-n", "5", "--prefix", "t", "--stop", "e", "--length", "30", "--seed", "3",
                    "--continuation-only", "--plain")
    assert result.exit_code == 0, result.output
    lines = result.stdout.split("\n")
    assert len(lines) == 6 and lines[-1] == "" and "--- sample" not in result.stdout
    assert all(line for line in lines[:-1])
    headed = invoke("generate", "-n", "5", "--prefix", "t", "--stop", "e", "--length", "30", "--seed", "3",
                    "--continuation-only")
    assert [line for line in headed.stdout.split("\n") if line and not line.startswith("--- sample")] == lines[:-1]


def test_check_novelty_reports_whole_generated_lines_found_in_the_training_text(trained):
    result = invoke("generate", "-n", "3", "--prefix", "the", "--length", "40", "--seed", "1", "--check-novelty")
    assert result.exit_code == 0, result.output
    assert re.search(r"novelty: \d+ of \d+ whole generated lines are lines of the training text", result.stderr)


def test_plot_marks_validation_scored_on_a_sample(workdir, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    assert invoke("train", "--config", "tiny.yaml", "--quiet", "--set", "train.eval_tokens=300").exit_code == 0
    labels = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (labels.extend(
        t.get_text() for t in fig.axes[0].get_legend().get_texts()), real_close(fig)))
    assert invoke("plot", "runs/tiny").exit_code == 0
    assert labels == ["train", "validation ≈ (first 300 tokens)"]


def test_train_text_with_a_steps_budget_plans_the_run_and_its_config_reproduces_it(workdir, monkeypatch):
    import charlm.planning.planner as planner

    # A tiny ladder so the planned model trains in seconds; the rules are the shipped ones otherwise.
    monkeypatch.setattr(planner, "CANDIDATES", (planner.Candidate(16, batch_size=4, num_steps=16),))
    monkeypatch.setattr(planner, "RULES", planner.Rules(min_tokens=100))
    planned = invoke("train", "corpus.txt", "--steps", "12")
    assert planned.exit_code == 0, planned.output
    first, why = planned.stdout.splitlines()[:2]
    assert first.startswith("plan: lstm 1×16") and "batch 4 × 16" in first and "epochs of" in first
    assert why.startswith("why: ") and "dropout" in why
    saved = yaml.safe_load((workdir / "runs" / "corpus" / "config.yaml").read_text())
    assert (saved["model"]["hidden_size"], saved["train"]["max_steps"], saved["data"]["normalize"]) == (16, 12, "none")
    again = invoke("train", "--config", "runs/corpus/config.yaml", "--set", "train.out=runs/again", "-q")
    assert again.exit_code == 0, again.output
    losses = [[row.get("loss") for row in map(json.loads, (workdir / "runs" / name / "metrics.jsonl").open())]
              for name in ("corpus", "again")]
    assert losses[0] == losses[1] and any(losses[0])


def test_time_on_a_config_replaces_its_step_limit(workdir):
    result = invoke("train", "--config", "tiny.yaml", "--time", "2s", "-q")
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((workdir / "runs" / "tiny" / "config.yaml").read_text())["train"]
    assert (saved["max_time"], saved["max_steps"]) == (2.0, None)


@pytest.mark.parametrize("args, message", [
    (["--time", "5m"], "plan a run for a text"),
    (["corpus.txt", "--time", "soon"], "is not a duration"),
    (["corpus.txt", "--time", "5m", "--steps", "10"], "one budget"),
    (["corpus.txt", "--steps", "0"], "at least 1"),
    (["corpus.txt", "--time", "5m", "--nproc", "2"], "--nproc takes a config"),
])
def test_a_bad_budget_is_one_line(workdir, args, message):
    assert message in one_error_line(invoke("train", *args))


def test_plan_prints_the_plan_and_a_config_that_loads(workdir, monkeypatch):
    from charlm.config import build_config

    monkeypatch.setenv("XDG_CACHE_HOME", str(workdir / "cache"))
    result = invoke("plan", "corpus.txt", "--steps", "500", "--yaml")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("plan: lstm") and lines[1].startswith("why: ")
    cfg = build_config(yaml.safe_load("\n".join(lines[2:])), name="plan")
    assert cfg.train.max_steps == 500 and cfg.data.corpus == "corpus.txt"
    assert not (workdir / "cache").exists()  # a steps budget measures nothing
    letters = invoke("plan", "corpus.txt", "--steps", "500", "--set", "data.normalize=letters",
                     "--set", "optim.lr=0.002", "--yaml")
    assert letters.exit_code == 0, letters.output
    cfg = build_config(yaml.safe_load("\n".join(letters.stdout.splitlines()[2:])), name="plan")
    assert cfg.data.normalize == "letters" and cfg.optim.lr == 0.002  # as `charlm train TEXT --set ...` would
    line = one_error_line(invoke("plan", "corpus.txt", "--steps", "500", "--set", "data.normalise=letters"))
    assert "data.normalise" in line and "data.normalize" in line  # a misspelt key: one line naming the right one


@pytest.mark.parametrize("command", [["evaluate"], ["score", "the time"]])
def test_a_bad_precision_is_one_line_before_any_run_is_looked_for(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # no runs here: the precision is what the line must be about
    line = one_error_line(invoke(*command, "--precision", "fp16"))
    assert line == "error: precision: 'fp16' is not one of auto, bf16, fp32"
