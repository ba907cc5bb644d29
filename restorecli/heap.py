"""Process-wide heap setting of the command-line tool: reuse freed memory (glibc only).

glibc serves each allocation above a threshold (dynamic, at most 32 MiB) with a fresh ``mmap``
and unmaps it on free, so the next tensor of that size faults every one of its pages in again,
zero-filled by the kernel. A MaIR block on a 256² map allocates and frees dozens of such
tensors; with the default setting the page faults cost about as much as the arithmetic and made
the cost per pixel grow with the image (docs/benchmarks.md, "Cost per pixel"). The ``restore``
command therefore serves large blocks from the heap and keeps up to ``KEEP_FREE_BYTES`` of
freed heap for reuse. The library never changes process-wide state on import; a program that
embeds it may call :func:`reuse_freed_memory` itself.

Environment:
    RESTORECLI_HEAP: ``reuse`` (default for the CLI) or ``system`` (leave glibc's defaults).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV_HEAP = "RESTORECLI_HEAP"
KEEP_FREE_BYTES = 1 << 30
"""Freed heap kept for reuse before glibc returns the top of the heap to the kernel."""

# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of unmapping it (see the module text).

    Returns:
        Whether the setting was applied: False off glibc, when ``RESTORECLI_HEAP=system``, or if
        glibc refused a parameter.
    """
    if os.environ.get(ENV_HEAP, "reuse").strip().lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # No per-allocation mmap: large blocks come from the heap, which (unlike glibc's own mmap
    # chunks) keeps its pages after a free. glibc still falls back to mmap if the heap cannot grow.
    applied = mallopt(_M_MMAP_MAX, 0) == 1
    return mallopt(_M_TRIM_THRESHOLD, KEEP_FREE_BYTES) == 1 and applied
