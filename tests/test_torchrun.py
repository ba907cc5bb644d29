"""Reading torchrun's environment: one process without it, the rank's place with it, typed errors."""

from __future__ import annotations

import pytest

from restorecli.errors import ConfigError
from restorecli.torchrun import DistInfo, from_environment

VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _set(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_outside_torchrun_is_one_main_process(monkeypatch: pytest.MonkeyPatch) -> None:
    assert from_environment() == DistInfo(rank=0, world=1, local_rank=0)
    _set(monkeypatch, WORLD_SIZE="1", RANK="0", LOCAL_RANK="3")  # torchrun with one process
    info = from_environment()
    assert (info.world, info.enabled, info.is_main) == (1, False, True)


def test_a_rank_of_a_torchrun_job(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, WORLD_SIZE="4", RANK="3", LOCAL_RANK="1")
    info = from_environment()
    assert info == DistInfo(rank=3, world=4, local_rank=1)
    assert info.enabled and not info.is_main


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"WORLD_SIZE": "two", "RANK": "0"}, "whole number in WORLD_SIZE, got 'two'"),
        ({"WORLD_SIZE": "2"}, "RANK is not"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK < WORLD_SIZE=2"),
    ],
)
def test_inconsistent_variables_are_a_typed_error(monkeypatch: pytest.MonkeyPatch, values: dict[str, str], message: str) -> None:
    _set(monkeypatch, **values)
    with pytest.raises(ConfigError, match=message):
        from_environment()
