"""MATLAB-compatible bicubic ``imresize``, the degradation behind the SR benchmarks' LR images.

Written from the definition of MATLAB's algorithm:

* cubic convolution kernel with a = -0.5 (Keys), support [-2, 2];
* output length ``ceil(in_len * scale)``; output pixel i (1-based) is centred at input coordinate
  ``u = i / scale + 0.5 * (1 - 1 / scale)``;
* when shrinking (scale < 1) with antialiasing the kernel is stretched to ``scale * k(scale * x)``
  with width ``4 / scale``, so it low-pass filters as it subsamples;
* taps falling outside the image are mirrored symmetrically (edge pixel repeated), weights of each
  output are normalised to sum 1;
* one dimension at a time, the one with the smaller scale first (rows first for equal scales);
* for uint8 input every pass is rounded half away from zero and saturated to [0, 255], as MATLAB
  stores the intermediate image as uint8.

Each pass is a product with a dense (out_len, in_len) weight matrix, cached per
(in_len, out_len, scale), so repeated calls on same-sized training patches cost two matmuls.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_KERNEL_WIDTH = 4.0


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@lru_cache(maxsize=256)
def resize_matrix(in_len: int, out_len: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """Weights of one resize pass: ``out = matrix @ in`` along that dimension.

    Args:
        in_len: input length.
        out_len: output length.
        scale: the scale factor MATLAB uses for this dimension (as given, or out_len / in_len).
        antialiasing: stretch the kernel when shrinking, as MATLAB does by default.

    Returns:
        Read-only (out_len, in_len) float64 matrix whose rows sum to 1.
    """
    if scale < 1 and antialiasing:
        width = _KERNEL_WIDTH / scale

        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * x)

    else:
        width = _KERNEL_WIDTH
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + np.arange(taps)  # 1-based, as in the definition
    weights = kernel(u[:, None] - indices)
    weights /= weights.sum(axis=1, keepdims=True)
    # Symmetric mirroring: ..., 2, 1 | 1, 2, ..., n | n, n-1, ...
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    columns = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_len)]
    matrix = np.zeros((out_len, in_len))
    np.add.at(matrix, (np.repeat(np.arange(out_len), taps), columns.ravel()), weights.ravel())
    matrix.setflags(write=False)
    return matrix


def _output_shape(
    shape: tuple[int, int], scale: float | tuple[float, float] | None, output_shape: tuple[int, int] | None
) -> tuple[tuple[int, int], tuple[float, float]]:
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    if output_shape is not None:
        out = (int(output_shape[0]), int(output_shape[1]))
        return out, (out[0] / shape[0], out[1] / shape[1])
    scales = (float(scale), float(scale)) if np.isscalar(scale) else (float(scale[0]), float(scale[1]))
    if min(scales) <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return (math.ceil(shape[0] * scales[0]), math.ceil(shape[1] * scales[1])), scales


def imresize(
    img: np.ndarray,
    scale: float | tuple[float, float] | None = None,
    *,
    output_shape: tuple[int, int] | None = None,
    antialiasing: bool = True,
) -> np.ndarray:
    """Resize like MATLAB's ``imresize(img, scale, 'bicubic')``.

    Args:
        img: (H, W) or (H, W, C) image; uint8 (MATLAB's rounding between passes) or float (any
            range, no rounding or clipping).
        scale: factor for both dimensions, or (rows, columns) factors; for the 1/s downscale of
            the benchmarks pass ``1 / s``.
        output_shape: (H_out, W_out) instead of a scale.
        antialiasing: antialias when shrinking (MATLAB's default).

    Returns:
        The resized image, same dtype and number of dimensions as the input.
    """
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {img.shape}")
    is_uint8 = img.dtype == np.uint8
    if not (is_uint8 or np.issubdtype(img.dtype, np.floating)):
        raise ValueError(f"expected a uint8 or float image, got {img.dtype}")
    out_shape, scales = _output_shape(img.shape[:2], scale, output_shape)
    x = img.astype(np.float64)
    # MATLAB resizes the dimension with the smaller scale first (stable: rows on a tie).
    for dim in sorted((0, 1), key=lambda d: scales[d]):
        matrix = resize_matrix(x.shape[dim], out_shape[dim], scales[dim], antialiasing)
        x = (
            np.tensordot(matrix, x, axes=(1, 0))
            if dim == 0
            else np.moveaxis(np.tensordot(matrix, x, axes=(1, 1)), 0, 1)
        )
        if is_uint8:
            x = np.clip(np.floor(x + 0.5), 0, 255)
    return x.astype(img.dtype)
