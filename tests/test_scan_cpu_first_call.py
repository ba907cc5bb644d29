"""The compiled CPU scan must also activate when a process's first scan runs without autograd
(inference under torch.inference_mode / no_grad, as the CLI does)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import torch
from restorecli.ops import selective_scan
from restorecli.ops.scan_cpu import cpu_kernel_status
u = torch.randn(1, 8, 16)
with torch.inference_mode():
    selective_scan(u, u.abs(), -torch.ones(8, 1), torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16), backend="cpu")
status = cpu_kernel_status()
print(status.implementation, "|", status.reason)
"""


def test_first_scan_under_inference_mode_keeps_the_compiled_kernel() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    implementation, reason = done.stdout.strip().split(" | ", 1)
    if implementation != "compiled" and ("compiler" in reason or "not found" in reason):
        pytest.skip(f"no C++ compiler here: {reason}")
    assert implementation == "compiled", reason
