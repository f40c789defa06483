"""charlm: train, evaluate and sample character-level language models."""

__version__ = "0.1.0"

from charlm import _moved  # noqa: E402  (after __version__: the modules it maps import it)

_moved.install()
