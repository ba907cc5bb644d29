"""Tiled inference: split an image into overlapping tiles, run each, blend them back.

The whole image and the output canvas stay in host memory; only the tiles handed to ``run_tiles``
reach the device, so device memory is bounded by the tile size, not by the image.

Tiles are evenly sized and spread (every tile has the same shape, which lets tiles be batched),
neighbours overlap by at least ``overlap`` input pixels, and the overlaps are blended with a
separable raised-cosine window:

* the outer quarter of an overlap on the inner side of a tile gets weight 0 (those pixels lack
  context there),
* the middle half is a sin²/cos² cross-fade between the two neighbours (the weights sum to 1),
* sides on the image border keep full weight up to the border.

A model whose receptive-field radius is at most ``overlap // 4`` input pixels therefore gives the
same output tiled and whole (up to float rounding). Models with global operations (MaIR's pooled
gate) differ slightly; the cross-fade hides the seams.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from restorecli.errors import OutOfMemoryError, UsageError

if TYPE_CHECKING:
    import torch

TileFn = Callable[["torch.Tensor"], "torch.Tensor"]
"""Runs a batch of tiles: (N, C, h, w) float32 on the host -> (N, C', h*scale, w*scale) on the host."""

ProgressFn = Callable[[int, int], None]
"""Called with (tiles done, tiles total) after every batch of tiles."""

DEFAULT_OVERLAP = 32
MIN_TILE = 32
"""Smallest tile a user may ask for, and the floor of the OOM back-off (input pixels).

Measured on examples/parrots.png (96²) against whole-image output, PSNR, with the default
overlap: the bundled x4 network (grown to four groups, 2026-12-07) gives 56.2 dB at 32 px, 55.7
at 48 and 62.7 at 64 (the three-group file continued with 64² patches: 56.5, 56.5, 64.1; the
48²-patch file before it: 57.3, 57.1, 65.7; the 8,000-iteration file: 60.1, 59.5, 70.2); the
bundled denoiser at sigma 25 (grown to four groups) gives 46.9, 50.4 and 56.5 dB (its
three-group file: 49.2, 52.1, 58.6). (The first bundled files gave 62 dB or more
and 50 dB or more from 32 px on, 54-59 and 42 dB at 16 px: the longer-trained networks lean more
on distant context.) 50 dB is an RMS difference of 0.8 of an 8-bit level, 47 dB of 1.1, 57 dB of 0.36.
Smaller tiles also multiply the work by their overlaps.
"""


def check_tile(tile: int | None, overlap: int | None, *, multiple: int = 1) -> None:
    """Check a requested tile side and overlap against the limits, before any work.

    Limits: a tile is 0 (whole image), None (automatic) or at least ``MIN_TILE`` px, and a
    multiple of ``multiple`` (a network's side rule, e.g. 8 for MaIRUNet's three 2x
    downsamplings); the overlap is 0 or more and, with a tile, below half of it (from half on, the
    stride is at most half a tile, so every pixel is computed in two or more tiles per axis). An
    overlap of None is the automatic one (:func:`auto_overlap`).

    Raises:
        UsageError: a value out of its range; the message gives the range.
    """
    smallest = -(-MIN_TILE // multiple) * multiple
    if tile is not None and (tile < 0 or 0 < tile < smallest or tile % multiple):
        rule = f"a multiple of {multiple} from {smallest} px" if multiple > 1 else f"a tile of {smallest} px or more"
        why = f" (this network works on sides that are multiples of {multiple})" if tile >= smallest else ""
        raise UsageError(f"--tile {tile}: expected 0 (whole image) or {rule}{why}")
    if overlap is None:
        return
    if overlap < 0:
        raise UsageError(f"--tile-overlap {overlap}: expected 0 or more")
    if tile and 2 * overlap >= tile:
        fits = -(-max(smallest, 2 * overlap + 1) // multiple) * multiple
        raise UsageError(
            f"--tile-overlap {overlap} is not below half of --tile {tile}; expected --tile-overlap 0 to "
            f"{(tile - 1) // 2}, or --tile {fits} or more"
        )


def auto_overlap(tile: int | None) -> int:
    """The overlap used when none is given: ``DEFAULT_OVERLAP``, kept below half of a set tile."""
    return min(DEFAULT_OVERLAP, (tile - 1) // 2) if tile else DEFAULT_OVERLAP


@dataclass(frozen=True)
class Tile:
    """One tile in input pixels: rows ``top:bottom``, columns ``left:right`` of the image."""

    index: int
    top: int
    bottom: int
    left: int
    right: int


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image lie, and how their outputs are weighted.

    Attributes:
        height: Image height in input pixels.
        width: Image width in input pixels.
        tile_height: Height of every tile (``min(tile, height)``).
        tile_width: Width of every tile (``min(tile, width)``).
        overlap: Requested minimum overlap between neighbouring tiles, input pixels.
        scale: Output pixels per input pixel.
        row_starts: Top row of each tile row.
        col_starts: Left column of each tile column.
    """

    height: int
    width: int
    tile_height: int
    tile_width: int
    overlap: int
    scale: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    @classmethod
    def for_image(cls, height: int, width: int, *, tile: int, overlap: int, scale: int = 1) -> TilePlan:
        """Plan evenly sized tiles covering an image.

        Args:
            height: Image height in input pixels (>= 1).
            width: Image width in input pixels (>= 1).
            tile: Tile side in input pixels; 0 means one tile covering the whole image.
            overlap: Minimum overlap between neighbours in input pixels; capped at half the tile so
                that a pixel is never covered by more than the tiles around it.
            scale: Output pixels per input pixel.

        Returns:
            The plan.
        """
        if height < 1 or width < 1:
            raise ValueError(f"image must be at least 1x1, got {height}x{width}")
        if tile < 0 or overlap < 0 or scale < 1:
            raise ValueError(f"need tile >= 0, overlap >= 0, scale >= 1; got {tile}, {overlap}, {scale}")
        tile_height = height if tile == 0 else min(tile, height)
        tile_width = width if tile == 0 else min(tile, width)
        overlap = min(overlap, tile_height // 2, tile_width // 2) if tile else 0
        return cls(
            height=height,
            width=width,
            tile_height=tile_height,
            tile_width=tile_width,
            overlap=overlap,
            scale=scale,
            row_starts=_even_starts(height, tile_height, overlap),
            col_starts=_even_starts(width, tile_width, overlap),
        )

    @property
    def num_tiles(self) -> int:
        """Number of tiles."""
        return len(self.row_starts) * len(self.col_starts)

    def tiles(self) -> Iterator[Tile]:
        """Yield the tiles in row-major order."""
        index = 0
        for top in self.row_starts:
            for left in self.col_starts:
                yield Tile(index, top, top + self.tile_height, left, left + self.tile_width)
                index += 1

    def row_weights(self, row: int) -> list[float]:
        """Blending weights along the rows of tile row ``row`` (output pixels)."""
        return _axis_weights(self.row_starts, row, self.tile_height, self.scale)

    def col_weights(self, col: int) -> list[float]:
        """Blending weights along the columns of tile column ``col`` (output pixels)."""
        return _axis_weights(self.col_starts, col, self.tile_width, self.scale)


def _even_starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Start positions of equally long tiles spread evenly so neighbours overlap >= ``overlap``."""
    if tile >= length:
        return (0,)
    stride = tile - overlap
    count = math.ceil((length - overlap) / stride)
    span = length - tile
    return tuple(round(i * span / (count - 1)) for i in range(count))


def _ramp(length: int, *, rising: bool) -> list[float]:
    """sin² (rising) or cos² (falling) samples at pixel centres; a rising and a falling ramp sum to 1."""
    values = [math.sin(0.5 * math.pi * (k + 0.5) / length) ** 2 for k in range(length)]
    return values if rising else [1.0 - v for v in values]


def _axis_weights(starts: tuple[int, ...], i: int, tile: int, scale: int) -> list[float]:
    """Weights of tile ``i`` along one axis, in output pixels."""
    weights = [1.0] * (tile * scale)
    if i > 0:  # inner edge at the start: overlap with the previous tile
        shared = (starts[i - 1] + tile - starts[i]) * scale
        margin = shared // 4
        ramp = _ramp(shared - 2 * margin, rising=True)
        weights[: margin + len(ramp)] = [0.0] * margin + ramp
    if i < len(starts) - 1:  # inner edge at the end: overlap with the next tile
        shared = (starts[i] + tile - starts[i + 1]) * scale
        margin = shared // 4
        ramp = _ramp(shared - 2 * margin, rising=False)
        end = len(weights)
        start = end - margin - len(ramp)
        # multiply, so a tile narrower than its two overlaps keeps both fades
        weights[start:end] = [w * r for w, r in zip(weights[start:end], ramp + [0.0] * margin, strict=True)]
    return weights


def run_tiles(
    fn: TileFn,
    image: torch.Tensor,
    plan: TilePlan,
    *,
    batch_size: int = 1,
    on_progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Run ``fn`` tile by tile and blend the outputs on a host canvas.

    Args:
        fn: Runs a batch of tiles, see ``TileFn``.
        image: (1, C, H, W) float32 image on the host.
        plan: Tile plan for this image.
        batch_size: Tiles per call of ``fn``.
        on_progress: Called after every batch with (tiles done, tiles total).

    Returns:
        (1, C', H*scale, W*scale) float32 on the host.
    """
    import torch

    _, _, height, width = image.shape
    if (height, width) != (plan.height, plan.width):
        raise ValueError(f"plan is for {plan.height}x{plan.width}, image is {height}x{width}")
    scale = plan.scale
    if plan.num_tiles == 1:
        output = fn(image)
        _check_output(output, 1, height * scale, width * scale)
        if on_progress:
            on_progress(1, 1)
        return output.float()

    n_cols = len(plan.col_starts)
    row_w = [torch.tensor(plan.row_weights(r)) for r in range(len(plan.row_starts))]
    col_w = [torch.tensor(plan.col_weights(c)) for c in range(n_cols)]
    # The normaliser of a grid of separable windows is separable too: two 1-D sums, not a full map.
    row_sum = torch.zeros(height * scale)
    col_sum = torch.zeros(width * scale)
    for r, top in enumerate(plan.row_starts):
        row_sum[top * scale : top * scale + len(row_w[r])] += row_w[r]
    for c, left in enumerate(plan.col_starts):
        col_sum[left * scale : left * scale + len(col_w[c])] += col_w[c]

    canvas: torch.Tensor | None = None
    tiles = list(plan.tiles())
    for first in range(0, len(tiles), batch_size):
        group = tiles[first : first + batch_size]
        inputs = torch.cat([image[:, :, t.top : t.bottom, t.left : t.right] for t in group])
        outputs = fn(inputs)
        _check_output(outputs, len(group), plan.tile_height * scale, plan.tile_width * scale)
        if canvas is None:
            canvas = torch.zeros(1, outputs.shape[1], height * scale, width * scale)
        for tile, out in zip(group, outputs, strict=True):
            r, c = divmod(tile.index, n_cols)
            weight = row_w[r][:, None] * col_w[c][None, :]
            region = canvas[0, :, tile.top * scale : tile.bottom * scale, tile.left * scale : tile.right * scale]
            region.add_(out.float() * weight)
        if on_progress:
            on_progress(first + len(group), len(tiles))
    assert canvas is not None
    canvas.div_(row_sum[:, None] * col_sum[None, :])
    return canvas


def _check_output(output: torch.Tensor, count: int, height: int, width: int) -> None:
    if output.dim() != 4 or output.shape[0] != count or tuple(output.shape[2:]) != (height, width):
        raise ValueError(
            f"tile function returned shape {tuple(output.shape)}, expected ({count}, C, {height}, {width})"
        )


@dataclass(frozen=True)
class TiledResult:
    """Output of ``run_with_backoff`` and the tiling that produced it."""

    output: torch.Tensor
    tile: int
    """Tile side actually used (0 = whole image)."""
    overlap: int
    num_tiles: int
    batch_size: int


def run_with_backoff(
    fn: TileFn,
    image: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    scale: int,
    batch_size: int = 1,
    min_tile: int = MIN_TILE,
    on_progress: ProgressFn | None = None,
    on_retry: Callable[[int, int], None] | None = None,
) -> TiledResult:
    """Tiled inference that recovers from device out-of-memory by shrinking the work.

    When the device (or the host, see ``is_out_of_memory``) runs out of memory, the batch of tiles
    is first reduced to one tile, then the tile side is halved (a whole-image run starts from the
    longer image side), down to ``min_tile``.

    Args:
        fn: Runs a batch of tiles, see ``TileFn``.
        image: (1, C, H, W) float32 image on the host.
        tile: Tile side in input pixels, 0 for the whole image.
        overlap: Minimum overlap between tiles in input pixels.
        scale: Output pixels per input pixel.
        batch_size: Tiles per call of ``fn`` to start with.
        min_tile: Smallest tile side to try.
        on_progress: Called after every batch with (tiles done, tiles total).
        on_retry: Called with (new tile, new batch size) before a retry.

    Returns:
        The blended output and the tiling used.

    Raises:
        OutOfMemoryError: Still out of memory with one tile of ``min_tile`` (or smaller image) pixels.
    """
    _, _, height, width = image.shape
    while True:
        plan = TilePlan.for_image(height, width, tile=tile, overlap=overlap, scale=scale)
        try:
            output = run_tiles(fn, image, plan, batch_size=batch_size, on_progress=on_progress)
            return TiledResult(output, tile, plan.overlap, plan.num_tiles, batch_size)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            side = max(plan.tile_height, plan.tile_width)
            if batch_size > 1 and plan.num_tiles > 1:
                batch_size = 1
            elif side > min_tile:
                tile = max(min_tile, side // 2)
            else:
                raise OutOfMemoryError(
                    f"out of device memory even with one {plan.tile_height}x{plan.tile_width} tile "
                    f"(expected it to fit at the smallest tile, {min_tile} px); "
                    "free device memory, use --precision bf16, or run on another device"
                ) from None
        _release_cached_memory()
        if on_retry:
            on_retry(tile, batch_size)


HOST_ALLOCATION_FAILURE = "DefaultCPUAllocator: can't allocate memory"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an error from a forward pass means the memory ran out.

    ``torch.OutOfMemoryError`` covers the GPU. A failed host allocation has no exception type of
    its own in torch (it is a plain ``RuntimeError`` from the CPU allocator), so that one case is
    recognised by the allocator's message.
    """
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (
        type(error) is RuntimeError and HOST_ALLOCATION_FAILURE in str(error)
    )


def _release_cached_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def tile_from_budget(budget_bytes: float, bytes_per_pixel: float, *, multiple: int = 16, cap: int = 2048) -> int:
    """Largest square tile whose estimated working memory fits a budget.

    Args:
        budget_bytes: Memory the tile may use.
        bytes_per_pixel: Estimated working memory per input pixel (measured by a probe run).
        multiple: Round the side down to a multiple of this.
        cap: Largest side returned.

    Returns:
        Tile side in input pixels, between ``MIN_TILE`` and ``cap``.
    """
    if bytes_per_pixel <= 0:
        return cap
    side = int(math.sqrt(max(budget_bytes, 0.0) / bytes_per_pixel))
    side = side // multiple * multiple
    return max(MIN_TILE, min(cap, side))


def tile_batch_from_budget(budget_bytes: float, bytes_per_pixel: float, tile: int, *, cap: int = 16) -> int:
    """Most tiles of side ``tile`` that fit a memory budget together (one batch on the device).

    Args:
        budget_bytes: Memory the batch may use.
        bytes_per_pixel: Estimated working memory per input pixel (measured by a probe run).
        tile: Tile side in input pixels.
        cap: Largest batch returned (beyond a few tiles a GPU gains little and the last batch
            of an image is mostly empty).

    Returns:
        Tiles per batch, between 1 and ``cap``.
    """
    per_tile = max(bytes_per_pixel, 0.0) * tile * tile
    if per_tile <= 0:
        return cap
    return max(1, min(cap, int(max(budget_bytes, 0.0) // per_tile)))


def available_host_memory() -> int | None:
    """Bytes of host RAM available to new allocations (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class HostPeakMeter:
    """Peak resident memory of this process across a block of code (Linux only).

    Hands freed heap memory back to the OS (glibc ``malloc_trim``), resets the kernel's
    high-water mark (``/proc/self/clear_refs``) on entry and reads ``VmHWM`` on exit.
    ``peak_increase`` is None where this is not supported.
    """

    def __init__(self) -> None:
        self.peak_increase: int | None = None
        self._start: int | None = None

    def __enter__(self) -> HostPeakMeter:
        _return_free_heap_to_os()
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
                clear_refs.write("5")
            self._start = _read_status_kib("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc_info: object) -> None:
        peak = _read_status_kib("VmHWM")
        if self._start is not None and peak is not None:
            self.peak_increase = max(0, peak - self._start) * 1024


def _return_free_heap_to_os() -> None:
    """glibc keeps freed memory resident and reuses it, which would hide a probe's real peak."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
