"""Held-out synthetic evaluation (`restore eval --task deblur|dehaze|realnoise`) and the DCP baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from restorecli import datasets
from restorecli import evaluate as ev
from restorecli.cli import app
from restorecli.dark_channel_prior import dark_channel, dehaze_dark_channel_prior
from restorecli.errors import UsageError
from restorecli.eval_plan import plan_evaluation
from restorecli.eval_synthetic import SYNTHETIC_TASKS, synthesise
from restorecli.io import quantize_to_uint8
from restorecli.metrics import psnr

runner = CliRunner()


class Identity(torch.nn.Module):
    """A same-size 'model' that returns its input: it must score exactly as the degraded input."""

    upscale = 1
    in_chans = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _clean(seed: int = 0, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (shape[0] // 8, shape[1] // 8, 3), dtype=np.uint8)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("task", sorted(SYNTHETIC_TASKS))
def test_synthetic_inputs_are_fixed_per_task_and_name(task: str) -> None:
    clean = _clean()
    first = synthesise(task, clean, "kodim01")
    assert first.dtype == np.uint8 and first.shape == clean.shape
    assert first.tobytes() == synthesise(task, clean.copy(), "kodim01").tobytes()  # same bytes twice
    assert not np.array_equal(first, synthesise(task, clean, "kodim02"))  # each image draws its own
    assert not np.array_equal(first, clean)


def test_the_tasks_draw_apart() -> None:
    clean = _clean(1)
    hazy, blurred = synthesise("dehaze", clean, "a"), synthesise("deblur", clean, "a")
    assert not np.array_equal(hazy, blurred)


def test_dark_channel_prior_undoes_synthetic_haze() -> None:
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.0, 0.8, (64, 80, 3)).astype(np.float32)
    clean[..., rng.integers(0, 3)] *= 0.1  # a haze-free scene has a dark channel near 0
    t = np.linspace(0.3, 0.8, 64, dtype=np.float32)[:, None, None]
    airlight = np.array([0.9, 0.88, 0.92], np.float32)
    hazy = clean * t + airlight * (1 - t)
    assert dark_channel(hazy).mean() > dark_channel(clean).mean() + 0.1
    dehazed = dehaze_dark_channel_prior(hazy)
    assert dehazed.dtype == np.float32 and dehazed.shape == hazy.shape and dehazed.min() >= 0 and dehazed.max() <= 1
    before = psnr(quantize_to_uint8(hazy), quantize_to_uint8(clean), 0)
    assert psnr(quantize_to_uint8(dehazed), quantize_to_uint8(clean), 0) > before + 3


def _set(shared_datasets: Path, name: str) -> tuple[datasets.DatasetSpec, Path]:
    return datasets.get_dataset(name), datasets.locate_dataset(name, shared_datasets)


def test_held_out_scores_are_deterministic_and_a_model_sees_the_same_input(shared_datasets: Path) -> None:
    spec, folder = _set(shared_datasets, "McMaster")
    config = ev.EvalConfig(task="deblur", baseline="degraded", limit=2)
    first = ev.evaluate_dataset(spec, folder, config)
    again = ev.evaluate_dataset(spec, folder, config)
    assert [r.psnr_rgb for r in first.images] == [r.psnr_rgb for r in again.images]
    assert all(15 < r.psnr_rgb < 40 for r in first.images)
    summary = first.summary()
    assert summary["task"] == "deblur" and summary["headline"] == "rgb" and summary["crop_border"] == 0
    assert summary["degradation"] == "restorecli-heldout-v1" and summary["sigma"] is None
    identity = ev.evaluate_dataset(
        spec, folder, ev.EvalConfig(task="deblur", limit=2, device="cpu", protocol="whole"), model=Identity()
    )
    assert [r.psnr_rgb for r in identity.images] == [r.psnr_rgb for r in first.images]


def test_dcp_beats_the_hazy_input(shared_datasets: Path, tmp_path: Path) -> None:
    spec, folder = _set(shared_datasets, "Kodak24")
    hazy = ev.evaluate_dataset(spec, folder, ev.EvalConfig(task="dehaze", baseline="degraded", limit=2))
    dcp = ev.evaluate_dataset(spec, folder, ev.EvalConfig(task="dehaze", baseline="dcp", limit=2))
    for before, after in zip(hazy.images, dcp.images, strict=True):
        assert after.psnr_rgb > before.psnr_rgb + 2 and after.ssim_rgb > before.ssim_rgb
    from restorecli.eval_report import write_report

    write_report(dcp, tmp_path)
    picture = cv2.imread(str(tmp_path / "comparison.png"))
    assert picture.shape[1] > 3 * 96 * 2  # hazy input, DCP output and ground truth side by side
    assert any("Dark channel prior" in note for note in dcp.meta["notes"])


def test_real_noise_input_scores_and_loads_a_real_denoiser(shared_datasets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["eval", "-d", "Kodak24", "--task", "realnoise", "--baseline", "degraded", "--limit", "1"]
    result = runner.invoke(app, [*args, "--data-dir", str(shared_datasets), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["task"] == "realnoise" and 20 < summary["mean"]["psnr_rgb"] < 45

    from restorecli import loading
    from restorecli.cli import eval_cmd

    asked = {}

    def fake_load(name: str | None, **options: object) -> None:
        asked.update(options)
        raise UsageError("stopped by the test")

    monkeypatch.setattr(loading, "load_model", fake_load)
    with pytest.raises(UsageError, match="stopped"):
        eval_cmd.load_model("realnoise", None, None, None, None)
    assert asked["task"] == "denoise" and asked["real"] is True


def test_plans_of_the_held_out_tasks() -> None:
    from restorecli.eval_plan import SYNTHETIC_EVAL_TASKS

    assert SYNTHETIC_EVAL_TASKS == tuple(SYNTHETIC_TASKS)  # the plan names them without importing the generator
    assert plan_evaluation("Kodak24", task="deblur", baseline="degraded").task == "deblur"
    assert plan_evaluation("Kodak24", baseline="dcp").task == "dehaze"
    assert plan_evaluation("CBSD68", model="mair-deblur").task == "deblur"
    assert plan_evaluation("CBSD68", model="mair-realdn").task == "realnoise"
    plan = plan_evaluation("Set5", task="dehaze", model="restorecli-light-dn")
    assert (plan.scale, plan.sigma, plan.final_scale(None)) == (None, None, 1)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"task": "deblur", "scale": 4}, "drop --scale 4"),
        ({"task": "realnoise", "sigma": 25}, "drop --sigma"),
        ({"task": "deblur", "baseline": "dcp"}, "--baseline degraded"),
        ({"task": "sr", "sigma": 25, "scale": 4}, "--task sr"),
        ({"task": "deblurr"}, "expected one of"),
        ({"baseline": "degraded"}, "add --task"),
    ],
)
def test_held_out_options_that_do_not_fit_are_usage_errors(options: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        plan = plan_evaluation(options.pop("dataset", "Kodak24"), **options)
        ev.EvalConfig(task=plan.task, scale=plan.final_scale(None), sigma=plan.sigma, baseline=plan.baseline)


def test_grey_sets_are_refused() -> None:
    with pytest.raises(UsageError, match="grey set"):
        plan_evaluation("BSD68", task="dehaze", baseline="dcp")


def test_cli_prints_one_error_line_for_a_scale_on_a_same_size_task(shared_datasets: Path) -> None:
    args = ["eval", "-d", "Kodak24", "--task", "deblur", "--scale", "4", "--baseline", "degraded"]
    done = subprocess.run(
        [sys.executable, "-m", "restorecli", *args, "--data-dir", str(shared_datasets)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and done.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "drop --scale 4" in lines[0], done.stderr


@pytest.mark.parametrize(
    ("preset", "task", "iterations"),
    [
        ("restorecli-light-deblur-cpu", "deblur", 2500),
        ("restorecli-light-dehaze-cpu", "dehaze", 2500),
        ("restorecli-light-realdn-cpu", "realnoise", 1800),  # as long as the denoiser it starts from
    ],
)
def test_presets_train_on_the_degradation_that_the_held_out_set_scores(preset: str, task: str, iterations: int) -> None:
    from restorecli.train.config import load_config

    config = load_config(preset, ["data.hq=[hq]"])
    assert config.degradation == SYNTHETIC_TASKS[task].degradation
    assert config.schedule.iterations == iterations and config.model.config.upscale == 1
