"""Greedy Path Scan (GPS) orders of VAMamba: patch planner, pixel order and its inverse.

The planner (as the VAMamba paper describes it) orders the cells of an h x w patch score map:
start at the best cell, walk to the best unvisited 4-neighbour (up, down, left, right; strict
``>`` so the first of equal neighbours wins), and at a dead end restart at the best unvisited
cell (first in row-major order among equal scores). The pixel order then visits the pixels of
an H x W map patch by patch in that order, S-shaped inside each patch (rows alternate direction)
so that consecutive pixels of a patch are image neighbours.

Why a host loop: the walk is inherently sequential (each step depends on the previous one) and
the maps are small (one cell per p x p patch). The score maps of a batch go to the host in ONE
transfer; the walk then runs on plain Python lists (no tensor indexing, no device syncs), and
restarts use a pointer into a stable descending argsort, so the whole plan is O(n log n) per
map. Its measured share of a forward pass is reported in the benchmarks.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right: the tie-break order


def plan_patch_order(scores: np.ndarray) -> np.ndarray:
    """Greedy patch order of one score map.

    Args:
        scores: (h, w) finite scores; higher is visited earlier.

    Returns:
        int64 (h*w,): row-major cell indices in visiting order (a permutation).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (h, w), got shape {scores.shape}")
    h, w = scores.shape
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = flat.size
    # Stable sort of -score: equal scores keep row-major order, i.e. the first maximum wins.
    ranked = np.argsort(-flat, kind="stable").tolist()
    values = flat.tolist()
    visited = bytearray(n)
    order: list[int] = []
    cursor = 0
    while len(order) < n:
        while visited[ranked[cursor]]:
            cursor += 1
        cur = ranked[cursor]
        visited[cur] = 1
        order.append(cur)
        while True:
            row, col = divmod(cur, w)
            best = -1
            best_score = -np.inf
            for dr, dc in _NEIGHBOURS:
                r, c = row + dr, col + dc
                if 0 <= r < h and 0 <= c < w:
                    nb = r * w + c
                    if not visited[nb] and values[nb] > best_score:
                        best, best_score = nb, values[nb]
            if best < 0:
                break
            visited[best] = 1
            order.append(best)
            cur = best
    return np.asarray(order, dtype=np.int64)


@lru_cache(maxsize=64)
def _patch_template(patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the S-shaped walk through one p x p patch."""
    rows = np.repeat(np.arange(patch, dtype=np.int64), patch)
    cols = np.tile(np.arange(patch, dtype=np.int64), patch).reshape(patch, patch)
    cols[1::2] = cols[1::2, ::-1]
    return rows, cols.reshape(-1)


def pixel_order(patch_order: np.ndarray, height: int, width: int, patch: int) -> np.ndarray:
    """Pixel visiting order of an H x W map from a patch order.

    Patches tile the map from the top-left corner; the last row/column of patches may be cut by
    the border (those patches are visited with their existing pixels only, so no padded pixel
    ever enters the scan).

    Args:
        patch_order: (h*w,) row-major patch indices, h = ceil(H/p), w = ceil(W/p).
        height: H.
        width: W.
        patch: p.

    Returns:
        int64 (H*W,): raster indices ``r * W + c`` in visiting order (a permutation).
    """
    grid_w = -(-width // patch)
    rows_t, cols_t = _patch_template(patch)
    pr, pc = np.divmod(np.asarray(patch_order, dtype=np.int64), grid_w)
    rows = (pr[:, None] * patch + rows_t[None, :]).reshape(-1)
    cols = (pc[:, None] * patch + cols_t[None, :]).reshape(-1)
    keep = (rows < height) & (cols < width)
    return rows[keep] * width + cols[keep]


def inverse_permutation(order: np.ndarray) -> np.ndarray:
    """``inverse[..., order[..., t]] = t`` along the last axis."""
    inverse = np.empty_like(order)
    steps = np.broadcast_to(np.arange(order.shape[-1], dtype=order.dtype), order.shape)
    np.put_along_axis(inverse, order, steps, axis=-1)
    return inverse


def gps_pixel_orders(scores: np.ndarray, height: int, width: int, patch: int) -> np.ndarray:
    """Pixel orders of a batch of patch score maps.

    Args:
        scores: (B, h, w) patch scores, h = ceil(H/p), w = ceil(W/p).
        height: H.
        width: W.
        patch: p.

    Returns:
        int64 (B, H*W): per sample, raster indices in visiting order.
    """
    return np.stack([pixel_order(plan_patch_order(s), height, width, patch) for s in scores])
