"""`restore train export`: the manifest entry names the right task and scale for every architecture."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from restorecli import models
from restorecli.cli import app
from restorecli.errors import ConfigError
from restorecli.models.vamamba import VAMambaConfig
from restorecli.train.export import training_task
from restorecli.train.loop import CHECKPOINT_FORMAT

TINY_MAIR_X3 = {
    "upscale": 3, "in_chans": 3, "img_range": 1.0, "embed_dim": 8, "depths": [1], "d_state": 2,
    "ssm_ratio": 1.0, "mlp_ratio": 1.0, "upsampler": "pixelshuffledirect", "resi_connection": "1conv", "scan_len": 4,
}
TINY_UNET = {
    "inp_channels": 3, "out_channels": 3, "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1,
    "ssm_ratio": 1.2, "mlp_ratio": 1.0, "flp_ratio": 2.0, "bias": False, "scan_len": 4,
}
TINY_VAMAMBA = VAMambaConfig(
    upscale=1, in_chans=3, img_range=1.0, embed_dim=8, depths=(1,), d_state=2, mlp_ratio=1.0,
    upsampler="", resi_connection="1conv", scan="both", qclam=True, lora_rank=2, cache_size=2,
    gps_patch=4, vit_dim=8, vit_layers=1, vit_heads=2, drop_path_rate=0.0,
)  # fmt: skip
VAMAMBA_X2 = asdict(replace(TINY_VAMAMBA, upscale=2, upsampler="pixelshuffledirect"))


def _training_checkpoint(path: Path, arch: str, config: dict[str, Any], train_config: dict[str, Any]) -> Path:
    """A training checkpoint as ``restore train`` writes one, with untrained weights."""
    torch.manual_seed(0)
    params = models.build_arch(arch, config).state_dict()
    state = {
        "format": CHECKPOINT_FORMAT, "arch": arch, "config": config, "name": "run", "params": params,
        "params_ema": params, "iteration": 7, "train_config": train_config, "best": {"metric": None},
    }  # fmt: skip
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("arch", "config", "train_config", "name", "task", "scale"),
    [
        ("mair", TINY_MAIR_X3, {}, "my-mair-x3", "sr", 3),
        ("mairunet", TINY_UNET, {"degradation": {"steps": ["blur"]}}, "my-deblur", "deblur", 1),
        ("mairunet", TINY_UNET, {"model": {"name": "mair-dehaze-its"}}, "my-dehaze", "dehaze", 1),
        ("vamamba", VAMAMBA_X2, {}, "vamamba-light-x2", "sr", 2),
        ("vamamba", asdict(TINY_VAMAMBA), {"degradation": {"steps": ["resize", "noise"]}}, "my-dn", "denoise", 1),
    ],
)
def test_export_entry_has_task_and_scale_of_every_architecture(
    tmp_path: Path, arch: str, config: dict, train_config: dict, name: str, task: str, scale: int
) -> None:
    checkpoint = _training_checkpoint(tmp_path / "latest.pth", arch, config, train_config)
    out = tmp_path / f"{name}.safetensors"
    result = CliRunner().invoke(app, ["train", "export", str(checkpoint), str(out), "--name", name])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert (entry["name"], entry["arch"], entry["task"], entry["scale"]) == (name, arch, task, scale)
    assert entry["trained"] == {"iterations": 7, "best_psnr": None}
    written = models.read_checkpoint(out)
    assert written.arch == arch and written.name == name


def test_a_table_name_gets_weight_facts_only(tmp_path: Path) -> None:
    checkpoint = _training_checkpoint(tmp_path / "latest.pth", "mairunet", TINY_UNET, {})
    out = tmp_path / "mair-deblur.safetensors"
    result = CliRunner().invoke(app, ["train", "export", str(checkpoint), str(out), "--name", "mair-deblur", "--task", "deblur"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert "task" not in entry and "scale" not in entry  # the model table holds them
    assert entry["files"][0]["filename"] == "mair-deblur.safetensors"


def test_task_needs_something_to_go_by() -> None:
    with pytest.raises(ConfigError, match="--task"):
        training_task({}, "mairunet", TINY_UNET)
