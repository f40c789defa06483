"""Every code block of README.md runs, so the front door cannot rot.

The blocks run top to bottom in one scratch folder, as a reader following the README would:
`configs/` is the project's, `corpus.txt`, `timemachine` and `tinyshakespeare` are small texts
made here (a file in the working folder wins over a built-in name), and training is shrunk to
a tiny model (batch, sequence length, width capped; step counts kept), so the whole README runs
in seconds. Nothing is read from outside the project.

- ```python blocks run as scripts; ```yaml blocks must load as a config.
- Shell blocks (no language, `bash`, `sh`, `console`): with `$ ` prompts, each prompted line is a
  command and the lines under it its shown output; without, every line is a command. `charlm`
  commands run in-process. A command shown with an `error: ...` line must fail with exactly that
  line and exit 2; any other must exit 0.
- A block that cannot run here (a GPU, torchrun, minutes of benchmarks, a synopsis with
  placeholders) is preceded by `<!-- readme-test: skip REASON -->`.
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
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b\s*(.*?)\s*-->")
SHELL = {"", "bash", "sh", "shell", "console"}
# The README's configs at a size that trains 1000 steps in about a second.
SHRINK = {("data", "batch_size"): 4, ("data", "num_steps"): 8, ("model", "hidden_size"): 16,
          ("model", "embedding_dim"): 8}


@dataclasses.dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    skip: str | None  # the reason, when marked


def readme_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^(```+)\s*([\w+-]*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != fence.group(1):
            body.append(lines[i])
            i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = SKIP.search(previous)
        blocks.append(Block(start + 1, fence.group(2).lower(), "\n".join(body), marker and marker.group(1)))
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
            f"README line {block.line}: `{command}` is not a charlm command; run it here or mark the "
            "block with <!-- readme-test: skip REASON -->")
        result = run_charlm(words_[1:], env)
        errors = [line for line in shown if line.startswith("error:")]
        detail = f"README line {block.line}: `{command}` → exit {result.exit_code}\n{result.output}"
        if errors:
            assert result.exit_code == 2, detail
            assert [line for line in result.stderr.splitlines() if line.strip()] == errors, detail
        else:
            assert result.exit_code == 0 and result.exception is None, detail


def run_python(block: Block) -> None:
    exec(compile(block.text, f"README.md:{block.line}", "exec"), {"__name__": "__main__"})


def run_yaml(block: Block) -> None:
    from charlm.config import build_config

    build_config(yaml.safe_load(block.text))


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def readme_outcomes(tmp_path_factory):
    """Run every block in order in one scratch folder; map each block's line to its failure (or None)."""
    import charlm.train

    work = tmp_path_factory.mktemp("readme")
    (work / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    (work / "corpus.txt").write_text(words(6000, 1), encoding="utf-8")
    (work / "timemachine").write_text(words(6000, 2), encoding="utf-8")
    (work / "tinyshakespeare").write_text(shakespeare(6000), encoding="utf-8")
    real_train = charlm.train.train
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    outcomes: dict[int, str | None] = {}
    try:
        charlm.train.train = lambda cfg, *args, **kwargs: real_train(shrunk(cfg), *args, **kwargs)
        os.environ.update(ENV, CHARLM_DATA_HOME=str(work / "cache"))  # never the user's cache or ../shared
        os.chdir(work)
        for block in BLOCKS:
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
                    raise AssertionError(f"README line {block.line}: no runner for ```{block.lang} blocks; "
                                         "mark it with <!-- readme-test: skip REASON -->")
                outcomes[block.line] = None
            except (AssertionError, Exception) as exc:  # noqa: BLE001 - reported per block below
                outcomes[block.line] = f"{type(exc).__name__}: {exc}"
    finally:
        charlm.train.train = real_train
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return outcomes


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.skip is None], ids=lambda b: f"line{b.line}")
def test_readme_block_runs(block, readme_outcomes):
    failure = readme_outcomes[block.line]
    assert failure is None, failure


def test_readme_skip_markers_give_a_reason():
    unexplained = [b.line for b in BLOCKS if b.skip is not None and not b.skip]
    assert not unexplained, f"README blocks marked skip without a reason at lines {unexplained}"


def test_the_harness_runs_prompted_commands_and_checks_shown_errors():
    block = Block(1, "", "$ charlm train --config nowhere.yaml\nerror: something else", None)
    with pytest.raises(AssertionError, match="nowhere.yaml"):
        run_shell(block)
    assert shell_commands("a \\\n  b # note\n# comment\nc") == [("a b # note", []), ("c", [])]
    assert shell_commands("$ x\nout 1\nout 2\n$ y") == [("x", ["out 1", "out 2"]), ("y", [])]


def test_the_module_map_has_a_line_for_every_module():
    src = ROOT / "src"
    modules = {str(f.relative_to(src)) for f in src.rglob("*.py") if f.name != "__main__.py"}
    mapped = set(re.findall(r"^\| `(charlm/[\w/]+\.py)` \|", README.read_text(encoding="utf-8"), re.M))
    assert modules and mapped == modules, (sorted(modules - mapped), sorted(mapped - modules))


def test_the_first_example_trains_on_the_readers_own_file():
    first = next(block for block in BLOCKS if block.lang in SHELL)
    commands = [shlex.split(command, comments=True) for command, _ in shell_commands(first.text)]
    assert commands[0][:2] == ["charlm", "train"] and commands[0][2] == "corpus.txt", commands


def test_the_readme_says_how_to_get_charlm_on_the_path():
    quickstart = README.read_text(encoding="utf-8").split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "source .venv/bin/activate" in quickstart and ".venv/bin/charlm" in quickstart


def test_python_examples_name_shipped_configs_which_work_outside_the_clone():
    for block in BLOCKS:
        if block.lang == "python":
            assert not re.search(r"load_config\(\s*[\"']configs/", block.text), f"README line {block.line}"
