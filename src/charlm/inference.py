"""Using a trained checkpoint: evaluate, generate and score, with the run's own defaults."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

# Opening a checkpoint for use lives with the checkpoint (derail needs it below this module);
# inference's callers import these names, and load_model, from here too.
from charlm.checkpoint import (LoadedModel, check_finite, checkpoint_device, load_model,  # noqa: F401
                               open_checkpoint, training_ids)
from charlm.data.text import read_text
from charlm.errors import DataError
from charlm.evaluation.evaluate import EvalResult, ScoreResult, evaluate_ids, score_text
from charlm.config import GenerateConfig
from charlm.generation.generate import GenerationResult, check_params, copied_lines, generate, novelty
from charlm.device.precision import check_precision, scoring_precision


@dataclass(frozen=True)
class CheckpointEvaluation(EvalResult):
    """The scores of one checkpoint on one text, and what was scored (`to_dict` gives the scores)."""

    checkpoint: str = ""  # the checkpoint file that was loaded
    data: str = "val"  # "val" or the text file scored
    level: str = "char"  # the run's tokens: char or word

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(EvalResult)}


def evaluate_checkpoint(checkpoint=None, data: str = "val", device: str = "cpu",
                        precision: str = "auto") -> CheckpointEvaluation:
    """Full-pass scores of the validation split (`data="val"`) or of a text file.

    `precision` auto scores in the precision the run trained in where this device has it natively.
    """
    check_precision(precision)
    loaded = open_checkpoint(checkpoint, device)
    where = checkpoint_device(loaded)
    precision = run_precision(loaded, precision)
    if data == "val":
        ids = training_ids(loaded, "val")
        if len(ids) < 2:
            raise DataError("the run has no validation split (val_fraction 0); pass --data FILE")
        return _described(evaluate_ids(loaded.model, ids, device=where, precision=precision), loaded, data)
    from charlm.data.corpus import encode_text_file

    with tempfile.TemporaryDirectory(prefix="charlm-eval-") as tmp:
        ids = encode_text_file(data, loaded.vocab, loaded.normalize, Path(tmp) / "ids.bin")
        if len(ids) < 2:
            raise DataError(f"{data}: evaluation needs at least 2 tokens after normalization, got {len(ids)}")
        return _described(evaluate_ids(loaded.model, ids, device=where, precision=precision), loaded, str(data))


def _described(result: EvalResult, loaded: LoadedModel, data: str) -> CheckpointEvaluation:
    return CheckpointEvaluation(**result.to_dict(), checkpoint=str(loaded.checkpoint["path"]), data=data,
                                level=loaded.level)


def run_precision(loaded: LoadedModel, requested: str = "auto") -> str:
    """The precision `requested` scores this run in here (auto: as it trained; see scoring_precision)."""
    train = loaded.config.train
    return scoring_precision(requested, train.precision, checkpoint_device(loaded), train.amp)


@dataclass
class GenerationRun:
    result: GenerationResult
    warnings: list[str] = field(default_factory=list)
    novelty: list[tuple[int, str]] = field(default_factory=list)
    # Per sample: (whole generated lines checked, those that are lines of the training text).
    copied_lines: list[tuple[int, list[str]]] = field(default_factory=list)


def generation_params(loaded: LoadedModel, **overrides) -> GenerateConfig:
    """The run's `generate` section with every override that is not None: what generate() gets."""
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(GenerateConfig)})
    if unknown:
        raise TypeError(f"unknown generation parameter(s): {', '.join(unknown)}")
    params = dataclasses.replace(loaded.config.generate, **given)
    check_params(params)
    return params


def generate_from_checkpoint(checkpoint=None, *, device: str = "cpu", check_novelty: bool = False,
                             on_prefix: Callable[[str], None] | None = None,
                             on_token: Callable[[int, list[str]], None] | None = None,
                             **overrides) -> GenerationRun:
    """Generate with the checkpoint's config (its `generate` section) plus `overrides`.

    `overrides` are GenerateConfig's fields (prefix, length, strategy, temperature, top_k, top_p,
    num_samples, seed, stop, unknown, precision); None keeps the config's value.
    """
    loaded = open_checkpoint(checkpoint, device)
    params = generation_params(loaded, **overrides)
    result = generate(loaded.model, loaded.vocab, params=params, normalize=loaded.normalize,
                      on_prefix=on_prefix, on_token=on_token)
    run = GenerationRun(result)
    if result.mapped:
        run.warnings.append(f"mapped to <unk>: {', '.join(repr(t) for t in result.mapped)}")
    if check_novelty:
        train_text = loaded.vocab.decode(np.asarray(training_ids(loaded, "train")).tolist())
        run.novelty = [novelty(text, train_text) for text in result.continuations]
        lines = set(train_text.split("\n"))
        run.copied_lines = [copied_lines(result.prefix + text, len(result.prefix), stopped, lines)
                            for text, stopped in zip(result.continuations, result.stopped)]
    return run


# score prints (or lists in JSON) every character with its surprisal: past this it is no longer
# something to read (the scoring itself is batched, see charlm.evaluation.batched_eval; printing is the limit).
MAX_SCORE_CHARS = 100_000


def score_checkpoint(checkpoint=None, text: str | None = None, file: str | Path | None = None,
                     device: str = "cpu", top: int = 0, precision: str = "auto") -> ScoreResult:
    """Per-token surprisal of `text` (or of `file`) under the checkpoint (`top`: see score_text)."""
    check_precision(precision)
    loaded = open_checkpoint(checkpoint, device)
    if file is not None:
        text = read_text(file)
    if len(text) > MAX_SCORE_CHARS:
        where = f"--data {file}" if file is not None else "--data FILE"
        raise DataError(f"the text has {len(text):,} characters, more than score shows one by one "
                        f"({MAX_SCORE_CHARS:,}); for its totals use `charlm evaluate {where}`")
    return score_text(loaded.model, loaded.vocab, text, loaded.normalize, device=checkpoint_device(loaded), top=top,
                      precision=run_precision(loaded, precision))
