"""Training end to end with a tiny MaIR: overfitting, exact resume, Ctrl-C, export, CLI, torchrun/Gloo.

Every run here is a ~3-12K-parameter network on 32x32 images for a few dozen iterations, so the
whole file takes well under a minute on one CPU core (the torchrun test spawns two processes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from restorecli import models
from restorecli.cli import app
from restorecli.errors import ConfigError
from restorecli.train import StepReport, load_config, read_training_checkpoint, train

TINY_YAML = """
name: tiny
model:
  arch: mair
  config: {{upscale: 2, in_chans: 3, img_range: 1.0, embed_dim: {dim}, depths: {depths}, d_state: 1, ssm_ratio: 1.0,
           mlp_ratio: 1.0, upsampler: pixelshuffledirect, resi_connection: 1conv, scan_len: 4, drop_path_rate: 0.1}}
data: {{hq: [{hq}], patch: 16, batch: 2}}
degradation: {{scale: 2, steps: [bicubic]}}
optim: {{lr: 2.0e-3, ema: 0.9}}
schedule: {{iterations: 12, type: cosine, warmup: 2}}
val: {{every: 4, sets: [{{name: train, hq: {hq}}}]}}
output: {{dir: {out}, log_every: 2, save_every: 6, tensorboard: false}}
"""


def smooth_images(folder: Path, count: int) -> Path:
    """Write ``count`` smooth 32x32 colour images ``img{i}.png`` into a new ``folder``."""
    folder.mkdir()
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    for i in range(count):
        img = np.stack([np.sin(3 * xx + i), np.cos(2 * yy - i), xx * yy], axis=2) * 0.4 + 0.5
        cv2.imwrite(str(folder / f"img{i}.png"), (img * 255).round().astype(np.uint8))
    return folder


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A config file for a tiny x2 MaIR on two smooth 32x32 images."""
    hq = smooth_images(tmp_path / "hq", 2)
    path = tmp_path / "tiny.yml"
    path.write_text(TINY_YAML.format(dim=8, depths="[1]", hq=hq, out=tmp_path / "run"), encoding="utf-8")
    return path


def test_tiny_model_overfits_two_images(tiny: Path) -> None:
    """40 steps on two images: the mean loss of the last 5 steps is under 1/3 of the first 5."""
    cfg = load_config(
        tiny,
        ["schedule.iterations=40", "val.every=0", "optim.ema=0", "data.flip=false", "data.rot90=false",
         "model.config.embed_dim=16", "model.config.drop_path_rate=0"],
    )
    losses = train(cfg).losses
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) / 3, losses


def test_resume_reproduces_the_uninterrupted_run(tiny: Path, tmp_path: Path) -> None:
    """Stop at 5 of 12 (drop-path, EMA and validation on), resume: the same 12 losses, bit for bit."""
    full = train(load_config(tiny, [f"output.dir={tmp_path / 'a'}"]))
    cfg = load_config(tiny, [f"output.dir={tmp_path / 'b'}"])
    first = train(cfg, stop_at=5)
    assert first.iteration == 5 and (tmp_path / "b" / "latest.pth").is_file()
    rest = train(cfg, resume=tmp_path / "b" / "latest.pth")
    assert first.losses + rest.losses == full.losses
    assert rest.best_metric == full.best_metric
    a = read_training_checkpoint(tmp_path / "a" / "latest.pth")
    b = read_training_checkpoint(tmp_path / "b" / "latest.pth")
    for key in a["params"]:
        assert torch.equal(a["params"][key], b["params"][key])
        assert torch.equal(a["params_ema"][key], b["params_ema"][key])


def test_a_network_that_cannot_be_built_leaves_no_output_folder(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="embed_dim must be positive, got 0"):
        train(load_config(tiny, ["model.config.embed_dim=0"]))
    assert not (tmp_path / "run").exists()


