"""Terminal output of the commands: data on stdout, notes and progress bars on stderr.

Every command (and the downloader, which draws its own bar) goes through this module, so there
is one rule for each stream:

- stdout carries data only: one JSON document under ``--json``, else a table or plain lines.
- stderr carries notes, per-item errors and progress; ``--quiet`` silences all of it (the final
  ``Error: ...`` line of a failed command is printed by ``restorecli.cli.main`` regardless).
- progress bars are drawn only when neither ``--quiet`` nor ``--json`` is given and both stdout
  and stderr are terminals (:func:`bars_wanted`); a pipe, a log file or a script gets plain
  lines instead.

rich is imported only when something is drawn, so importing this module costs nothing and
``restore --help`` stays instant. It imports nothing else from the package, so any layer may
use it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

__all__ = ["Bars", "Output", "bars_wanted", "cell", "item_error_line", "one_line", "progress_bars", "stdout_console"]

PIPED_WIDTH = 200
"""Width of tables written to a pipe or file: long paths are not wrapped at 80 columns."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def item_error_line(item: str, message: str) -> str:
    """``Error: ...`` for one item of a batch, naming the item unless the message already does
    (most messages start with the file they are about)."""
    return f"Error: {message}" if item in message else f"Error: {item}: {message}"


def one_line(text: str) -> str:
    """``text`` with its control characters escaped as Python writes them (``\\n``, ``\\x1b``).

    A file name may hold a newline or a terminal escape sequence; a note or an ``Error:`` line
    that names it must stay one line and must not drive the terminal.
    """
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def cell(text: str) -> str:
    """Plain text (a path, a message naming one) for a rich table cell: one line, no markup.

    rich reads ``[...]`` in a string as a style tag, so ``IMG [edited].jpg`` showed as ``IMG .jpg``.
    """
    from rich.markup import escape

    return escape(one_line(text))


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams (test runners, daemons)
        return False


def bars_wanted(*, quiet: bool = False, json_output: bool = False) -> bool:
    """Whether progress bars are drawn: not quiet, not JSON, and stdout and stderr are terminals."""
    return not quiet and not json_output and _is_terminal(sys.stdout) and _is_terminal(sys.stderr)


def stdout_console() -> Console:
    """A rich console on stdout for tables; wide when stdout is not a terminal."""
    from rich.console import Console

    return Console() if _is_terminal(sys.stdout) else Console(width=PIPED_WIDTH)


class Bars:
    """Progress bars on stderr; every method does nothing when the bars are off.

    Callers therefore report progress without branching on whether it is shown.
    """

    def __init__(self, progress: Progress | None = None) -> None:
        self._progress = progress

    @property
    def enabled(self) -> bool:
        """Whether anything is drawn."""
        return self._progress is not None

    def add(self, description: str, *, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        """A new bar; returns its id for the other methods (``fields`` feed a ``stats`` template)."""
        if self._progress is None:
            return 0
        return self._progress.add_task(description, total=total, completed=completed, **fields)

    def update(self, bar: int, **changes: Any) -> None:
        """Change a bar: ``completed``, ``total``, ``description`` or template fields."""
        if self._progress is not None:
            self._progress.update(bar, **changes)  # type: ignore[arg-type]

    def advance(self, bar: int, amount: float = 1) -> None:
        """Move a bar forward by ``amount``."""
        if self._progress is not None:
            self._progress.advance(bar, amount)  # type: ignore[arg-type]

    def reset(self, bar: int, **changes: Any) -> None:
        """Restart a bar from zero (for the next item), with optional changes."""
        if self._progress is not None:
            self._progress.reset(bar, **changes)  # type: ignore[arg-type]


@contextmanager
def progress_bars(
    *, enabled: bool, unit: Literal["items", "bytes"] = "items", stats: str | None = None, keep: bool = False
) -> Iterator[Bars]:
    """Progress bars on stderr for the ``with`` block (see :class:`Bars`).

    Args:
        enabled: Draw them; callers pass :func:`bars_wanted` or ``Output.bars_enabled``.
        unit: ``items`` shows "done/total", ``bytes`` shows sizes and the transfer speed.
        stats: A rich template after the bar, e.g. ``"loss {task.fields[loss]:.4f}"``.
        keep: Leave the finished bars on the terminal (default: they disappear).
    """
    if not enabled:
        yield Bars()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns: list[ProgressColumn] = [TextColumn("{task.description}", markup=False), BarColumn()]
    columns += [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
    if stats is not None:
        columns.append(TextColumn(stats))
    columns.append(TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=not keep) as progress:
        yield Bars(progress)


_document_written = False  # whether this process printed a --json document (Output.data)


def error_document(message: str, exit_code: int) -> None:
    """Under ``--json``, a command that stops before its document (a usage error, no inputs,
    weights that cannot be had) prints ``{"error": message, "exit_code": code}`` as its one
    JSON document, so a script that parses stdout reads why instead of nothing; a command that
    printed its document already adds nothing (the Error line on stderr says it)."""
    if not _document_written:
        Output(json_output=True).data({"error": message, "exit_code": exit_code})


class Output:
    """Where one command's output goes, from its ``--json`` and ``--quiet`` options."""

    def __init__(self, *, json_output: bool = False, quiet: bool = False) -> None:
        self.json_output = json_output
        self.quiet = quiet

    @property
    def bars_enabled(self) -> bool:
        """Whether progress bars are drawn (see :func:`bars_wanted`)."""
        return bars_wanted(quiet=self.quiet, json_output=self.json_output)

    def progress(self, *, unit: Literal["items", "bytes"] = "items", stats: str | None = None, keep: bool = False) -> Any:
        """:func:`progress_bars`, drawn when this command's options and terminals allow."""
        return progress_bars(enabled=self.bars_enabled, unit=unit, stats=stats, keep=keep)

    def data(self, document: Any, *, indent: int | None = 2) -> None:
        """One JSON document on stdout."""
        global _document_written
        _document_written = True
        self.line(json.dumps(document, indent=indent))

    def line(self, text: str) -> None:
        """A line of data on stdout (a path, a name, a text report)."""
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def show(self, *renderables: Any, **options: Any) -> None:
        """rich renderables (tables, styled text) on stdout; ``options`` go to ``Console.print``."""
        stdout_console().print(*renderables, **options)

    def note(self, message: str) -> None:
        """A message on stderr (notes, per-item errors); nothing under ``--quiet``."""
        if not self.quiet:
            self.warning(message)

    def warning(self, message: str) -> None:
        """A message on stderr even under ``--quiet``: what the user must act on (how to resume)."""
        sys.stderr.write(one_line(message) + "\n")
        sys.stderr.flush()
