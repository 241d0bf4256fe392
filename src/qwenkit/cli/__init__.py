"""The `qwenkit` command: one module per verb, each registering itself on the shared typer app."""

from __future__ import annotations

import logging
import sys

import typer
from rich.markup import escape
from typer._click import exceptions as click_exceptions  # typer vendors click: click's own classes miss its errors

from qwenkit.cli import bench, eval, export, health, loadtest, models, recommend, run, serve, tune  # noqa: F401  (each module registers its verbs)
from qwenkit.cli.common import app, err
from qwenkit.errors import QwenkitError


def main() -> None:
    """Entry point: user-facing errors print one line and exit non-zero, never a traceback."""
    # llama.cpp's own error lines would reach stderr through logging's last resort; the
    # QwenkitError message below carries the first of them
    logging.getLogger("qwenkit").addHandler(logging.NullHandler())
    try:
        code = app(standalone_mode=False)
    except typer.Abort:  # typer's own (its vendored click has none)
        err.print("aborted")
        sys.exit(130)
    except click_exceptions.ClickException as exc:
        if isinstance(exc, getattr(click_exceptions, "NoArgsIsHelpError", ())):
            exc.show()  # `qwenkit` alone: the help
        else:
            err.print(f"[red]error:[/] {escape(exc.format_message())}")
        sys.exit(exc.exit_code)
    except QwenkitError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    if isinstance(code, int) and code:  # typer.Exit(code) and Ctrl-C (130) come back as a return value
        sys.exit(code)
