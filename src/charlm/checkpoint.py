"""The only place that saves and loads checkpoints: atomic writes, `weights_only` loads; opening one for use."""

from __future__ import annotations

import itertools
import pickle
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charlm import __version__
from charlm.config import RunConfig, config_from_dict
from charlm.data.vocab import Vocab, vocab_digest
from charlm.device.runtime import resolve_device
from charlm.errors import CharLMError, CheckpointError, DataError
from charlm.safe_write import WriteError, replacing, write_atomic

FORMAT_VERSION = 1
LATEST_POINTER = Path("runs") / "LATEST"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass
class TrainState:
    """What a checkpoint holds: the model it describes, and where training stood, enough to resume exactly.

    Built in one place (`Trainer.train_state`), written by `save_checkpoint`, read back by
    `from_payload`. A counting model has no optimizer and no RNG to carry.
    """

    model_name: str
    model_args: dict[str, Any]
    vocab: dict[str, Any]  # Vocab.to_dict()
    config: dict[str, Any]  # RunConfig.to_dict()
    model: dict[str, torch.Tensor]  # state_dict
    data_dir: str = ""
    vocab_sha256: str = ""  # of `vocab`: a data folder with another vocabulary is refused (empty: older charlm)
    step: int = 0
    epoch: int = 0
    batch: int = 0  # the next batch of `epoch`
    elapsed: float = 0.0  # seconds of training, also the schedule's clock
    best_val: float | None = None
    finished: bool = False
    optimizer: dict[str, Any] | None = None
    rng: torch.Tensor | None = None  # the CPU generator (rank 0's)
    rng_ranks: list[torch.Tensor] | None = None  # every rank's, in a distributed run
    cuda_rng_ranks: list[torch.Tensor] | None = None  # every rank's CUDA generator, on a GPU
    carried_state: Any = None  # the global batch's carried state, fp32 on the CPU
    carried_dtypes: Any = None  # what the forward pass produced it in
    charlm_version: str = __version__

    # Absent from a checkpoint rather than stored as None, as checkpoints have always been written.
    _OMITTED_WHEN_NONE = ("optimizer", "rng", "rng_ranks", "cuda_rng_ranks")

    def to_payload(self) -> dict[str, Any]:
        payload = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in payload.items() if not (v is None and k in self._OMITTED_WHEN_NONE)}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TrainState:
        """The fields of a loaded checkpoint; keys it lacks take their defaults (older checkpoints)."""
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in payload.items() if k in known})
        except TypeError:
            missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in payload]
            raise CheckpointError(f"{payload.get('path', 'checkpoint')} is not a charlm training checkpoint "
                                  f"(it lacks {', '.join(missing)})") from None


class _TrackedFile:
    """The file torch.save writes through. Its C++ writer turns an OSError from `write` (a full disk)
    into "RuntimeError: [enforce fail at inline_container.cc…]"; this keeps the OSError to report."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    payload = {"format_version": FORMAT_VERSION, **payload}
    tracked = None
    try:
        with replacing(path) as f:
            tracked = _TrackedFile(f)
            torch.save(payload, tracked)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed
            stale.unlink(missing_ok=True)
    except BaseException as exc:
        cause = tracked.error if tracked is not None and tracked.error is not None else exc
        if isinstance(cause, WriteError) and tracked is None:
            raise  # the destination was refused before anything was written
        if isinstance(cause, OSError):
            cause = cause.strerror or cause
        elif isinstance(cause, WriteError):
            cause = str(cause).split(": ", 1)[-1]
        elif isinstance(cause, RuntimeError):  # torch's writer, without an OSError we saw
            cause = f"torch's writer failed: {str(cause).splitlines()[0] if str(cause) else 'RuntimeError'}"
        else:
            raise
        raise CheckpointError(f"could not write checkpoint {path}: {cause}; "
                              "the previous checkpoint is untouched") from None


def check_same_vocab(trained: dict[str, Any], recorded: str | None, checkpoint: str | Path, data_vocab: Vocab,
                     data_folder: str | Path, what: str) -> None:
    """Refuse a data folder whose vocabulary is not the one the checkpoint was trained with.

    Ids mean something only under their vocabulary: with another one (the folder was preprocessed
    again, or holds another corpus of the same size) a run silently scores or trains on other
    characters. A checkpoint without the recorded hash (older charlm) is hashed from its vocabulary.
    """
    was, found = recorded or vocab_digest(trained), vocab_digest(data_vocab.to_dict())
    if was != found:
        raise CheckpointError(f"{what}: {checkpoint} was trained with vocabulary sha256 {was[:12]} "
                              f"({len(trained['tokens'])} tokens) but the data folder {data_folder} holds vocabulary "
                              f"sha256 {found[:12]} ({len(data_vocab)} tokens); it was preprocessed again "
                              "or holds another corpus")


def load_weights(model: torch.nn.Module, weights: dict[str, Any], what: str) -> None:
    """`model.load_state_dict(weights)`, with a mismatch (names or shapes) as one line."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{what}: its weights do not fit the model ({_first_line(exc)})") from None


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, what: str) -> None:
    """`optimizer.load_state_dict(state)`, refused in one line unless every buffer fits its parameter.

    torch accepts moments of the wrong shape and fails only at the first step, after the run
    folder was written; checking here keeps a bad checkpoint from touching it.
    """
    try:
        optimizer.load_state_dict(state)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for param in params:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(f"optimizer state {key!r} has shape {tuple(value.shape)} for a parameter "
                                     f"of shape {tuple(param.shape)}")
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{what}: its optimizer state does not fit the model ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def checkpoint_file(path: str | Path | None) -> Path:
    """A checkpoint file, a run folder (best.pt, else last.pt) or None for the most recent run."""
    if path is None:
        try:
            path = LATEST_POINTER.read_text(encoding="utf-8").strip() if LATEST_POINTER.is_file() else ""
        except (OSError, UnicodeDecodeError):
            path = ""
        if not path or "\0" in path:
            raise CheckpointError(f"no checkpoint given and no recent run found (in {LATEST_POINTER}); "
                                  "train one with `charlm train` or pass --checkpoint PATH")
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no checkpoint (best.pt or last.pt)")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path | None) -> dict[str, Any]:
    """Load with `weights_only=True`, so a crafted file can never run code."""
    path = checkpoint_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not head:
        raise CheckpointError(f"{path} is corrupt or truncated (empty file)")
    if head != _ZIP_MAGIC:  # torch.save writes a zip archive; anything else was never a checkpoint
        raise CheckpointError(f"{path} is not a charlm checkpoint (not a file written by torch.save)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported" in str(exc):
            raise CheckpointError(f"refused to load {path}: it contains Python objects beyond tensors and "
                                  "plain data, which could run code (not a charlm checkpoint?)") from None
        raise CheckpointError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is corrupt or truncated ({first})") from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError(f"{path} is not a charlm checkpoint")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {payload['format_version']}, this charlm reads "
                              f"format {FORMAT_VERSION}; retrain or use the charlm version that wrote it")
    payload["path"] = str(path)
    return payload


