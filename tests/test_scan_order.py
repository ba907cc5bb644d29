"""NSS scan orders: hand-worked examples, permutation and inverse properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from restorecli.ops.scan_order import cross_scan_order, inverse_orders, mair_scan_order, nss_four_directions


def _seq(text: str) -> list[int]:
    return [int(v) for v in text.replace("·", " ").split()]


WORKED_EXAMPLES = [
    # (H, W, scan_len, shift, [k0, k1, k2, k3])
    (4, 6, 4, 0, [
        "0 1 2 3 9 8 7 6 12 13 14 15 21 20 19 18 · 22 23 17 16 10 11 5 4",
        "23 22 21 20 14 15 16 17 11 10 9 8 2 3 4 5 · 1 0 6 7 13 12 18 19",
        "0 6 12 18 19 13 7 1 2 8 14 20 21 15 9 3 4 10 16 22 23 17 11 5",
        "23 17 11 5 4 10 16 22 21 15 9 3 2 8 14 20 19 13 7 1 0 6 12 18",
    ]),
    (4, 6, 4, 2, [
        "0 1 7 6 12 13 19 18 · 20 21 22 23 17 16 15 14 8 9 10 11 5 4 3 2",
        "23 22 16 17 11 10 4 5 · 3 2 1 0 6 7 8 9 15 14 13 12 18 19 20 21",
        "0 6 7 1 2 8 9 3 4 10 11 5 · 17 23 22 16 15 21 20 14 13 19 18 12",
        "23 17 16 22 21 15 14 20 19 13 12 18 · 6 0 1 7 8 2 3 9 10 4 5 11",
    ]),
    (3, 6, 4, 0, [
        "0 1 2 3 9 8 7 6 12 13 14 15 16 17 11 10 4 5",
        "17 16 15 14 8 9 10 11 5 4 3 2 1 0 6 7 13 12",
        "0 6 12 13 7 1 2 8 14 15 9 3 4 10 16 17 11 5",
        "17 11 5 4 10 16 15 9 3 2 8 14 13 7 1 0 6 12",
    ]),
]


@pytest.mark.parametrize(("height", "width", "scan_len", "shift", "expected"), WORKED_EXAMPLES)
def test_worked_examples(height: int, width: int, scan_len: int, shift: int, expected: list[str]) -> None:
    orders = nss_four_directions(height, width, scan_len, shift)
    for k in range(4):
        assert orders[k].tolist() == _seq(expected[k]), f"direction {k}"


def test_odd_height_shifted_example() -> None:
    orders = nss_four_directions(3, 6, 4, 2)
    assert orders[0].tolist() == _seq("0 1 7 6 12 13 14 15 16 17 11 10 9 8 2 3 4 5")


def test_inverse_of_worked_example() -> None:
    inverse = inverse_orders(nss_four_directions(4, 6, 4, 0))
    assert inverse[0].tolist() == _seq("0 1 2 3 23 22 7 6 5 4 20 21 8 9 10 11 19 18 15 14 13 12 16 17")


def test_degenerate_narrow_map_is_raster() -> None:
    # shift > 0 and W < shift: the official code returns raster order for that direction.
    orders = nss_four_directions(5, 3, 8, 4)
    assert orders[0].tolist() == list(range(15))
    assert orders[1].tolist() == list(range(14, -1, -1))


def test_permutations_and_inverses_for_all_small_maps() -> None:
    for height in range(1, 41):
        for width in range(1, 41):
            length = height * width
            for scan_len in range(2, 9):
                for shift in (0, scan_len // 2):
                    orders = nss_four_directions(height, width, scan_len, shift)
                    assert orders.shape == (4, length)
                    ordered = np.sort(orders, axis=1)
                    assert (ordered == np.arange(length)).all(), (height, width, scan_len, shift)
                    inverse = inverse_orders(orders)
                    assert (np.take_along_axis(orders, inverse, axis=1) == np.arange(length)).all()


def test_device_cache_returns_same_tensors_and_inverse_gathers_back() -> None:
    first = mair_scan_order(7, 9, 4, 2, "cpu")
    again = mair_scan_order(7, 9, 4, 2, torch.device("cpu"))
    assert first is again
    length = 63
    x = torch.randn(2, 5, length)
    shape = (2, 4, 5, length)
    scanned = torch.gather(x[:, None].expand(shape), 3, first.scan[None, :, None].expand(shape))
    for k in range(4):
        assert torch.equal(scanned[:, k], x[:, :, first.scan[k]])
    restored = torch.gather(scanned, 3, first.inverse[None, :, None].expand(shape))
    for k in range(4):
        assert torch.equal(restored[:, k], x)


def test_cross_orders_are_row_and_column_major_and_reverses() -> None:
    order = cross_scan_order(3, 4, "cpu")
    grid = np.arange(12).reshape(3, 4)
    assert order.scan[0].tolist() == grid.reshape(-1).tolist()
    assert order.scan[1].tolist() == grid.T.reshape(-1).tolist()
    assert order.scan[2].tolist() == grid.reshape(-1)[::-1].tolist()
    assert order.scan[3].tolist() == grid.T.reshape(-1)[::-1].tolist()
    for k in range(4):
        assert order.inverse[k][order.scan[k]].tolist() == list(range(12))
