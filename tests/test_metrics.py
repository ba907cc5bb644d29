"""PSNR/SSIM/Y against hand-computed values and their defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from restorecli.metrics import psnr, psnr_torch, rgb_to_y, rgb_to_y_torch, ssim, ssim_torch
from restorecli.metrics.ssim import gaussian_window_1d


def _random_pair(h: int = 40, w: int = 36) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    return a, b


@pytest.mark.parametrize(
    ("rgb", "y"),
    [
        ((0, 0, 0), 16.0),
        ((255, 255, 255), 235.0),
        ((255, 0, 0), 16 + 65.481),
        ((0, 255, 0), 16 + 128.553),
        ((0, 0, 255), 16 + 24.966),
        ((128, 64, 32), 16 + (65.481 * 128 + 128.553 * 64 + 24.966 * 32) / 255),
    ],
)
def test_y_known_values(rgb: tuple[int, int, int], y: float) -> None:
    img = np.array(rgb, dtype=np.uint8).reshape(1, 1, 3)
    assert rgb_to_y(img)[0, 0] == pytest.approx(y, abs=1e-9)
    t = torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1) / 255
    assert float(rgb_to_y_torch(t)) * 255 == pytest.approx(y, abs=1e-9)


def test_y_of_grey_equals_y_of_replicated_rgb() -> None:
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_allclose(rgb_to_y(grey), rgb_to_y(np.repeat(grey[..., None], 3, axis=2)), atol=1e-9)
    np.testing.assert_allclose(rgb_to_y(grey[..., None]), rgb_to_y(grey), atol=0)


def test_identical_images_give_inf_psnr_and_ssim_one() -> None:
    a, _ = _random_pair()
    assert psnr(a, a) == math.inf
    assert psnr(a, a, 4, y_channel=True) == math.inf
    assert ssim(a, a) == 1.0
    assert ssim(a, a, 4, y_channel=True) == 1.0
    t = torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255
    assert torch.isinf(psnr_torch(t, t)).all()
    assert float(ssim_torch(t, t)) == pytest.approx(1.0, abs=1e-12)


def test_psnr_hand_computed() -> None:
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    b[1, 2] = 255  # MSE = 255² / 16
    assert psnr(a, b) == pytest.approx(10 * math.log10(16))
    # Constant offset d: PSNR = 20 log10(255 / d); on Y the offset shrinks by 219/255.
    c = np.full((20, 20, 3), 100.0)
    assert psnr(c, c + 5) == pytest.approx(20 * math.log10(255 / 5))
    assert psnr(c, c + 5, y_channel=True) == pytest.approx(20 * math.log10(255 / (5 * 219 / 255)))


def test_uint8_and_float_inputs_agree() -> None:
    a, b = _random_pair()
    assert psnr(a, b) == pytest.approx(psnr(a.astype(np.float32), b.astype(np.float64)), abs=1e-9)
    assert ssim(a, b, 2, True) == pytest.approx(ssim(a.astype(np.float64), b.astype(np.float32), 2, True), abs=1e-9)


def test_crop_border_removes_exactly_that_many_pixels() -> None:
    a = np.full((30, 30, 3), 120, np.uint8)
    b = a.copy()
    b[2, 10] = 0  # inside a 3-pixel border
    assert psnr(a, b, crop_border=3) == math.inf
    assert ssim(a, b, crop_border=3) == 1.0
    assert psnr(a, b, crop_border=2) < math.inf
    # Only the pixels inside the border count: one wrong pixel (3 values) among 26·26·3 values.
    assert psnr(a, b, crop_border=2) == pytest.approx(10 * math.log10(255**2 / (3 * 120**2 / (26 * 26 * 3))))


def test_ssim_of_constant_images_is_analytic() -> None:
    # No variance: SSIM reduces to the luminance term (2ab + C1) / (a² + b² + C1).
    c1 = (0.01 * 255) ** 2
    a, b = 100.0, 140.0
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(np.full((16, 16), a), np.full((16, 16), b)) == pytest.approx(expected, rel=1e-12)


def _ssim_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Definition: 11×11 Gaussian-weighted statistics at every fully-inside window position."""
    g = gaussian_window_1d()
    w = np.outer(g, g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * px * px).sum() - mx * mx, (w * py * py).sum() - my * my
            cxy = (w * px * py).sum() - mx * my
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_its_definition() -> None:
    a, b = _random_pair(24, 22)
    expected = np.mean([_ssim_direct(a[..., c].astype(float), b[..., c].astype(float)) for c in range(3)])
    assert ssim(a, b) == pytest.approx(expected, abs=1e-10)
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    assert ssim(a, b, y_channel=True) == pytest.approx(_ssim_direct(ya, yb), abs=1e-10)


def test_gaussian_window() -> None:
    g = gaussian_window_1d()
    assert g.shape == (11,)
    assert g.sum() == pytest.approx(1.0)
    assert g[5] / g[4] == pytest.approx(math.exp(1 / (2 * 1.5**2)))


@pytest.mark.parametrize("y_channel", [False, True])
def test_torch_versions_match_numpy(y_channel: bool) -> None:
    a, b = _random_pair()
    ta = torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].double() / 255
    batch_a, batch_b = torch.cat([ta, tb]), torch.cat([tb, tb])
    p = psnr_torch(batch_a, batch_b, 3, y_channel)
    s = ssim_torch(batch_a, batch_b, 3, y_channel)
    assert p.shape == s.shape == (2,)
    assert float(p[0]) == pytest.approx(psnr(a, b, 3, y_channel), abs=1e-8)
    assert float(s[0]) == pytest.approx(ssim(a, b, 3, y_channel), abs=1e-8)
    assert torch.isinf(p[1])


def test_misuse_raises_value_error() -> None:
    a, b = _random_pair()
    with pytest.raises(ValueError, match="shape"):
        psnr(a, b[:-1])
    with pytest.raises(ValueError, match="at least 11"):
        ssim(a[:10, :10], b[:10, :10])
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, b, crop_border=20)
