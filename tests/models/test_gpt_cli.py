"""The transformer end to end through the real command line, like the recurrent models."""

import json

import pytest

from cli_helpers import invoke, one_error_line


@pytest.fixture
def workdir(tmp_path, monkeypatch, corpus_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text((corpus_dir / "timemachine.txt").read_text()[:40000])
    (tmp_path / "gpt.yaml").write_text(
        "data: {corpus: corpus.txt, normalize: letters, batch_size: 8, num_steps: 16}\n"
        "model: {name: gpt, num_layers: 2, num_heads: 2, embedding_dim: 16, context: 16, dropout: 0.1}\n"
        "optim: {name: adamw, lr: 0.01}\n"
        "train: {max_steps: 10, eval_every: 5, log_every: 5, eval_tokens: 500}\n"
        "generate: {prefix: the, length: 40}\n")
    return tmp_path


def test_gpt_trains_generates_past_its_context_evaluates_scores_and_resumes(workdir):
    trained = invoke("train", "--config", "gpt.yaml", "--quiet")
    assert trained.exit_code == 0, trained.output
    gen = invoke("generate", "--prefix", "The Time Traveller", "--length", "40", "--seed", "3", "--check-novelty")
    assert gen.exit_code == 0, gen.output
    text = gen.stdout.strip()
    assert text.startswith("the time traveller") and len(text) == len("the time traveller") + 40  # > context 16
    assert "novelty: longest substring also in the training text" in gen.stderr
    metrics = json.loads(invoke("evaluate", "--json").output)
    assert metrics["vocab_size"] == 28 and 1 < metrics["perplexity"] < 28
    (workdir / "other.txt").write_text("The Time Traveller smiled. Are you sure? " * 3)  # longer than context
    ev_file = json.loads(invoke("evaluate", "--data", "other.txt", "--json").output)
    sc = json.loads(invoke("score", "--file", "other.txt", "--json").output)
    nats = [b * 0.6931471805599453 for b in sc["surprisal_bits"][1:]]
    assert ev_file["tokens"] == len(nats) > 16
    assert sum(nats) / len(nats) == pytest.approx(ev_file["nats_per_token"], rel=1e-6)
    resumed = invoke("train", "--resume", "runs/gpt", "--set", "train.max_steps=15", "--quiet")
    assert resumed.exit_code == 0 and "finished at step 15" in resumed.output


def test_gpt_with_the_sequential_sampler_is_one_error_line(workdir):
    result = invoke("train", "--config", "gpt.yaml", "--set", "data.sampling=sequential")
    line = one_error_line(result)
    assert "model gpt does not carry state between batches; set data.sampling: random" in line
    assert not (workdir / "runs" / "gpt").exists()
