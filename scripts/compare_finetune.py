"""Fine-tuning onto a text of another vocabulary: <unk> for the new characters, against growing the model.

    python scripts/compare_finetune.py [--pretrain 300] [--steps 100] [--hidden 128] [--work DIR]

An lstm is trained on one shipped corpus, then fine-tuned on the other for the same number of
steps three ways, each scored by charlm on the same text's validation split (perplexity):
  unk       what `charlm train --init-from` does: the text in the checkpoint's vocabulary,
            characters it lacks become <unk>;
  extended  the vocabulary grown by the new characters, their embedding and decoder rows
            initialised as the mean of the existing ones and their bias as the smallest one;
  scratch   no initial weights (the baseline each is compared with).
Both directions: tinyshakespeare -> timemachine and back, raw characters (normalize none).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from charlm.checkpoint import load_checkpoint, save_checkpoint, vocab_digest
from charlm.config import build_config
from charlm.data.corpus import load_corpus, preprocess, write_corpus
from charlm.data.remap import id_table
from charlm.data.vocab import Vocab
from charlm.train import train


def config(corpus: str, steps: int, hidden: int, out: str):
    return build_config({"data": {"corpus": corpus, "normalize": "none", "batch_size": 32, "num_steps": 64},
                         "model": {"name": "lstm", "hidden_size": hidden, "num_layers": 1, "embedding_dim": 32},
                         "optim": {"lr": 0.004}, "train": {"max_steps": steps, "eval_every": steps, "seed": 0,
                                                           "device": "cpu", "out": out}}, name=Path(out).name)


def extended_start(start_path: Path, target: str, work: Path) -> tuple[Path, Path]:
    """A checkpoint and data folder in the source vocabulary grown by the target's new tokens."""
    start = load_checkpoint(start_path)
    old = Vocab.from_dict(start["vocab"])
    text = preprocess(target, work / f"data-{target}-own", normalize="none", force=True)
    new = [t for t in text.vocab.tokens if t not in old]
    grown = Vocab(list(old.tokens) + new, list(old.counts) + [1] * len(new), old.level)
    table = id_table(text.vocab, grown)
    folder = work / f"data-{target}-grown"
    write_corpus(folder, grown, [table[np.asarray(text.train, np.int64)]], [table[np.asarray(text.val, np.int64)]],
                 source=target, val_fraction=0.1, force=True)
    weights = dict(start["model"])
    for name in ("embedding.weight", "decoder.weight"):
        rows = weights[name]
        weights[name] = torch.cat([rows, rows.mean(0, keepdim=True).expand(len(new), -1)])
    bias = weights["decoder.bias"]
    weights["decoder.bias"] = torch.cat([bias, bias.min().expand(len(new))])
    payload = {k: v for k, v in start.items() if k != "path"}
    payload.update(model=weights, vocab=grown.to_dict(), vocab_sha256=vocab_digest(grown.to_dict()),
                   optimizer=None)
    payload = {k: v for k, v in payload.items() if v is not None}
    out = work / f"grown-{target}.pt"
    save_checkpoint(out, payload)
    return out, folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain", type=int, default=300)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="finetune-"))
    torch.set_num_threads(1)
    print(f"lstm 1x{args.hidden}, {args.pretrain} steps on the source, then {args.steps} on the target "
          "(32 x 64 tokens a step, seed 0); validation perplexity on the target (whole split); work in " + str(work))
    print(f"{'source -> target':<32} {'unk':>7} {'extended':>9} {'scratch':>8} {'<unk> share':>12}")
    for source, target in (("tinyshakespeare", "timemachine"), ("timemachine", "tinyshakespeare")):
        pre = train(config(source, args.pretrain, args.hidden, str(work / f"pre-{source}")))
        start = Path(pre.run_dir) / "last.pt"
        scores = {}
        unk = train(config(target, args.steps, args.hidden, str(work / f"unk-{target}")), init_from=start)
        scores["unk"] = unk.best_val_perplexity
        grown_ckpt, grown_data = extended_start(start, target, work)
        scores["extended"] = train(config(str(grown_data), args.steps, args.hidden, str(work / f"ext-{target}")),
                                   init_from=grown_ckpt).best_val_perplexity
        scratch = train(config(target, args.steps, args.hidden, str(work / f"new-{target}")))
        scores["scratch"] = scratch.best_val_perplexity
        mapped = load_corpus(load_checkpoint(Path(unk.run_dir) / "last.pt")["data_dir"])
        share = float((np.asarray(mapped.val) == 0).mean())
        print(f"{source + ' -> ' + target:<32} {scores['unk']:>7.3f} {scores['extended']:>9.3f} "
              f"{scores['scratch']:>8.3f} {share:>11.3%}")


if __name__ == "__main__":
    main()
