"""`restore bench`: list options, JSON and markdown output, typed errors for unknown models and backends."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from restorecli import bench
from restorecli.cli import app
from restorecli.cli.bench_cmd import spread_list_options


def test_list_options_take_several_values() -> None:
    args = ["a", "--sizes", "32", "64", "--threads", "1", "2", "--json", "--models", "b", "c", "--repeats", "1"]
    assert spread_list_options(args) == [
        "a", "--sizes", "32", "--sizes", "64", "--threads", "1", "--threads", "2", "--json",
        "--models", "b", "--models", "c", "--repeats", "1",
    ]  # fmt: skip
    assert spread_list_options(["--threads", "-1", "2"]) == ["--threads", "-1", "--threads", "2"]
    assert spread_list_options(["--sizes=8", "16", "--size", "32"]) == ["--sizes=8", "--sizes", "16", "--size", "32"]
    assert spread_list_options(["--sizes", "8", "--", "x", "y"]) == ["--sizes", "8", "--", "x", "y"]


@pytest.fixture
def settings_seen(monkeypatch: pytest.MonkeyPatch) -> list[bench.BenchSettings]:
    """Replaces the measurements: records the settings and returns an empty report."""
    seen: list[bench.BenchSettings] = []

    def fake_run(settings: bench.BenchSettings, *, command: str = "", progress: object = None) -> bench.BenchReport:
        seen.append(settings)
        meta = {
            "machine": {"platform": "p", "cpu": "c", "cpu_count": 1},
            **dict.fromkeys(("torch", "date", "device", "scan_backend", "gemm", "train_flops"), "-"),
            "command": command,
            "repeats": settings.repeats,
            "breakdown": None,
        }
        return bench.BenchReport(meta=meta, gemm=(), forward=(), train=(), skipped=())

    monkeypatch.setattr(bench, "run_benchmark", fake_run)
    return seen


def test_options_reach_the_settings(settings_seen: list[bench.BenchSettings]) -> None:
    args = ["bench", "m1", "--models", "m2", "m3", "--sizes", "32", "64", "--threads", "1", "2",
            "--train-batch", "2", "--train-patch", "32", "--repeats", "2", "--skip-slower-than", "5",
            "--no-breakdown", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (settings,) = settings_seen
    assert settings.models == ("m1", "m2", "m3")
    assert (settings.sizes, settings.threads) == ((32, 64), (1, 2))
    assert (settings.train_batch, settings.train_patch, settings.repeats) == (2, 32, 2)
    assert (settings.skip_slower_than, settings.breakdown) == (5.0, False)
    assert json.loads(result.stdout)["meta"]["command"] == "restore bench " + " ".join(args[1:])


def test_defaults_and_the_old_size_option(settings_seen: list[bench.BenchSettings]) -> None:
    result = CliRunner().invoke(app, ["bench"])
    assert result.exit_code == 0, result.output
    assert settings_seen[0] == bench.BenchSettings()
    assert settings_seen[0].models == ("mair-light-t-x4", "restorecli-light-x4")
    result = CliRunner().invoke(app, ["bench", "mair-sr-x4", "--size", "128", "--size", "256", "--threads", "0"])
    assert result.exit_code == 0, result.output
    assert (settings_seen[1].models, settings_seen[1].sizes, settings_seen[1].threads) == (("mair-sr-x4",), (128, 256), (0,))
    assert "| threads | GFLOP/s |" in result.stdout


def test_bench_json_reports_each_case() -> None:
    args = ["bench", "--models", "restorecli-light-x4", "--sizes", "8", "12", "--threads", "1",
            "--train-batch", "1", "--train-patch", "8", "--repeats", "1", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    rows = document["rows"]
    assert [(r["kind"], r["model"], r.get("size")) for r in rows] == [
        ("forward", "restorecli-light-x4", 8),
        ("forward", "restorecli-light-x4", 12),
        ("train", "restorecli-light-x4", None),
    ]
    assert all(r["seconds"] > 0 and r["threads"] == 1 and r["roofline_share"] > 0 for r in rows)
    assert document["meta"]["device"] == "cpu" and document["meta"]["scan_backend"] in ("cpu", "ref")
    assert [g["threads"] for g in document["gemm"]] == [1]
    assert "restorecli-light-x4 threads=1 8²" in result.stderr


def test_bench_errors_are_typed() -> None:
    from restorecli.errors import BackendUnavailableError, UnknownModelError, UsageError

    result = CliRunner().invoke(app, ["bench", "mair-nope", "--size", "8"])
    assert isinstance(result.exception, UnknownModelError)
    result = CliRunner().invoke(app, ["bench", "--scan-backend", "warp", "--size", "8"])
    assert isinstance(result.exception, BackendUnavailableError)
    result = CliRunner().invoke(app, ["bench", "--sizes", "8", "0"])
    assert isinstance(result.exception, UsageError)
