"""Image-quality metrics with the conventions of the SR/denoising literature (uint8 outputs, BT.601 Y, ``crop_border``; see
``docs/eval_baselines.md``).

Functional and per image: ``psnr(img1, img2, crop_border=0, y_channel=False)`` and ``ssim(...)`` on
HWC arrays in [0, 255] (uint8 or float), ``psnr_torch`` / ``ssim_torch`` on NCHW tensors in [0, 1],
``rgb_to_y`` for BT.601 luma.
"""

from __future__ import annotations

from restorecli.metrics.color import rgb_to_y, rgb_to_y_torch
from restorecli.metrics.psnr import psnr, psnr_torch
from restorecli.metrics.ssim import ssim, ssim_torch

__all__ = ["psnr", "psnr_torch", "rgb_to_y", "rgb_to_y_torch", "ssim", "ssim_torch"]
