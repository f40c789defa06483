"""`charlm configs` and `charlm configs copy`: the shipped configs, listed or copied out to edit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from charlm.cli import app
from charlm.cli.console import friendly, out

configs_app = typer.Typer(help="List the shipped configs, or copy one out to edit.", no_args_is_help=False,
                          context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(configs_app, name="configs")


@configs_app.callback(invoke_without_command=True,
                      epilog="Examples: charlm configs\n\ncharlm configs copy lstm my_lstm.yaml")
@friendly
def configs(ctx: typer.Context) -> None:
    """List the configs shipped with charlm; `charlm train --config NAME` runs one."""
    if ctx.invoked_subcommand is not None:
        return
    from charlm.cli.report import print_configs
    from charlm.config.shipped import shipped_configs

    print_configs(out, shipped_configs().values())


@configs_app.command("copy", epilog="Example: charlm configs copy rnn my_rnn.yaml && charlm train -c my_rnn.yaml")
@friendly
def configs_copy(
    name: str = typer.Argument(..., help="A shipped config's name (see `charlm configs`)."),
    dest: Optional[Path] = typer.Argument(None, help="File or folder to write (default ./NAME.yaml)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a shipped config to a file you can edit."""
    from charlm.config.shipped import copy_config

    out.print(f"wrote {escape(str(copy_config(name, dest, force=force)))}", highlight=False)
