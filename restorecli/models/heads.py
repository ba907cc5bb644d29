"""Input normalisation, reconstruction heads and Linear/LayerNorm initialisation shared by the
MaIR-style networks (MaIR, VAMamba).

Heads are attributes of the network itself (``conv_before_upsample``, ``upsample``, ``conv_last``)
because official checkpoints name them at the top level.
"""

from __future__ import annotations

import torch
from torch import nn

RGB_MEAN = (0.4488, 0.4371, 0.4040)
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "")
HEAD_FEATURES = 64


def check_head(upsampler: str, upscale: int, resi_connection: str) -> None:
    """Reject head settings no network implements (ValueError: programmer/config misuse)."""
    if upsampler not in UPSAMPLERS:
        raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {upsampler!r}")
    if resi_connection != "1conv":
        raise ValueError(f"only resi_connection='1conv' is implemented, got {resi_connection!r}")
    if upsampler == "" and upscale != 1:
        raise ValueError(f"the same-size head needs upscale=1, got {upscale}")
    if upsampler == "pixelshuffle" and upscale not in (2, 3, 4):
        raise ValueError(f"pixelshuffle upsampling supports upscale 2, 3, 4, got {upscale}")


def register_input_mean(net: nn.Module, in_chans: int) -> None:
    """The RGB mean subtracted from inputs, as a non-persistent buffer (not in checkpoints)."""
    mean = RGB_MEAN if in_chans == 3 else (0.0,) * in_chans
    net.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)


def add_head(net: nn.Module, *, upsampler: str, upscale: int, embed_dim: int, in_chans: int) -> None:
    """Create the reconstruction head's layers on ``net`` under the official names."""
    if upsampler == "pixelshuffle":
        features = HEAD_FEATURES
        net.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, features, 3, 1, 1), nn.LeakyReLU(inplace=True))
        stages: list[nn.Module] = []
        if upscale == 3:
            stages += [nn.Conv2d(features, 9 * features, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            for _ in range(upscale.bit_length() - 1):  # log2(upscale) stages of x2
                stages += [nn.Conv2d(features, 4 * features, 3, 1, 1), nn.PixelShuffle(2)]
        net.upsample = nn.Sequential(*stages)
        net.conv_last = nn.Conv2d(features, in_chans, 3, 1, 1)
    elif upsampler == "pixelshuffledirect":
        net.upsample = nn.Sequential(nn.Conv2d(embed_dim, in_chans * upscale * upscale, 3, 1, 1), nn.PixelShuffle(upscale))
    else:
        net.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)


def run_head(net: nn.Module, upsampler: str, x: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
    """Reconstruct from ``body`` = conv_after_body(features) + shallow features.

    ``x`` is the normalised input, used by the same-size head's global residual.
    """
    if upsampler == "pixelshuffle":
        return net.conv_last(net.upsample(net.conv_before_upsample(body)))
    if upsampler == "pixelshuffledirect":
        return net.upsample(body)
    return x + net.conv_last(body)


def init_linear_and_norm(net: nn.Module) -> None:
    """trunc_normal(0.02) Linear weights, zero biases, LayerNorm (1, 0); convs keep their defaults."""
    for module in net.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
