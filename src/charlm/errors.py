"""Typed errors: each one becomes a single red line and exit code 2 in the CLI."""


class CharLMError(Exception):
    """A problem the user can fix; the message is the whole story."""

    exit_code = 2


class ConfigError(CharLMError):
    """A config file or --set override is invalid."""


class DataError(CharLMError):
    """A corpus, text file or preprocessed folder cannot be used."""


class CheckpointError(CharLMError):
    """A checkpoint is missing, corrupt, unsafe or of another format."""
