"""What a loaded network is: :class:`LoadedModel` and the facts an architecture declares.

Metadata is fixed when the network is loaded (spandrel's descriptor): callers read fields, never
attributes of the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS_SOURCES = ("bundled", "cache", "download", "file", "url", "none")


@dataclass(frozen=True, kw_only=True)
class SizeRule:
    """Input sides a network computes on without padding waste.

    Attributes:
        multiple_of: Each side is padded up to a multiple of this (the network's down-sampling
            stages need it); tiles should be multiples of it too, or every inner tile edge is
            computed partly on padding.
        min_size: Smallest side the network accepts.
    """

    multiple_of: int = 1
    min_size: int = 1

    def padded(self, side: int) -> int:
        """``side`` raised to the minimum, then to the next multiple."""
        side = max(side, self.min_size)
        return -(-side // self.multiple_of) * self.multiple_of


@dataclass(frozen=True, kw_only=True)
class TilingPolicy:
    """Whether a network may run tile by tile.

    Attributes:
        tileable: Tiled inference is allowed (every network here: outputs are blended over overlaps).
        exact: Tiled output equals whole-image output. False for networks with image-wide pooling
            (MaIR's gates, MaIRUNet's attention): close, not equal.
    """

    tileable: bool = True
    exact: bool = False


@dataclass(frozen=True, kw_only=True)
class WeightsProvenance:
    """Where a network's weights came from.

    Attributes:
        path: The file read ("" for a network built without weights).
        sha256: Digest of that file ("" without weights).
        source: ``bundled``, ``cache``, ``download``, ``file`` (a user's file), ``url`` (a
            ``--weights URL`` in the cache) or ``none`` (random initialisation).
    """

    path: str
    sha256: str
    source: str


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A network ready to run, and everything known about it (see ``restorecli.load_model``).

    Attributes:
        module: The network, in eval mode, on ``device``.
        name: Registered name (``mair-sr-x4``), else the name stored in the file, else None.
        arch: Architecture id (``mair``, ``mairunet``, ``vamamba``).
        config: The architecture's frozen config.
        task: ``sr``, ``denoise``, ``deblur`` or ``dehaze``.
        scale: Output side / input side.
        sigma: Gaussian noise level the denoiser was trained for, else None.
        variant: Task variant (``real`` noise; dehaze ``indoor``/``outdoor``/``mix``), else None.
        in_channels: Channels of the input.
        out_channels: Channels of the output.
        size_rule: Side requirements of the input.
        tiling: Whether tiles are allowed and exact.
        precisions: Compute precisions the network supports (``fp32``, ``bf16``, ``fp16``).
        device: Where the parameters live.
        weights: Where the weights came from.
    """

    module: nn.Module
    name: str | None
    arch: str
    config: Any
    task: str
    scale: int
    sigma: int | None = None
    variant: str | None = None
    in_channels: int
    out_channels: int
    size_rule: SizeRule
    tiling: TilingPolicy
    precisions: tuple[str, ...]
    device: torch.device
    weights: WeightsProvenance

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Run the network on a batch, checking the input against the descriptor.

        Args:
            image: (N, in_channels, H, W) float in [0, 1] on ``device``.

        Returns:
            (N, out_channels, H * scale, W * scale), unclamped.
        """
        if image.dim() != 4 or image.shape[1] != self.in_channels or not image.is_floating_point():
            raise ValueError(f"expected a float (N, {self.in_channels}, H, W) tensor, got {image.dtype} {tuple(image.shape)}")
        return self.module(image)

