"""What a trained network is, for ``restore train export``: its task and its manifest entry."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from restorecli.download import sha256_file
from restorecli.errors import ConfigError

_TASK_OF_STEP = {"blur": "deblur", "haze": "dehaze", "noise": "denoise"}


def training_task(train_config: Mapping[str, Any], arch: str, config: Mapping[str, Any]) -> str:
    """The task a training run taught its network.

    An upscaling network does ``sr``; a same-size one does its named model's task (``model.name``
    in the model table), else the task of its synthetic degradation (blur, haze, noise).

    Args:
        train_config: The run's training config as a mapping (``train_config`` of a checkpoint).
        arch: Architecture id.
        config: The network config.

    Raises:
        ConfigError: Nothing tells the task (paired data and no table name).
    """
    from restorecli import models

    if models.ARCHS[arch].scale_of(models.config_from_mapping(arch, config)) > 1:
        return "sr"
    name = train_config.get("model", {}).get("name") or ""
    if name in models.MODELS:
        return models.MODELS[name].task
    steps = [step for step in train_config.get("degradation", {}).get("steps", ()) if step in _TASK_OF_STEP]
    if steps:
        return _TASK_OF_STEP[steps[-1]]
    raise ConfigError("the training config does not tell the network's task (no model.name, no degradation); pass --task")


def manifest_entry(*, name: str, arch: str, config: Mapping[str, Any], task: str, out: Path, params: int) -> dict[str, Any]:
    """The ``weights_manifest.json`` entry of an exported file (``source: restorecli``).

    A model the table knows gets weight metadata only (its network facts are the table's); any
    other name gets a self-contained entry for a user manifest, with arch, task, scale and config.
    """
    from restorecli import models

    entry: dict[str, Any] = {"name": name}
    if name not in models.MODELS:
        scale = models.ARCHS[arch].scale_of(models.config_from_mapping(arch, config))
        entry |= {"arch": arch, "task": task, "scale": scale, "config": dict(config)}
    return entry | {
        "params": params,
        "source": "restorecli",
        "description": "Trained by restorecli (`restore train`), not the official MaIR weights.",
        "files": [
            {
                "filename": out.name,
                "url": None,
                "sha256": sha256_file(out),
                "size": out.stat().st_size,
                "format": "safetensors",
                "bundled": out.name,
            }
        ],
    }

