"""Pixel losses of the official recipes: L1 (SR, real denoising, deblurring, dehazing) and Charbonnier
(colour denoising, eps 1e-12)."""

from __future__ import annotations

from collections.abc import Callable

import torch

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements."""
    return (pred - target).abs().mean()


def charbonnier_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean of ``sqrt((pred - target)² + eps)``, a smooth L1 (BasicSR's definition of eps)."""
    return torch.sqrt((pred - target) ** 2 + eps).mean()


def make_loss(name: str, eps: float = 1e-12) -> LossFn:
    """The loss called ``name`` (``l1`` or ``charbonnier``), computed in float32."""
    if name == "l1":
        return lambda pred, target: l1_loss(pred.float(), target.float())
    if name == "charbonnier":
        return lambda pred, target: charbonnier_loss(pred.float(), target.float(), eps)
    raise ValueError(f"unknown loss {name!r}")
