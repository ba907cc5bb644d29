"""Training and fine-tuning from YAML configs (``restore train``).

    >>> from restorecli.train import load_config, train
    >>> cfg = load_config("mair-light-t-x4-cpu", ["data.hq=[T91, BSD200/HR]"])
    >>> result = train(cfg)                       # writes runs/<name>/{latest,best}.pth
    >>> result = train(cfg, resume="runs/<name>/latest.pth")
"""

from __future__ import annotations

from restorecli.train.config import (
    TrainConfig,
    apply_overrides,
    config_from_mapping,
    config_to_mapping,
    load_config,
    preset_names,
    read_mapping,
)
from restorecli.train.loop import StepReport, TrainResult, read_training_checkpoint, train

__all__ = [
    "StepReport",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "config_from_mapping",
    "config_to_mapping",
    "load_config",
    "preset_names",
    "read_mapping",
    "read_training_checkpoint",
    "train",
]
