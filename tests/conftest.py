import os
from pathlib import Path

import pytest

# The test models are tiny: one thread per process is faster than two and, on a busy 2-core
# machine, far steadier (OpenMP threads spin-wait on each other). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The corpora beside the project (../shared/data); tests never download."""
    assert (SHARED_DATA / "timemachine.txt").is_file(), f"missing {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_text(shared_data) -> str:
    return (shared_data / "timemachine.txt").read_text(encoding="utf-8")[:5000]
