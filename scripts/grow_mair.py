"""Grow a trained MaIR by residual groups that start as the identity, for a continuation run.

The new groups are appended after the trained ones; each one's closing 3x3 conv is zero, so the
grown network computes exactly what the trained one did and training starts from its quality
instead of from scratch (docs/training.md, the bundled x4 model).

    python scripts/grow_mair.py restorecli/weights/restorecli-light-x4.safetensors grown.safetensors \
        --depths 2 2 2 2
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from restorecli import models
from restorecli.loading import load_model


def grow(source: str | Path, output: str | Path, depths: list[int], *, seed: int = 0) -> int:
    """Write ``output``: the network of ``source`` with groups appended up to ``depths``.

    Returns the grown network's parameter count. Raises SystemExit with an ``Error:`` line when
    ``source`` is not a MaIR or ``depths`` does not extend its depths.
    """
    start = load_model(source, device="cpu")
    if start.arch != "mair":
        raise SystemExit(f"Error: expected a MaIR checkpoint, got a {start.arch} network")
    trained_config = start.config if isinstance(start.config, dict) else dataclasses.asdict(start.config)
    old_depths = list(trained_config["depths"])
    if depths[: len(old_depths)] != old_depths or len(depths) <= len(old_depths):
        raise SystemExit(f"Error: --depths must extend the trained depths {old_depths}, got {depths}")
    config = {**trained_config, "depths": list(depths)}
    torch.manual_seed(seed)
    grown = models.build_arch("mair", config)
    state = grown.state_dict()
    for key, value in start.module.state_dict().items():
        state[key] = value.float()
    for index in range(len(old_depths), len(depths)):
        state[f"layers.{index}.conv.weight"].zero_()
        state[f"layers.{index}.conv.bias"].zero_()
    grown.load_state_dict(state, strict=True)
    grown.eval()
    probe = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        gap = (grown(probe) - start.module.float()(probe)).abs().max().item()
    if gap > 1e-5:
        raise SystemExit(f"Error: the grown network differs from the trained one by {gap:.2e}")
    models.save_checkpoint(output, grown, "mair", config, name=start.name, task=start.task)
    return sum(p.numel() for p in grown.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a restorecli MaIR checkpoint")
    parser.add_argument("output", help="the grown checkpoint (safetensors)")
    parser.add_argument("--depths", type=int, nargs="+", required=True, help="blocks per group, the trained groups first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    params = grow(args.source, args.output, args.depths, seed=args.seed)
    print(f"{args.output}: depths {args.depths}, {params:,} parameters")


if __name__ == "__main__":
    main()
