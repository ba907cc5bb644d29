"""MATLAB-compatible bicubic imresize: hand-computed weights, properties, and the MATLAB-made LR files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from restorecli.datasets import list_samples
from restorecli.io import read_rgb8 as read_image
from restorecli.imresize import imresize, resize_matrix


def test_upscale_weights_are_the_cubic_kernel() -> None:
    # x2, output 5 (1-based) sits at input 2.75: distances 1.75, 0.75, 0.25, 1.25 to inputs 1..4.
    row = resize_matrix(8, 16, 2.0)[4]
    np.testing.assert_allclose(row[:4], [-0.0234375, 0.2265625, 0.8671875, -0.0703125], atol=1e-15)
    assert not row[4:].any()


def test_downscale_weights_are_the_stretched_kernel() -> None:
    # x1/2 with antialiasing: kernel 0.5·k(0.5·x) of width 8; output 3 sits at input 5.5.
    row = resize_matrix(12, 6, 0.5)[2]
    half = [-0.01171875, -0.03515625, 0.11328125, 0.43359375]
    np.testing.assert_allclose(row[1:9], half + half[::-1], atol=1e-15)
    assert row[0] == 0 and not row[9:].any()


def _cubic(x: float) -> float:
    x = abs(x)
    if x <= 1:
        return 1.5 * x**3 - 2.5 * x**2 + 1
    return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2 if x <= 2 else 0.0


def test_border_taps_fold_back_symmetrically() -> None:
    # x1/3 of 10 pixels: output 1 sits at input 2 (1-based) and its 14 taps cover inputs -4..9;
    # inputs 0, -1, -2, ... are the mirror images of 1, 2, 3, ... (edge pixel repeated).
    taps = {i: _cubic((2 - i) / 3) / 3 for i in range(-4, 10)}
    total = sum(taps.values())
    expected = np.zeros(10)
    for i, w in taps.items():
        expected[(i - 1) if i >= 1 else -i] += w / total
    np.testing.assert_allclose(resize_matrix(10, 4, 1 / 3)[0], expected, atol=1e-14)
    m = resize_matrix(10, 4, 1 / 3)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    assert not m.flags.writeable


def test_shapes_dtypes_and_constants() -> None:
    img = np.full((17, 23, 3), 77, np.uint8)
    out = imresize(img, 1 / 4)
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8  # ceil(17/4), ceil(23/4)
    assert (out == 77).all()
    assert imresize(img[..., 0], 3).shape == (51, 69)
    f = np.random.default_rng(0).random((12, 12)).astype(np.float32)
    assert imresize(f, 0.5).dtype == np.float32
    assert imresize(img, output_shape=(8, 9)).shape == (8, 9, 3)


def test_uint8_rounds_between_passes_float_does_not() -> None:
    img = np.zeros((12, 12, 3), np.uint8)
    img[:, 6:] = 255  # a step edge: the cubic kernel overshoots on both sides
    as_float = imresize(img.astype(np.float64), 3)
    as_uint8 = imresize(img, 3)
    # Float keeps overshoot beyond [0, 255]; uint8 saturates and rounds (within a grey level or two).
    assert as_float.min() < 0 or as_float.max() > 255
    assert np.abs(as_uint8.astype(float) - np.clip(as_float, 0, 255)).max() <= 2


def test_rows_are_resized_before_columns_for_equal_scales() -> None:
    # Different orders give different uint8 roundings; a 2-D separable product in float does not care.
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    rows_first = resize_matrix(24, 8, 1 / 3) @ img.astype(float)
    rows_first = np.clip(np.floor(rows_first + 0.5), 0, 255) @ resize_matrix(24, 8, 1 / 3).T
    expected = np.clip(np.floor(rows_first + 0.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(imresize(img, 1 / 3), expected)


def test_misuse() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        imresize(np.zeros((4, 4)), 2, output_shape=(8, 8))
    with pytest.raises(ValueError, match="uint8 or float"):
        imresize(np.zeros((4, 4), np.int32), 2)


@pytest.mark.parametrize("name", ["Set5", "Set14"])
def test_reproduces_matlab_lr_images_bit_exactly(shared_datasets: Path, name: str) -> None:
    for scale in (2, 3, 4):
        for sample in list_samples(shared_datasets / name, scale):
            assert sample.lr is not None
            gt, lr = read_image(sample.gt), read_image(sample.lr)
            h, w = lr.shape[:2]
            ours = imresize(gt[: h * scale, : w * scale], 1 / scale)
            np.testing.assert_array_equal(ours, lr, err_msg=f"{name} x{scale} {sample.name}")
