"""GPS planner and pixel orders (the greedy path scan of docs/models.md)."""

from __future__ import annotations

import numpy as np
import pytest

from restorecli.ops.gps_order import gps_pixel_orders, inverse_permutation, pixel_order, plan_patch_order


def reference_plan(scores: np.ndarray) -> list[int]:
    """The planner as docs/models.md describes it, written naively, with masked argmax restarts."""
    h, w = scores.shape
    visited = np.zeros((h, w), dtype=bool)
    order: list[int] = []
    while len(order) < h * w:
        masked = np.where(visited, -np.inf, scores)
        start = int(np.argmax(masked))  # first row-major position of the maximum
        cur = divmod(start, w)
        visited[cur] = True
        order.append(start)
        while True:
            best, best_score = None, -np.inf
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                i, j = cur[0] + di, cur[1] + dj
                if 0 <= i < h and 0 <= j < w and not visited[i, j] and scores[i, j] > best_score:
                    best, best_score = (i, j), scores[i, j]
            if best is None:
                break
            visited[best] = True
            order.append(best[0] * w + best[1])
            cur = best
    return order


SHAPES = [(1, 1), (1, 7), (6, 1), (3, 5), (8, 8), (13, 9)]


@pytest.mark.parametrize("shape", SHAPES)
def test_planner_matches_reference_on_random_maps(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        scores = rng.random(shape)
        assert plan_patch_order(scores).tolist() == reference_plan(scores)


@pytest.mark.parametrize("shape", SHAPES)
def test_planner_matches_reference_on_tie_heavy_maps(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(100 + sum(shape))
    for levels in (1, 2, 3):
        for _ in range(10):
            scores = rng.integers(0, levels, size=shape).astype(np.float32)
            assert plan_patch_order(scores).tolist() == reference_plan(scores)


def test_planner_walks_the_example_path() -> None:
    scores = np.array([[0.1, 0.2, 0.3], [0.9, 0.5, 0.4], [0.8, 0.7, 0.6]])
    # Start at 0.9, greedy 4-neighbour walk 0.8 0.7 0.6 0.4 0.5 0.2 0.3, dead end, restart at 0.1.
    assert plan_patch_order(scores).tolist() == [3, 6, 7, 8, 5, 4, 1, 2, 0]


@pytest.mark.parametrize(("height", "width", "patch"), [(8, 8, 4), (13, 9, 4), (5, 11, 3), (7, 7, 8), (1, 1, 2)])
def test_pixel_order_is_a_permutation_with_inverse(height: int, width: int, patch: int) -> None:
    rng = np.random.default_rng(height * width)
    grid = (-(-height // patch), -(-width // patch))
    orders = gps_pixel_orders(rng.random((3, *grid)), height, width, patch)
    assert orders.shape == (3, height * width)
    inverse = inverse_permutation(orders)
    image = rng.random((3, height * width))
    for b in range(3):
        assert sorted(orders[b].tolist()) == list(range(height * width))
        scanned = image[b][orders[b]]
        assert np.array_equal(scanned[inverse[b]], image[b])
        # Reversed sequence: reverse back first, then invert.
        assert np.array_equal(scanned[::-1][::-1][inverse[b]], image[b])


def test_pixel_order_is_s_shaped_inside_patches() -> None:
    height, width, patch = 10, 7, 4
    grid_w = -(-width // patch)
    patches = np.array([3, 0, 5, 1, 4, 2])
    order = pixel_order(patches, height, width, patch)
    rows, cols = np.divmod(order, width)
    patch_of = (rows // patch) * grid_w + cols // patch
    # Patches are visited whole and in the planned order ...
    firsts = patch_of[np.r_[0, np.flatnonzero(np.diff(patch_of)) + 1]]
    assert firsts.tolist() == patches.tolist()
    # ... and consecutive pixels of one patch are 4-neighbours (the S-shape).
    same = patch_of[1:] == patch_of[:-1]
    steps = np.abs(np.diff(rows)) + np.abs(np.diff(cols))
    assert np.all(steps[same] == 1)
