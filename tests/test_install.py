"""The wheel route: `pip install charlm-<version>.whl`, then train from a shipped config, outside the repository."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args, cwd, env=None, timeout=300):
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv outside the repository holding only the built wheel; torch and the other
    dependencies are borrowed from the test environment (a .pth line) so nothing is downloaded twice."""
    root = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", REPO, cwd=root)
    wheels = sorted((root / "dist").glob("charlm-*.whl"))
    assert len(wheels) == 1, wheels
    run(sys.executable, "-m", "venv", "--without-pip", root / "venv", cwd=root)
    python = root / "venv" / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).strip())
    # A plain path line: the test venv's own .pth files (the editable charlm) are not processed.
    (site / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheels[0],
        cwd=root)
    empty = root / "work"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CHARLM_DATA_HOME", "PYTHONPATH")}
    env.update(COLUMNS="200", NO_COLOR="1")
    return root / "venv" / "bin", empty, env, wheels[0]


def test_the_wheel_carries_the_corpora_and_every_config(installed):
    import zipfile

    names = set(zipfile.ZipFile(installed[3]).namelist())
    assert {"charlm/corpora/timemachine.txt", "charlm/corpora/tinyshakespeare.txt",
            "charlm/corpora/sources.json"} <= names
    assert {f"charlm/configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")} <= names


def test_an_installed_wheel_trains_generates_and_evaluates_from_an_empty_folder(installed):
    bin_dir, work, env, _ = installed
    where = run(bin_dir / "python", "-c", "import charlm; print(charlm.__file__)", cwd=work, env=env)
    assert str(bin_dir.parent) in where and str(REPO) not in where  # the wheel, not the clone
    assert "tiny" in run(bin_dir / "charlm", "configs", cwd=work, env=env)
    run(bin_dir / "charlm", "train", "--config", "tiny", "--quiet", cwd=work, env=env)
    assert (work / "runs" / "tiny" / "best.pt").is_file()
    text = run(bin_dir / "charlm", "generate", "--length", "30", "--seed", "3", cwd=work, env=env)
    assert text.startswith("time") and len(text.strip()) == len("time") + 30
    scores = json.loads(run(bin_dir / "charlm", "evaluate", "--json", cwd=work, env=env))
    assert scores["tokens"] > 10_000 and 1 < scores["perplexity"] < 28
