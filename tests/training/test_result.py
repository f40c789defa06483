"""Tests for charlm.training.result: what a run ends with."""

from pathlib import Path

import pytest
import torch

from charlm.checkpoint import load_model
from charlm.config import build_config
from charlm.training.distributed import Dist
from charlm.evaluation.evaluate import evaluate_ids
from charlm.training.result import TrainResult, score_whole_split
from charlm.train import train


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(tiny_text, encoding="utf-8")
    return tmp_path


def test_best_pt_is_scored_into_a_copy_so_the_model_in_hand_keeps_its_weights(workdir):
    cfg = build_config({"data": {"corpus": "corpus.txt", "normalize": "letters", "batch_size": 4, "num_steps": 12},
                        "model": {"name": "rnn", "hidden_size": 16, "embedding_dim": 8},
                        "train": {"max_steps": 6, "eval_every": 3}}, name="tiny")
    train(cfg, run_dir="run", handle_signals=False)
    best = Path("run/best.pt")
    in_hand = load_model(best).model
    with torch.no_grad():
        for p in in_hand.parameters():
            p.zero_()
    ids = torch.randint(0, 28, (400,))
    perplexity, seconds = score_whole_split(in_hand, best, ids, "cpu", Dist())
    assert perplexity == evaluate_ids(load_model(best).model, ids).perplexity and seconds > 0
    assert all((p == 0).all() for p in in_hand.parameters())
    assert abs(perplexity - evaluate_ids(in_hand, ids).perplexity) > 0.1  # zeroed weights score another number


def test_the_summary_names_the_sample_and_the_precision_only_where_they_apply():
    counted = TrainResult(Path("ng"), "finished", 0, 5.0, 5.0, 0.2, 1e6).summary()
    assert "val_sample_tokens" not in counted and "precision" not in counted and counted["best_val_perplexity"] == 5.0
    trained = TrainResult(Path("r"), "finished", 9, 4.0, 4.5, 1.0, 1e3, 300, 4.2, 0.5, "bf16").summary()
    assert trained["val_sample_tokens"] == 300 and trained["sampled_best_val_perplexity"] == 4.2
    assert trained["precision"] == "bf16" and trained["validation_s"] == 0.5
