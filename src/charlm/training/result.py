"""What a training run ends with: its result, the summary.json it writes, and best.pt's whole-split score."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlm.checkpoint import load_checkpoint, load_weights
from charlm.evaluation.evaluate import EvaluationStopped, evaluate_ids


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "finished" | "interrupted"
    step: int
    best_val_perplexity: float | None  # best.pt on the whole validation split: the run's result
    val_perplexity: float | None  # the last evaluation (a sample when val_sample_tokens is set)
    elapsed: float
    tokens_per_s: float
    val_sample_tokens: int | None = None  # evaluations during training scored this many tokens
    sampled_best_val_perplexity: float | None = None  # the sample's score that chose best.pt
    validation_s: float = 0.0  # this invocation's seconds of validation, which elapsed leaves out
    precision: str | None = None  # of the forward pass; None for a counting model
    pending: bool = False  # best.pt's whole-split score is still to come (`--resume` computes it)

    def summary(self) -> dict[str, Any]:
        """summary.json's content."""
        out = {"status": self.status, "step": self.step, "best_val_perplexity": self.best_val_perplexity,
               "val_perplexity": self.val_perplexity, "elapsed": self.elapsed, "tokens_per_s": self.tokens_per_s,
               "validation_s": self.validation_s}
        if self.val_sample_tokens:
            out.update(val_sample_tokens=self.val_sample_tokens,
                       sampled_best_val_perplexity=self.sampled_best_val_perplexity)
        if self.precision:
            out["precision"] = self.precision
        if self.pending:
            out["pending"] = "best_val_perplexity: best.pt's score on the whole validation split"
        return out


class ScoringStopped(Exception):
    """A stop request ended the whole-split pass early, after `seconds`."""

    def __init__(self, seconds: float):
        super().__init__(f"stopped after {seconds:.1f}s")
        self.seconds = seconds


def score_whole_split(model, best_path: Path, val_ids, device, dist, stop=None,
                      precision: str = "fp32") -> tuple[float | None, float]:
    """(perplexity, seconds) of the checkpoint at `best_path` on all of `val_ids`, as `charlm evaluate` scores it.

    Rank 0 scores it in one pass into a copy of the model while the other ranks wait (they get
    None), so the figure does not depend on the number of processes. Setting `stop` ends the pass
    early with ScoringStopped.
    """
    perplexity, started = None, time.perf_counter()
    if dist.is_main:
        scored = copy.deepcopy(model)
        load_weights(scored, load_checkpoint(best_path)["model"], str(best_path))
        try:
            perplexity = evaluate_ids(scored, val_ids, device=device, stop=stop, precision=precision).perplexity
        except EvaluationStopped:
            perplexity = None
    dist.barrier()
    if perplexity is None and dist.is_main:
        raise ScoringStopped(time.perf_counter() - started)
    return perplexity, time.perf_counter() - started
