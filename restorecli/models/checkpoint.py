"""Reading, checking and writing checkpoints.

Official MaIR files are BasicSR pickles (``{"params": state_dict}``); they are read only through
``torch.load(weights_only=True)``, so nothing is ever unpickled as arbitrary objects. restorecli's
own files are safetensors with the architecture and config in the metadata, so they load without
the manifest.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from restorecli.errors import CheckpointError

WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model")  # preference order
FORMAT_TAG = "restorecli"


@dataclass(frozen=True)
class Checkpoint:
    """A state dict plus what the file says about its network (None where it says nothing)."""

    state_dict: dict[str, torch.Tensor]
    arch: str | None
    config: dict[str, Any] | None
    name: str | None


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the tensor mapping inside a loaded pickle; return it and the surrounding dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    outer = dict(obj)
    for key in WRAPPER_KEYS:
        inner = outer.get(key)
        if isinstance(inner, Mapping) and inner:
            return dict(inner), outer
    return outer, {}


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return state


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint file (.safetensors, or .pth/.ckpt/.pt through weights_only unpickling).

    Unwraps ``params_ema`` > ``params`` > ``state_dict`` > ``model`` and strips ``module.``.

    Raises:
        CheckpointError: the file is missing, unreadable, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: expected a file at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    arch = name = None
    config: dict[str, Any] | None = None
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from error
        if metadata.get("format") == FORMAT_TAG:
            arch = metadata.get("arch")
            name = metadata.get("name") or None
            config = json.loads(metadata["config"]) if "config" in metadata else None
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle, zip and weights_only errors have no common base class
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {reason}") from error
        state, outer = _unwrap(loaded, path)
        if isinstance(outer.get("arch"), str):
            arch = outer["arch"]
            config = dict(outer["config"]) if isinstance(outer.get("config"), Mapping) else None
            name = outer.get("name") if isinstance(outer.get("name"), str) else None
    state = _strip_prefix(state)
    non_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not state or non_tensors:
        detail = f"non-tensor entries such as {non_tensors[0]!r}" if non_tensors else "no tensors"
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {detail}")
    return Checkpoint(state_dict=state, arch=arch, config=config, name=name)


def _examples(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit})" if len(keys) > limit else "")


def layout_mismatch(expected: Mapping[str, torch.Size], given: Mapping[str, torch.Tensor | torch.Size]) -> str | None:
    """Short description of how a state dict differs from an expected layout; None if identical."""
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    misshaped = []
    for key, shape in expected.items():
        if key in given:
            other = given[key]
            other_shape = other.shape if isinstance(other, torch.Tensor) else other
            if tuple(other_shape) != tuple(shape):
                misshaped.append(f"{key} (file {list(other_shape)} vs model {list(shape)})")
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
    if misshaped:
        parts.append(f"{len(misshaped)} mis-shaped ({_examples(misshaped, 2)})")
    return "; ".join(parts) if parts else None


def load_checkpoint(module: nn.Module, source: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> None:
    """Load weights strictly into ``module``.

    Args:
        module: the network.
        source: a checkpoint path or a state dict.

    Raises:
        CheckpointError: unreadable file, or any missing/unexpected/mis-shaped key (summarised).
    """
    if isinstance(source, Mapping):
        state, origin = _strip_prefix(dict(source)), "state dict"
    else:
        state, origin = read_checkpoint(source).state_dict, str(source)
    expected = {key: value.shape for key, value in module.state_dict().items()}
    problem = layout_mismatch(expected, state)
    if problem:
        raise CheckpointError(f"{origin} does not fit {type(module).__name__}: {problem}")
    module.load_state_dict(state, strict=True)


def save_checkpoint(
    path: str | os.PathLike[str], module: nn.Module | Mapping[str, torch.Tensor], arch: str, config: Mapping[str, Any], name: str | None = None
) -> None:
    """Write restorecli's own inference checkpoint (safetensors + arch/config metadata), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    state = module.state_dict() if isinstance(module, nn.Module) else dict(module)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    metadata = {"format": FORMAT_TAG, "arch": arch, "config": json.dumps(dict(config), sort_keys=True), "name": name or ""}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
