"""`restore eval`: data-set registry and download, protocols, baselines, reports, CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from typer.testing import CliRunner

from restorecli import datasets
from restorecli import evaluate as ev
from restorecli.cli import app, eval_cmd
from restorecli.errors import ChecksumError, ConfigError, DownloadError, ImageReadError, ImageWriteError, UsageError
from restorecli.eval_report import report_markdown

runner = CliRunner()


class Nearest(torch.nn.Module):
    """Pointwise toy SR model: tiling cannot change its output."""

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.upscale = scale
        self.in_chans = 3
        self.shapes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape[2:]))
        return F.interpolate(x, scale_factor=self.upscale, mode="nearest")


class PlusTileMean(torch.nn.Module):
    """Same-size toy model whose output depends on the whole tile (like MaIR's pooled gate)."""

    upscale = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x.mean()


# ----------------------------------------------------------------------------- protocols


def test_noise_follows_the_official_protocol() -> None:
    clean = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    bgr = clean[..., ::-1].astype(np.float32) / 255.0
    np.random.seed(0)  # what the official dataset does before every test image
    expected_bgr = bgr + np.random.normal(0, 25 / 255.0, bgr.shape)
    noisy = ev.add_noise(clean, 25)
    assert noisy.dtype == np.float32
    np.testing.assert_allclose(noisy, expected_bgr[..., ::-1], atol=1e-7)
    np.testing.assert_array_equal(ev.add_noise(clean, 25), noisy)  # seeded per image
    extreme = np.zeros((16, 16, 3), np.uint8)
    assert ev.add_noise(extreme, 50).min() < 0  # not clipped


@pytest.mark.parametrize(
    ("size", "tiles"),
    [(500, {183, 199}), (256, {140}), (199, {199})],  # 3×3 of 167 + 16, 2×2 of 128 + 12, one
)
def test_tiled_official_geometry_and_exactness(size: int, tiles: set[int]) -> None:
    model = Nearest(2)
    x = torch.rand(1, 3, size, size)
    out = ev.tiled_official(model, x, 2)
    assert {h for h, _ in model.shapes} == tiles and {w for _, w in model.shapes} == tiles
    assert len(model.shapes) == (size // 200 + 1) ** 2
    torch.testing.assert_close(out, F.interpolate(x, scale_factor=2, mode="nearest"), rtol=0, atol=0)


def test_tiled_official_pastes_each_tile_without_blending() -> None:
    x = torch.rand(1, 3, 256, 256)
    out = ev.tiled_official(PlusTileMean(), x, 1)
    # 2×2 tiles of 128 with shave 12: tile (0, 0) is rows/cols [0, 140), tile (1, 1) is [116, 256).
    torch.testing.assert_close(out[..., :128, :128], x[..., :128, :128] + x[..., :140, :140].mean())
    torch.testing.assert_close(out[..., 128:, 128:], x[..., 128:, 128:] + x[..., 116:, 116:].mean())
    torch.testing.assert_close(out[..., :128, 128:], x[..., :128, 128:] + x[..., :140, 116:].mean())


@pytest.mark.parametrize("protocol", ["tiled-official", "whole", "blended"])
def test_protocols_and_ensemble_agree_on_an_equivariant_model(protocol: str) -> None:
    x = torch.rand(1, 3, 37, 52)
    config = ev.EvalConfig(task="sr", scale=2, protocol=protocol, ensemble=True, tile=32, overlap=8, device="cpu")
    out = ev.make_runner(Nearest(2), config, "cpu")(x)
    torch.testing.assert_close(out, F.interpolate(x, scale_factor=2, mode="nearest"))


def test_config_rejects_nonsense() -> None:
    with pytest.raises(UsageError, match="protocol"):
        ev.EvalConfig(scale=4, protocol="fast")
    with pytest.raises(UsageError, match="--sigma"):
        ev.EvalConfig(task="denoise")
    with pytest.raises(UsageError, match="--baseline bicubic"):
        ev.EvalConfig(scale=4, baseline="noisy")
    assert ev.EvalConfig(scale=3).border == 3 and ev.EvalConfig(task="denoise", sigma=15).border == 0


# ----------------------------------------------------------------------------- end to end


def test_set5_x4_bicubic_baseline_and_report_files(shared_datasets: Path, tmp_path: Path) -> None:
    args = ["eval", "--dataset", "Set5", "--scale", "4", "--baseline", "bicubic", "--data-dir", str(shared_datasets)]
    result = runner.invoke(app, [*args, "--json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # BasicSR convention on the MATLAB LR files; the papers' 28.42/0.8104 used Y-only float resizing.
    assert summary["mean"]["psnr_y"] == pytest.approx(28.429, abs=0.001)
    assert summary["mean"]["ssim_y"] == pytest.approx(0.8111, abs=0.0001)
    assert {"psnr_rgb", "ssim_rgb"} <= set(summary["mean"])
    assert [r["name"] for r in summary["images"]] == ["baby", "bird", "butterfly", "head", "woman"]
    assert summary["protocol"] == "baseline" and summary["crop_border"] == 4 and summary["lr_source"] == "LR_bicubic"

    assert json.loads((tmp_path / "report.json").read_text())["mean"] == summary["mean"]
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [r["name"] for r in rows][-1] == "mean" and len(rows) == 6
    assert float(rows[-1]["psnr_y"]) == pytest.approx(summary["mean"]["psnr_y"])
    assert "28.43" in (tmp_path / "report.md").read_text()
    picture = cv2.imread(str(tmp_path / "comparison.png"))
    assert picture is not None and picture.shape[0] > 3 * 96 * 2  # three rows of zoomed crops


def test_generated_lr_equals_shipped_lr_on_set5(shared_datasets: Path) -> None:
    spec = datasets.get_dataset("Set5")
    folder = datasets.locate_dataset("Set5", shared_datasets)
    shipped = ev.evaluate_dataset(spec, folder, ev.EvalConfig(scale=3, baseline="bicubic"))
    generated = ev.evaluate_dataset(spec, folder, ev.EvalConfig(scale=3, baseline="bicubic", lr_from_hr=True))
    assert generated.meta["lr_source"] == "imresize"
    assert [r.psnr_y for r in shipped.images] == [r.psnr_y for r in generated.images]
    assert [r.ssim_rgb for r in shipped.images] == [r.ssim_rgb for r in generated.images]


def test_grey_bridge_of_set14_is_scored_as_rgb(shared_datasets: Path) -> None:
    spec = datasets.get_dataset("Set14")
    report = ev.evaluate_dataset(spec, shared_datasets / "Set14", ev.EvalConfig(scale=4, baseline="bicubic", limit=3))
    bridge = next(r for r in report.images if r.name == "bridge")
    assert math.isfinite(bridge.psnr_y) and bridge.psnr_rgb < bridge.psnr_y  # Y scales differences by 219/255


def test_model_through_cli_names_protocol_model_and_weights(
    shared_datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_load(
        task: str, model: str | None, weights: str | None, scale: int | None, sigma: float | None, **kw: object
    ):
        calls.append((task, weights, scale))
        return Nearest(4), ev.ModelInfo("toy-x4", "ab" * 32, "toy")

    monkeypatch.setattr(eval_cmd, "load_model", fake_load)
    args = ["eval", "-d", "Set5", "-s", "4", "--weights", "toy.pth", "--data-dir", str(shared_datasets)]
    result = runner.invoke(app, [*args, "--protocol", "tiled-official", "--limit", "2", "--json", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert calls == [("sr", "toy.pth", 4)]
    assert summary["model"] == "toy-x4" and summary["weights_sha256"] == "ab" * 32
    assert summary["protocol"] == "tiled-official" and summary["device"] == "cpu"
    assert len(summary["images"]) == 2 and summary["images"][0]["seconds"] > 0
    assert [r["forwards"] for r in summary["images"]] == [1, 1] and summary["backend"] is None  # LR <= 200 px
    # Nearest upscaling loses to bicubic, but it is a real score.
    assert 20 < summary["mean"]["psnr_y"] < 28.5
    picture = cv2.imread(str(tmp_path / "comparison.png"))
    assert picture.shape[1] > 3 * 96 * 2  # input, output and ground truth side by side
    markdown = (tmp_path / "report.md").read_text()
    assert "tiled-official" in markdown and "| forward passes per image | 1.0 |" in markdown


TINY_MAIR = {
    "upscale": 4,
    "in_chans": 3,
    "img_range": 1.0,
    "embed_dim": 12,
    "depths": [1],
    "d_state": 1,
    "ssm_ratio": 1.0,
    "mlp_ratio": 1.0,
    "upsampler": "pixelshuffledirect",
    "resi_connection": "1conv",
    "scan_len": 4,
}


def _skip_without_scan() -> None:
    import restorecli.ops

    if not hasattr(restorecli.ops, "selective_scan"):
        pytest.skip("the selective-scan op has not landed in this checkout yet")


def test_load_model_reads_a_restorecli_checkpoint(tmp_path: Path) -> None:
    from restorecli import models
    from restorecli.download import sha256_file
    from restorecli.models.checkpoint import save_checkpoint

    save_checkpoint(
        tmp_path / "tiny.safetensors", models.build_arch("mair", TINY_MAIR), "mair", TINY_MAIR, name="tiny-x4"
    )
    module, info = eval_cmd.load_model("sr", None, str(tmp_path / "tiny.safetensors"), 4, None)
    assert module.scale == 4 and module.module.upscale == 4
    assert info == ev.ModelInfo("tiny-x4", sha256_file(tmp_path / "tiny.safetensors"), "mair")


def test_tiny_mair_end_to_end(shared_datasets: Path, tmp_path: Path) -> None:
    _skip_without_scan()
    from restorecli import models
    from restorecli.models.checkpoint import save_checkpoint

    # A one-image copy of Set5 (bird: 72x72 LR) keeps the CPU forward passes short.
    for part in ("HR/bird.png", "LR_bicubic/X4/birdx4.png"):
        (tmp_path / "data" / "Set5" / part).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "Set5" / part).write_bytes((shared_datasets / "Set5" / part).read_bytes())
    save_checkpoint(
        tmp_path / "tiny.safetensors", models.build_arch("mair", TINY_MAIR), "mair", TINY_MAIR, name="tiny-x4"
    )
    base = ["eval", "-d", "Set5", "-s", "4", "--weights", str(tmp_path / "tiny.safetensors"), "--device", "cpu"]
    for protocol in ("whole", "tiled-official", "blended"):
        out = tmp_path / protocol
        args = [*base, "--data-dir", str(tmp_path / "data"), "--protocol", protocol, "--json", "-o", str(out)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        (image,) = summary["images"]
        assert image["name"] == "bird" and 0 < image["ssim_y"] <= 1 and image["psnr_y"] > 5
        assert summary["model"] == "tiny-x4" and summary["protocol"] == protocol
        assert summary["backend"] in ("cpu:compiled", "cpu:torch") and summary["forwards_per_image"] == 1
        assert {p.name for p in out.iterdir()} == {"report.json", "report.csv", "report.md", "comparison.png"}


def test_denoising_noisy_baseline(shared_datasets: Path) -> None:
    spec = datasets.get_dataset("McMaster")
    config = ev.EvalConfig(task="denoise", sigma=25, baseline="noisy", limit=2)
    report = ev.evaluate_dataset(spec, shared_datasets / "McMaster", config)
    summary = report.summary()
    assert summary["headline"] == "rgb" and summary["crop_border"] == 0
    # σ = 25 gives 20.17 dB before clipping and rounding, which only remove error.
    assert 20.1 < summary["mean"]["psnr_rgb"] < 21.5
    assert any("MaIR" in n and "Y" in n for n in summary["notes"])


# ----------------------------------------------------------------------------- what ran, and how often


class InferenceProbe(Nearest):
    """Nearest, noting whether autograd was recording during each forward pass."""

    def __init__(self, scale: int = 2) -> None:
        super().__init__(scale)
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        return super().forward(x)


def _tiny_set(folder: Path, lr_sizes: list[tuple[int, int]], scale: int) -> list[datasets.Sample]:
    """A set folder of random LR images (sides ``lr_sizes``) and their ground truth."""
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(lr_sizes):
        lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        _write(folder / "HR" / f"img{i}.png", cv2.resize(lr, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC))
        _write(folder / "LR_bicubic" / f"X{scale}" / f"img{i}x{scale}.png", lr)
    return datasets.list_samples(folder, scale)


def _blended_tiles(h: int, w: int) -> int:
    from restorecli.tiling import TilePlan

    return TilePlan.for_image(h, w, tile=32, overlap=8, scale=2).num_tiles


@pytest.mark.parametrize(
    ("protocol", "ensemble", "per_image"),
    [
        ("whole", False, [1, 1]),
        ("whole", True, [8, 8]),
        ("tiled-official", False, [2, 1]),  # 210x30: (210 // 200 + 1) x (30 // 200 + 1) tiles
        ("blended", False, [_blended_tiles(210, 30), _blended_tiles(20, 24)]),
    ],
)
def test_forward_passes_per_image_are_counted_and_run_without_autograd(
    tmp_path: Path, protocol: str, ensemble: bool, per_image: list[int]
) -> None:
    samples = _tiny_set(tmp_path, [(210, 30), (20, 24)], 2)
    model = InferenceProbe(2)
    config = ev.EvalConfig(scale=2, protocol=protocol, ensemble=ensemble, tile=32, overlap=8, device="cpu")
    report = ev.evaluate(samples, config, model=model, model_info=ev.ModelInfo("probe"))
    assert [r.forwards for r in report.images] == per_image
    assert report.summary()["forwards_per_image"] == pytest.approx(sum(per_image) / 2)
    # one untimed warm-up pass before the first image, none per image
    assert len(model.grad_enabled) == sum(per_image) + 1 and not any(model.grad_enabled)
    assert model._forward_pre_hooks == {}  # the counter is removed afterwards


def test_blended_measures_its_tile_once_per_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from restorecli.inference import ImageRestorer

    measured = []
    real = ImageRestorer.auto_tile

    def auto_tile(self: ImageRestorer) -> int:
        measured.append(real(self))
        return measured[-1]

    monkeypatch.setattr(ImageRestorer, "auto_tile", auto_tile)
    samples = _tiny_set(tmp_path, [(40, 48), (36, 44), (48, 40)], 2)  # larger than the probe
    report = ev.evaluate(samples, ev.EvalConfig(scale=2, device="cpu"), model=Nearest(2), model_info=ev.ModelInfo("n"))
    assert len(measured) == 1 and report.meta["tile"] == measured[0]
    assert [r.forwards for r in report.images] == [1, 1, 1]
    assert report.meta["setup_seconds"] > 0


@pytest.mark.parametrize("env", [{}, {"RESTORECLI_CPU_SCAN": "torch"}, {"RESTORECLI_SCAN_BACKEND": "ref"}])
def test_backend_names_the_scan_implementation_that_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    _skip_without_scan()
    from restorecli import models
    from restorecli.ops import scan_cpu

    for name in ("RESTORECLI_CPU_SCAN", "RESTORECLI_SCAN_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fallback = []
    torch_scan = scan_cpu.scan_torch
    monkeypatch.setattr(scan_cpu, "scan_torch", lambda x: fallback.append(x) or torch_scan(x))
    samples = _tiny_set(tmp_path, [(12, 16)], 4)
    model = models.build_arch("mair", TINY_MAIR)
    config = ev.EvalConfig(scale=4, protocol="whole", device="cpu")
    backend = ev.evaluate(samples, config, model=model, model_info=ev.ModelInfo("tiny")).summary()["backend"]
    if "RESTORECLI_SCAN_BACKEND" in env:
        assert backend == "ref" and not fallback
    elif env:
        assert backend == "cpu:torch" and fallback
    else:  # the compiled kernel whenever it builds (with the system C++ compiler), else its fallback
        assert backend == f"cpu:{scan_cpu.cpu_kernel_status().implementation}"
        assert bool(fallback) == (backend == "cpu:torch")


def test_a_training_step_can_follow_an_evaluation(tmp_path: Path) -> None:
    _skip_without_scan()
    from restorecli import models

    model = models.build_arch("mair", TINY_MAIR)
    config = ev.EvalConfig(scale=4, protocol="whole", device="cpu")
    ev.evaluate(_tiny_set(tmp_path, [(12, 16)], 4), config, model=model, model_info=ev.ModelInfo("tiny"))
    model.train()
    model(torch.rand(1, 3, 12, 16)).mean().backward()  # what eval cached (scan orders) is usable by autograd


def test_restore_commands_report_the_same_backend_label() -> None:
    _skip_without_scan()
    from restorecli import inference, models
    from restorecli.cli import restore_cmds
    from restorecli.ops.scan_cpu import cpu_kernel_status

    module = models.build_arch("mair", TINY_MAIR)
    network = models.LoadedModel(
        module=module, name="tiny-x4", arch="mair", config=models.config_from_mapping("mair", TINY_MAIR), task="sr",
        scale=4, in_channels=3, out_channels=3, size_rule=models.SizeRule(), tiling=models.TilingPolicy(),
        precisions=models.PRECISIONS, device=torch.device("cpu"),
        weights=models.WeightsProvenance(path="tiny.safetensors", sha256="ab" * 32, source="file"),
    )  # fmt: skip
    settings = restore_cmds._network_settings(network, inference.ImageRestorer(network, device="cpu"))
    expected = f"cpu:{cpu_kernel_status().implementation}"
    assert settings["backend"] == inference.scan_backend_label(module, "cpu") == expected
    assert inference.scan_backend_label(Nearest(2), "cpu") is None  # no selective scans


# ----------------------------------------------------------------------------- scoring existing outputs


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img[..., ::-1])


def test_pred_dir_scoring(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (42, 40, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (42, 40, 3), dtype=np.uint8)
    _write(tmp_path / "gt" / "a.png", a)
    _write(tmp_path / "gt" / "b.png", b)
    _write(tmp_path / "pred" / "a_SwinIR.png", a[:40])  # GT 2 rows taller: cropped as for x4
    _write(tmp_path / "pred" / "bx4.png", np.clip(b.astype(int) + 3, 0, 255).astype(np.uint8)[:40])
    args = ["eval", "--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt"), "--scale", "4", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    images = {r["name"]: r for r in json.loads(result.stdout)["images"]}
    assert images["a"]["psnr_y"] is None and images["a"]["ssim_rgb"] == 1.0  # identical: infinite PSNR
    assert 35 < images["b"]["psnr_rgb"] < 39

    # A prediction of the wrong size and a missing one: both reported, the others still scored,
    # the means cover them, and the exit status says the report is partial.
    _write(tmp_path / "gt" / "c.png", a)
    _write(tmp_path / "pred" / "c.png", a[:20])
    _write(tmp_path / "gt" / "d.png", b)
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert [r["name"] for r in document["images"]] == ["a", "b"] and document["images_total"] == 4
    assert [f["name"] for f in document["failed"]] == ["c", "d"]
    assert "c.png is 40x20" in document["failed"][0]["error"] and "no prediction for d.png" in document["failed"][1]["error"]
    assert any("2 of 4 images could not be scored" in note for note in document["notes"])
    assert "Error: c.png is 40x20" in result.stderr and "2 of 4 images could not be scored" in result.stderr

    for name in ("a", "b"):
        (tmp_path / "gt" / f"{name}.png").unlink()
    result = runner.invoke(app, args)
    assert isinstance(result.exception, ImageReadError), result.output
    assert "none of the 2 images could be scored: c.png is 40x20" in str(result.exception)


def test_pred_dir_table_shows_names_as_they_are_and_a_file_as_out_is_refused_first(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    _write(tmp_path / "[bold] gt" / "IMG [edited].png", image)
    _write(tmp_path / "pred" / "IMG [edited].png", image)
    args = ["eval", "--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "[bold] gt"), "--scale", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # rich read "[edited]" as a style tag and showed "IMG "
    assert "IMG [edited]" in result.stdout and f"{tmp_path / '[bold] gt'}: PSNR inf dB" in result.stdout

    (tmp_path / "report.txt").write_text("mine")
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "report.txt")])
    assert isinstance(result.exception, UsageError)
    assert str(result.exception) == f"--out: expected a folder, got the existing file {tmp_path / 'report.txt'}"
    assert (tmp_path / "report.txt").read_text() == "mine"

    # a report folder that cannot be written comes after the scores, which are printed all the same
    result = runner.invoke(app, [*args, "--json", "--out", str(tmp_path / "report.txt" / "run")])
    assert isinstance(result.exception, ImageWriteError) and "report.txt is a file, not a folder" in str(result.exception)
    assert [image["name"] for image in json.loads(result.stdout)["images"]] == ["IMG [edited]"]


# ----------------------------------------------------------------------------- data sets


def test_registry_and_names() -> None:
    assert datasets.get_dataset("set14").name == "Set14"
    with pytest.raises(ConfigError, match="Set5"):
        datasets.get_dataset("Set6")
    assert datasets.image_key("img_001_SRF_4_LR") == "img_001"
    assert datasets.image_key("img_001_SRF_3_HR") == "img_001"
    assert datasets.image_key("babyx4", 4) == "baby" and datasets.image_key("babyx4", 2) == "babyx4"
    for name in ("Set5", "Set14", "B100", "Urban100", "Manga109", "CBSD68", "Kodak24", "McMaster", "BSD68", "Set12"):
        assert name in datasets.DATASETS


def test_b100_pairs_selfexsr_names(shared_datasets: Path) -> None:
    samples = datasets.list_samples(shared_datasets / "B100", 2)
    assert len(samples) == 100
    assert samples[0].name == "img_001" and samples[0].lr is not None and samples[0].lr.name == "img_001_SRF_2_LR.png"
    assert all(s.lr is None for s in datasets.list_samples(shared_datasets / "CBSD68"))


def test_pins_agree_with_the_shared_sha256sums(shared_datasets: Path) -> None:
    assert datasets.build_pins(shared_datasets)["sets"] == datasets.load_pins()
    assert datasets.load_pins()["Set5"]["files"][0]["source"] == "testsets/Set5/HR/baby.png"


def test_download_uses_pinned_raw_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import restorecli.download

    calls = []

    def fake(url: str, dest: Path, *, sha256: str, size: int | None = None, **kwargs: object) -> Path:
        calls.append((url, Path(dest), sha256, size))
        return Path(dest)

    monkeypatch.setattr(restorecli.download, "download_file", fake)
    monkeypatch.delenv("RESTORECLI_MIRROR", raising=False)
    folder = datasets.download_dataset("Set5", tmp_path)
    assert folder == tmp_path / "Set5" and (folder / ".complete").is_file()
    assert len(calls) == 20
    url, dest, sha, size = calls[0]
    assert url == (
        "https://raw.githubusercontent.com/JingyunLiang/SwinIR/6545850fbf8df298df73d81f3e8cba638787c8bd/"
        "testsets/Set5/HR/baby.png"
    )
    assert dest == tmp_path / "Set5" / "HR" / "baby.png" and len(sha) == 64 and size and size > 0


def test_download_from_a_mirror_verifies_and_caches(
    shared_datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESTORECLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RESTORECLI_MIRROR", shared_datasets.parent.resolve().as_uri())
    folder = datasets.locate_dataset("Set5")
    assert folder == tmp_path / "cache" / "datasets" / "Set5"
    assert len(datasets.list_samples(folder, 4)) == 5
    monkeypatch.delenv("RESTORECLI_MIRROR")
    assert datasets.locate_dataset("Set5") == folder  # cached: no network needed

    # A mirror with a corrupted file: the pin catches it.
    bad = tmp_path / "bad" / "datasets" / "Set5" / "HR"
    bad.mkdir(parents=True)
    (bad / "baby.png").write_bytes(b"not the pinned bytes")
    monkeypatch.setenv("RESTORECLI_MIRROR", (tmp_path / "bad").as_uri())
    with pytest.raises(ChecksumError):
        datasets.download_dataset("Set5", tmp_path / "other")


def test_unpinned_and_offline_sets_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORECLI_CACHE", str(tmp_path))
    monkeypatch.setenv("RESTORECLI_OFFLINE", "1")
    monkeypatch.delenv("RESTORECLI_MIRROR", raising=False)
    with pytest.raises(DownloadError, match="--data-dir"):
        datasets.locate_dataset("Urban100")
    with pytest.raises(DownloadError, match="offline"):
        datasets.locate_dataset("Set12")
    with pytest.raises(ImageReadError, match="Urban100"):
        datasets.locate_dataset("Urban100", tmp_path)


def test_datasets_cli(shared_datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORECLI_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(app, ["datasets", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["Set5"]["source"].startswith("JingyunLiang/SwinIR@") and rows["Urban100"]["source"] is None
    monkeypatch.setenv("RESTORECLI_MIRROR", shared_datasets.parent.resolve().as_uri())
    result = runner.invoke(app, ["datasets", "download", "Set12", "--dest", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()) == tmp_path / "d" / "Set12"


def test_cli_usage_errors(shared_datasets: Path) -> None:
    base = ["eval", "--data-dir", str(shared_datasets)]
    for args, match in [
        (["-d", "CBSD68", "--baseline", "noisy"], "--sigma"),
        (["-d", "Set5", "--baseline", "bicubic"], "--scale"),
        (["--pred-dir", "x"], "together"),
    ]:
        result = runner.invoke(app, [*base, *args])
        assert isinstance(result.exception, UsageError), (args, result.output)
        assert match in str(result.exception)


def test_ground_truth_smaller_than_the_scale_is_a_read_error(tmp_path: Path) -> None:
    """A 2x300 ground truth cannot give a x4 low-resolution input: a one-line error naming the
    file, not a traceback from the resize of a 0-pixel image."""
    _write(tmp_path / "HR" / "strip.png", np.full((2, 300, 3), 128, dtype=np.uint8))
    spec = datasets.get_dataset("Set5")
    with pytest.raises(ImageReadError, match=r"strip\.png is 300x2: too small for x4"):
        ev.evaluate_dataset(spec, tmp_path, ev.EvalConfig(scale=4, baseline="bicubic", lr_from_hr=True))


def test_one_bad_image_is_reported_and_the_others_are_scored(tmp_path: Path) -> None:
    """A truncated file and a too-small ground truth in a set of four: the report covers the two
    good images, lists the other two with their reasons, and says so in a note."""
    rng = np.random.default_rng(1)
    for name in ("a", "c"):
        _write(tmp_path / "HR" / f"{name}.png", rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    _write(tmp_path / "HR" / "b.png", np.full((2, 300, 3), 128, dtype=np.uint8))
    good = (tmp_path / "HR" / "a.png").read_bytes()
    (tmp_path / "HR" / "d.png").write_bytes(good[: len(good) // 2])
    spec = datasets.get_dataset("Set5")
    report = ev.evaluate_dataset(spec, tmp_path, ev.EvalConfig(scale=4, baseline="bicubic", lr_from_hr=True))
    assert [r.name for r in report.images] == ["a", "c"] and report.meta["images_total"] == 4
    assert [f["name"] for f in report.meta["failed"]] == ["b", "d"]
    assert "too small for x4" in report.meta["failed"][0]["error"] and "d.png" in report.meta["failed"][1]["error"]
    assert any("2 of 4 images could not be scored" in note for note in report.meta["notes"])
    assert "Not scored:\n\n- b: " in report_markdown(report)
