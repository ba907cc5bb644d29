"""The shared file lock: exclusive across open files, removed by its holder, bounded waits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from restorecli.filelock import exclusive_lock


def test_holder_excludes_a_second_locker_and_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.lock"
    events: list[str] = []
    with exclusive_lock(path) as held:
        assert held and path.exists()
        waiter = threading.Thread(target=lambda: _lock_and_record(path, events))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and events == ["waiting"]  # blocked, told us once
        events.append("released")
    waiter.join(10)
    assert events == ["waiting", "released", "acquired"]
    assert not path.exists()  # each holder removes the file it locked


def test_timeout_runs_the_block_without_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "k.lock"
    with exclusive_lock(path):
        started = time.monotonic()
        with exclusive_lock(path, timeout_s=0.2) as held:
            assert not held
        assert 0.2 <= time.monotonic() - started < 5
        assert path.exists()  # the holder's file is left alone by the one that gave up
    with exclusive_lock(path, timeout_s=0.2) as held:
        assert held


def _lock_and_record(path: Path, events: list[str]) -> None:
    with exclusive_lock(path, on_wait=lambda: events.append("waiting")):
        events.append("acquired")
