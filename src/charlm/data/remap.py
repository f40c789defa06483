"""A preprocessed corpus re-encoded in another vocabulary: fine-tuning a model on a new text.

Two character corpora almost never share a vocabulary, and a model's ids mean something only
under its own. So `train --init-from` encodes the new text with the checkpoint's vocabulary:
a token the model never saw becomes <unk> (counted and reported), and the model keeps its size,
its rows and what they learnt. (Growing the embedding and output layers by the new tokens was
measured against this: see docs/fine-tuning.md.) The re-encoded ids go to a folder of their own
next to the corpus's, `<folder>-in-<vocabulary sha256>`, made once and reused, so a resumed run
reads exactly the ids it started with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlm.data.corpus import PreparedCorpus, is_prepared, load_corpus, write_corpus
from charlm.data.vocab import UNK, Vocab, vocab_digest
from charlm.errors import DataError


@dataclass(frozen=True)
class Remapped:
    corpus: PreparedCorpus
    missing: list[str]  # the corpus's tokens the vocabulary lacks, most frequent first
    unknown_tokens: int  # training and validation tokens that became <unk> for that


def id_table(source: Vocab, target: Vocab) -> np.ndarray:
    """For each id of `source`, the id of the same token in `target` (<unk>, id 0, where it lacks it)."""
    return np.array([target.id_of(t) if t in target else 0 for t in source.tokens], dtype=np.int64)


def in_vocabulary(corpus: PreparedCorpus, vocab: Vocab, what: str = "--init-from",
                  on_note: Callable[[str], None] | None = None) -> Remapped:
    """`corpus` with its ids in `vocab`; the corpus itself when it already uses `vocab`."""
    if vocab_digest(corpus.vocab.to_dict()) == vocab_digest(vocab.to_dict()):
        return Remapped(corpus, [], 0)
    if corpus.vocab.level != vocab.level:
        raise DataError(f"{what}: the model reads {vocab.level} tokens but {corpus.folder} holds "
                        f"{corpus.vocab.level} tokens; preprocess the text with --level {vocab.level}")
    table = id_table(corpus.vocab, vocab)
    lost = (table == 0) & (np.arange(len(table)) != 0)  # <unk> stays <unk>: it is no new loss
    counts = np.bincount(np.asarray(corpus.train), minlength=len(table)) + np.bincount(
        np.asarray(corpus.val), minlength=len(table))
    missing = [corpus.vocab.tokens[i] for i in np.argsort(-counts) if lost[i]]
    unknown = int(counts[lost].sum())
    folder = Path(corpus.folder)
    out = folder.with_name(f"{folder.name}-in-{vocab_digest(vocab.to_dict())[:10]}")
    remapped = _reuse(out, corpus, vocab)
    if remapped is None:
        stats = {"remapped_from": str(folder), "source_sha256": corpus.meta.get("source_sha256"),
                 "unknown_tokens": unknown, "missing_tokens": missing}
        remapped = write_corpus(out, vocab, _chunks(corpus.train, table), _chunks(corpus.val, table),
                                source=f"{folder} in the vocabulary of the model ({len(vocab)} tokens)",
                                normalize=corpus.meta.get("normalize", "none"),
                                val_fraction=corpus.meta.get("val_fraction"), min_freq=corpus.meta.get("min_freq", 1),
                                stats=stats, force=out.exists())
    if on_note is not None:
        total = len(corpus.train) + len(corpus.val)
        shown = ", ".join(repr(t) for t in missing[:12]) + (", ..." if len(missing) > 12 else "")
        lacks = (f"{len(missing)} of the text's tokens are not among them ({shown}): {unknown:,} of its {total:,} "
                 f"tokens ({100 * unknown / max(total, 1):.2f}%) are <unk>") if missing else "it has every token"
        on_note(f"{what}: the text is encoded in the model's vocabulary of {len(vocab)} tokens; {lacks} "
                f"(data in {out})")
    return Remapped(remapped, missing, unknown)


def _chunks(ids: np.ndarray, table: np.ndarray, size: int = 1 << 22):
    for start in range(0, len(ids), size):
        yield table[np.asarray(ids[start:start + size], dtype=np.int64)]


def _reuse(out: Path, corpus: PreparedCorpus, vocab: Vocab) -> PreparedCorpus | None:
    """The folder made earlier for this corpus and vocabulary, or None."""
    if not is_prepared(out):
        return None
    made = load_corpus(out)
    same_source = made.stats.get("source_sha256") == corpus.meta.get("source_sha256") and \
        made.stats.get("remapped_from") == str(corpus.folder)
    sizes = (len(made.train), len(made.val)) == (len(corpus.train), len(corpus.val))
    return made if same_source and sizes and made.vocab == vocab and UNK == made.vocab.tokens[0] else None
