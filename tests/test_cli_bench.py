"""`restore bench`: timings as JSON, typed errors for unknown models and unusable backends."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from restorecli.cli import app


def test_bench_json_reports_each_case() -> None:
    result = CliRunner().invoke(app, ["bench", "mair-dehaze-its", "--size", "8", "--size", "12", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["model"], r["size"]) for r in rows] == [("mair-dehaze-its", 8), ("mair-dehaze-its", 12)]
    assert all(r["seconds"] > 0 and r["device"] == "cpu" and r["backend"] in ("cpu", "ref") for r in rows)


def test_bench_errors_are_typed() -> None:
    from restorecli.errors import BackendUnavailableError, UnknownModelError

    result = CliRunner().invoke(app, ["bench", "mair-nope", "--size", "8"])
    assert isinstance(result.exception, UnknownModelError)
    result = CliRunner().invoke(app, ["bench", "--scan-backend", "warp", "--size", "8"])
    assert isinstance(result.exception, BackendUnavailableError)
