"""charlm: train, evaluate and sample character-level language models."""

__version__ = "0.1.0"
