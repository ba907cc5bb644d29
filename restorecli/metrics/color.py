"""Luma (Y) of ITU-R BT.601, as MATLAB's ``rgb2ycbcr`` and the SR benchmark code define it.

Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in [0, 255]; the result lies in
[16, 235]. It is **not rounded** (the BasicSR convention); MATLAB's ``rgb2ycbcr`` on a
uint8 image rounds it, which moves PSNR by about 0.01 dB (see ``docs/eval_baselines.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Row of the BT.601 matrix for Y, scaled for [0, 255] inputs.
Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
Y_OFFSET = 16.0


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image.

    Args:
        img: (H, W, 3) RGB or (H, W) / (H, W, 1) grey image in [0, 255], uint8 or float. A grey
            image is treated as R = G = B (how a grey file reads as colour).

    Returns:
        (H, W) float64 Y in [16, 235], not rounded.
    """
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return img.astype(np.float64) * Y_WEIGHTS.sum() + Y_OFFSET
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB or (H, W) grey image, got shape {img.shape}")
    return img.astype(np.float64) @ Y_WEIGHTS + Y_OFFSET


def rgb_to_y_torch(img: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB tensors, on the [0, 1] scale.

    Args:
        img: (N, 3, H, W) RGB in [0, 1] (or (N, 1, H, W) grey).

    Returns:
        (N, 1, H, W) Y in [16/255, 235/255], same dtype as the input (float).
    """
    import torch

    if img.ndim != 4 or img.shape[1] not in (1, 3):
        raise ValueError(f"expected an (N, 3, H, W) or (N, 1, H, W) tensor, got shape {tuple(img.shape)}")
    weights = torch.as_tensor(Y_WEIGHTS, dtype=img.dtype, device=img.device)
    if img.shape[1] == 1:
        return img * weights.sum() + Y_OFFSET / 255.0
    return (img * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True) + Y_OFFSET / 255.0
