"""How a command that was stopped (Ctrl-C, SIGTERM, SIGHUP) ends: one line on stderr, then 128 + the signal."""

from __future__ import annotations

from typing import NoReturn

import typer

from restorecli import interrupts
from restorecli.console import Output


def exit_stopped(output: Output, signum: int, progress: str) -> NoReturn:
    """Say how far the command got and how to go on, then exit with 128 + the signal.

    The line goes to stderr even under ``--quiet`` (it says how to resume) and never to stdout,
    which carries only the data of a finished command.

    Args:
        output: The command's output.
        signum: The signal that stopped it.
        progress: What was done and what to run next, e.g. ``"after 3 of 5 files; ..."``.
    """
    output.warning(f"Interrupted ({interrupts.signal_name(signum)}) {progress}")
    raise typer.Exit(interrupts.exit_code(signum)) from None
