"""Synthetic degradations: what training (``restorecli.train.data``) and the held-out evaluation
sets (``restorecli.eval_synthetic``) do to clean images.

Every function takes a float32 HWC RGB image in [0, 1] (and a NumPy generator where it draws) and
returns float32 HWC RGB; only ``noise`` may leave [0, 1] (unclipped unless asked, as the official
denoising data). :func:`degrade` applies the steps of a ``DegradationSection`` in order. The steps
``bicubic``, ``noise``, ``blur`` and ``haze`` are those of the first bundled models and must stay
bit-for-bit as they are (tests/test_degradations.py pins them); docs/degradations.md describes
every step, its parameters and defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from restorecli.errors import ConfigError
from restorecli.imresize import imresize

if TYPE_CHECKING:
    from restorecli.train.config import DegradationSection


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator, clip: bool = False) -> np.ndarray:
    """Additive white Gaussian noise of standard deviation ``sigma`` (in 0..255 units)."""
    noisy = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return np.clip(noisy, 0.0, 1.0) if clip else noisy


def motion_kernel(size: int, length: float, rng: np.random.Generator) -> np.ndarray:
    """A random camera-shake kernel: a smooth 2-D random walk rasterised onto ``size``² pixels.

    The camera moves with a velocity that turns a little at every step, plus small random jerks,
    like a hand-held camera during the exposure; the path of total length ~``length`` pixels is
    splatted bilinearly, centred on its centroid, and normalised to sum 1.

    Returns:
        (size, size) float32 kernel, non-negative, summing to 1.
    """
    steps = max(8, int(length * 4))
    angle = rng.uniform(0, 2 * np.pi)
    turn = rng.normal(0.0, 0.35, steps)
    angles = angle + np.cumsum(turn)
    step = length / steps
    jitter = rng.normal(0.0, 0.15 * step, (steps, 2))
    moves = np.stack([np.cos(angles), np.sin(angles)], axis=1) * step + jitter
    path = np.concatenate([np.zeros((1, 2)), np.cumsum(moves, axis=0)])
    path -= path.mean(axis=0)
    # Keep the path inside the kernel support (a long walk is squeezed, not cut).
    radius = (size - 1) / 2 - 1
    extent = np.abs(path).max()
    if extent > radius:
        path *= radius / extent
    path += (size - 1) / 2
    kernel = np.zeros((size, size), np.float64)
    x0, y0 = np.floor(path[:, 0]).astype(int), np.floor(path[:, 1]).astype(int)
    fx, fy = path[:, 0] - x0, path[:, 1] - y0
    for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), weight)
    return (kernel / kernel.sum()).astype(np.float32)


def motion_blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve with a blur kernel, reflecting at the borders (HWC in, HWC out, also for C = 1)."""
    out = cv2.filter2D(img, -1, kernel[::-1, ::-1], borderType=cv2.BORDER_REFLECT)
    return out.reshape(img.shape)


