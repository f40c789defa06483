"""Using a trained checkpoint: evaluate, generate and score, with the run's own defaults."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from charlm.checkpoint import LoadedModel, load_model
from charlm.data.text import normalize as normalize_text
from charlm.data.text import read_text
from charlm.distributed import resolve_device
from charlm.errors import DataError
from charlm.evaluate import EvalResult, ScoreResult, evaluate_ids, score_text
from charlm.generate import GenerationResult, generate, novelty
from charlm.sampling import validate_sampling


def _load(checkpoint, device: str) -> LoadedModel:
    """A checkpoint path (or None: the latest run), or a model loaded already (kept on its device)."""
    if isinstance(checkpoint, LoadedModel):
        return checkpoint
    return load_model(checkpoint, device=resolve_device(device))


def training_ids(loaded: LoadedModel, split: str) -> np.ndarray:
    """The run's own train or val split, memory-mapped from the folder it was trained on."""
    from charlm.data.corpus import load_corpus

    folder = loaded.checkpoint.get("data_dir")
    if not folder or not Path(folder).is_dir():
        raise DataError(f"the run's data folder {folder} is gone; pass --data FILE to score a text file")
    return getattr(load_corpus(folder), split)


@dataclass(frozen=True)
class CheckpointEvaluation(EvalResult):
    """The scores of one checkpoint on one text, and what was scored (`to_dict` gives the scores)."""

    checkpoint: str = ""  # the checkpoint file that was loaded
    data: str = "val"  # "val" or the text file scored
    level: str = "char"  # the run's tokens: char or word

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(EvalResult)}


def evaluate_checkpoint(checkpoint=None, data: str = "val", device: str = "cpu") -> CheckpointEvaluation:
    """Full-pass scores of the validation split (`data="val"`) or of a text file."""
    loaded = _load(checkpoint, device)
    where = _model_device(loaded)
    if data == "val":
        ids = training_ids(loaded, "val")
        if len(ids) < 2:
            raise DataError("the run has no validation split (val_fraction 0); pass --data FILE")
        return _described(evaluate_ids(loaded.model, ids, device=where), loaded, data)
    from charlm.data.corpus import encode_text_file

    with tempfile.TemporaryDirectory(prefix="charlm-eval-") as tmp:
        ids = encode_text_file(data, loaded.vocab, loaded.normalize, Path(tmp) / "ids.bin")
        if len(ids) < 2:
            raise DataError(f"{data}: evaluation needs at least 2 tokens after normalization, got {len(ids)}")
        return _described(evaluate_ids(loaded.model, ids, device=where), loaded, str(data))


def _described(result: EvalResult, loaded: LoadedModel, data: str) -> CheckpointEvaluation:
    return CheckpointEvaluation(**result.to_dict(), checkpoint=str(loaded.checkpoint["path"]), data=data,
                                level=loaded.level)


def _model_device(loaded: LoadedModel):
    tensor = next(iter(loaded.model.state_dict().values()), None)
    return tensor.device if tensor is not None else resolve_device("cpu")


@dataclass
class GenerationRun:
    result: GenerationResult
    warnings: list[str] = field(default_factory=list)
    novelty: list[tuple[int, str]] = field(default_factory=list)


def generate_from_checkpoint(checkpoint=None, *, prefix: str | None = None, length: int | None = None,
                             strategy: str | None = None, temperature: float | None = None,
                             top_k: int | None = None, top_p: float | None = None, num_samples: int = 1,
                             seed: int | None = None, stop: str | None = None, unknown: str = "error",
                             device: str = "cpu", check_novelty: bool = False,
                             on_prefix: Callable[[str], None] | None = None,
                             on_token: Callable[[int, list[str]], None] | None = None) -> GenerationRun:
    """Generate with the config's `generate` section as defaults for every option left as None."""
    loaded = _load(checkpoint, device)
    g = loaded.config.generate
    prefix = g.prefix if prefix is None else prefix
    strategy = strategy or g.strategy
    temperature = g.temperature if temperature is None else temperature
    top_k = g.top_k if top_k is None else top_k
    top_p = g.top_p if top_p is None else top_p
    if strategy == "top_k" and top_k is None:
        top_k = 10
    if strategy == "top_p" and top_p is None:
        top_p = 0.9
    validate_sampling(strategy, temperature, top_k, top_p)
    if unknown not in ("error", "map"):
        raise DataError(f"--unknown: '{unknown}' is not one of error, map")
    if num_samples < 1:
        raise DataError(f"--num-samples must be at least 1, got {num_samples}")
    if length is not None and length < 1:
        raise DataError(f"--length must be at least 1, got {length}")
    if on_prefix is not None:
        on_prefix(normalize_text(prefix, loaded.normalize))
    result = generate(loaded.model, loaded.vocab, prefix, normalize=loaded.normalize, length=length or g.length,
                      strategy=strategy, temperature=temperature, top_k=top_k, top_p=top_p,
                      num_samples=num_samples, seed=seed, stop=stop, unknown=unknown,
                      device=_model_device(loaded), on_token=on_token)
    run = GenerationRun(result)
    if result.mapped:
        run.warnings.append(f"mapped to <unk>: {', '.join(repr(t) for t in result.mapped)}")
    if check_novelty:
        train_text = loaded.vocab.decode(np.asarray(training_ids(loaded, "train")).tolist())
        run.novelty = [novelty(text, train_text) for text in result.continuations]
    return run


# score prints (or lists in JSON) every character with its surprisal: past this it is no longer
# something to read, and a recurrent model scores only ~30k tokens/s on one CPU stream.
MAX_SCORE_CHARS = 100_000


def score_checkpoint(checkpoint=None, text: str | None = None, file: str | Path | None = None,
                     device: str = "cpu", top: int = 0) -> ScoreResult:
    """Per-token surprisal of `text` (or of `file`) under the checkpoint (`top`: see score_text)."""
    loaded = _load(checkpoint, device)
    if file is not None:
        text = read_text(file)
    if len(text) > MAX_SCORE_CHARS:
        where = f"--data {file}" if file is not None else "--data FILE"
        raise DataError(f"the text has {len(text):,} characters, more than score shows one by one "
                        f"({MAX_SCORE_CHARS:,}); for its totals use `charlm evaluate {where}`")
    return score_text(loaded.model, loaded.vocab, text, loaded.normalize, device=_model_device(loaded), top=top)
