"""Stop signals: Ctrl-C (SIGINT), SIGTERM and SIGHUP stop a command the same way.

Job schedulers, ``timeout`` and container stops send SIGTERM and a closed terminal sends SIGHUP;
Python's default for either ends the process at once, without the clean-up and the summary that
Ctrl-C gets. While :class:`stop_signals` is active, each of the three raises :class:`Interrupted`
in the main thread: a ``KeyboardInterrupt`` that carries the signal number, so every place that
cleans up after Ctrl-C (``except KeyboardInterrupt``, ``except BaseException``, ``finally``)
does the same for the other two. The process then exits with 128 + the signal number, the code
a shell reports for a process stopped by that signal (130, 143, 129).

The command-line entry point (``restorecli.cli.main``) holds :class:`stop_signals` for the
whole run; the library installs no handler on its own. The training loop passes its own
``handler`` to stop after the current iteration instead of at once.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["STOP_SIGNALS", "Interrupted", "deferred", "exit_code", "handled", "signal_name", "signal_number", "stop_signals"]

STOP_SIGNALS: tuple[int, ...] = tuple(
    int(getattr(signal, name)) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
"""The signals handled like Ctrl-C (SIGHUP does not exist on Windows)."""


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; ``signum`` says which.

    Attributes:
        signum: The signal number (``signal.SIGTERM`` ...).
        reported: Set by :func:`handled` once a command reports the interruption itself.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum
        self.reported = False


def signal_number(error: BaseException) -> int:
    """The signal behind an interruption; a plain ``KeyboardInterrupt`` counts as SIGINT."""
    return int(getattr(error, "signum", signal.SIGINT))


def signal_name(signum: int) -> str:
    """``Ctrl-C`` for SIGINT, else the signal's name (``SIGTERM``)."""
    if signum == signal.SIGINT:
        return "Ctrl-C"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def handled(error: BaseException) -> int:
    """Take charge of an interruption: the caller reports it (in a result or a summary).

    The entry point then does not report it a second time.

    Returns:
        Its signal number.
    """
    if isinstance(error, Interrupted):
        error.reported = True
    return signal_number(error)


def exit_code(signum: int) -> int:
    """Exit code of a command stopped by a signal: 128 + its number (Ctrl-C 130, SIGTERM 143)."""
    return 128 + signum


class stop_signals:  # noqa: N801 (used as a context manager, named like one)
    """Handle SIGINT, SIGTERM and SIGHUP while active; the previous handlers come back after.

    Without ``handler`` each signal raises :class:`Interrupted`. With one, ``handler(signum)``
    is called instead (it may raise). Off the main thread nothing is installed (Python allows
    signal handlers only there) and the signals keep their current handling.

    Attributes:
        last: The last :class:`Interrupted` raised while this one was active (by it or by one
            nested in it), or None.
    """

    # shared on purpose: signal handlers are process-wide
    _active: list[stop_signals] = []  # noqa: RUF012
    _deferring = 0
    _pending: list[int] = []  # noqa: RUF012

    def __init__(self, handler: Callable[[int], None] | None = None) -> None:
        self._handler = handler
        self._previous: dict[int, object] = {}
        self.last: Interrupted | None = None

    def __enter__(self) -> stop_signals:
        stop_signals._active.append(self)
        for signum in STOP_SIGNALS:
            with contextlib.suppress(ValueError, OSError):  # ValueError: not the main thread
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):  # TypeError: set from C (None)
                signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous.clear()
        if self in stop_signals._active:
            stop_signals._active.remove(self)

    @property
    def unreported(self) -> Interrupted | None:
        """The last interruption raised here, if no command reported it (see :func:`handled`)."""
        return self.last if self.last is not None and not self.last.reported else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if stop_signals._deferring:
            stop_signals._pending.append(signum)
            return
        try:
            if self._handler is not None:
                self._handler(signum)
                return
            raise Interrupted(signum)
        except Interrupted as error:
            # every active one learns of it: the entry point's outer one reports what escapes
            for active in stop_signals._active:
                active.last = error
            raise


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold the stop signals that arrive inside the block until it ends.

    For a few statements that must not be cut in two, such as creating a temporary file and
    noting its name, or writing an output and recording it as done. Only signals handled by an
    active :class:`stop_signals` are held.
    """
    stop_signals._deferring += 1
    try:
        yield
    finally:
        stop_signals._deferring -= 1
        if not stop_signals._deferring and stop_signals._pending:
            signum = stop_signals._pending[0]
            stop_signals._pending.clear()
            if stop_signals._active:
                stop_signals._active[-1]._handle(signum, None)
