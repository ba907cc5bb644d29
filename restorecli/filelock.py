"""An advisory, exclusive, cross-process file lock (standard library only).

Used where two processes could write the same file: a weights download (a batch script started
twice, torchrun ranks) and a compiled scan kernel built on first use. The lock belongs to the
open file, so the operating system releases it when a process dies; a lock file left behind by
a killed process blocks nobody and is removed by the next holder.

This module sits below every other layer (it imports only the standard library), so the scan
kernels in ``restorecli.ops`` and the downloader can share it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

__all__ = ["exclusive_lock"]

_POLL_S = 0.1


@contextmanager
def exclusive_lock(
    path: str | os.PathLike[str],
    *,
    timeout_s: float | None = None,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[bool]:
    """Hold an exclusive lock on the file ``path`` for the ``with`` block; remove the file after.

    The holder unlinks the file before unlocking, so a waiter that locked the unlinked file sees
    that the path no longer names it and starts over on a fresh one: two processes never both
    believe they hold the lock.

    Args:
        path: Lock file; created when missing. Its folder must exist.
        timeout_s: Give up waiting after this many seconds and run the block without the lock
            (for callers whose writes are atomic anyway, so the lock only saves duplicate work).
            None waits for as long as it takes.
        on_wait: Called once when another process holds the lock (e.g. to log that we wait).

    Yields:
        True while the lock is held, False when ``timeout_s`` passed without it.
    """
    lock_path = Path(path)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    waited = False
    while True:
        handle = open(lock_path, "a+b")  # noqa: SIM115 (kept open for the lock's lifetime)
        if not _try_lock(handle):
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            if not _wait_for_lock(handle, deadline):
                handle.close()
                yield False
                return
        if _names_open_file(lock_path, handle):
            break
        handle.close()
    try:
        yield True
    finally:
        if sys.platform != "win32":
            lock_path.unlink(missing_ok=True)
        _unlock(handle)
        handle.close()
        if sys.platform == "win32":
            with suppress(OSError):  # another process may hold it open already
                lock_path.unlink(missing_ok=True)


def _wait_for_lock(handle: IO[bytes], deadline: float | None) -> bool:
    """Block until ``handle`` is locked (True), or until ``deadline`` passes (False)."""
    if deadline is None:
        _lock(handle)
        return True
    while not _try_lock(handle):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _names_open_file(path: Path, handle: IO[bytes]) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(handle.fileno())
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


if sys.platform == "win32":
    import msvcrt

    def _try_lock(handle: IO[bytes]) -> bool:
        handle.seek(0)  # msvcrt locks bytes from the current position
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _lock(handle: IO[bytes]) -> None:
        while not _try_lock(handle):
            time.sleep(_POLL_S)

    def _unlock(handle: IO[bytes]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(handle: IO[bytes]) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _lock(handle: IO[bytes]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)

    def _unlock(handle: IO[bytes]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
