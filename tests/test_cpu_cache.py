"""The last-level cache as sysfs reports it, and the streamed run length chosen from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from restorecli.models import blocks
from restorecli.ops import cpu_cache


def write_cache(root: Path, index: int, *, level: int, kind: str, size: str, cpus: str) -> None:
    entry = root / f"index{index}"
    entry.mkdir(parents=True)
    for name, value in (("level", str(level)), ("type", kind), ("size", size), ("shared_cpu_list", cpus)):
        (entry / name).write_text(value + "\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("48K", 48 << 10), ("2048K", 2 << 20), ("32M", 32 << 20), ("1G", 1 << 30), ("512", 512), ("", None), ("K", None), ("x1K", None), ("0K", None)],
)
def test_cache_sizes_parse(text: str, expected: int | None) -> None:
    assert cpu_cache.parse_size(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("0", 1), ("0-1", 2), ("0,2,4-7", 6), ("0-1\n", 2), ("", None), ("a-b", None), ("3-1", None)])
def test_cpu_lists_count(text: str, expected: int | None) -> None:
    assert cpu_cache.count_cpus(text) == expected


def test_last_level_share_is_the_highest_data_cache_per_sharing_cpu(tmp_path: Path) -> None:
    write_cache(tmp_path, 0, level=1, kind="Data", size="48K", cpus="0")
    write_cache(tmp_path, 1, level=1, kind="Instruction", size="64K", cpus="0")
    write_cache(tmp_path, 2, level=2, kind="Unified", size="2048K", cpus="0")
    write_cache(tmp_path, 3, level=3, kind="Unified", size="32M", cpus="0-7")
    assert cpu_cache.last_level_share(tmp_path) == 4 << 20


def test_an_unreadable_entry_is_passed_over(tmp_path: Path) -> None:
    write_cache(tmp_path, 0, level=2, kind="Unified", size="2048K", cpus="0")
    write_cache(tmp_path, 1, level=3, kind="Unified", size="32M", cpus="0-3")
    (tmp_path / "index1" / "level").write_text("three\n")
    assert cpu_cache.last_level_share(tmp_path) == 2 << 20


def test_unknown_cache_is_none(tmp_path: Path) -> None:
    assert cpu_cache.last_level_share(tmp_path / "absent") is None
    write_cache(tmp_path, 0, level=2, kind="Unified", size="garbage", cpus="0")
    assert cpu_cache.last_level_share(tmp_path) is None


@pytest.mark.parametrize(
    ("share", "threads", "expected"),
    [
        (None, 1, blocks.STREAM_ROWS_MIN),  # unknown cache: the smallest run per thread
        (None, 2, 2 * blocks.STREAM_ROWS_MIN),
        (256 << 10, 1, blocks.STREAM_ROWS_MIN),  # small cache: never below the minimum
        (16 << 20, 1, 4096),  # half of 16 MiB over 2,000 bytes: 4,194 -> 4,096
        (16 << 20, 2, 8192),
        (240 << 20, 1, blocks.STREAM_ROWS_MAX),  # huge shared L3: capped
        (240 << 20, 4, 4 * blocks.STREAM_ROWS_MAX),
    ],
)
def test_stream_rows_follow_the_cache_and_the_threads(monkeypatch: pytest.MonkeyPatch, share: int | None, threads: int, expected: int) -> None:
    monkeypatch.setattr(blocks, "STREAM_ROWS", None)
    monkeypatch.setattr(cpu_cache, "last_level_share", lambda: share)
    assert blocks.stream_rows(2000, threads) == expected


def test_a_fixed_run_length_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "STREAM_ROWS", 37)
    assert blocks.stream_rows(2000, 2) == 37
