"""The modules that moved into subpackages, under their old names: `import charlm.loop` still works.

A finder on sys.meta_path answers each old dotted name with the module at its new path, imported
lazily on first use: the same module object, so monkeypatching the old path patches the new one.
No shim files; only the standard library is imported here, so `import charlm` stays cheap.
"""

from __future__ import annotations

import importlib
from importlib.machinery import ModuleSpec
import sys

# Old module path → new module path. Code inside charlm imports the new paths only.
MOVED = {
    "charlm.model_options": "charlm.config.model_options",
    "charlm.schema": "charlm.config.schema",
    "charlm.safe_yaml": "charlm.config.safe_yaml",
    "charlm.shipped": "charlm.config.shipped",
    "charlm.runtime": "charlm.device.runtime",
    "charlm.precision": "charlm.device.precision",
    "charlm.evaluate": "charlm.evaluation.evaluate",
    "charlm.batched_eval": "charlm.evaluation.batched_eval",
    "charlm.derail": "charlm.evaluation.derail",
    "charlm.generate": "charlm.generation.generate",
    "charlm.fastgen": "charlm.generation.fastgen",
    "charlm.sampling": "charlm.generation.sampling",
    "charlm.loop": "charlm.training.loop",
    "charlm.rundir": "charlm.training.rundir",
    "charlm.resume": "charlm.training.resume",
    "charlm.schedule": "charlm.training.schedule",
    "charlm.result": "charlm.training.result",
    "charlm.tensorboard": "charlm.training.tensorboard",
    "charlm.plot": "charlm.training.plot",
    "charlm.run_manifest": "charlm.training.run_manifest",
    "charlm.distributed": "charlm.training.distributed",
    "charlm.checkpoint_checks": "charlm.training.checkpoint_checks",
    "charlm.planner": "charlm.planning.planner",
    "charlm.search_space": "charlm.planning.search_space",
    "charlm.calibrate": "charlm.planning.calibrate",
    "charlm.tune": "charlm.planning.tune",
    "charlm.cli_console": "charlm.cli.console",
    "charlm.report": "charlm.cli.report",
}


class _AliasLoader:
    """Loads an old name as the module at its new path (imported there once, under its own name)."""

    def __init__(self, target: str):
        self.target = target
        self.spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # The import system has just stamped the old name's spec on the module: give it back its
        # own, so the module still says where it lives (reload, pickling and tracebacks read it).
        module.__spec__ = self.spec


class MovedFinder:
    """A sys.meta_path finder that knows only the names in MOVED."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in MOVED:
            return None
        return ModuleSpec(fullname, _AliasLoader(MOVED[fullname]))

    def invalidate_caches(self) -> None:
        pass


def install() -> None:
    """Put the finder first on sys.meta_path, once (so a stale old file never shadows the new module)."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())