def test_resuming_a_finished_run_says_there_is_nothing_to_train(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(tiny, ["val.every=0", "schedule.iterations=3"])
    train(cfg)
    with caplog.at_level("WARNING", logger="restorecli.train.loop"):
        again = train(cfg, resume=tmp_path / "run" / "latest.pth")
    assert again.iteration == 3 and not again.losses
    assert "nothing to train: the run is at iteration 3 and the schedule ends at 3" in caplog.text


def test_checkpoints_and_logs(tiny: Path, tmp_path: Path) -> None:
    result = train(load_config(tiny))
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("*.pth")) == ["best.pth", "iter_0000006.pth", "iter_0000012.pth", "latest.pth"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == [2, 4, 6, 8, 10, 12]
    assert [r["iter"] for r in records if "val/train/psnr" in r] == [4, 8, 12]
    best = read_training_checkpoint(run / "best.pth")
    assert best["best"]["metric"] == result.best_metric and best["iteration"] == result.best_iteration
    # The training checkpoint is directly usable for inference (EMA weights preferred), weights_only.
    ckpt = models.read_checkpoint(run / "latest.pth")
    assert ckpt.arch == "mair" and ckpt.config["embed_dim"] == 8
    net = models.build_arch(ckpt.arch, ckpt.config)
    models.load_checkpoint(net, ckpt.state_dict)
    assert torch.equal(ckpt.state_dict["conv_first.weight"], read_training_checkpoint(run / "latest.pth")["params_ema"]["conv_first.weight"])


def test_ctrl_c_writes_a_resumable_checkpoint(tiny: Path, tmp_path: Path) -> None:
    cfg = load_config(tiny, ["val.every=0"])

    def interrupt(report: StepReport) -> None:
        if report.iteration == 3:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(cfg, progress=interrupt)
    assert result.interrupted and result.iteration == 3
    state = read_training_checkpoint(tmp_path / "run" / "latest.pth")
    assert state["iteration"] == 3
    rest = train(cfg, resume=tmp_path / "run" / "latest.pth")
    full = train(load_config(tiny, ["val.every=0", f"output.dir={tmp_path / 'full'}"]))
    assert result.losses + rest.losses == full.losses


def test_export_prints_the_manifest_entry(tiny: Path, tmp_path: Path) -> None:
    train(load_config(tiny, ["val.every=0"]))
    runner = CliRunner()
    out = tmp_path / "tiny.safetensors"
    result = runner.invoke(app, ["train", "export", str(tmp_path / "run" / "latest.pth"), str(out), "--half", "--name", "tiny-x2"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert entry["name"] == "tiny-x2" and entry["source"] == "restorecli" and entry["scale"] == 2
    import hashlib

    assert entry["files"][0]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert entry["files"][0]["size"] == out.stat().st_size
    ckpt = models.read_checkpoint(out)
    assert ckpt.name == "tiny-x2" and ckpt.config == entry["config"]
    assert all(v.dtype == torch.float16 for v in ckpt.state_dict.values())
    net = models.build_arch(ckpt.arch, ckpt.config)
    models.load_checkpoint(net, ckpt.state_dict)
    assert net.conv_first.weight.dtype == torch.float32


def test_cli_errors_are_one_line(tiny: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for args, needle in (
        (["train", "--config", str(tiny), "--set", "optim.lrr=1"], "did you mean 'optim.lr'"),
        (["train", "--config", "mair-light-t-x5"], "did you mean 'mair-light-t-x4'"),
        (["train", "--config", str(tiny), "--set", "optim"], "key=value"),
        (["train", "--resume", str(tiny)], "is not a PyTorch or safetensors checkpoint"),
        (["train", "--config", str(tiny), "--set", "optim.lr=-1"], "optim.lr must be a positive number, got -1.0"),
        (["train", "--config", str(tiny), "--set", f"data.hq=[{tiny}]"], "is a file, expected a folder of images"),
        (["train", "--config", str(tiny), "--set", f"output.dir={tiny}"], "is a file, expected a folder"),
        (["train", "--config", str(tiny.parent)], "is a folder, expected a YAML config file"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert needle in str(result.exception), (args, result.exception)
        assert "\n" not in str(result.exception)


def test_cli_trains_and_reports_json(tiny: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--config", str(tiny), "--set", "val.every=0", "--until", "4", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["iteration"] == 4 and summary["total"] == 12 and not summary["interrupted"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_gloo_processes(tiny: Path, tmp_path: Path) -> None:
    """2 ranks through torchrun on the CPU (Gloo): both train, rank 0 alone writes one checkpoint.

    With two progressive stages (per-process batch 2 then 1, patch 8 then 16) and mixup on every batch.
    """
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", "-m", "restorecli", "train", "--config", str(tiny),
        "--set", "val.every=0", "--set", "output.save_every=0", "--set", "schedule.iterations=4", "-q",
        "--set", "data.progressive={iterations: [2, 2], patch: [8, 16], batch: [2, 1]}", "--set", "data.mixup.prob=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pth")) == ["latest.pth"]
    state = read_training_checkpoint(tmp_path / "run" / "latest.pth")
    assert state["iteration"] == 4 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank seeds


@pytest.mark.parametrize("layout", ["restorecli", "bare"])
def test_fine_tune_starts_from_earlier_weights(tiny: Path, tmp_path: Path, layout: str) -> None:
    """model.pretrained: a restorecli checkpoint, or a bare state dict of this (unregistered)
    network, initialises training with exactly those weights."""
    source = models.build_arch("mair", load_config(tiny).model.config)
    path = tmp_path / "start.pth"
    if layout == "restorecli":
        config = dataclasses.asdict(load_config(tiny).model.config)
        models.save_checkpoint(tmp_path / "start.safetensors", source, "mair", config, name="tiny-start", task="sr")
        path = tmp_path / "start.safetensors"
    else:
        torch.save(source.state_dict(), path)
    cfg = load_config(tiny, [f"model.pretrained={path}", "schedule.iterations=1", "val.every=0"])
    from restorecli.train import loop

    built = loop._build_model(cfg, torch.device("cpu"))
    for key, value in source.state_dict().items():
        assert torch.equal(built.state_dict()[key], value), key
    assert len(train(cfg).losses) == 1


@pytest.mark.parametrize("preset", ["restorecli-light-deblur-cpu", "restorecli-light-dehaze-cpu"])
def test_fine_tune_may_start_from_a_model_of_another_task(preset: str, tmp_path: Path) -> None:
    """The deblur and dehaze recipes start from the bundled denoiser (their presets say so): the
    start's task differs from the run's, its network fits, and its weights are loaded as they are."""
    from restorecli import load_model
    from restorecli.train import loop

    start = Path(models.__file__).parents[1] / "weights" / "restorecli-light-dn.safetensors"
    hq = smooth_images(tmp_path / "hq", 1)
    # the bundled denoiser grew a fourth group after these recipes' runs (their presets say so)
    cfg = load_config(preset, [f"model.pretrained={start}", f"data.hq=[{hq}]", "model.config.depths=[2, 2, 2, 2]"])
    built = loop._build_model(cfg, torch.device("cpu"))
    expected = load_model(start, device="cpu").module.state_dict()
    for key, value in expected.items():
        assert torch.equal(built.state_dict()[key], value), key


def test_output_dir_problems_are_named_before_any_work(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from restorecli.errors import ImageWriteError
    from restorecli.train import loop

    with pytest.raises(ConfigError, match=r"tiny.yml is a file, expected a folder"):
        train(load_config(tiny, [f"output.dir={tiny}"]))
    with pytest.raises(ConfigError, match=r"tiny.yml is a file, expected a folder"):
        train(load_config(tiny, [f"output.dir={tiny / 'sub'}"]))

    def read_only(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(loop.tempfile, "TemporaryFile", read_only)  # root may write anywhere: fake a read-only folder
    with pytest.raises(ImageWriteError, match="cannot write into this folder: Permission denied"):
        train(load_config(tiny))


def test_validation_images_too_small_fail_before_training(tiny: Path, tmp_path: Path) -> None:
    from restorecli.errors import ConfigError

    small = tmp_path / "small"
    small.mkdir()
    cv2.imwrite(str(small / "s.png"), np.full((12, 20, 3), 128, np.uint8))
    steps: list[int] = []
    cfg = load_config(tiny, [f"val.sets=[{{name: v, hq: {small}}}]"])
    expected = r"val set v: s is 20x12 px; expected at least 15x15 \(val.crop_border 2 on each side, SSIM window\)"
    with pytest.raises(ConfigError, match=expected):
        train(cfg, progress=lambda report: steps.append(report.iteration))
    assert not steps
    # without SSIM, PSNR needs one pixel inside the border
    assert train(load_config(tiny, [f"val.sets=[{{name: v, hq: {small}}}]", "val.ssim=false", "schedule.iterations=4"])).best_metric


def test_resume_needs_the_training_state(tiny: Path, tmp_path: Path) -> None:
    from restorecli.errors import CheckpointError

    cfg = load_config(tiny, ["val.every=0"])
    train(cfg, stop_at=2)
    state = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    del state["optimizer"]
    torch.save(state, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError, match="it lacks optimizer"):
        train(cfg, resume=tmp_path / "edited.pth")


def test_a_file_that_breaks_mid_run_leaves_a_resumable_checkpoint(tiny: Path, tmp_path: Path) -> None:
    """Read from disk, an image that cannot be decoded any more ends the run with an ImageReadError,
    after latest.pth is written at the last finished iteration; once the file is back, resuming
    gives the uninterrupted run's losses."""
    from restorecli.errors import ImageReadError

    hq = tmp_path / "hq"
    saved = {path: path.read_bytes() for path in hq.iterdir()}
    overrides = ["val.every=0", "output.save_every=0", "data.in_memory=false"]
    cfg = load_config(tiny, overrides)

    def break_files(report: StepReport) -> None:
        if report.iteration == 3:
            for path in saved:
                path.write_bytes(b"")

    with pytest.raises(ImageReadError, match="file is empty"):
        train(cfg, progress=break_files)
    state = read_training_checkpoint(tmp_path / "run" / "latest.pth")
    assert state["iteration"] == 3
    for path, data in saved.items():
        path.write_bytes(data)
    rest = train(cfg, resume=tmp_path / "run" / "latest.pth")
    full = train(load_config(tiny, [*overrides, f"output.dir={tmp_path / 'full'}"]))
    assert rest.losses == full.losses[3:]


def test_a_diverging_loss_is_a_one_line_training_error(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from restorecli.errors import TrainingError
    from restorecli.train import loop

    monkeypatch.setattr(loop, "make_loss", lambda *_: lambda pred, hq: (pred - hq).abs().mean() * float("nan"))
    with pytest.raises(TrainingError, match="loss became nan at iteration 1, expected a finite number: lower optim.lr") as info:
        train(load_config(tiny, ["val.every=0"]))
    assert "\n" not in str(info.value)
