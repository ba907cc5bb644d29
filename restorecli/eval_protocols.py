"""The inference protocols of ``restore eval``: how one image goes through the network.

``tiled-official`` is MaIR's own test-time tiling (``MambaIRModel.test``) reproduced exactly,
``whole`` one forward pass, ``blended`` the tool's overlapping tiles (``restorecli.inference``);
any of them under the 8-fold self-ensemble.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PROTOCOLS = ("blended", "tiled-official", "whole")


def tiled_official(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int) -> torch.Tensor:
    """MaIR's own test-time tiling (``MambaIRModel.test`` in the official code), reproduced exactly.

    ``h // 200 + 1`` × ``w // 200 + 1`` tiles of the reflect-padded image, each extended by a tenth
    of its size into its neighbours, run separately and pasted without blending.

    Args:
        model: Network (or a function around it) mapping a CPU (1, C, h, w) tile to a
            (1, C, s·h, s·w) output; it moves the tile to its device itself.
        x: (1, C, H, W) float32 input on the CPU.
        scale: Upscaling factor of the model.

    Returns:
        (1, C, s·H, s·W) float32 on the CPU, not clamped.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    _, channels, h, w = x.shape
    splits_h, splits_w = h // 200 + 1, w // 200 + 1
    pad_h, pad_w = (splits_h - h % splits_h) % splits_h, (splits_w - w % splits_w) % splits_w
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    big_h, big_w = x.shape[2:]
    sh, sw = big_h // splits_h, big_w // splits_w
    shave_h, shave_w = sh // 10, sw // 10
    out = torch.zeros(1, channels, big_h * scale, big_w * scale, dtype=torch.float32)
    with torch.no_grad():
        for i in range(splits_h):
            top = i * sh - (shave_h if i > 0 else 0)
            bottom = (i + 1) * sh + (shave_h if i < splits_h - 1 else 0)
            off_h = 0 if i == 0 else shave_h * scale
            for j in range(splits_w):
                left = j * sw - (shave_w if j > 0 else 0)
                right = (j + 1) * sw + (shave_w if j < splits_w - 1 else 0)
                off_w = 0 if j == 0 else shave_w * scale
                tile = model(x[..., top:bottom, left:right]).float().cpu()
                out[..., i * sh * scale : (i + 1) * sh * scale, j * sw * scale : (j + 1) * sw * scale] = tile[
                    ..., off_h : off_h + sh * scale, off_w : off_w + sw * scale
                ]
    return out[..., : h * scale, : w * scale]


class ProtocolRunner:
    """The inference of a protocol: (1, C, H, W) CPU float32 → (1, C, sH, sW) CPU float32.

    One runner serves a whole evaluation, so the blended protocol's tiler, and the tile side it
    measures, are made once rather than for every image.

    Args:
        model: The network, already on ``device`` and in eval mode.
        protocol: One of :data:`PROTOCOLS`.
        scale: Output/input size ratio of the network.
        device: Resolved torch device string.
        precision: ``fp32|bf16|fp16`` (autocast).
        ensemble: 8-fold self-ensemble.
        tile: Tile side of the ``blended`` protocol (None: automatic, 0: whole image).
        overlap: Tile overlap of the ``blended`` protocol (None: the tool's default).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        protocol: str,
        scale: int,
        device: str,
        precision: str = "fp32",
        ensemble: bool = False,
        tile: int | None = None,
        overlap: int | None = None,
    ) -> None:
        import torch

        from restorecli import inference

        self.model = model
        self.protocol = protocol
        self.ensemble = ensemble
        self.scale = scale
        self.device = torch.device(device)
        self.restorer: inference.ImageRestorer | None = None
        self._dtype = inference.resolve_precision(precision, self.device)
        if protocol == "blended":
            self.restorer = inference.ImageRestorer(
                model, device=device, precision=precision, tile=tile, overlap=overlap, ensemble=ensemble
            )

    @property
    def tile(self) -> int | None:
        """Tile side of the blended protocol in input pixels (0: whole image, None: not measured
        yet, or another protocol)."""
        return None if self.restorer is None else self.restorer.tile

    def warm_up(self) -> None:
        """One forward pass on a small input, and the blended protocol's tile measurement.

        Run before timing: the first pass of a process loads (or compiles) the scan kernel.
        """
        import torch

        from restorecli.inference import PROBE_SIDE

        if self.restorer is not None:
            self.restorer.warm_up()
            return
        from restorecli.models import run_facts

        side = PROBE_SIDE.get(self.device.type, 64)
        self._forward(torch.rand(1, run_facts(self.model).in_channels, side, side))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from restorecli.inference import self_ensemble

        if self.restorer is not None:
            return self.restorer.restore(x).output
        single = self._tiled if self.protocol == "tiled-official" else self._forward
        return self_ensemble(single, x) if self.ensemble else single(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        autocast = torch.autocast(self.device.type, dtype=self._dtype, enabled=self._dtype is not None)
        with torch.no_grad(), autocast:
            return self.model(x.to(self.device)).float().cpu()

    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        return tiled_official(self._forward, x, self.scale)


def synchronise(device: str) -> None:
    """Wait for the device's queued work (timings of CUDA are otherwise of the launch alone)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
