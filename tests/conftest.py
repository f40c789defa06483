from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The corpora beside the project (../shared/data); tests never download."""
    assert (SHARED_DATA / "timemachine.txt").is_file(), f"missing {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_text(shared_data) -> str:
    return (shared_data / "timemachine.txt").read_text(encoding="utf-8")[:5000]
