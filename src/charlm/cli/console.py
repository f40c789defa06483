"""The CLI's two consoles and its one way to fail: a red line on stderr and an exit code."""

from __future__ import annotations

import functools
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from charlm.errors import CharLMError

# Piped or redirected output is not wrapped at 80 columns: generated text and figures stay whole lines.
out = Console(soft_wrap=not sys.stdout.isatty())
err = Console(stderr=True, soft_wrap=not sys.stderr.isatty())


def fail(message: str, code: int = 2) -> typer.Exit:
    # User text (paths, keys) is shown as typed: no Rich markup, and always on one line.
    from charlm.cli.report import shorten

    message = escape(shorten(message).replace("\r", "\\r").replace("\n", "\\n"))
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def friendly(command):
    """Every CharLMError becomes one red line and its exit code; no traceback for user mistakes."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CharLMError as exc:
            if os.environ.get("CHARLM_WORKER_PIDS") and _reported_to_launcher(exc):
                raise typer.Exit(exc.exit_code) from None
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except BrokenPipeError:  # `charlm generate | head -1`: the reader left, nothing to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except OSError as exc:  # the machine's problem (disk full, permissions), not a bug: one line
            where = f"{exc.filename}: " if exc.filename else ""
            raise fail(f"{where}{exc.strerror or exc}") from None

    return wrapper


def _reported_to_launcher(exc: CharLMError) -> bool:
    """A worker of `train --nproc` leaves its error to the launcher, which prints it once."""
    from charlm.training.distributed import report_to_launcher

    return report_to_launcher(str(exc), exc.exit_code)
