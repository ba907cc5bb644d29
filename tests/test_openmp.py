"""The `restore` command lets OpenMP threads sleep while they wait, unless the user chose a policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from restorecli.openmp import ENV_WAIT_POLICY, wait_passively


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != ENV_WAIT_POLICY}
    return subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120, check=True
    )


def test_set_before_torch_loads_and_user_choice_kept() -> None:
    code = "from restorecli.openmp import wait_passively; import os; print(wait_passively(), os.environ['OMP_WAIT_POLICY'])"
    assert _run(code).stdout.split() == ["True", "PASSIVE"]
    assert _run(code, OMP_WAIT_POLICY="ACTIVE").stdout.split() == ["False", "ACTIVE"]


def test_too_late_once_torch_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401 -- the runtime has read its settings by now

    monkeypatch.delenv(ENV_WAIT_POLICY, raising=False)
    assert wait_passively() is False and ENV_WAIT_POLICY not in os.environ


def test_the_command_applies_it() -> None:
    code = "import sys; from restorecli.cli import main; sys.argv = ['restore', 'env', '--json']; main()"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={k: v for k, v in os.environ.items() if k != ENV_WAIT_POLICY},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["environment"][ENV_WAIT_POLICY] == "PASSIVE"
