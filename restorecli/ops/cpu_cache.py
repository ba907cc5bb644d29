"""The CPU's last-level cache, as the operating system reports it (Linux sysfs; unknown elsewhere).

Streamed inference (restorecli/models/blocks.py) sizes its runs of positions from it: the best run
length differs by an order of magnitude between machines (docs/benchmarks.md, "Streamed runs
sized from the cache and the threads").
"""

from __future__ import annotations

import functools
from pathlib import Path

CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int | None:
    """Bytes of a sysfs cache size such as ``2048K`` or ``32M`` (None when it does not parse)."""
    text = text.strip()
    scale = _UNITS.get(text[-1:].upper(), 1)
    digits = text[:-1] if text[-1:].upper() in _UNITS else text
    return int(digits) * scale if digits.isdigit() and int(digits) > 0 else None


def count_cpus(cpu_list: str) -> int | None:
    """Number of CPUs in a sysfs CPU list such as ``0-1`` or ``0,2,4-7`` (None when it does not parse)."""
    total = 0
    for part in cpu_list.strip().split(","):
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and (not last.isdigit() or int(last) < int(first))):
            return None
        total += int(last) - int(first) + 1 if last else 1
    return total or None


@functools.cache
def last_level_share(cache_dir: Path = CACHE_DIR) -> int | None:
    """Bytes of the last-level data cache per CPU that shares it, as CPU 0 sees it; None when unknown."""
    best: tuple[int, int] | None = None  # (level, bytes per CPU)
    for entry in sorted(cache_dir.glob("index*")):
        try:  # an entry that cannot be read or parsed is passed over, not the whole list
            if (entry / "type").read_text().strip() not in ("Data", "Unified"):
                continue
            level = int((entry / "level").read_text())
            size = parse_size((entry / "size").read_text())
            cpus = count_cpus((entry / "shared_cpu_list").read_text())
        except (OSError, ValueError):
            continue
        if size is not None and cpus is not None and (best is None or level > best[0]):
            best = (level, size // cpus)
    return None if best is None else best[1]
