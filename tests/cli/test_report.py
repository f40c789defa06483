"""Tests for charlm.cli.report: what the CLI prints from the library's results."""

from pathlib import Path

from rich.console import Console

from charlm.training.loop import TrainResult
from charlm.cli.report import TrainingDisplay


def test_the_summary_line_adds_validation_time_when_it_outweighs_training():
    def line(validation_s):
        console = Console(record=True, width=200)
        TrainingDisplay(console, quiet=True).summary(TrainResult(Path("ng"), "finished", 0, 5.0, 5.0, 0.2, 1e6,
                                                                 validation_s=validation_s))
        return console.export_text()

    assert "in 0.2s (+3.1s validation), 1,000,000 tok/s" in line(3.1)
    assert "in 0.2s, 1,000,000" in line(0.1)



def test_an_interrupted_runs_summary_gives_the_sampled_best_marked_as_such():
    console = Console(record=True, width=300)
    TrainingDisplay(console, quiet=True).summary(TrainResult(Path("cut"), "interrupted", 5, None, 4.5, 1.0, 1e3,
                                                             val_sample_tokens=500, sampled_best_val_perplexity=4.25))
    text = console.export_text()
    assert "perplexity ≈4.250 on the 500-token sample (the whole split is scored when the run finishes)" in text
    assert "resume with: charlm train --resume cut" in text


def test_a_finished_run_whose_final_score_was_stopped_says_how_to_complete_it():
    console = Console(record=True, width=300)
    TrainingDisplay(console, quiet=True).summary(TrainResult(Path("t"), "finished", 12, None, 4.5, 1.0, 1e3,
                                                             val_sample_tokens=500, sampled_best_val_perplexity=4.25,
                                                             pending=True))
    assert ("perplexity ≈4.250 on the 500-token sample (its whole-split score was stopped: "
            "charlm train --resume t computes it)") in console.export_text()
