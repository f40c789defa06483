"""`train.tensorboard: true`: the rows of metrics.jsonl mirrored as TensorBoard scalars.

metrics.jsonl stays the source of truth; this is a view of it for people who live in TensorBoard.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from charlm.errors import ConfigError


def require_tensorboard() -> None:
    """One line before anything is written when the optional package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("train.tensorboard needs the tensorboard package: "
                          "pip install 'charlm[tensorboard]'") from None


class TensorBoardLog:
    """Writes each metrics row's numbers under the same names, at the row's step, into RUN/tensorboard/."""

    def __init__(self, run_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        step = int(row.get("step", 0))
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
