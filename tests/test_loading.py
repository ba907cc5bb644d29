"""``restorecli.load_model``: names, official files, restorecli checkpoints, wrong files; the descriptor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_download import isolate
from typer.testing import CliRunner

import restorecli
from restorecli import models
from restorecli.errors import CheckpointError, UsageError

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path / "cache")


def _official(tmp_path: Path, name: str) -> Path:
    layout = models.build(name, device="meta").state_dict()
    path = tmp_path / models.spec(name).official_file
    torch.save({"params": {k: torch.randn(v.shape) * 0.02 for k, v in layout.items()}}, path)
    return path


def test_bundled_name() -> None:
    loaded = restorecli.load_model("restorecli-light-x4", device="cpu")
    assert (loaded.name, loaded.arch, loaded.task, loaded.scale) == ("restorecli-light-x4", "mair", "sr", 4)
    assert loaded.weights.source == "bundled" and Path(loaded.weights.path).name == "restorecli-light-x4.safetensors"
    assert not loaded.module.training and loaded.device == torch.device("cpu")
    assert loaded(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


def test_official_file_with_and_without_model(tmp_path: Path) -> None:
    file = _official(tmp_path, "mair-light-t-x2")
    anonymous = restorecli.load_model(file, device="cpu")
    assert (anonymous.name, anonymous.task, anonymous.scale, anonymous.weights.source) == ("mair-light-t-x2", "sr", 2, "file")
    named = restorecli.load_model("mair-light-t-x2", weights=file, device="cpu")
    assert named.name == "mair-light-t-x2" and named.weights.sha256 == anonymous.weights.sha256
    with pytest.raises(CheckpointError, match="do not fit mair-light-s-x2"):
        restorecli.load_model("mair-light-s-x2", weights=file, device="cpu")


def test_restorecli_checkpoint_and_wrong_file(tmp_path: Path) -> None:
    config = models.spec("restorecli-light-x2").config_dict()
    net = models.build_arch("mair", config)
    models.save_checkpoint(tmp_path / "mine.safetensors", net, "mair", config, name="mine-x2", task="sr")
    loaded = restorecli.load_model(str(tmp_path / "mine.safetensors"), device="cpu")
    assert (loaded.name, loaded.task, loaded.scale) == ("mine-x2", "sr", 2)
    with pytest.raises(UsageError, match="x2 network"):
        restorecli.load_model(str(tmp_path / "mine.safetensors"), task="sr", scale=4, device="cpu")
    torch.save({"params": {"weight": torch.zeros(3, 3)}}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="match no known MaIR model") as error:
        restorecli.load_model(str(tmp_path / "wrong.pth"), device="cpu")
    assert "\n" not in str(error.value)



def test_bare_state_dict_read_as_the_callers_architecture(tmp_path: Path) -> None:
    """A bare state dict of an unregistered config loads only as the architecture the caller
    names (fine-tuning), strictly."""
    config = {**models.spec("restorecli-light-x2").config_dict(), "embed_dim": 12}
    net = models.build_arch("mair", config)
    torch.save(net.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="match no known MaIR model"):
        restorecli.load_model(str(tmp_path / "bare.pth"), task="sr", device="cpu")
    loaded = restorecli.load_model(str(tmp_path / "bare.pth"), task="sr", device="cpu", architecture=("mair", config))
    assert (loaded.name, loaded.arch, loaded.scale) == (None, "mair", 2)
    assert all(torch.equal(loaded.module.state_dict()[k], v) for k, v in net.state_dict().items())
    other = {**config, "embed_dim": 16}
    with pytest.raises(CheckpointError, match="do not fit"):
        restorecli.load_model(str(tmp_path / "bare.pth"), task="sr", device="cpu", architecture=("mair", other))

@pytest.mark.parametrize("name", models.names())
def test_descriptor_fields_of_every_registered_model(name: str) -> None:
    spec = models.spec(name)
    loaded = restorecli.load_model(name, pretrained=False, device="cpu")
    assert (loaded.name, loaded.arch, loaded.task, loaded.sigma, loaded.variant) == (name, spec.arch, spec.task, spec.sigma, spec.variant)
    assert loaded.scale == spec.scale and (loaded.in_channels, loaded.out_channels) == (3, 3)
    assert loaded.size_rule.multiple_of == (8 if spec.arch == "mairunet" else 1) and loaded.size_rule.min_size == 1
    assert loaded.tiling.tileable and loaded.precisions == ("fp32", "bf16", "fp16")
    assert loaded.weights.source == "none" and not loaded.module.training


def _export(tmp_path: Path, name: str, train_config: dict, arch: str, config: dict) -> dict:
    from restorecli.cli import app
    from restorecli.train.loop import CHECKPOINT_FORMAT, save_atomic

    net = models.build_arch(arch, config, device="meta").to_empty(device="cpu")
    state = {"format": CHECKPOINT_FORMAT, "arch": arch, "config": config, "name": name, "params": net.state_dict(),
             "iteration": 1, "best": {}, "train_config": train_config}  # fmt: skip
    save_atomic(state, tmp_path / f"{name}.pth")
    result = CliRunner().invoke(app, ["train", "export", str(tmp_path / f"{name}.pth"), str(tmp_path / f"{name}.safetensors")])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("table_name", "degradation", "task", "scale"),
    [
        ("mair-light-t-x2", ["bicubic"], "sr", 2),
        ("mair-deblur", [], "deblur", 1),
        ("mair-dehaze-its", [], "dehaze", 1),
        ("vamamba-light-sr-x2", ["bicubic"], "sr", 2),
    ],
)
def test_export_prints_the_right_task_and_scale(tmp_path: Path, table_name: str, degradation: list, task: str, scale: int) -> None:
    spec = models.spec(table_name)
    entry = _export(tmp_path, f"run-{table_name}", {"model": {"name": table_name}, "degradation": {"steps": degradation}}, spec.arch, spec.config_dict())
    assert (entry["task"], entry["scale"]) == (task, scale)
    assert models.read_checkpoint(tmp_path / f"run-{table_name}.safetensors").task == task


def test_backend_label_is_what_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    from restorecli import inference
    from restorecli.errors import BackendUnavailableError
    from restorecli.ops import scan_cpu

    monkeypatch.delenv("RESTORECLI_SCAN_BACKEND", raising=False)
    loaded = restorecli.load_model("restorecli-light-x2", device="cpu")
    restorer = inference.ImageRestorer(loaded, device="cpu", tile=0)
    assert restorer.scan_backend == f"cpu:{scan_cpu.cpu_kernel_status().implementation}"
    monkeypatch.setenv("RESTORECLI_CPU_SCAN", "torch")
    assert inference.ImageRestorer(loaded, device="cpu", tile=0).scan_backend == "cpu:torch"
    # an explicit backend whose own implementation cannot run is an error, never a silent fallback
    monkeypatch.setenv("RESTORECLI_SCAN_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError):
        inference.ImageRestorer(loaded, device="cpu", tile=0)
