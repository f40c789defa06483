"""Writes docs/configs/keys.md, the reference of every config key, from the config schema itself.

Sections, keys, types, defaults and ranges come from charlm.config's dataclasses and
charlm.config.model_options' families (their field types and `bounded` metadata); only the one-line
descriptions below are written by hand. A key without a description, or a description for a key
that no longer exists, stops the build, so the page cannot drift from the code.
Run by Sphinx (conf.py calls `write_page` at start-up); `python docs/_ext/config_keys.py` prints it.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "configs" / "keys.md"

DESCRIPTIONS = {
    "data.corpus": "What to train on: a built-in name (`timemachine`, `tinyshakespeare`), a text file, "
                   "or a folder `charlm preprocess` wrote.",
    "data.normalize": "`none` keeps every character; `lower` lowercases; `letters` is D2L's: lowercase, "
                      "every run of non-letters one space.",
    "data.level": "Tokens are characters (`char`) or words, punctuation and whitespace runs (`word`).",
    "data.sampling": "Minibatches: `random` (fresh state every batch) or `sequential` (contiguous streams, "
                     "state carried and detached).",
    "data.state_reset": "Sequential only: the share of rows restarted from the initial state at each batch, "
                        "each reading 1 to 4 random tokens before its text (see [derailing](../derailing.md)).",
    "data.batch_size": "Rows per optimizer step, global across processes (divisible by their number).",
    "data.num_steps": "Characters per row: the truncated-BPTT length, or a `gpt`'s training window "
                      "(at most `model.context`).",
    "data.val_fraction": "The last share of the text kept for validation (split at a fixed position).",
    "data.min_freq": "Tokens seen fewer times in training become `<unk>`.",
    "data.errors": "Invalid UTF-8: `strict` stops at the first bad byte, `replace` reads it as U+FFFD.",
    "model.name": "The model family; it decides which of the keys below apply (another family's key is "
                  "an error).",
    "model.hidden_size": "Width of the hidden state (recurrent) or hidden layer (`mlp`).",
    "model.num_layers": "Stacked layers (`rnn_scratch`: 1) or transformer blocks (`gpt`).",
    "model.dropout": "Dropout probability (between recurrent layers; on the `mlp`'s hidden layer; in "
                     "`gpt`'s blocks).",
    "model.embedding_dim": "Embedding width; null means one-hot input, as in the book. For `gpt`, the "
                           "model's width.",
    "model.tie_weights": "Share the decoder's weights with the embedding (needs equal widths).",
    "model.context": "`mlp`: τ, the tokens it sees; `gpt`: the block size (positions it attends over).",
    "model.order": "The n-gram order n: each token predicted from the n − 1 before it.",
    "model.smoothing": "`add_k` (pseudo-count `k`) or interpolated modified `kneser_ney`.",
    "model.k": "The add-k pseudo-count.",
    "model.num_heads": "Attention heads per block (`embedding_dim` must divide by it).",
    "model.positions": "`learned` position embeddings or `rotary` ones.",
    "model.stride": "How far the window slides when generation or evaluation passes `context`; null means "
                    "context − context // 4 (three quarters of the window).",
    "optim.name": "The optimizer: `sgd`, `adam` or `adamw`.",
    "optim.lr": "Peak learning rate.",
    "optim.weight_decay": "Weight decay (decoupled for `adamw`).",
    "optim.momentum": "SGD momentum.",
    "optim.grad_clip": "θ of g ← min(1, θ/‖g‖)·g; 0 disables clipping.",
    "optim.schedule": "`constant`, `cosine` (annealed to `min_lr` by the binding step or time limit) or "
                      "`step`.",
    "optim.warmup_steps": "Linear warm-up steps before the schedule.",
    "optim.min_lr": "Where a cosine schedule ends.",
    "optim.step_size": "`step` schedule: steps between decays.",
    "optim.gamma": "`step` schedule: the factor of each decay.",
    "train.epochs": "Stop after this many passes over the training split.",
    "train.max_steps": "Stop after this many optimizer steps (a cosine schedule's horizon).",
    "train.max_time": "Seconds of training steps, counted from the first step: its warm-up, a `torch.compile` "
                      "compilation and the first batch count; preparing data, evaluations, checkpoints and the "
                      "final score do not. Whichever limit comes first ends the run: a cosine schedule anneals "
                      "to `min_lr` by the limit that binds, and the progress bar counts towards it.",
    "train.eval_every": "Steps between validation passes (and checkpoints).",
    "train.eval_tokens": "Score only the first N validation tokens during training (shown as ≈); best.pt "
                         "is scored on the whole split at the end. Null: the whole split every time.",
    "train.log_every": "Steps between rows of metrics.jsonl and progress updates.",
    "train.seed": "Seed of every random stream: the same seed gives the same losses on a CPU.",
    "train.device": "`auto` (cuda, then mps, then cpu), `cpu`, `cuda`, `cuda:N` or `mps`.",
    "train.compile": "Wrap the model in `torch.compile`.",
    "train.precision": "`auto` (bf16 autocast where the device multiplies bf16 natively, else fp32), "
                       "`bf16` or `fp32`.",
    "train.amp": "Older switch: false means fp32 when `precision` is `auto`.",
    "train.tensorboard": "Also write the metrics as TensorBoard scalars into `RUN/tensorboard/` (needs "
                         "`charlm[tensorboard]`).",
    "train.out": "The run folder; null means `runs/<config name>`.",
    "generate.prefix": "Text that warms the state before generating.",
    "generate.length": "Tokens to generate.",
    "generate.strategy": "The next-token strategy.",
    "generate.temperature": "Logits are divided by it; 0 is greedy.",
    "generate.top_k": "`top_k`: sample among the k likeliest tokens.",
    "generate.top_p": "`top_p`: sample among the fewest tokens whose probability sums to p.",
    "generate.num_samples": "Continuations sampled as one batch.",
    "generate.seed": "Seed of the sampler; null draws one.",
    "generate.stop": "Stop a sample when it produces this text.",
    "generate.unknown": "A prefix character the vocabulary lacks: `error`, or `map` it to `<unk>`.",
    "generate.precision": "Weights of the recurrent generation step: `fp32`, or the opt-in `bf16` and "
                          "`int8`.",
}

INTRO = """\
# Every config key

