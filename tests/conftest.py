import os
from pathlib import Path

import pytest

# The test models are tiny: one thread per process is faster than two and, on a busy 2-core
# machine, far steadier (OpenMP threads spin-wait on each other). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# cuBLAS is deterministic on one stream only with a fixed workspace; tests/test_cuda.py's exact
# resume relies on it. Read when CUDA starts, so it is set before torch is imported; harmless on a CPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
# The suite stands on the repository alone: a user's own corpora folder must not leak in.
os.environ.pop("CHARLM_DATA_HOME", None)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The corpora shipped inside the package (timemachine.txt, tinyshakespeare.txt)."""
    from charlm.data.text import builtin_path

    return builtin_path("timemachine").parent


@pytest.fixture(scope="session")
def tiny_text(corpus_dir) -> str:
    return (corpus_dir / "timemachine.txt").read_text(encoding="utf-8")[:5000]
