"""`restore train plot`: validation curves read from metrics.jsonl and drawn as a PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_cli_models import restore

from restorecli.errors import UsageError
from restorecli.train.curves import nice_ticks, read_curve


def _run(folder: Path, points: list[tuple[int, float, float | None]], *, name: str = "val/Set5/psnr") -> Path:
    folder.mkdir(parents=True)
    lines = []
    for it, psnr, cpu in points:
        lines.append({"iter": it, "loss": 0.1, "lr": 1e-3, "it_s": 2.0, "time": it / 2.0})
        record = {"iter": it, name: psnr, "val/Set5/ssim": 0.8, "time": it / 2.0}
        if cpu is not None:
            record["cpu_s"] = cpu
        lines.append(record)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return folder


def test_curve_reads_validation_records_in_cpu_minutes(tmp_path: Path) -> None:
    run = _run(tmp_path / "x4", [(500, 28.9, 240.0), (1000, 29.4, 480.0)])
    curve = read_curve(run)
    assert curve.metric == "val/Set5/psnr" and curve.label == "x4"
    assert curve.x == (4.0, 8.0) and curve.y == (28.9, 29.4) and curve.iterations == (500, 1000)
    assert read_curve(run, x_axis="iter").x == (500.0, 1000.0)
    assert read_curve(run / "metrics.jsonl", metric="val/Set5/ssim").y == (0.8, 0.8)


def test_a_resumed_run_keeps_the_last_record_of_each_iteration(tmp_path: Path) -> None:
    run = _run(tmp_path / "r", [(500, 28.0, 100.0), (1000, 29.0, 200.0)])
    with (run / "metrics.jsonl").open("a", encoding="utf-8") as file:  # resumed from iteration 500
        file.write(json.dumps({"iter": 1000, "val/Set5/psnr": 29.1, "time": 9.0, "cpu_s": 210.0}) + "\n")
    assert read_curve(run).y == (28.0, 29.1)


def test_curve_errors_say_what_was_expected(tmp_path: Path) -> None:
    old = _run(tmp_path / "old", [(500, 28.0, None)])
    with pytest.raises(UsageError, match="use --x wall or --x iter"):
        read_curve(old)
    assert read_curve(old, x_axis="wall").x == (250 / 60,)
    with pytest.raises(UsageError, match="expected one of the metrics val/Set5/psnr, val/Set5/ssim, got 'val/Set14/psnr'"):
        read_curve(old, metric="val/Set14/psnr", x_axis="iter")
    with pytest.raises(UsageError, match="metrics.jsonl"):
        read_curve(tmp_path / "missing")
    with pytest.raises(UsageError, match="--x: expected one of cpu, wall, iter"):
        read_curve(old, x_axis="minutes")


@pytest.mark.parametrize(("low", "high"), [(0.0, 73.0), (28.31, 30.92), (0.0, 0.004), (5.0, 5.0)])
def test_ticks_are_round_and_cover_the_range(low: float, high: float) -> None:
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and 2 <= len(ticks) <= 12
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0])


def test_plot_command_writes_a_png_and_reports_the_points(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _run(tmp_path / "mair", [(500, 28.9, 240.0), (1000, 29.4, 480.0), (1500, 29.7, 720.0)])
    b = _run(tmp_path / "vamamba", [(125, 27.5, 470.0), (250, 28.2, 940.0)])
    out = tmp_path / "curves.png"
    code, stdout, _ = restore(capsys, monkeypatch, "train", "plot", str(a), str(b), "-o", str(out), "--json", "--title", "x4")
    assert code == 0
    document = json.loads(stdout)
    assert document["metric"] == "val/Set5/psnr" and [r["label"] for r in document["runs"]] == ["mair", "vamamba"]
    picture = cv2.imread(str(out))
    assert picture.shape == (600, 960, 3) and len(np.unique(picture.reshape(-1, 3), axis=0)) > 10
    code, _, stderr = restore(capsys, monkeypatch, "train", "plot", str(a), "-o", str(out))
    assert code != 0 and "exists" in stderr and stderr.startswith("Error:")  # never replaced without --overwrite
    assert restore(capsys, monkeypatch, "train", "plot", str(a), "-o", str(out), "--overwrite")[0] == 0
    code, _, stderr = restore(capsys, monkeypatch, "train", "plot", str(a), "-o", str(tmp_path / "c.jpg"))
    assert code != 0 and "expected a .png file, got c.jpg" in stderr
    code, _, stderr = restore(capsys, monkeypatch, "train", "plot", str(a), str(b), "-o", str(out), "--label", "one")
    assert code != 0 and "--label: expected one per run (2), got 1" in stderr


def test_unreadable_metrics_are_usage_errors(tmp_path: Path) -> None:
    binary = tmp_path / "latest.pth"
    binary.write_bytes(b"PK\x03\x04\x80\xff binary")
    with pytest.raises(UsageError, match="expected JSON lines \\(metrics.jsonl\\), found binary data"):
        read_curve(binary)
    edited = tmp_path / "edited.jsonl"
    edited.write_text('{"iter": "abc", "val/a/psnr": 30.0, "cpu_s": 3}\n', encoding="utf-8")
    with pytest.raises(UsageError, match="line 1: expected an integer 'iter', got 'abc'"):
        read_curve(edited)
    edited.write_text('{"iter": 5, "val/a/psnr": "high", "cpu_s": 3}\n', encoding="utf-8")
    with pytest.raises(UsageError, match="iteration 5: expected a number for 'val/a/psnr', got 'high'"):
        read_curve(edited)


def test_infinite_psnr_is_left_out_of_the_curve(tmp_path: Path) -> None:
    """Identical images score PSNR inf (json writes Infinity): the chart shows the finite points."""
    run = _run(tmp_path / "r", [(500, 28.0, 100.0), (1000, math.inf, 200.0), (1500, 29.0, 300.0)])
    curve = read_curve(run)
    assert curve.iterations == (500, 1500) and curve.y == (28.0, 29.0)
    only = _run(tmp_path / "inf", [(500, math.inf, 100.0)])
    with pytest.raises(UsageError, match="expected finite values of val/Set5/psnr, found only inf or NaN"):
        read_curve(only)
