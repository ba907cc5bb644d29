"""MaIR (CVPR 2025): residual Mamba groups over NSS scans, with SR / lightweight-SR / denoising heads.

Parameter names equal those of the official checkpoints, which therefore load strictly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from restorecli.models.blocks import ResidualMambaBlock
from restorecli.models.heads import add_neck_and_head, add_stem, drop_path_rates, init_linear_and_norm, reconstruct


@dataclass(frozen=True)
class MaIRConfig:
    """Everything that shapes a MaIR network or its numerics (the manifest's ``config``).

    ``upsampler`` is ``"pixelshuffle"`` (classic SR), ``"pixelshuffledirect"`` (lightweight SR) or
    ``""`` (same-size restoration head, official ``None``).
    """

    upscale: int
    in_chans: int
    img_range: float
    embed_dim: int
    depths: tuple[int, ...]
    d_state: int
    ssm_ratio: float
    mlp_ratio: float
    upsampler: str
    resi_connection: str
    scan_len: int
    drop_path_rate: float = 0.1


class ResidualMambaGroup(nn.Module):
    """RMG: ``depth`` RMBs (odd ones on the shifted scan), a 3x3 conv, and a residual connection."""

    def __init__(
        self,
        *,
        channels: int,
        depth: int,
        d_state: int,
        ssm_ratio: float,
        mlp_ratio: float,
        scan_len: int,
        drop_paths: list[float],
    ) -> None:
        super().__init__()
        self.residual_group = nn.Module()
        self.residual_group.blocks = nn.ModuleList(
            ResidualMambaBlock(
                channels=channels,
                d_state=d_state,
                ssm_ratio=ssm_ratio,
                mlp_ratio=mlp_ratio,
                scan_len=scan_len,
                shift=0 if j % 2 == 0 else scan_len // 2,
                drop_path=drop_paths[j],
                mlp_name="conv_blk",
            )
            for j in range(depth)
        )
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, H, W, C) channels-last. Returns the same shape."""
        t = x
        for block in self.residual_group.blocks:
            t = block(t)
        t = self.conv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return t + x


class MaIR(nn.Module):
    """MaIR network. Input: float (B, in_chans, H, W) in [0, 1], any H, W >= 1.

    Output: (B, in_chans, H * upscale, W * upscale), not clamped.
    """

    def __init__(
        self,
        *,
        upscale: int,
        in_chans: int,
        img_range: float,
        embed_dim: int,
        depths: tuple[int, ...],
        d_state: int,
        ssm_ratio: float,
        mlp_ratio: float,
        upsampler: str,
        resi_connection: str,
        scan_len: int,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        self.scan_len = scan_len
        add_stem(
            self, upscale=upscale, in_chans=in_chans, img_range=img_range, upsampler=upsampler,
            resi_connection=resi_connection, embed_dim=embed_dim,
        )  # fmt: skip
        self.layers = nn.ModuleList(
            ResidualMambaGroup(
                channels=embed_dim,
                depth=depth,
                d_state=d_state,
                ssm_ratio=ssm_ratio,
                mlp_ratio=mlp_ratio,
                scan_len=scan_len,
                drop_paths=rates,
            )
            for depth, rates in zip(depths, drop_path_rates(drop_path_rate, depths))
        )
        add_neck_and_head(self, upsampler=upsampler, upscale=upscale, embed_dim=embed_dim, in_chans=in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        """trunc_normal(0.02) Linear weights, zero biases, LayerNorm (1, 0); convs keep defaults."""
        if self.conv_first.weight.device.type != "meta":
            init_linear_and_norm(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deep features: (B, C, H, W) -> (B, C, H, W)."""
        t = self.patch_embed.norm(x.permute(0, 2, 3, 1))
        for layer in self.layers:
            t = layer(t)
        return self.norm(t).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reconstruct(self, x)
