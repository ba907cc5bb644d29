"""``restore train export``: inference weights from a training checkpoint, and their manifest entry."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from restorecli.download import sha256_file
from restorecli.errors import ConfigError

_TASK_OF_STEP = {"blur": "deblur", "haze": "dehaze", "haze_depth": "dehaze", "noise": "denoise", "camera_noise": "denoise"}


def training_task(train_config: Mapping[str, Any], arch: str, config: Mapping[str, Any]) -> str:
    """The task a training run taught its network.

    An upscaling network does ``sr``; a same-size one does the task of its synthetic degradation:
    deblur or dehaze where a blur or haze step is in it (noise after them is mild noise on
    top), else denoise for a noise step; without a degradation (paired data), its named model's
    task (``model.name`` in the model table). The degradation comes first because the bundled
    recipes borrow a denoiser's name for its network (restorecli/presets/restorecli-light-*-cpu.yml).

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
    # Paired data (data.lq) ignores the degradation steps (restorecli/train/config.py), so they tell nothing.
    steps = () if train_config.get("data", {}).get("lq") else train_config.get("degradation", {}).get("steps", ())
    tasks = [_TASK_OF_STEP[step] for step in steps if step in _TASK_OF_STEP]
    if tasks:
        return next((task for task in tasks if task != "denoise"), "denoise")
    name = train_config.get("model", {}).get("name") or ""
    if name in models.MODELS:
        return models.MODELS[name].task
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



def export_weights(
    state: Mapping[str, Any],
    out: Path,
    *,
    name: str | None = None,
    task: str | None = None,
    half: bool = False,
    raw: bool = False,
) -> dict[str, Any]:
    """Write the inference weights of a training checkpoint as safetensors; return their manifest entry.

    Args:
        state: A training checkpoint (``restorecli.train.read_training_checkpoint``).
        out: The ``.safetensors`` file to write.
        name: Model name in the file and the entry (default: the run's name).
        task: ``sr``, ``denoise``, ``deblur`` or ``dehaze`` (default: what the run trained, see
            :func:`training_task`).
        half: Store float16 weights (loaded back as float32).
        raw: Export the raw weights even when EMA weights exist.

    Returns:
        The entry (:func:`manifest_entry`) with the run's iterations and best validation PSNR.

    Raises:
        CheckpointError: The weights do not fit the checkpoint's network (checked before writing).
        ConfigError: Nothing tells the task.
    """
    from restorecli import models

    weights = state["params"] if raw or "params_ema" not in state else state["params_ema"]
    net_config = dict(state["config"])
    module = models.build_arch(state["arch"], net_config)
    models.load_checkpoint(module, weights)  # proves the weights fit before anything is written
    tensors = {k: (v.half() if half and v.dtype.is_floating_point else v) for k, v in weights.items()}
    label = name or state["name"]
    task = task or training_task(state["train_config"], state["arch"], net_config)
    models.save_checkpoint(out, tensors, state["arch"], net_config, name=label, task=task)
    params = sum(p.numel() for p in module.parameters())
    entry = manifest_entry(name=label, arch=state["arch"], config=net_config, task=task, out=out, params=params)
    entry["trained"] = {"iterations": int(state["iteration"]), "best_psnr": state["best"].get("metric")}
    return entry
