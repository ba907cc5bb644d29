"""MaIRUNet: the 4-level Restormer-shaped U-Net of MaIR for real denoising, deblurring and dehazing.

Parameter names equal those of the official checkpoints. All blocks use
unshifted NSS orders at their level's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from restorecli.models.blocks import ResidualMambaBlock

SIZE_MULTIPLE = 8  # three PixelUnshuffle(2) stages
BASE_D_STATE = 4


@dataclass(frozen=True)
class MaIRUNetConfig:
    """Everything that shapes a MaIRUNet (the manifest's ``config``)."""

    inp_channels: int
    out_channels: int
    dim: int
    num_blocks: tuple[int, int, int, int]
    num_refinement_blocks: int
    ssm_ratio: float
    mlp_ratio: float
    flp_ratio: float
    bias: bool
    scan_len: int


class _Resample(nn.Module):
    """Bias-free 3x3 conv followed by Pixel(Un)Shuffle(2), under the official ``body.0`` name."""

    def __init__(self, in_channels: int, out_channels: int, shuffle: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False), shuffle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _downsample(channels: int) -> _Resample:
    return _Resample(channels, channels // 2, nn.PixelUnshuffle(2))


def _upsample(channels: int) -> _Resample:
    return _Resample(channels, channels * 2, nn.PixelShuffle(2))


class MaIRUNet(nn.Module):
    """MaIRUNet. Input float (B, 3, H, W) in [0, 1], any H, W >= 1 (padded to a multiple of 8
    internally with reflection, as the official test code does, and cropped back).

    Output: (B, out_channels, H, W), not clamped (global residual on the input).
    """

    def __init__(
        self,
        *,
        inp_channels: int,
        out_channels: int,
        dim: int,
        num_blocks: tuple[int, int, int, int],
        num_refinement_blocks: int,
        ssm_ratio: float,
        mlp_ratio: float,
        flp_ratio: float,
        bias: bool,
        scan_len: int,
    ) -> None:
        super().__init__()
        self.upscale = 1
        self.in_chans = inp_channels
        self.scan_len = scan_len

        def stage(channels: int, d_state: int, ratio: float, count: int) -> nn.Sequential:
            return nn.Sequential(
                *(
                    ResidualMambaBlock(
                        channels=channels,
                        d_state=d_state,
                        ssm_ratio=ssm_ratio,
                        mlp_ratio=ratio,
                        scan_len=scan_len,
                        shift=0,
                        drop_path=0.0,
                        mlp_name="mlp",
                    )
                    for _ in range(count)
                )
            )

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(inp_channels, dim, 3, 1, 1, bias=False)
        self.encoder_level1 = stage(dim, BASE_D_STATE, flp_ratio, num_blocks[0])
        self.down1_2 = _downsample(dim)
        self.encoder_level2 = stage(dim * 2, BASE_D_STATE * 2, mlp_ratio, num_blocks[1])
        self.down2_3 = _downsample(dim * 2)
        self.encoder_level3 = stage(dim * 4, BASE_D_STATE * 4, mlp_ratio, num_blocks[2])
        self.down3_4 = _downsample(dim * 4)
        self.latent = stage(dim * 8, BASE_D_STATE * 8, mlp_ratio, num_blocks[3])
        self.up4_3 = _upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)
        self.decoder_level3 = stage(dim * 4, BASE_D_STATE * 4, mlp_ratio, num_blocks[2])
        self.up3_2 = _upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)
        self.decoder_level2 = stage(dim * 2, BASE_D_STATE * 2, mlp_ratio, num_blocks[1])
        self.up2_1 = _upsample(dim * 2)
        self.decoder_level1 = stage(dim * 2, BASE_D_STATE * 2, mlp_ratio, num_blocks[0])
        self.refinement = stage(dim * 2, BASE_D_STATE * 2, mlp_ratio, num_refinement_blocks)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, 1, 1, bias=bias)

    @staticmethod
    def _blocks(stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """Run channels-last blocks on a channels-first map."""
        return stage(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x, SIZE_MULTIPLE)
        enc1 = self._blocks(self.encoder_level1, self.patch_embed.proj(padded))
        enc2 = self._blocks(self.encoder_level2, self.down1_2(enc1))
        enc3 = self._blocks(self.encoder_level3, self.down2_3(enc2))
        latent = self._blocks(self.latent, self.down3_4(enc3))
        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], dim=1))
        dec3 = self._blocks(self.decoder_level3, dec3)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], dim=1))
        dec2 = self._blocks(self.decoder_level2, dec2)
        dec1 = self._blocks(self.decoder_level1, torch.cat([self.up2_1(dec2), enc1], dim=1))
        dec1 = self._blocks(self.refinement, dec1)
        out = self.output(dec1) + padded
        return out[..., :height, :width]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right so H and W are multiples of ``multiple``.

    Reflection (the official test padding) where the map is large enough for it; replicate on the
    tiny maps where reflection is undefined (pad >= size).
    """
    height, width = x.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
