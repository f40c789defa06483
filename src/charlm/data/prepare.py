"""Find or make the preprocessed folder a training config asks for."""

from __future__ import annotations

from pathlib import Path

from charlm.data.corpus import PreparedCorpus, folder_name, is_prepared, load_corpus, preprocess
from charlm.data.text import BUILTIN_DATASETS
from charlm.errors import DataError


def _matches(folder: Path, data_cfg) -> bool:
    meta = load_corpus(folder).meta
    return all(meta.get(k) == getattr(data_cfg, k) for k in ("level", "normalize", "val_fraction", "min_freq"))


def candidate_dirs(data_cfg, root: Path = Path("data")) -> list[Path]:
    """`data/<name>` as `charlm preprocess` writes it, then a name that records the settings."""
    name = data_cfg.corpus if data_cfg.corpus in BUILTIN_DATASETS else folder_name(data_cfg.corpus)
    tagged = f"{name}-{data_cfg.level}-{data_cfg.normalize}-v{data_cfg.val_fraction:g}-m{data_cfg.min_freq}"
    return [root / name, root / tagged]


def prepare_for_training(data_cfg) -> PreparedCorpus:
    """A preprocessed folder is used as is; a text file or dataset name is preprocessed once and reused."""
    source = Path(data_cfg.corpus)
    if source.is_dir():
        if not is_prepared(source):
            raise DataError(f"data.corpus: {source} is a folder but not a preprocessed corpus "
                            "(make one with `charlm preprocess FILE --out FOLDER`)")
        corpus = load_corpus(source)
        for key in ("level", "normalize"):
            if corpus.meta.get(key) != getattr(data_cfg, key):
                raise DataError(f"data.{key} is '{getattr(data_cfg, key)}' but {source} was preprocessed with "
                                f"{key} '{corpus.meta.get(key)}'")
        return corpus
    for folder in candidate_dirs(data_cfg):
        if is_prepared(folder) and _matches(folder, data_cfg):
            return load_corpus(folder)
    free = next((f for f in candidate_dirs(data_cfg) if not f.exists()), None)
    if free is None:
        raise DataError(f"data folders {', '.join(map(str, candidate_dirs(data_cfg)))} exist with other settings; "
                        "remove one or point data.corpus at a preprocessed folder")
    return preprocess(data_cfg.corpus, free, level=data_cfg.level, normalize=data_cfg.normalize,
                      val_fraction=data_cfg.val_fraction, min_freq=data_cfg.min_freq)
