"""The `charlm` command line: parses, calls the library, prints, sets exit codes. Nothing else.

The app and its root options live here; each command group in its own module registers on `app`:
data_commands (preprocess), train_commands (train, plan, plot), checkpoint_commands (evaluate,
generate, score, starts, serve), config_commands (configs). Commands import the library inside
their bodies, so `--help` and config errors answer before torch is imported.
"""

from __future__ import annotations

import typer

from charlm import __version__
from charlm.cli.console import out

app = typer.Typer(
    name="charlm",
    help="Train, evaluate and sample character-level language models.\n\n"
         "Example: charlm train my_text.txt --config rnn && charlm generate --prefix 'The '",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"charlm {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    """Train, evaluate and sample character-level language models."""


def main() -> None:
    app()


# Imported last so their @app.command decorators find `app` above; the order is --help's order.
from charlm.cli import data_commands, train_commands, checkpoint_commands, config_commands  # noqa: E402, F401, I001