def smooth_field(shape: tuple[int, int], rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """A smooth random field in [0, 1]: a coarse uniform grid upsampled bicubically."""
    coarse = rng.uniform(0.0, 1.0, (cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / (hi - lo) if hi > lo else np.full(shape, 0.5, np.float32)


def add_haze(
    img: np.ndarray, rng: np.random.Generator, transmission: tuple[float, float], airlight: tuple[float, float]
) -> np.ndarray:
    """Atmospheric scattering ``I = J t + A (1 - t)`` with a smooth random transmission map.

    ``t`` varies smoothly between the two ``transmission`` ends across the image (depth changes
    slowly); the airlight ``A`` is a near-grey colour drawn from the ``airlight`` range.
    """
    lo, hi = transmission
    t = lo + (hi - lo) * smooth_field(img.shape[:2], rng)
    base = rng.uniform(*airlight)
    light = np.clip(base + rng.uniform(-0.03, 0.03, 3), 0.0, 1.0).astype(np.float32)
    return img * t[..., None] + light * (1.0 - t[..., None])


# ---------------------------------------------------------------------------------------------
# Camera noise (for real-noise denoising)


def srgb_to_linear(img: np.ndarray) -> np.ndarray:
    """The sRGB transfer function inverted: display values in [0, 1] to linear light in [0, 1]."""
    x = np.clip(img, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(img: np.ndarray) -> np.ndarray:
    """The sRGB transfer function: linear light in [0, 1] to display values in [0, 1]."""
    x = np.clip(img, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1.0 / 2.4) - 0.055).astype(np.float32)


def mosaic_rggb(img: np.ndarray) -> np.ndarray:
    """The (H, W) Bayer mosaic of an RGB image: R at even rows/even columns, B at odd/odd, G elsewhere."""
    raw = np.empty(img.shape[:2], np.float32)
    raw[0::2, 0::2] = img[0::2, 0::2, 0]
    raw[0::2, 1::2] = img[0::2, 1::2, 1]
    raw[1::2, 0::2] = img[1::2, 0::2, 1]
    raw[1::2, 1::2] = img[1::2, 1::2, 2]
    return raw


_BILINEAR_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4
_BILINEAR_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4


def demosaic_bilinear(raw: np.ndarray) -> np.ndarray:
    """Bilinear demosaicing of an RGGB mosaic: each missing sample is the mean of its nearest
    samples of that colour; measured samples are kept. (H, W) in, (H, W, 3) float32 out."""
    rows, cols = np.indices(raw.shape)
    red = (rows % 2 == 0) & (cols % 2 == 0)
    blue = (rows % 2 == 1) & (cols % 2 == 1)
    green = ~(red | blue)
    # Reflecting about the edge sample (101) keeps the colour pattern across the border.
    channels = [
        cv2.filter2D(raw * mask, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        for mask, kernel in ((red, _BILINEAR_RB), (green, _BILINEAR_G), (blue, _BILINEAR_RB))
    ]
    return np.stack(channels, axis=2).astype(np.float32)


def add_sensor_noise(raw: np.ndarray, shot: float, read: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson-Gaussian sensor noise in its heteroscedastic Gaussian form: variance ``shot·x + read²``.

    Args:
        raw: Linear intensities (any shape), >= 0.
        shot: Shot-noise gain: noise variance per unit of linear intensity.
        read: Read-noise standard deviation, in linear units.
        rng: The generator.
    """
    std = np.sqrt(shot * np.clip(raw, 0.0, None) + read * read).astype(np.float32)
    return raw + rng.standard_normal(raw.shape, dtype=np.float32) * std


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through an 8-bit JPEG of the given quality (OpenCV's encoder, 4:2:0)."""
    from restorecli.io import quantize_to_uint8

    bgr = cv2.cvtColor(quantize_to_uint8(img), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    assert ok, "OpenCV failed to encode a JPEG of a valid uint8 image"
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB).astype(np.float32) / np.float32(255.0)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def camera_noise(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    shot: tuple[float, float],
    read: tuple[float, float],
    jpeg_prob: float,
    jpeg_quality: tuple[int, int],
) -> np.ndarray:
    """Noise as a camera makes it: sensor noise on the Bayer mosaic, then a minimal ISP.

    The sRGB image is taken back to linear light (inverse sRGB curve), sampled on an RGGB mosaic,
    given Poisson-Gaussian noise per photosite (shot gain and read noise drawn log-uniformly
    from ``shot`` and ``read``), clipped at black and saturation, demosaiced bilinearly (which
    spreads each photosite's noise to its neighbours: the spatially correlated, blotchy grain of
    real noise), put through the sRGB curve (which makes the noise depend on brightness as in a
    photo) and, with probability ``jpeg_prob``, JPEG-compressed at a quality drawn from
    ``jpeg_quality`` (4:2:0 chroma subsampling smooths the colour noise, which leaves the noise
    of the three channels correlated).

    Bilinear demosaicing interpolates each colour from photosites of that colour only, so without
    JPEG the noise of the three channels stays independent. Not modelled: white balance and the
    colour-correction matrix (in real cameras they amplify red and blue noise and mix the
    channels' noise), lens shading, the camera's own denoising and sharpening, tone curves other
    than sRGB, fixed-pattern noise and hot pixels.

    Args:
        img: (H, W, 3) float32 sRGB in [0, 1].
        rng: The generator (5 draws before the noise, in a fixed order).
        shot: Shot-noise gain range (variance per unit of linear intensity), > 0.
        read: Read-noise standard deviation range (linear units), > 0.
        jpeg_prob: Probability of JPEG compression.
        jpeg_quality: JPEG quality range, inclusive (1-100).

    Returns:
        (H, W, 3) float32 sRGB in [0, 1].
    """
    shot_gain, read_std = _log_uniform(rng, shot), _log_uniform(rng, read)
    # Drawn whether or not they are used, so the noise stream does not depend on the JPEG choice.
    compress, quality = rng.random() < jpeg_prob, int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1))
    raw = np.clip(add_sensor_noise(mosaic_rggb(srgb_to_linear(img)), shot_gain, read_std, rng), 0.0, 1.0)
    out = linear_to_srgb(demosaic_bilinear(raw))
    return jpeg_compress(out, quality) if compress else out


# ---------------------------------------------------------------------------------------------
# Haze over a depth layout (for dehazing)


def depth_layout(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible relative depth map in [0, 1] (1 = farthest) for an outdoor-like scene.

    A ground plane seen in perspective: depth ``near · (1 - h) / (v - h)`` on the row at height
    ``v`` below a horizon ``h`` (both fractions of the image height from the top), capped at 1,
    which holds above the horizon (sky, far scenery); the horizon is drawn in [0.25, 0.6], the depth
    of the bottom row (``near``) in [0.1, 0.4]. A smooth random field scales it by ±25% (hills,
    nearer objects), and bright, flat regions of the image (sky, walls in the distance) are pushed
    a little farther.

    Args:
        img: (H, W, 3) float32 in [0, 1], the clean image.
        rng: The generator.

    Returns:
        (H, W) float32 in [0, 1].
    """
    h, w = img.shape[:2]
    horizon, near = rng.uniform(0.25, 0.6), rng.uniform(0.1, 0.4)
    v = (np.arange(h, dtype=np.float32) + 0.5) / h
    below = np.maximum(v - horizon, 1e-6)
    rows = np.where(v > horizon, np.minimum(near * (1.0 - horizon) / below, 1.0), 1.0).astype(np.float32)
    depth = rows[:, None] * (0.75 + 0.5 * smooth_field((h, w), rng))
    side = max(3, min(h, w) // 16) | 1
    bright = cv2.blur(img.min(axis=2).astype(np.float32), (side, side), borderType=cv2.BORDER_REFLECT)
    depth = depth + 0.2 * (bright - float(bright.mean()))
    return np.clip(depth, 0.0, 1.0).astype(np.float32)


def add_depth_haze(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    beta: tuple[float, float],
    airlight: tuple[float, float],
    tint: float,
) -> np.ndarray:
    """Atmospheric scattering ``I = J t + A (1 - t)`` with ``t = exp(-beta · d)`` over :func:`depth_layout`.

    ``beta`` (scattering coefficient per unit of the relative depth) is drawn from its range, the
    airlight ``A`` is a grey level drawn from ``airlight`` plus a per-channel tint drawn from
    ``[-tint, tint]`` (clipped to [0, 1]). Haze is therefore densest at the top (far) and thinnest
    at the bottom (near).

    Args:
        img: (H, W, 3) float32 in [0, 1].
        rng: The generator.
        beta: Scattering coefficient range, >= 0.
        airlight: Airlight grey-level range in [0, 1].
        tint: Largest per-channel departure of the airlight from grey.

    Returns:
        (H, W, 3) float32 in [0, 1].
    """
    scattering = rng.uniform(*beta)
    light = np.clip(rng.uniform(*airlight) + rng.uniform(-tint, tint, 3), 0.0, 1.0).astype(np.float32)
    t = np.exp(-scattering * depth_layout(img, rng)).astype(np.float32)[..., None]
    return img * t + light * (1.0 - t)


def degrade(img: np.ndarray, steps: Sequence[str], cfg: DegradationSection, rng: np.random.Generator) -> np.ndarray:
    """Apply the configured degradation steps in order to a float32 HWC image in [0, 1]."""
    out = img
    for step in steps:
        if step == "bicubic":
            out = imresize(out, 1.0 / cfg.scale).astype(np.float32)
        elif step == "noise":
            out = add_noise(out, rng.uniform(*cfg.noise_sigma), rng, cfg.noise_clip)
        elif step == "blur":
            out = motion_blur(out, motion_kernel(cfg.blur_size, rng.uniform(*cfg.blur_length), rng))
        elif step == "haze":
            out = add_haze(out, rng, cfg.haze_transmission, cfg.haze_airlight)
        elif step == "camera_noise":
            out = camera_noise(
                out, rng, shot=cfg.camera_shot, read=cfg.camera_read, jpeg_prob=cfg.camera_jpeg_prob,
                jpeg_quality=cfg.camera_jpeg_quality,
            )  # fmt: skip
        elif step == "haze_depth":
            out = add_depth_haze(out, rng, beta=cfg.haze_beta, airlight=cfg.haze_airlight, tint=cfg.haze_tint)
        else:
            raise ConfigError(f"unknown degradation step {step!r}")
    return out


