"""Dehazing with the dark channel prior (He, Sun and Tang, CVPR 2009 / TPAMI 2011): the classical
baseline of ``restore eval --task dehaze --baseline dcp``.

In a haze-free outdoor image most patches hold a pixel that is dark in some colour channel; haze
lifts that dark channel towards the airlight, so the dark channel measures the haze. The steps:
dark channel (minimum over the colours, then a 15×15 minimum filter); airlight ``A`` = the mean
colour of the pixels with the brightest 0.1% of dark-channel values; transmission
``t = 1 - 0.95 · dark(I / A)`` (ω = 0.95 keeps a little haze for depth); ``t`` refined with the
guided filter of He et al. (ECCV 2010) on the grey image (radius 40, ε = 10⁻³) and clipped at
0.1; then ``J = (I - A) / t + A``.
"""

from __future__ import annotations

import cv2
import numpy as np

PATCH = 15
OMEGA = 0.95
BRIGHTEST = 0.001
T_MIN = 0.1
GUIDE_RADIUS = 40
GUIDE_EPS = 1e-3


def dark_channel(img: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """Minimum over the colours, then over a ``patch``² square: (H, W, 3) in, (H, W) float32 out."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    return cv2.erode(img.min(axis=2).astype(np.float32), kernel, borderType=cv2.BORDER_REFLECT)


def estimate_airlight(img: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """Mean colour of the pixels with the brightest 0.1% of dark-channel values (at least one)."""
    count = max(1, int(dark.size * BRIGHTEST))
    brightest = np.argpartition(dark.ravel(), dark.size - count)[-count:]
    return img.reshape(-1, 3)[brightest].mean(axis=0).astype(np.float32)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grey guide: edge-preserving smoothing of ``src``, (H, W) float32."""
    size = (2 * radius + 1, 2 * radius + 1)

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = mean(guide), mean(src)
    cov_ip = mean(guide * src) - mean_i * mean_p
    var_i = mean(guide * guide) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return (mean(a) * guide + mean(b)).astype(np.float32)


def dehaze_dark_channel_prior(img: np.ndarray) -> np.ndarray:
    """Dehaze an image with the dark channel prior.

    Args:
        img: (H, W, 3) float32 RGB hazy image in [0, 1].

    Returns:
        (H, W, 3) float32 RGB in [0, 1].
    """
    img = img.astype(np.float32)
    airlight = estimate_airlight(img, dark_channel(img))
    normalised = img / np.maximum(airlight, 1e-3)
    transmission = 1.0 - OMEGA * dark_channel(normalised)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    radius = min(GUIDE_RADIUS, max(1, min(img.shape[:2]) // 4))
    refined = np.clip(guided_filter(grey, transmission, radius, GUIDE_EPS), T_MIN, 1.0)[..., None]
    return np.clip((img - airlight) / refined + airlight, 0.0, 1.0).astype(np.float32)
