"""Structural similarity, BasicSR/Wang et al. convention (11x11 Gaussian window, sigma 1.5, valid region).

Per channel: 11×11 Gaussian window with σ = 1.5, statistics over the *valid* part of the image only
(no padding), C1 = (0.01·255)², C2 = (0.03·255)², mean of the SSIM map; channels are averaged.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import cv2
import numpy as np

from restorecli.metrics.psnr import prepare_pair, prepare_tensor_pair

if TYPE_CHECKING:
    import torch

WINDOW_SIZE = 11
SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


@lru_cache(maxsize=1)
def gaussian_window_1d() -> np.ndarray:
    """The normalised 1-D Gaussian (11 taps, σ 1.5); the 2-D window is its outer product."""
    x = np.arange(WINDOW_SIZE, dtype=np.float64) - (WINDOW_SIZE - 1) / 2
    g = np.exp(-(x**2) / (2 * SIGMA**2))
    return g / g.sum()


def _valid_filter(img: np.ndarray) -> np.ndarray:
    # Separable filtering then dropping the border where the window would leave the image gives
    # exactly the 'valid' 2-D correlation, at a fraction of its cost.
    g = gaussian_window_1d()
    r = WINDOW_SIZE // 2
    return cv2.sepFilter2D(img, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT_101)[r:-r, r:-r]


def ssim_map(img1: np.ndarray, img2: np.ndarray) -> np.ndarray:
    """SSIM map of two single-channel images in [0, 255].

    Args:
        img1: (H, W) float64, H and W at least 11.
        img2: (H, W) float64.

    Returns:
        (H - 10, W - 10) SSIM values.
    """
    mu1, mu2 = _valid_filter(img1), _valid_filter(img2)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = _valid_filter(img1 * img1) - mu1_sq
    sigma2_sq = _valid_filter(img2 * img2) - mu2_sq
    sigma12 = _valid_filter(img1 * img2) - mu12
    return ((2 * mu12 + _C1) * (2 * sigma12 + _C2)) / ((mu1_sq + mu2_sq + _C1) * (sigma1_sq + sigma2_sq + _C2))


def ssim(img1: np.ndarray, img2: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """Mean SSIM, averaged over channels.

    Args:
        img1: (H, W, C) or (H, W) RGB/grey image in [0, 255], uint8 or float.
        img2: image of the same shape.
        crop_border: pixels removed on every side before comparing.
        y_channel: compare the BT.601 Y channel (unrounded) instead of each RGB channel.

    Returns:
        SSIM in [-1, 1]; exactly 1.0 for identical images.
    """
    a, b = prepare_pair(img1, img2, crop_border, y_channel)
    if min(a.shape[:2]) < WINDOW_SIZE:
        raise ValueError(f"SSIM needs images of at least {WINDOW_SIZE}x{WINDOW_SIZE}, got {a.shape[:2]}")
    return float(np.mean([ssim_map(a[..., c], b[..., c]).mean() for c in range(a.shape[2])]))


def ssim_torch(img1: torch.Tensor, img2: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """SSIM of batches of tensors, per image, without quantisation (training validation).

    The arguments are those of :func:`restorecli.metrics.psnr.psnr_torch`: (N, C, H, W) in [0, 1].

    Returns:
        (N,) float64 mean SSIM per image.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    a, b = prepare_tensor_pair(img1, img2, crop_border, y_channel)
    # Work on the [0, 255] scale so that C1/C2 are the same constants as for arrays.
    a, b = a * 255.0, b * 255.0
    channels = a.shape[1]
    g = torch.as_tensor(gaussian_window_1d(), dtype=torch.float64, device=a.device)
    window = torch.outer(g, g).expand(channels, 1, WINDOW_SIZE, WINDOW_SIZE)

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    mu1, mu2 = filt(a), filt(b)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = filt(a * a) - mu1_sq
    sigma2_sq = filt(b * b) - mu2_sq
    sigma12 = filt(a * b) - mu12
    smap = ((2 * mu12 + _C1) * (2 * sigma12 + _C2)) / ((mu1_sq + mu2_sq + _C1) * (sigma1_sq + sigma2_sq + _C2))
    return smap.mean(dim=(1, 2, 3))
