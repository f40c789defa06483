"""Name → object registries (models, minibatch strategies, next-token strategies)."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from charlm.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Filled by decorators at import time; an unknown name is a ConfigError suggesting the closest."""

    def __init__(self, what: str):
        self.what = what  # "model", "sampling strategy": how error messages name an entry
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str, key: str | None = None) -> T:
        """The entry called `name`; `key` (e.g. "data.sampling") prefixes the error for configs."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = f"{key}: " if key else ""
            raise ConfigError(f"{where}unknown {self.what} {name!r}{hint} "
                              f"(available: {', '.join(self.names())})") from None
