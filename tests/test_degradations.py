"""restorecli.degradations: the legacy steps stay as they were; camera noise and depth haze."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from restorecli import degradations as dg
from restorecli.errors import ConfigError
from restorecli.train.config import DegradationSection, apply_overrides, config_from_mapping

TINY_DN = {
    "model": {"name": "mair-dn-s25", "config": {"embed_dim": 8, "depths": [1], "d_state": 1}},
    "data": {"hq": ["hq"], "patch": 8, "batch": 2},
    "degradation": {"scale": 1, "steps": ["camera_noise"]},
    "schedule": {"iterations": 10},
}


def _texture(seed: int = 7, shape: tuple[int, int] = (40, 52)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (*shape, 3)).astype(np.float32)


# Sum, one pixel and the sum of squares of each legacy step on _texture() with generator seed 3,
# recorded before the degradations moved out of restorecli/train/data.py: models trained with
# these steps must keep getting the same data.
LEGACY = {
    "noise": (3111.5826067873277, 0.6991570591926575, 2135.924192249695),
    "blur": (3106.5433715432882, 0.6710716485977173, 1615.3037399761645),
    "haze": (3836.7564186044037, 0.802899956703186, 2569.695807717924),
    "bicubic": (776.5821419507265, 0.2071031779050827, 408.3792476836229),
}


@pytest.mark.parametrize("step", sorted(LEGACY))
def test_legacy_steps_are_unchanged(step: str) -> None:
    cfg = DegradationSection(scale=2 if step == "bicubic" else 1, steps=(step,))
    out = dg.degrade(_texture(), cfg.steps, cfg, np.random.default_rng(3))
    assert out.dtype == np.float32
    total, pixel, squares = LEGACY[step]
    assert float(out.astype(np.float64).sum()) == pytest.approx(total, rel=1e-9)
    assert float(out[5, 7, 1]) == pytest.approx(pixel, abs=1e-7)
    assert float((out.astype(np.float64) ** 2).sum()) == pytest.approx(squares, rel=1e-9)


@pytest.mark.parametrize("step", ["camera_noise", "haze_depth"])
@pytest.mark.parametrize("shape", [(37, 50), (64, 64), (1, 9)])
def test_new_steps_keep_shape_dtype_and_range_and_are_seeded(step: str, shape: tuple[int, int]) -> None:
    cfg = DegradationSection(steps=(step,), camera_jpeg_prob=0.5)
    img = _texture(1, shape)
    out = dg.degrade(img, cfg.steps, cfg, np.random.default_rng(11))
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.array_equal(out, dg.degrade(img, cfg.steps, cfg, np.random.default_rng(11)))
    assert not np.array_equal(out, dg.degrade(img, cfg.steps, cfg, np.random.default_rng(12)))


# ----------------------------------------------------------------------------- camera noise


def test_srgb_curve_round_trips_and_darkens() -> None:
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(dg.linear_to_srgb(dg.srgb_to_linear(x)), x, atol=2e-6)
    assert dg.srgb_to_linear(np.float32(0.5)) == pytest.approx(0.214, abs=1e-3)


def test_sensor_noise_variance_grows_with_intensity() -> None:
    rng = np.random.default_rng(0)
    shot, read = 4e-3, 1e-2
    variances = []
    for level in (0.05, 0.3, 0.9):
        flat = np.full((256, 256), level, np.float32)
        variance = float(np.var(dg.add_sensor_noise(flat, shot, read, rng) - flat))
        assert variance == pytest.approx(shot * level + read**2, rel=0.03)
        variances.append(variance)
    assert variances == sorted(variances)


def test_bilinear_demosaicing_keeps_samples_and_flat_colours() -> None:
    img = _texture(2, (9, 12))
    raw = dg.mosaic_rggb(img)
    rgb = dg.demosaic_bilinear(raw)
    np.testing.assert_array_equal(dg.mosaic_rggb(rgb), raw)  # measured samples are kept
    flat = np.broadcast_to(np.array([0.2, 0.5, 0.9], np.float32), (9, 12, 3))
    np.testing.assert_allclose(dg.demosaic_bilinear(dg.mosaic_rggb(flat)), flat, atol=1e-6)  # borders too


def _correlations(residual: np.ndarray) -> tuple[float, float]:
    """Correlation of horizontal neighbours (green) and of red with green."""
    g = residual[..., 1]
    horizontal = np.corrcoef(g[:, :-1].ravel(), g[:, 1:].ravel())[0, 1]
    cross = np.corrcoef(residual[..., 0].ravel(), g.ravel())[0, 1]
    return float(horizontal), float(cross)


def test_camera_noise_is_correlated_in_space_and_jpeg_ties_the_channels() -> None:
    grey = np.full((128, 128, 3), 0.5, np.float32)
    options = {"shot": (4e-3, 4e-3), "read": (2e-3, 2e-3), "jpeg_quality": (90, 90)}
    noisy = dg.camera_noise(grey, np.random.default_rng(0), jpeg_prob=0.0, **options)
    horizontal, cross = _correlations(noisy - grey)
    # Demosaicing spreads each photosite's noise to its neighbours, but bilinear interpolation
    # keeps the colours apart; JPEG's chroma subsampling then ties the channels together.
    assert horizontal > 0.2 and abs(cross) < 0.05
    assert 0.005 < float(np.std(noisy - grey)) < 0.1
    compressed = dg.camera_noise(grey, np.random.default_rng(0), jpeg_prob=1.0, **options)
    assert _correlations(compressed - grey)[1] > 0.3
    white = dg.add_noise(grey, 10.0, np.random.default_rng(0))
    assert max(abs(c) for c in _correlations(white - grey)) < 0.05


def test_camera_noise_jpeg_compresses_to_8_bit() -> None:
    img = _texture(3, (32, 40))
    options = {"shot": (1e-3, 1e-3), "read": (1e-3, 1e-3), "jpeg_quality": (30, 30)}
    compressed = dg.camera_noise(img, np.random.default_rng(5), jpeg_prob=1.0, **options)
    plain = dg.camera_noise(img, np.random.default_rng(5), jpeg_prob=0.0, **options)
    np.testing.assert_array_equal(np.round(compressed * 255) / 255, compressed)
    assert 0.0 < float(np.abs(compressed - plain).mean()) < 0.2


# ----------------------------------------------------------------------------- haze over depth


def test_depth_layout_is_far_at_the_top() -> None:
    img = _texture(4, (96, 128))
    for seed in range(5):
        depth = dg.depth_layout(img, np.random.default_rng(seed))
        assert depth.shape == (96, 128) and depth.min() >= 0 and depth.max() <= 1
        assert depth[:24].mean() > depth[-24:].mean() + 0.2


def test_depth_haze_lowers_contrast_more_at_the_top() -> None:
    img = _texture(5, (96, 128))
    kept_top, kept_bottom = [], []
    for seed in range(5):
        hazy = dg.add_depth_haze(img, np.random.default_rng(seed), beta=(1.0, 2.0), airlight=(0.8, 0.9), tint=0.05)
        kept_top.append(hazy[:24].std() / img[:24].std())
        kept_bottom.append(hazy[-24:].std() / img[-24:].std())
        assert hazy[:24].mean() > img[:24].mean()  # the bright airlight replaces the scene
    assert all(t < b for t, b in zip(kept_top, kept_bottom, strict=True))
    assert max(kept_bottom) < 1.0  # and some haze everywhere


# ----------------------------------------------------------------------------- config


def test_new_degradation_keys_validate_like_the_others() -> None:
    overrides = ["degradation.camera_shot=[1e-3, 2e-3]", "degradation.camera_jpeg_quality=80", "degradation.haze_beta=1.5"]
    cfg = config_from_mapping(apply_overrides(TINY_DN, overrides))
    assert cfg.degradation.camera_shot == (1e-3, 2e-3) and cfg.degradation.camera_jpeg_quality == (80, 80)
    assert cfg.degradation.haze_beta == (1.5, 1.5)
    for override, match in [
        ("degradation.camera_sho=[1, 2]", "did you mean 'degradation.camera_shot'"),
        ("degradation.camera_read=[0.01, 0.001]", "low <= high"),
        ("degradation.camera_shot=[0, 0.01]", "> 0"),
        ("degradation.camera_jpeg_quality=[50, 101]", r"\[1, 100\]"),
        ("degradation.camera_jpeg_prob=2", "camera_jpeg_prob"),
        ("degradation.haze_beta=[-1, 1]", ">= 0"),
        ("degradation.steps=[haze_dept]", "did you mean 'haze_depth'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            config_from_mapping(apply_overrides(TINY_DN, [override]))


def test_training_samples_with_the_new_steps_are_deterministic(tmp_path: Path) -> None:
    import cv2

    from restorecli.train.data import TrainDataset

    (tmp_path / "hq").mkdir()
    cv2.imwrite(str(tmp_path / "hq" / "a.png"), (_texture(6, (30, 34)) * 255).astype(np.uint8))
    overrides = [f"data.hq=[{tmp_path / 'hq'}]", "degradation.steps=[haze_depth, camera_noise]"]
    cfg = config_from_mapping(apply_overrides(TINY_DN, overrides))
    first = TrainDataset(cfg.data, cfg.degradation, seed=1)[(0, 0)]
    again = TrainDataset(cfg.data, cfg.degradation, seed=1)[(0, 0)]
    assert first[0].shape == first[1].shape == (3, 8, 8)
    assert np.array_equal(first[0], again[0]) and not np.array_equal(first[0], first[1])


def test_exports_name_the_task_of_the_new_steps() -> None:
    from restorecli.train.export import training_task

    net = {"upscale": 1, "in_chans": 3, "img_range": 1.0, "embed_dim": 8, "depths": [1], "d_state": 1,
           "ssm_ratio": 1.0, "mlp_ratio": 1.0, "upsampler": "", "resi_connection": "1conv", "scan_len": 4}  # fmt: skip
    assert training_task({"degradation": {"steps": ["camera_noise"]}}, "mair", net) == "denoise"
    assert training_task({"degradation": {"steps": ["haze_depth"]}}, "mair", net) == "dehaze"


def test_the_degradation_names_the_task_before_a_borrowed_model_name() -> None:
    """The bundled deblur/dehaze recipes borrow a denoiser's name for their network and add mild
    noise after the blur or haze: their runs (and a fine-tune from their files) do deblur and
    dehaze, not denoise; paired data without a degradation keeps the named model's task."""
    from restorecli.train.export import training_task

    net = {"upscale": 1, "in_chans": 3, "img_range": 1.0, "embed_dim": 8, "depths": [1], "d_state": 1,
           "ssm_ratio": 1.0, "mlp_ratio": 1.0, "upsampler": "", "resi_connection": "1conv", "scan_len": 4}  # fmt: skip
    borrowed = {"model": {"name": "mair-dn-s25"}}
    assert training_task({**borrowed, "degradation": {"steps": ["blur", "noise"]}}, "mair", net) == "deblur"
    assert training_task({**borrowed, "degradation": {"steps": ["haze_depth", "noise"]}}, "mair", net) == "dehaze"
    assert training_task({**borrowed, "degradation": {"steps": ["noise"]}}, "mair", net) == "denoise"
    assert training_task({"model": {"name": "mair-deblur"}, "degradation": {"steps": []}}, "mair", net) == "deblur"
    paired = {"model": {"name": "mair-deblur"}, "data": {"lq": ["blurred"]}, "degradation": {"steps": ["noise"]}}
    assert training_task(paired, "mair", net) == "deblur"  # steps left by an override do not apply to pairs
