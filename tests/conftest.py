"""Shared test setup: one intra-op thread (stable timings next to other CPU work), seeded RNGs."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("RESTORECLI_OFFLINE", "1")  # tests never touch the internet

REPO_ROOT = Path(__file__).resolve().parents[1]
# Benchmark data sets live beside the checkout; tests that need them skip when absent.
SHARED_DATASETS = Path(os.environ.get("RESTORECLI_TEST_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


def pytest_configure(config: pytest.Config) -> None:
    import importlib.util

    import torch

    torch.set_num_threads(1)
    # Without CUDA the Triton scan backend runs in Triton's CPU interpreter (tests only). The
    # variable must be set before restorecli.ops.scan_triton_kernels is imported (the kernels
    # are made interpreted or compiled then); it changes nothing else: no other code runs triton.
    if not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _no_google_drive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Google Drive is unreachable in tests, even where offline mode is switched off (tests/test_drive.py fakes it)."""
    from restorecli.hub import drive

    def unreachable(**_: object) -> None:
        raise ConnectionError("tests do not reach Google Drive")

    monkeypatch.setattr(
        drive, "default_client", lambda: drive.GdownClient(list_function=unreachable, download_function=unreachable)
    )


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"benchmark data sets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Require the compiled CPU kernel (``RESTORECLI_CPU_SCAN=compiled``); skip where it cannot build."""
    from restorecli.ops import scan_cpu

    monkeypatch.setenv(scan_cpu.ENV_IMPL, "compiled")
    status = scan_cpu.cpu_kernel_status()
    if status.implementation != "compiled":
        pytest.skip(f"compiled CPU kernel unavailable here: {status.reason}")
