"""Scan orders: the Nested S-shaped Scan (NSS) of MaIR and its inverse.

A scan order is a permutation of the raster indices ``r * W + c`` of an H x W map. MaIR uses
four of them (K = 4): the NSS, its point reflection, the NSS of the transposed map, and the
point reflection of that. The exact construction (including the official code's jumps at stripe
boundaries for even H and the raster fallback on degenerate maps) reproduces the official code;
checkpoints were trained with these orders, so they must not be "improved".

The cross scan of VMamba/VAMamba (row- and column-major and their reverses) is cached the same way.
Orders depend only on (H, W, scan_len, shift). They are built once on the CPU with NumPy and
cached, and copies per device are cached too, so a forward pass never rebuilds or re-uploads them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def stripe_bounds(width: int, scan_len: int, shift: int) -> list[tuple[int, int]]:
    """Column intervals [a, b) of the vertical stripes of one NSS.

    Args:
        width: number of columns W.
        scan_len: stripe width s.
        shift: 0, or the width of a narrow first stripe (MaIR uses scan_len // 2).

    Returns:
        Consecutive intervals covering 0..W; the last one may be narrower (remainder).
    """
    first = shift if shift > 0 else scan_len
    cuts = [0]
    edge = first
    while edge < width:
        cuts.append(edge)
        edge += scan_len
    cuts.append(width)
    return list(zip(cuts[:-1], cuts[1:]))


def nss_sequence(height: int, width: int, scan_len: int, shift: int = 0) -> np.ndarray:
    """One Nested S-shaped Scan over an H x W map.

    Stripes of ``scan_len`` columns are visited left to right, alternately top-down and bottom-up;
    inside a stripe the rows snake, the first visited row left to right. With ``shift > 0`` and
    ``W < shift`` the official code degenerates to plain raster order, reproduced here.

    Returns:
        int64 array of length H*W: the raster index visited at each step.
    """
    if height < 1 or width < 1 or scan_len < 1 or shift < 0:
        raise ValueError(f"invalid scan geometry H={height} W={width} scan_len={scan_len} shift={shift}")
    if shift > 0 and width < shift:
        return np.arange(height * width, dtype=np.int64)
    pieces = []
    for stripe_index, (start, stop) in enumerate(stripe_bounds(width, scan_len, shift)):
        rows = np.arange(height, dtype=np.int64)
        if stripe_index % 2 == 1:
            rows = rows[::-1]
        cols = np.arange(start, stop, dtype=np.int64)
        block = rows[:, None] * width + cols[None, :]  # (visiting rank, column)
        block[1::2] = block[1::2, ::-1]  # S-shape by visiting rank, not by absolute row parity
        pieces.append(block.reshape(-1))
    return np.concatenate(pieces)


def nss_four_directions(height: int, width: int, scan_len: int, shift: int = 0) -> np.ndarray:
    """The K = 4 MaIR scan orders (the official code's ``fix_ending`` variant).

    Returns:
        int64 array (4, H*W): [NSS, point reflection of NSS, NSS of the transposed map mapped back
        to raster indices, point reflection of that].
    """
    length = height * width
    seq0 = nss_sequence(height, width, scan_len, shift)
    transposed = nss_sequence(width, height, scan_len, shift)  # indices q = c * H + r of the W x H map
    seq2 = (transposed % height) * width + transposed // height
    return np.stack([seq0, length - 1 - seq0, seq2, length - 1 - seq2])


def inverse_orders(orders: np.ndarray) -> np.ndarray:
    """Inverse permutations: ``inverse[k, orders[k, t]] = t``."""
    inverse = np.empty_like(orders)
    steps = np.arange(orders.shape[1], dtype=orders.dtype)
    for k in range(orders.shape[0]):
        inverse[k, orders[k]] = steps
    return inverse


@dataclass(frozen=True)
class ScanOrder:
    """Gather indices of the four directions on one device.

    Attributes:
        scan: (4, L) int64, raster index visited at step t of direction k.
        inverse: (4, L) int64, step at which direction k visits raster index p.
    """

    scan: torch.Tensor
    inverse: torch.Tensor


@lru_cache(maxsize=64)
def _orders_numpy(height: int, width: int, scan_len: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    orders = nss_four_directions(height, width, scan_len, shift)
    return orders, inverse_orders(orders)


_device_cache: dict[tuple[int, int, int, int, str], ScanOrder] = {}
_device_cache_lock = threading.Lock()
_DEVICE_CACHE_LIMIT = 128


def mair_scan_order(height: int, width: int, scan_len: int, shift: int, device: torch.device | str) -> ScanOrder:
    """Cached MaIR scan order for an H x W map on ``device``.

    Args:
        height: map height H (>= 1).
        width: map width W (>= 1).
        scan_len: stripe width.
        shift: 0 for unshifted blocks, scan_len // 2 for MaIR's odd blocks.
        device: where the index tensors should live.
    """
    return _cached_order((height, width, scan_len, shift), device, lambda: _orders_numpy(height, width, scan_len, shift))


def _cached_order(
    geometry: tuple[int, int, int, int], device: torch.device | str, build: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> ScanOrder:
    import torch

    device = torch.device(device)
    key = (*geometry, str(device))
    cached = _device_cache.get(key)
    if cached is not None:
        return cached
    orders, inverse = build()
    # Built outside inference mode: a cached inference tensor could not be saved for the
    # backward of a later training step in the same process.
    with torch.inference_mode(False):
        order = ScanOrder(torch.from_numpy(orders.copy()).to(device), torch.from_numpy(inverse.copy()).to(device))
    with _device_cache_lock:
        if len(_device_cache) >= _DEVICE_CACHE_LIMIT:
            _device_cache.pop(next(iter(_device_cache)))  # drop the oldest entry
        _device_cache[key] = order
    return order


@lru_cache(maxsize=64)
def _cross_numpy(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    length = height * width
    rows = np.arange(length, dtype=np.int64)
    steps = np.arange(length, dtype=np.int64)
    cols = (steps % height) * width + steps // height  # column-major visit of the H x W map
    orders = np.stack([rows, cols, rows[::-1], cols[::-1]])
    return orders, inverse_orders(orders)


def cross_scan_order(height: int, width: int, device: torch.device | str) -> ScanOrder:
    """The K = 4 cross-scan orders of VMamba/VAMamba: row-major, column-major, and their reverses.

    Cached like :func:`mair_scan_order` (key ``scan_len = 0``).
    """
    return _cached_order((height, width, 0, -1), device, lambda: _cross_numpy(height, width))


def clear_scan_order_cache() -> None:
    """Forget every cached order (frees device memory of index tensors)."""
    with _device_cache_lock:
        _device_cache.clear()
    _orders_numpy.cache_clear()
