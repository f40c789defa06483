"""The package layout: old module paths still import, and imports between the parts point one way.

The parts, lowest first; a module may import from its own part and from the parts below it:

    foundation   charlm/__init__ (__version__), errors, registry, safe_write
    config       RunConfig and its YAML, the model families' options, the shipped configs
    data         text → vocabulary → encoded corpus on disk → batches
    device       the device, threads and signals (runtime); the float format (precision)
    models       the registry and one file per family; the carried-state contract
    checkpoint   what a run saves, and opening one for use (the contract between training and use)
    evaluation   scoring on ids: exact passes, side-by-side segments, the derailment check
    generation   next-token strategies, the recurrent fast step, the decode loop
    training     the loop, schedule, run folder, resume, ranks, results
    train | inference   the library's front doors (neither imports the other)
    planning     plans for a time budget, device measurements, the search
    serve        the local web page
    cli          the Typer app and its Rich output
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from charlm._moved import MOVED

SRC = Path(__file__).resolve().parents[1] / "src" / "charlm"
TESTS = Path(__file__).resolve().parent
SCRIPTS = TESTS.parent / "scripts"
DOCS = TESTS.parent / "docs"

ORDER = [("foundation",), ("config",), ("data",), ("device",), ("models",), ("checkpoint",), ("evaluation",),
         ("generation",), ("training",), ("train", "inference"), ("planning",), ("serve",), ("cli",)]
RANK = {part: rank for rank, parts in enumerate(ORDER) for part in parts}
FOUNDATION = {"charlm", "charlm._moved", "charlm.errors", "charlm.registry", "charlm.safe_write"}


def part_of(module: str) -> str:
    """`charlm.training.loop` → training; the top-level modules are parts of their own."""
    if module in FOUNDATION:
        return "foundation"
    if module == "charlm.__main__":
        return "cli"
    return module.split(".")[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def charlm_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """Every charlm module a file imports, at any depth (imports inside functions count too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "charlm"]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: relative import; charlm imports by absolute path"
            if node.module == "charlm":  # `from charlm import x`: a submodule, or a name of the package
                found += [(node.lineno, f"charlm.{a.name}" if (SRC / a.name).is_dir()
                           or (SRC / f"{a.name}.py").is_file() or f"charlm.{a.name}" in MOVED else "charlm")
                          for a in node.names]
            elif node.module and node.module.split(".")[0] == "charlm":
                found.append((node.lineno, node.module))
    return found


def sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if not p.is_symlink())


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_an_old_module_path_is_the_moved_module_itself(old, new):
    assert not (SRC / (old.split(".", 1)[1].replace(".", "/") + ".py")).exists(), f"{old}: a shim file is back"
    assert (SRC / (new.split(".", 1)[1].replace(".", "/") + ".py")).is_file(), f"{new}: no such module"
    module = importlib.import_module(old)
    assert module is importlib.import_module(new) and sys.modules[old] is sys.modules[new]
    assert module.__name__ == new and module.__spec__.name == new  # it still says where it lives


def test_old_paths_answer_every_import_form_and_patch_the_new_module(monkeypatch):
    from charlm.batched_eval import score_batched
    from charlm.evaluation import batched_eval

    assert score_batched is batched_eval.score_batched
    from charlm import loop  # `from charlm import <old module>`

    import charlm.training.loop
    assert loop is charlm.training.loop
    monkeypatch.setattr("charlm.loop.Trainer", "patched")
    assert charlm.training.loop.Trainer == "patched"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("charlm.no_such_module")


def test_the_documented_api_imports_from_its_documented_paths():
    from charlm.config import RunConfig, build_config, load_config  # noqa: F401  (a package now)
    from charlm.data.corpus import load_corpus, preprocess  # noqa: F401
    from charlm.derail import check_checkpoint  # noqa: F401
    from charlm.evaluate import evaluate_ids  # noqa: F401
    from charlm.generate import generate  # noqa: F401
    from charlm.inference import evaluate_checkpoint, generate_from_checkpoint, score_checkpoint  # noqa: F401
    from charlm.models import build_model, register_model  # noqa: F401
    from charlm.planner import Rules  # noqa: F401
    from charlm.precision import exact_fp32, run_rnn  # noqa: F401
    from charlm.sampling import get_strategy  # noqa: F401
    from charlm.train import train  # noqa: F401


def test_importing_charlm_and_its_old_torch_free_paths_does_not_import_torch():
    code = ("import sys\nimport charlm\nassert 'torch' not in sys.modules\n"
            "from charlm.planner import Budget\nfrom charlm.config import build_config\n"
            "import charlm.shipped, charlm.safe_yaml\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["False"], done.stderr


def test_imports_point_one_way_between_the_parts():
    wrong = []
    for path in sources():
        here = module_name(path)
        for line, target in charlm_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if target in MOVED:
                wrong.append(f"{path.relative_to(SRC)}:{line} imports {target} by its old path ({MOVED[target]})")
                continue
            mine, theirs = part_of(here), part_of(target)
            if mine != theirs and RANK[theirs] >= RANK[mine]:
                wrong.append(f"{path.relative_to(SRC)}:{line} ({mine}) imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_every_module_belongs_to_a_part_in_the_order():
    unplaced = {module_name(p) for p in sources() if part_of(module_name(p)) not in RANK}
    assert not unplaced


def test_the_layering_check_sees_an_upward_import():
    # The positive control: an evaluation module importing the training part is caught.
    tree = ast.parse("def f():\n    from charlm.training.loop import Trainer\n")
    ((_, target),) = charlm_imports(tree)
    assert RANK[part_of(target)] > RANK[part_of("charlm.evaluation.derail")]


def test_tests_scripts_and_the_docs_extension_use_the_new_paths():
    old = re.compile(r"\b(" + "|".join(re.escape(name) for name in MOVED) + r")\b(?![\w/])")
    files = [p for p in [*TESTS.rglob("*.py"), *SCRIPTS.glob("*.py"), *DOCS.rglob("*.py"), *sources()]
             if p.name not in ("test_layout.py", "_moved.py")]  # the two that name the old paths on purpose
    hits = [f"{p}:{n}: {line.strip()}" for p in files
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if old.search(line)]
    assert not hits, "\n".join(hits)


def test_test_folders_mirror_the_subpackages():
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders and all((SRC / name / "__init__.py").is_file() for name in folders), folders
    # No __init__.py in the test folders: pytest imports each file by its base name, so they must differ.
    names = [p.name for p in TESTS.rglob("test_*.py")]
    assert len(names) == len(set(names))
