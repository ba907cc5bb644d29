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


def add_stem(
    net: nn.Module, *, upscale: int, in_chans: int, img_range: float, upsampler: str, resi_connection: str, embed_dim: int
) -> None:
    """Check the head settings, set the attributes :func:`reconstruct` reads (``upscale``,
    ``in_chans``, ``img_range``, ``upsampler``), and create the input mean, shallow conv and
    patch-embedding LayerNorm under the official names.

    The mean (RGB, or zeros for other channel counts) is a non-persistent buffer: not in checkpoints.
    """
    check_head(upsampler, upscale, resi_connection)
    net.upscale = upscale if upsampler else 1
    net.in_chans = in_chans
    net.img_range = img_range
    net.upsampler = upsampler
    mean = RGB_MEAN if in_chans == 3 else (0.0,) * in_chans
    net.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)
    net.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
    net.patch_embed = nn.Module()
    net.patch_embed.norm = nn.LayerNorm(embed_dim, eps=1e-5)


def add_neck_and_head(net: nn.Module, *, upsampler: str, upscale: int, embed_dim: int, in_chans: int) -> None:
    """After the residual groups: the body's LayerNorm and conv (``norm``, ``conv_after_body``),
    then the reconstruction head (:func:`add_head`), in the official creation order."""
    net.norm = nn.LayerNorm(embed_dim, eps=1e-5)
    net.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
    add_head(net, upsampler=upsampler, upscale=upscale, embed_dim=embed_dim, in_chans=in_chans)


def drop_path_rates(rate: float, depths: tuple[int, ...] | list[int]) -> list[list[float]]:
    """Per-group drop-path rates, linearly spaced over all blocks as torch.linspace(0, rate, n).

    Computed in Python: the network may be built under a meta-device context.
    """
    total = sum(depths)
    rates = [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[start : start + depth] for start, depth in zip(starts, depths)]


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


def reconstruct(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The whole forward pass around ``net.forward_features``: normalise, shallow conv, deep
    features with the body's residual, head (the same-size head adds the input back), de-normalise.
    """
    mean = net.mean.to(x.dtype)
    x = (x - mean) * net.img_range
    shallow = net.conv_first(x)
    body = net.conv_after_body(net.forward_features(shallow)) + shallow
    if net.upsampler == "pixelshuffle":
        out = net.conv_last(net.upsample(net.conv_before_upsample(body)))
    elif net.upsampler == "pixelshuffledirect":
        out = net.upsample(body)
    else:
        out = x + net.conv_last(body)
    return out / net.img_range + mean


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
