"""Every official configuration, float32 library network vs the literal float64 reference (spec_reference.py).

The bar: max abs difference <= 1e-4 on [0, 1] images with the same weights.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

import spec_reference
from restorecli import models

# One name per distinct network config (s15/s25/s50, the three dehaze sets and realdn/deblur share one).
DISTINCT_CONFIGS = [
    "mair-sr-x2", "mair-sr-x3", "mair-sr-x4",
    "mair-light-s-x2", "mair-light-s-x3", "mair-light-s-x4",
    "mair-light-t-x2", "mair-light-t-x3", "mair-light-t-x4",
    "mair-dn-s25", "mair-realdn", "mair-dehaze-its",
]


def test_distinct_configs_cover_every_name() -> None:
    official = [name for name in models.names() if models.spec(name).official_file]
    assert len(official) == 17
    configs = {name: models.spec(name).config for name in official}
    assert {configs[n] for n in DISTINCT_CONFIGS} == set(configs.values())


@pytest.mark.parametrize("name", DISTINCT_CONFIGS)
def test_network_matches_literal_specification(name: str) -> None:
    torch.manual_seed(1)
    net = models.build(name)
    with torch.no_grad():
        for param in net.parameters():  # move away from the symmetric init (unit skips, zero biases)
            param.add_(0.02 * torch.randn_like(param))
    # Odd, non-square sizes exercise stripe remainders, odd H, and the UNet's internal padding.
    x = torch.rand(1, 3, 11, 14)
    with torch.no_grad():
        ours = net(x)
    config = asdict(models.spec(name).config)
    state = net.state_dict()
    reference = (spec_reference.unet_forward if models.spec(name).arch == "mairunet" else spec_reference.mair_forward)(state, config, x)
    assert ours.shape == reference.shape
    difference = (ours.double() - reference).abs().max().item()
    assert difference <= 1e-4, f"{name}: max abs difference {difference:.2e}"