<!-- Generated by docs/_ext/config_keys.py from charlm.config and charlm.config.model_options at every
docs build; edit the descriptions there, not this file. -->

Every key a config takes, with its type, default and allowed range, read from the code that checks
configs (`charlm.config`, `charlm.config.model_options`, `charlm.config.schema`). Set any of them in the YAML
file or with `--set section.key=value`; an unknown key, a wrong type or an out-of-range value is
one line naming the key. How configs are read: [configs](index.md).
"""


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if value == "" or value != value.strip() else value
    return repr(value)


def _range(meta) -> str:
    if not meta or "lo" not in meta:
        return ""
    lo, hi = meta["lo"], meta["hi"]
    left = "(" if meta["lo_open"] else "["
    right = ")" if meta["hi_open"] else "]"
    return f"{left}{lo if lo is not None else '−∞'}, {hi if hi is not None else '∞'}{right}"


def _type(tp, choices: dict[str, list[str]], key: str) -> str:
    from charlm.config.schema import type_name

    if key in choices:
        return " \\| ".join(f"`{name}`" for name in choices[key])
    text = type_name(tp)
    return text.replace("|", "\\|").replace("'", "`")


def _rows(cls, section: str, choices: dict[str, list[str]], skip=("name",)) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | range | what |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if section == "model" and f.name in skip:
            continue
        key = f"{section}.{f.name}"
        if key not in DESCRIPTIONS:
            raise KeyError(f"config key {key} has no description in docs/_ext/config_keys.py")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"| `{key}` | {_type(hints[f.name], choices, key)} | `{_yaml(default)}` | "
                    f"{_range(dict(f.metadata))} | {DESCRIPTIONS[key]} |")
    return rows


def render() -> str:
    from charlm.config import SECTIONS, valid_keys
    from charlm.data.batches import available_samplings
    from charlm.config.model_options import FAMILIES, options_class
    from charlm.generation.sampling import available_strategies

    unknown = sorted(set(DESCRIPTIONS) - set(valid_keys()))
    if unknown:
        raise KeyError(f"docs/_ext/config_keys.py describes keys the config no longer has: {unknown}")
    choices = {"data.sampling": available_samplings(), "generate.strategy": available_strategies(),
               "model.name": FAMILIES.names()}
    out = [INTRO]
    for section, cls in SECTIONS.items():
        out.append(f"## `{section}`\n")
        if cls is not None:
            out += _rows(cls, section, choices) + [""]
            continue
        out.append(f"`model.name` picks the family: {', '.join(f'`{n}`' for n in FAMILIES.names())}. "
                   f"{DESCRIPTIONS['model.name']}\n")
        families: dict[type, list[str]] = {}
        for name in FAMILIES.names():
            families.setdefault(options_class(name), []).append(name)
        for cls_, names in families.items():
            doc = (cls_.__doc__ or "").strip().splitlines()[0]
            out.append(f"### {', '.join(f'`{n}`' for n in names)}\n\n{doc}\n")
            out += _rows(cls_, section, choices) + [""]
    return "\n".join(out).rstrip() + "\n"


def write_page(*_args) -> None:
    """Write the page only when it changed, so Sphinx rebuilds nothing else."""
    text = render()
    if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != text:
        # A unique temp name and a rename, as everywhere in charlm: a reader never sees half a page.
        tmp = PAGE.with_name(f".{PAGE.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, PAGE)


def setup(app):
    app.connect("builder-inited", write_page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    print(render(), end="")
