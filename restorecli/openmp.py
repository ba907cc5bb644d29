"""Process-wide OpenMP setting of the command-line tool: worker threads sleep while they wait.

PyTorch's CPU operators run in OpenMP parallel regions, one per operator. By default the GNU
OpenMP runtime lets a waiting thread spin, which pays off only while every thread has a core to
itself. When another process keeps a core busy (a second job, a desktop, a CI neighbour), each
region waits for a thread the kernel has descheduled, and a forward pass has thousands of
regions: `restore deblur` on a 256² image took 15.3 s with two spinning threads and one busy
core, 1.1 s with sleeping threads, 0.9 s with one thread (docs/benchmarks.md, "Busy cores").
On an idle machine sleeping threads cost little (same section), so the ``restore`` command asks
for them unless the user chose a policy. The runtime reads the variable once, when torch loads
it, so this must run before torch is imported; the library never changes it.

Environment:
    OMP_WAIT_POLICY: ``PASSIVE`` (the command's default) or ``ACTIVE`` (spin; the runtime's own
        default).
"""

from __future__ import annotations

import os
import sys

ENV_WAIT_POLICY = "OMP_WAIT_POLICY"


def wait_passively() -> bool:
    """Let OpenMP threads sleep while they wait, unless the user set a policy.

    Returns:
        Whether the setting applies: False when ``OMP_WAIT_POLICY`` is already set or torch (and
        with it the OpenMP runtime) is already loaded.
    """
    if ENV_WAIT_POLICY in os.environ or "torch" in sys.modules:
        return False
    os.environ[ENV_WAIT_POLICY] = "PASSIVE"
    return True
