"""Restore one image tensor: device and precision handling, self-ensemble, tiling.

The tensor contract is the library's: float32 NCHW RGB in [0, 1] on the host in, float32 on the
host out (unclamped; ``restorecli.io`` clamps and quantises when writing).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from restorecli.errors import BackendUnavailableError, UsageError
from restorecli.tiling import (  # DEFAULT_OVERLAP: restorecli/evaluate.py reads it from here
    DEFAULT_OVERLAP,  # noqa: F401
    MIN_TILE,
    HostPeakMeter,
    ProgressFn,
    auto_overlap,
    available_host_memory,
    check_tile,
    run_with_backoff,
    tile_batch_from_budget,
    tile_from_budget,
)

if TYPE_CHECKING:
    import torch

    from restorecli.models.descriptor import LoadedModel

PRECISIONS = ("fp32", "bf16", "fp16")
CPU_TILE_CAP = 512
"""Largest automatic tile on the CPU. The cost per pixel of a forward pass is flat up to 512²
(docs/benchmarks.md, "Cost per pixel"), so larger tiles only save overlap: a 512² tile with 32 px
overlap computes 1.27x its pixels, a 256² tile 1.56x. Below the cap, available RAM decides."""
CPU_FALLBACK_TILE = 256
"""Automatic tile on a CPU whose memory cannot be measured."""
PROBE_SIDE = {"cuda": 64, "cpu": 32}
"""Side of the probe image that measures memory per pixel (smaller on the CPU, where it is slow)."""
CUDA_MEMORY_SHARE = 0.7
"""Share of the free GPU memory that automatic tiles and batches may plan to use."""


def self_ensemble(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """MaIR+ self-ensemble: average ``fn`` over the 8 flips/transposes of ``x``.

    The order is x, V, H, HV, xᵀ, Vᵀ, Hᵀ, HVᵀ (V flips rows, H flips columns, ᵀ swaps H and W
    after the flips). Each output is mapped back by transposing (5-8), then flipping columns
    (3, 4, 7, 8), then flipping rows (2, 4, 6, 8); the 8 are averaged with equal weights.

    Args:
        fn: Maps (N, C, H, W) to (N, C', sH, sW); must treat H and W alike.
        x: (N, C, H, W) input.

    Returns:
        (N, C', sH, sW) arithmetic mean of the 8 mapped-back outputs.
    """
    total = None
    for transpose in (False, True):
        for hflip, vflip in ((False, False), (False, True), (True, False), (True, True)):
            variant = x
            if vflip:
                variant = variant.flip(-2)
            if hflip:
                variant = variant.flip(-1)
            if transpose:
                variant = variant.transpose(-2, -1)
            out = fn(variant)
            if transpose:
                out = out.transpose(-2, -1)
            if hflip:
                out = out.flip(-1)
            if vflip:
                out = out.flip(-2)
            total = out.clone() if total is None else total.add_(out)
    assert total is not None
    return total.div_(8)


def resolve_device(spec: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a usable device.

    ``auto`` is CUDA when available (the rank's ``LOCAL_RANK`` device under torchrun), else CPU.

    Raises:
        UsageError: Not one of the accepted forms.
        BackendUnavailableError: CUDA asked for but not usable here.
    """
    import torch

    from restorecli import torchrun

    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torchrun.from_environment().local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"--device {spec} needs CUDA, but this torch ({torch.__version__}) sees no CUDA device; "
                "use --device cpu"
            )
        # a bare "cuda" under torchrun is this rank's device
        place = torchrun.from_environment()
        index = int(spec[5:]) if ":" in spec else place.local_rank if place.enabled else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise BackendUnavailableError(
                f"--device {spec}: expected an index below {torch.cuda.device_count()} (CUDA devices here)"
            )
        return torch.device("cuda", index)
    raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, got {spec!r}")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``fp32|bf16|fp16`` on a device (None for fp32).

    Raises:
        UsageError: Unknown precision name.
        BackendUnavailableError: The device cannot compute in that precision.
    """
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise BackendUnavailableError(
                f"--precision fp16 needs a CUDA device, got {device.type}; use --precision bf16 or fp32"
            )
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BackendUnavailableError(
            f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
            "use --precision fp16 or fp32"
        )
    return torch.bfloat16


@dataclass(frozen=True)
class RestoreResult:
    """One restored image and how it was computed."""

    output: torch.Tensor
    """(1, C, sH, sW) float32 on the host, unclamped."""
    tile: int
    """Tile side used in input pixels (0 = whole image)."""
    overlap: int
    num_tiles: int
    """Tiles per pass (times 8 under the self-ensemble)."""
    seconds: float


class ImageRestorer:
    """Runs a restoration network on host images, tile by tile on its device.

    Args:
        model: A loaded model (``restorecli.load_model``), or a bare network taking (N, 3, H, W)
            in [0, 1] and returning (N, 3, H*upscale, W*upscale) (see
            ``restorecli.models.descriptor.run_facts``); moved to ``device`` and put in eval mode.
        device: ``auto|cpu|cuda|cuda:N``.
        precision: ``fp32|bf16|fp16`` (autocast; parameters stay float32).
        tile: Tile side in input pixels; 0 for the whole image, None to size it from free memory.
            Otherwise at least ``tiling.MIN_TILE`` and a multiple of the network's side rule
            (:func:`tile_multiple`).
        overlap: Minimum overlap between tiles in input pixels, below half the tile; None for
            ``DEFAULT_OVERLAP`` kept below half the tile.
        ensemble: Average over the 8 flips/transposes (MaIR+).
        tile_batch: Tiles per forward pass; default 1 on the CPU, and on CUDA as many as fit the
            free memory (up to 16) when the tile is given, else 4 (the automatic tile is sized
            for 4).

    Raises:
        UsageError: A tile or overlap outside those limits (see ``tiling.check_tile``).
    """

    def __init__(
        self,
        model: LoadedModel | torch.nn.Module,
        *,
        device: str = "auto",
        precision: str = "fp32",
        tile: int | None = None,
        overlap: int | None = None,
        ensemble: bool = False,
        tile_batch: int | None = None,
    ) -> None:
        from restorecli.models import LoadedModel, run_facts

        facts = run_facts(model)
        check_tile(tile, overlap, multiple=facts.size_rule.multiple_of)
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.precision = precision
        module = model.module if isinstance(model, LoadedModel) else model
        self.model = module.to(self.device).eval()
        # before any work: an explicit backend that cannot run is an error, not a silent fallback
        self.scan_backend = scan_backend_label(self.model, self.device)
        self.scale = facts.scale
        self.overlap = auto_overlap(tile) if overlap is None else overlap
        self.ensemble = ensemble
        self.tile_batch = tile_batch or (4 if self.device.type == "cuda" else 1)
        # measured on the first image (a probe forward), like the automatic tile
        self._batch_from_memory = tile_batch is None and self.device.type == "cuda" and bool(tile)
        self.requested_tile = tile
        self._tile = tile
        self._size_rule = facts.size_rule

    @property
    def tile(self) -> int | None:
        """Tile side in use (None until the automatic size is measured)."""
        return self._tile

    def restore(self, image: torch.Tensor, *, on_progress: ProgressFn | None = None) -> RestoreResult:
        """Restore one image.

        Args:
            image: (1, 3, H, W) float32 in [0, 1] on the host.
            on_progress: Called with (tiles done, tiles total) as tiles finish.

        Returns:
            The output and the tiling used.
        """
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"expected a (1, C, H, W) tensor, got shape {tuple(image.shape)}")
        started = time.perf_counter()
        # An image no larger than the probe fits whenever the probe did: no need to measure yet.
        if self._tile is None and max(image.shape[-2:]) > PROBE_SIDE.get(self.device.type, 64):
            self._tile = self.auto_tile()
        if self._batch_from_memory and self._tile and max(image.shape[-2:]) > self._tile:
            self.tile_batch = self.auto_tile_batch(self._tile)
            self._batch_from_memory = False
        passes = 8 if self.ensemble else 1
        state: dict[str, Any] = {"pass": 0, "result": None}

        def one_pass(x: torch.Tensor) -> torch.Tensor:
            def progress(done: int, total: int) -> None:
                if on_progress:
                    on_progress(state["pass"] * total + done, passes * total)

            tile = self._tile if self._tile is not None else 0
            result = run_with_backoff(
                self._forward,
                x,
                tile=tile,
                overlap=self.overlap,
                scale=self.scale,
                batch_size=self.tile_batch,
                min_tile=max(MIN_TILE, self._size_rule.min_size),
                on_progress=progress,
            )
            if (result.tile, result.batch_size) != (tile, self.tile_batch):
                # out of memory: later passes and images start from what fitted
                self._tile, self.tile_batch = result.tile, result.batch_size
            state["pass"] += 1
            state["result"] = result
            return result.output

        output = self_ensemble(one_pass, image) if self.ensemble else one_pass(image)
        last = state["result"]
        return RestoreResult(
            output=output,
            tile=last.tile,
            overlap=last.overlap,
            num_tiles=last.num_tiles * passes,
            seconds=time.perf_counter() - started,
        )

    def _forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Run the network on a batch of host tiles; pads to the model's size rule and crops back."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        height, width = tiles.shape[-2:]
        x = tiles.to(self.device, non_blocking=True)
        pad_h = self._size_rule.padded(height) - height
        pad_w = self._size_rule.padded(width) - width
        if pad_h or pad_w:
            # reflect needs the pad to be smaller than the side; replicate covers the rest
            reflect_h, reflect_w = min(pad_h, height - 1), min(pad_w, width - 1)
            x = F.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect")
            x = F.pad(x, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        # no_grad, not inference_mode: the output is edited in place later (canvas, clamping)
        with torch.no_grad(), autocast:
            y = self.model(x)
        y = y[..., : height * self.scale, : width * self.scale]
        return y.float().cpu()

    def warm_up(self) -> None:
        """Run the network once on a small input, and measure the automatic tile if there is one.

        The first forward pass of a process pays one-time costs: the scan kernel is loaded (and
        compiled, the first time on a machine), lazy state is created, the device initialised.
        Calling this before timing anything keeps those costs out of the first image's time, and
        the tile measured here holds for every later image (no probe per image).
        """
        import torch

        side = self._size_rule.padded(PROBE_SIDE.get(self.device.type, 64))
        self._forward(torch.rand(1, 3, side, side))
        if self._tile is None:
            self._tile = self.auto_tile()

    def auto_tile(self) -> int:
        """Tile side from free device memory (CUDA) or available RAM (CPU), via a probe run."""
        import torch

        if self.device.type == "cuda":
            bytes_per_pixel, free = self._measure_cuda()
            return tile_from_budget(CUDA_MEMORY_SHARE * free / self.tile_batch, bytes_per_pixel, cap=2048)
        side = PROBE_SIDE.get(self.device.type, 64)
        probe = torch.rand(1, 3, side, side)
        pixels = side * side
        with HostPeakMeter() as meter:
            self._forward(probe)
        available = available_host_memory()
        if meter.peak_increase is None or available is None:
            return CPU_FALLBACK_TILE
        # Floor: input, output and a few feature maps of the tile must exist at once.
        floor = 4 * 3 * (1 + self.scale**2) * 4
        per_pixel = max(meter.peak_increase / pixels, floor)
        return tile_from_budget(0.4 * available, per_pixel, cap=CPU_TILE_CAP)

    def auto_tile_batch(self, tile: int) -> int:
        """Tiles of side ``tile`` per forward pass that fit the free GPU memory (via a probe run)."""
        bytes_per_pixel, free = self._measure_cuda()
        return tile_batch_from_budget(CUDA_MEMORY_SHARE * free, bytes_per_pixel, tile)

    def _measure_cuda(self) -> tuple[float, int]:
        """Peak working memory per input pixel of a probe forward, and the free device memory (bytes)."""
        import torch

        side = PROBE_SIDE["cuda"]
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self._forward(torch.rand(1, 3, side, side))
        peak = torch.cuda.max_memory_allocated(self.device) - before
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(peak, 1) / (side * side), free


def tile_multiple(model: LoadedModel | torch.nn.Module) -> int:
    """What a network's tile sides must be a multiple of: its side rule's ``multiple_of``.

    MaIRUNet pads every input to a multiple of 8 (three 2x down-samplings), so a tile of another
    side would be computed partly on padding at every inner tile edge.
    """
    from restorecli.models import run_facts

    return run_facts(model).size_rule.multiple_of


def restore_tensor(
    model: LoadedModel | torch.nn.Module,
    x: torch.Tensor,
    *,
    tile: int | None = 0,
    overlap: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    ensemble: bool = False,
) -> torch.Tensor:
    """Restore one image tensor (library entry point; moves ``model`` to ``device``).

    Args:
        model: Restoration network (see ``ImageRestorer``).
        x: (1, C, H, W) float32 in [0, 1] on the host.
        tile: Tile side in input pixels; 0 (default) for the whole image, None for automatic
            (limits: see ``ImageRestorer``).
        overlap: Minimum overlap between tiles in input pixels; None for the automatic one.
        device: ``auto|cpu|cuda|cuda:N``.
        precision: ``fp32|bf16|fp16``.
        ensemble: MaIR+ self-ensemble over the 8 flips/transposes.

    Returns:
        (1, C, sH, sW) float32 on the host, unclamped.
    """
    restorer = ImageRestorer(model, device=device, precision=precision, tile=tile, overlap=overlap, ensemble=ensemble)
    return restorer.restore(x).output


def scan_backend_label(module: torch.nn.Module, device: torch.device | str) -> str | None:
    """What the network's selective scans run on ``device``, as every report names it.

    The one source of the ``backend`` field of reports (restore commands, eval, bench, env).
    Each scanning layer's backend is resolved as its scans resolve it (the layer's pinned
    ``scan_backend``, else ``RESTORECLI_SCAN_BACKEND``, else auto) and named with the
    implementation behind it: ``cpu:compiled`` or ``cpu:torch`` (the compiled kernel or its
    PyTorch fallback), ``cuda:mamba_ssm``, ``cuda:triton`` or ``cuda:torch``, or ``ref``. Asking
    loads the CPU kernel (compiling it the first time) or imports mamba_ssm and triton, as the
    first scan would.

    Args:
        module: The network.
        device: Where its scans run.

    Returns:
        The label (layers that resolve differently are joined with ``+``), or None for a
        network without selective scans.

    Raises:
        BackendUnavailableError: A pinned or ``RESTORECLI_SCAN_BACKEND`` backend that cannot run
            on ``device``, as the scans themselves would raise; or one named explicitly whose own
            implementation cannot run here (an explicit ``cuda`` without mamba_ssm, an explicit
            ``cpu`` whose kernel does not build): its fallback is never substituted silently.
    """
    pinned = {sub.scan_backend for sub in module.modules() if hasattr(sub, "scan_backend")}
    if not pinned:
        return None
    return "+".join(sorted({scan_label(name, device) for name in pinned}))


def scan_label(backend: str | None, device: torch.device | str) -> str:
    """The implementation label of a requested backend (None: the environment's, else auto) on ``device``
    (``restorecli.ops.selective_scan.implementation_label``).

    Raises:
        BackendUnavailableError: See :func:`scan_backend_label`.
    """
    from restorecli.ops.selective_scan import implementation_label

    return implementation_label(backend, device)
