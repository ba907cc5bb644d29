"""scripts/grow_mair.py: appended residual groups start as the identity."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from restorecli import models
from restorecli.loading import load_model
from restorecli.models.mair import MaIRConfig

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("grow_mair", ROOT / "scripts" / "grow_mair.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grown_network_computes_what_the_trained_one_did(tmp_path: Path) -> None:
    config = MaIRConfig(
        upscale=2, in_chans=3, img_range=1.0, embed_dim=8, depths=(1, 1), d_state=1, ssm_ratio=1.0, mlp_ratio=1.0,
        upsampler="pixelshuffledirect", resi_connection="1conv", scan_len=4, drop_path_rate=0.0,
    )
    torch.manual_seed(0)
    trained = models.build_arch("mair", config).eval()
    source = tmp_path / "trained.safetensors"
    models.save_checkpoint(source, trained, "mair", dataclasses.asdict(config), name="tiny", task="sr")
    grow = _script().grow
    params = grow(source, tmp_path / "grown.safetensors", [1, 1, 2])
    grown = load_model(tmp_path / "grown.safetensors", device="cpu")
    assert list(grown.config.depths) == [1, 1, 2] and params == sum(p.numel() for p in grown.module.parameters())
    x = torch.rand(1, 3, 13, 11)
    with torch.no_grad():
        assert torch.allclose(grown.module(x), trained(x), atol=1e-6)
    with pytest.raises(SystemExit, match=r"must extend the trained depths \[1, 1\]"):
        grow(source, tmp_path / "bad.safetensors", [2, 1, 1])
