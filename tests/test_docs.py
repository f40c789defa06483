"""Every code block of README.md and of every page under docs/ runs, so the documentation cannot rot.

Each page's blocks run top to bottom in a scratch folder of its own, as a reader following that
page would: `configs/` is the project's, `corpus.txt`, `mytext.txt`, `timemachine` and
`tinyshakespeare` are small texts made here (a file in the working folder wins over a built-in
name), and training is shrunk to a tiny model (batch, sequence length, width capped; step counts
kept), so every page runs in seconds. Nothing is read from outside the project.

- ```python blocks run as scripts; ```yaml blocks must load as a config.
- Shell blocks (no language, `bash`, `sh`, `console`): with `$ ` prompts, each prompted line is a
  command and the lines under it its shown output; without, every line is a command. `charlm`
  commands run in-process. A command shown with an `error: ...` line must fail with exactly that
  line and exit 2; any other must exit 0.
- A block that cannot run here (a GPU, torchrun, minutes of benchmarks, a synopsis with
  placeholders, a command that needs a run made on another page) is preceded by
  `<!-- docs-test: skip REASON -->` (`readme-test` is read as the same marker).
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shlex
from pathlib import Path

import pytest
import yaml

from cli_helpers import ENV, runner

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Every Markdown page of the site; _build and the like (leading underscore) are not pages.
PAGES = [README] + sorted(p for p in (ROOT / "docs").rglob("*.md")
                          if not any(part.startswith("_") for part in p.relative_to(ROOT / "docs").parts))
SKIP = re.compile(r"<!--\s*(?:docs|readme)-test:\s*skip\b\s*(.*?)\s*-->")
SHELL = {"", "bash", "sh", "shell", "console"}
# The README's configs at a size that trains 1000 steps in about a second.
SHRINK = {("data", "batch_size"): 4, ("data", "num_steps"): 8, ("model", "hidden_size"): 16,
          ("model", "embedding_dim"): 8}


@dataclasses.dataclass
class Block:
    page: str  # the file, relative to the repository
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    skip: str | None  # the reason, when marked


def readme_blocks(text: str, page: str = "README.md") -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^(```+)\s*([\w+-]*|\{[\w-]+\}.*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != fence.group(1):
            body.append(lines[i])
            i += 1
        if fence.group(2).startswith("{"):  # a MyST directive (toctree, eval-rst, include): Sphinx's, not code
            i += 1
            continue
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = SKIP.search(previous)
        blocks.append(Block(page, start + 1, fence.group(2).lower(), "\n".join(body), marker and marker.group(1)))
        i += 1
    return blocks


def shell_commands(text: str) -> list[tuple[str, list[str]]]:
    """(command, shown output lines) pairs; a trailing backslash continues a command."""
    lines = text.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)
    commands: list[tuple[str, list[str]]] = []
    pending = None
    for line in lines:
        if pending is not None:
            pending += " " + line.strip()
        elif prompted and not line.startswith("$ "):
            if commands:
                commands[-1][1].append(line)
            continue
        else:
            pending = line[2:] if prompted else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        if pending.strip() and not pending.lstrip().startswith("#"):
            commands.append((pending.strip(), []))
        pending = None
    return commands


def words(n: int, seed: int) -> str:
    """Made-up prose over a fixed word list: every letter a README prefix needs, nothing read."""
    vocab = ("the time traveller smiled and said that a machine may travel in time as we move in "
             "space it was late when he came into the room with his hands full of strange flowers "
             "of an odd white colour and we sat by the fire asking him where he had been").split()
    rng = random.Random(seed)
    out, size = [], 0
    while size < n:
        sentence = " ".join(rng.choice(vocab) for _ in range(rng.randint(5, 14))).capitalize() + ". "
        out.append(sentence)
        size += len(sentence)
    return "".join(out)


def shakespeare(n: int) -> str:
    speakers = ("ROMEO:", "JULIET:", "BUCKINGHAM:")
    return "".join(f"{speakers[i % 3]}\n{words(160, i)}\n\n" for i in range(n // 170 + 1))


def shrunk(cfg):
    for (section, key), cap in SHRINK.items():
        value = getattr(getattr(cfg, section), key, None)
        if value is not None and value > cap:
            cfg = cfg.replace(section, **{key: cap})
    return cfg


def run_charlm(args: list[str], env: dict[str, str]):
    from charlm.cli import app

    return runner.invoke(app, args, env={**ENV, **env})


def run_shell(block: Block) -> None:
    for command, shown in shell_commands(block.text):
        words_ = shlex.split(command, comments=True)
        env = {}
        while words_ and re.match(r"^[A-Za-z_]\w*=", words_[0]):
            key, value = words_.pop(0).split("=", 1)
            env[key] = value
        if words_[:3] == ["python", "-m", "charlm"]:
            words_ = ["charlm", *words_[3:]]
        assert words_ and words_[0] == "charlm", (
            f"{block.page} line {block.line}: `{command}` is not a charlm command; run it here or mark the "
            "block with <!-- docs-test: skip REASON -->")
        result = run_charlm(words_[1:], env)
        errors = [line for line in shown if line.startswith("error:")]
        detail = f"{block.page} line {block.line}: `{command}` → exit {result.exit_code}\n{result.output}"
        if errors:
            assert result.exit_code == 2, detail
            assert [line for line in result.stderr.splitlines() if line.strip()] == errors, detail
        else:
            assert result.exit_code == 0 and result.exception is None, detail


def run_python(block: Block) -> None:
    exec(compile(block.text, f"{block.page}:{block.line}", "exec"), {"__name__": "__main__"})


def run_yaml(block: Block) -> None:
    from charlm.config import build_config

    build_config(yaml.safe_load(block.text))


def page_name(path: Path) -> str:
    return str(path.relative_to(ROOT))


BLOCKS = {page_name(p): readme_blocks(p.read_text(encoding="utf-8"), page_name(p)) for p in PAGES}
ALL_BLOCKS = [b for blocks in BLOCKS.values() for b in blocks]
README_BLOCKS = BLOCKS["README.md"]


def run_page(blocks: list[Block], work: Path) -> dict[int, str | None]:
    """Run a page's blocks in order in `work`; map each block's line to its failure (or None)."""
    import charlm.train

    (work / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    (work / "corpus.txt").write_text(words(6000, 1), encoding="utf-8")
    (work / "mytext.txt").write_text(words(6000, 3), encoding="utf-8")
    (work / "timemachine").write_text(words(6000, 2), encoding="utf-8")
    (work / "tinyshakespeare").write_text(shakespeare(6000), encoding="utf-8")
    real_train = charlm.train.train
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    outcomes: dict[int, str | None] = {}
    try:
        charlm.train.train = lambda cfg, *args, **kwargs: real_train(shrunk(cfg), *args, **kwargs)
        os.environ.update(ENV, CHARLM_DATA_HOME=str(work / "cache"))  # never the user's cache or ../shared
        os.chdir(work)
        for block in blocks:
            if block.skip is not None:
                continue
            try:
                if block.lang == "python":
                    run_python(block)
                elif block.lang in ("yaml", "yml"):
                    run_yaml(block)
                elif block.lang in SHELL:
                    run_shell(block)
                else:
                    raise AssertionError(f"{block.page} line {block.line}: no runner for ```{block.lang} blocks; "
                                         "mark it with <!-- docs-test: skip REASON -->")
                outcomes[block.line] = None
            except (AssertionError, Exception) as exc:  # noqa: BLE001 - reported per block below
                outcomes[block.line] = f"{type(exc).__name__}: {exc}"
    finally:
        charlm.train.train = real_train
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return outcomes


@pytest.fixture(scope="module")
def page_outcomes(tmp_path_factory):
    """Each page run once, in its own scratch folder, the first time one of its blocks is asked for."""
    done: dict[str, dict[int, str | None]] = {}

    def outcome(block: Block) -> str | None:
        if block.page not in done:
            work = tmp_path_factory.mktemp(re.sub(r"\W", "_", block.page))
            done[block.page] = run_page(BLOCKS[block.page], work)
        return done[block.page][block.line]

    return outcome


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.skip is None], ids=lambda b: f"{b.page}:{b.line}")
def test_doc_block_runs(block, page_outcomes):
    failure = page_outcomes(block)
    assert failure is None, failure


def test_skip_markers_give_a_reason():
    unexplained = [f"{b.page}:{b.line}" for b in ALL_BLOCKS if b.skip is not None and not b.skip]
    assert not unexplained, f"blocks marked skip without a reason: {unexplained}"


def test_every_docs_page_is_run_and_the_readme_runs_most_of_its_blocks():
    assert {"README.md", "docs/getting-started.md", "docs/commands/train.md", "docs/api.md"} <= set(BLOCKS)
    runnable = [b for b in README_BLOCKS if b.skip is None]
    assert len(runnable) >= 3, [b.line for b in README_BLOCKS]


def test_the_harness_runs_prompted_commands_and_checks_shown_errors():
    block = Block("README.md", 1, "", "$ charlm train --config nowhere.yaml\nerror: something else", None)
    with pytest.raises(AssertionError, match="nowhere.yaml"):
        run_shell(block)
    assert shell_commands("a \\\n  b # note\n# comment\nc") == [("a b # note", []), ("c", [])]
    assert shell_commands("$ x\nout 1\nout 2\n$ y") == [("x", ["out 1", "out 2"]), ("y", [])]


def test_the_module_map_has_a_line_for_every_module():
    src = ROOT / "src"
    modules = {str(f.relative_to(src)) for f in src.rglob("*.py") if f.name != "__main__.py"}
    architecture = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    mapped = set(re.findall(r"^\| `(charlm/[\w/]+\.py)` \|", architecture, re.M))
    assert modules and mapped == modules, (sorted(modules - mapped), sorted(mapped - modules))


def test_the_first_example_trains_on_the_readers_own_file():
    first = next(block for block in README_BLOCKS if block.lang in SHELL and block.text.lstrip().startswith("charlm"))
    commands = [shlex.split(command, comments=True) for command, _ in shell_commands(first.text)]
    assert commands[0][:2] == ["charlm", "train"] and commands[0][2] == "mytext.txt", commands
    assert commands[1][:2] == ["charlm", "generate"], commands


def test_the_readme_says_how_to_get_charlm_on_the_path():
    setup = README.read_text(encoding="utf-8").split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert "./scripts/setup.sh" in setup and "source .venv/bin/activate" in setup and ".venv/bin/charlm" in setup


def test_python_examples_name_shipped_configs_which_work_outside_the_clone():
    for block in ALL_BLOCKS:
        if block.lang == "python":
            assert not re.search(r"load_config\(\s*[\"']configs/", block.text), f"{block.page} line {block.line}"


def load_config_keys():
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_keys", ROOT / "docs" / "_ext" / "config_keys.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_config_keys_page_lists_every_key_with_its_default_and_range():
    from charlm.config import valid_keys

    page = load_config_keys().render()
    listed = set(re.findall(r"^\| `([\w.]+)` \|", page, re.M))
    assert listed == set(valid_keys()) - {"model.name"}, sorted(set(valid_keys()) ^ listed)  # name: in the prose
    assert "`model.name` picks the family" in page
    assert "| `data.batch_size` | an integer | `32` | [1, ∞] |" in page
    assert "| `model.dropout` | a number | `0.0` | [0.0, 1.0) |" in page
    assert "### `gru`, `lstm`, `rnn`" in page and "### `ngram`" in page


def test_a_config_key_without_a_description_stops_the_docs_build(monkeypatch):
    config_keys = load_config_keys()
    monkeypatch.delitem(config_keys.DESCRIPTIONS, "train.max_time")
    with pytest.raises(KeyError, match="train.max_time"):
        config_keys.render()
    monkeypatch.setitem(config_keys.DESCRIPTIONS, "train.max_time", "back")
    monkeypatch.setitem(config_keys.DESCRIPTIONS, "train.gone", "a key the config no longer has")
    with pytest.raises(KeyError, match="train.gone"):
        config_keys.render()


def test_the_readme_is_a_front_door_and_no_page_names_an_issue_number():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"\bissues?\s*#?\d|#\d+\b", text, re.I), page_name(page)
