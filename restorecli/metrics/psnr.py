"""Peak signal-to-noise ratio, BasicSR-compatible (``crop_border``, optional BT.601 Y channel).

Arrays are HWC (or HW) images in [0, 255], uint8 or float; tensors are NCHW in [0, 1]. The
benchmark convention computes both on uint8-quantised images: quantise first
(``restorecli.io.quantize_to_uint8``), then call these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from restorecli.metrics.color import rgb_to_y, rgb_to_y_torch

if TYPE_CHECKING:
    import torch


def prepare_pair(
    img1: np.ndarray, img2: np.ndarray, crop_border: int, y_channel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Check two images against each other, crop their borders, optionally take Y.

    Args:
        img1: (H, W, C) or (H, W) image in [0, 255].
        img2: image of the same shape.
        crop_border: pixels removed on every side (SR benchmarks: the scale).
        y_channel: compare BT.601 Y only.

    Returns:
        Two (H', W', C') float64 arrays.
    """
    a, b = np.asarray(img1), np.asarray(img2)
    if a.ndim == 2:
        a = a[..., None]
    if b.ndim == 2:
        b = b[..., None]
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if crop_border < 0 or 2 * crop_border >= min(a.shape[:2]):
        raise ValueError(f"crop_border {crop_border} leaves nothing of a {a.shape[0]}x{a.shape[1]} image")
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        return rgb_to_y(a)[..., None], rgb_to_y(b)[..., None]
    return a.astype(np.float64), b.astype(np.float64)


def prepare_tensor_pair(
    img1: torch.Tensor, img2: torch.Tensor, crop_border: int, y_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor counterpart of :func:`prepare_pair`: (N, C, H, W) in [0, 1] → float64, cropped, optionally Y."""
    if img1.shape != img2.shape:
        raise ValueError(f"tensors differ in shape: {tuple(img1.shape)} vs {tuple(img2.shape)}")
    if crop_border:
        img1 = img1[..., crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[..., crop_border:-crop_border, crop_border:-crop_border]
    a, b = img1.double(), img2.double()
    if y_channel:
        return rgb_to_y_torch(a), rgb_to_y_torch(b)
    return a, b


def psnr(img1: np.ndarray, img2: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB with peak 255 over all remaining pixels and channels.

    Args:
        img1: (H, W, C) or (H, W) RGB/grey image in [0, 255], uint8 or float.
        img2: image of the same shape.
        crop_border: pixels removed on every side before comparing.
        y_channel: compare the BT.601 Y channel (unrounded, in [16, 235]) instead of RGB.

    Returns:
        PSNR in dB; ``inf`` for identical images (MSE 0), as BasicSR.
    """
    a, b = prepare_pair(img1, img2, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def psnr_torch(img1: torch.Tensor, img2: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """PSNR of batches of tensors, per image, without quantisation (training validation).

    Args:
        img1: (N, C, H, W) in [0, 1].
        img2: (N, C, H, W) in [0, 1].
        crop_border: pixels removed on every side.
        y_channel: compare the BT.601 Y channel.

    Returns:
        (N,) float64 PSNR in dB (``inf`` where identical).
    """
    a, b = prepare_tensor_pair(img1, img2, crop_border, y_channel)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * (1.0 / mse).log10()