@dataclass
class LoadedModel:
    """A model ready for evaluate/generate/score, with everything needed to encode text for it."""

    model: torch.nn.Module
    vocab: Vocab
    config: RunConfig
    checkpoint: dict[str, Any]

    @property
    def normalize(self) -> str:
        return self.config.data.normalize

    @property
    def level(self) -> str:
        return self.config.data.level


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model a checkpoint describes, with its weights, in eval mode."""
    from charlm.models import build_model

    payload = load_checkpoint(path)
    try:
        config = config_from_dict(payload["config"])
        vocab = Vocab.from_dict(payload["vocab"])
        if vocab.level != config.data.level:
            raise CheckpointError(f"{payload['path']} holds a {vocab.level}-level vocabulary but its config says "
                                  f"data.level {config.data.level!r}")
        model, _ = build_model(payload["model_name"], len(vocab), **payload["model_args"])
        model.load_state_dict(payload["model"])
    except CharLMError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{payload['path']} does not describe a usable model ({first})") from None
    model.to(device).eval()
    return LoadedModel(model=model, vocab=vocab, config=config, checkpoint=payload)


def open_checkpoint(checkpoint, device: str) -> LoadedModel:
    """A checkpoint path (or None: the latest run), or a model loaded already (kept on its device)."""
    if isinstance(checkpoint, LoadedModel):
        return checkpoint
    loaded = load_model(checkpoint, device=resolve_device(device))
    check_finite(loaded)
    return loaded


def check_finite(loaded: LoadedModel) -> None:
    """Refuse a model with NaN or inf weights: every score would be NaN and every sample noise."""
    for name, tensor in itertools.chain(loaded.model.named_parameters(), loaded.model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{loaded.checkpoint.get('path', 'the checkpoint')}: the weights ({name}) hold "
                                  "NaN or inf, so it cannot score or generate; use an earlier checkpoint")


def training_ids(loaded: LoadedModel, split: str) -> np.ndarray:
    """The run's own train or val split, memory-mapped from the folder it was trained on."""
    from charlm.data.corpus import load_corpus

    folder = loaded.checkpoint.get("data_dir")
    if not folder or not Path(folder).is_dir():
        raise DataError(f"the run's data folder {folder} is gone; pass --data FILE to score a text file")
    corpus = load_corpus(folder)
    payload = loaded.checkpoint
    check_same_vocab(payload["vocab"], payload.get("vocab_sha256"), payload["path"], corpus.vocab, folder,
                     f"the run's {split} split")
    return getattr(corpus, split)


def checkpoint_device(loaded: LoadedModel) -> torch.device:
    """Where the loaded model's tensors are."""
    from charlm.models import model_device

    return model_device(loaded.model)


def record_latest_run(run_dir: str | Path) -> None:
    """Remember the run so `generate`/`evaluate` work without --checkpoint right after training."""
    try:
        LATEST_POINTER.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(LATEST_POINTER, str(Path(run_dir).resolve()) + "\n")
    except (OSError, CharLMError):
        pass  # A convenience only: never fail a finished run over it.
