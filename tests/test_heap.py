"""The CLI's heap setting: applied on glibc, skipped when asked."""

from __future__ import annotations

import platform

import pytest

from restorecli import heap


def test_system_setting_leaves_glibc_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(heap.ENV_HEAP, "system")
    assert heap.reuse_freed_memory() is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_reuse_is_applied_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(heap.ENV_HEAP, raising=False)
    assert heap.reuse_freed_memory() is True
