"""Find or make the preprocessed folder a training config asks for.

A folder is reused only for the text it was made from: meta.json records the source's resolved
path, size and sha256, and the size and sha256 must match the file as it is now (the path is only
reported: the same text copied or moved elsewhere is the same corpus). Otherwise (another file of
the same name, an edited file, a folder too old to record its source) the text is preprocessed
into the next free candidate folder, with a note; the old folder is left alone, since runs made
from it may still evaluate on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from charlm.data.corpus import PreparedCorpus, folder_name, is_prepared, load_corpus, preprocess
from charlm.data.encode import letters_warning
from charlm.data.folders import remove_stale_temps
from charlm.data.jsonfile import read_json
from charlm.data.text import BUILTIN_DATASETS, ERRORS_HINT, resolve_corpus, sha256_file
from charlm.errors import DataError

SETTINGS = ("level", "normalize", "val_fraction", "min_freq")


@dataclasses.dataclass(frozen=True)
class Source:
    """What a data folder must record to be reused for a text: where it is, its size, its hash."""

    path: str
    size: int
    sha256: str

    @classmethod
    def of(cls, corpus: str) -> "Source":
        path = resolve_corpus(corpus).resolve()
        return cls(str(path), path.stat().st_size, sha256_file(path))

    def recorded_in(self, meta: dict) -> bool:
        # The content decides, not the path: a project copied or moved elsewhere keeps its folders.
        return (meta.get("source_bytes"), meta.get("source_sha256")) == (self.size, self.sha256)


def candidate_dirs(data_cfg, root: Path = Path("data"), source: Source | None = None) -> list[Path]:
    """`data/<name>` as `charlm preprocess` writes it, then a name that records the settings, then
    (given the source) that name plus the start of the text's sha256, for another text of that name."""
    name = data_cfg.corpus if data_cfg.corpus in BUILTIN_DATASETS else folder_name(data_cfg.corpus)
    tagged = f"{name}-{data_cfg.level}-{data_cfg.normalize}-v{data_cfg.val_fraction:g}-m{data_cfg.min_freq}"
    dirs = [root / name, root / tagged]
    if source is not None:
        dirs.append(root / f"{tagged}-{source.sha256[:10]}")
    return dirs


def prepare_for_training(data_cfg, on_note: Callable[[str], None] | None = None,
                         resume_from: str | Path | None = None) -> PreparedCorpus:
    """A preprocessed folder is used as is; a text file or dataset name is preprocessed once and
    reused while the file stays the same (see the module docstring). `resume_from` is the folder a
    resumed run trained on: it is kept, so the run goes on with the text it started with."""
    note = on_note or (lambda message: None)
    if Path(data_cfg.corpus).is_dir():
        return _named_folder(Path(data_cfg.corpus), data_cfg)
    if resume_from is not None and _settings_match(_meta(Path(resume_from)), data_cfg):
        return load_corpus(resume_from)
    source = Source.of(data_cfg.corpus)
    dirs = candidate_dirs(data_cfg, source=source)
    remove_stale_temps(dirs[0].parent)  # a preprocess killed last time; preprocess does it too, if it runs
    stale = []
    for folder in dirs:
        meta = _meta(folder)
        if _settings_match(meta, data_cfg):
            if source.recorded_in(meta):
                return load_corpus(folder)
            stale.append((folder, meta))
    free = next((f for f in dirs if not f.exists()), None)
    if free is None:
        raise DataError(f"data folders {', '.join(map(str, dirs))} exist for other texts or settings; "
                        "remove one or point data.corpus at a preprocessed folder")
    for folder, meta in stale:  # never reused and never replaced: a run made from it may still need it
        recorded = meta.get("source")
        why = ("records no source file" if not isinstance(recorded, str)
               else "was made from an earlier version of this file" if recorded == source.path
               else f"was made from {recorded}")
        note(f"{folder} {why}; preprocessing {source.path} into {free}")
    return _preprocess(data_cfg, free, note)


def _named_folder(folder: Path, data_cfg) -> PreparedCorpus:
    if not is_prepared(folder):
        raise DataError(f"data.corpus: {folder} is a folder but not a preprocessed corpus "
                        "(make one with `charlm preprocess FILE --out FOLDER`)")
    corpus = load_corpus(folder)
    defaults = type(data_cfg)()
    for key in ("level", "normalize"):
        # The folder decides; a config that leaves the default need not repeat it (see folder_settings).
        if getattr(data_cfg, key) not in (corpus.meta.get(key), getattr(defaults, key)):
            raise DataError(f"data.{key} is '{getattr(data_cfg, key)}' but {folder} was preprocessed with "
                            f"{key} '{corpus.meta.get(key)}'")
    return corpus


def folder_settings(data_cfg, corpus: PreparedCorpus) -> dict:
    """The data settings the folder was preprocessed with, where they differ from `data_cfg`: the
    run's config.yaml must record them (generation normalizes a prefix the way the text was)."""
    return {k: corpus.meta[k] for k in SETTINGS if k in corpus.meta and corpus.meta[k] != getattr(data_cfg, k)}


def _settings_match(meta: dict | None, data_cfg) -> bool:
    return meta is not None and all(meta.get(k) == getattr(data_cfg, k) for k in SETTINGS)


def _meta(folder: Path) -> dict | None:
    """meta.json of a prepared folder, or None; only the folder chosen is loaded (and checked) whole."""
    if not is_prepared(folder):
        return None
    meta = read_json(folder / "meta.json")
    return meta if isinstance(meta, dict) else None


def _preprocess(data_cfg, folder: Path, note: Callable[[str], None]) -> PreparedCorpus:
    try:
        corpus = preprocess(data_cfg.corpus, folder, level=data_cfg.level, normalize=data_cfg.normalize,
                            val_fraction=data_cfg.val_fraction, min_freq=data_cfg.min_freq, errors=data_cfg.errors)
    except DataError as exc:
        raise DataError(str(exc).replace(ERRORS_HINT, "set data.errors: replace (--set data.errors=replace)")) from None
    if warning := letters_warning(corpus.stats):
        note(warning.replace("--normalize", "data.normalize:"))
    return corpus
