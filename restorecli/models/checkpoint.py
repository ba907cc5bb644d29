"""Reading, checking and writing checkpoints.

Official MaIR files are BasicSR pickles (``{"params": state_dict}``); they are read only through
``torch.load(weights_only=True)``, so nothing is ever unpickled as arbitrary objects. restorecli's
own files are safetensors with the architecture and config in the metadata, so they load without
the manifest.

Every file is read by :func:`load_file`, which also words every failure: torch's own messages for
a refused pickle advise retrying with ``weights_only=False``, which would run the very code that was
refused, so they are never passed on.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import warnings
import zipfile
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
    task: str | None = None


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


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default container
PICKLE_PROTOCOLS = range(2, 6)  # torch.save's legacy format starts with a protocol-2 pickle
MAX_PICKLES = 8  # a legacy torch file is five pickles followed by raw storage bytes
PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # renamed on unpickling protocol < 3, as pickle does


def load_file(path: str | os.PathLike[str]) -> tuple[Any, dict[str, str] | None]:
    """Read a checkpoint file without running any code from it; the one place that reads them.

    The format comes from the content, not the name: a torch zip or pickle (read with
    ``torch.load(weights_only=True)``) or safetensors. torch's warnings are silenced, and every
    failure is one line of our own.

    Returns:
        (content, metadata): for safetensors the tensors by name and the header's metadata; for a
        torch file the unpickled object and None.

    Raises:
        CheckpointError: the file is missing, empty, not a checkpoint, refused (it references code
            that weights-only loading does not allow, named in the message), or damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: expected a file at {path}")
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if _is_safetensors(head, size):
        return _load_safetensors(path)
    failure: Exception | None = None
    if head.startswith(ZIP_MAGIC) or (head[:1] == pickle.PROTO and head[1] in PICKLE_PROTOCOLS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. the pickle-protocol UserWarning, with torch's source path
                return torch.load(path, map_location="cpu", weights_only=True), None
        except Exception as error:  # pickle, zip and weights_only errors have no common base class
            failure = error
    # Not loaded: name what it would have run (any pickle, even one torch.save never writes), else say what it is.
    is_torch_file, referenced = pickle_globals(path)
    refused = [f"`{name}`" for name in referenced if not _allowed_global(name)]
    if refused:
        shown = refused if len(refused) <= 3 else [*refused[:3], f"{len(refused) - 3} more"]
        names = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
        raise CheckpointError(f"refused {path}: it references {names}, which weights-only loading does not allow")
    if failure is None or not is_torch_file:
        raise CheckpointError(f"{path} is not a PyTorch or safetensors checkpoint")
    if isinstance(failure, pickle.UnpicklingError):  # its text advises weights_only=False: never shown
        reason = "weights-only loading cannot read its pickle"
    elif isinstance(failure, EOFError):
        reason = "it ends early (an incomplete copy?)"
    else:  # e.g. the zip reader's: first sentence only
        reason = (str(failure).strip().splitlines() or [type(failure).__name__])[0].split(". ")[0]
    raise CheckpointError(f"{path} is a damaged or unsupported PyTorch checkpoint: {reason}")


def _is_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length that fits the file, then a JSON object."""
    return len(head) >= 9 and 0 < int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{"


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is a damaged safetensors file: {error}") from None


def pickle_globals(path: str | os.PathLike[str]) -> tuple[bool, list[str]]:
    """Whether a file holds a torch pickle, and the ``module.name`` globals it references.

    Reads the opcodes only (``pickletools``), never unpickles, so a file that would run code is
    never run: a torch zip's ``data.pkl``, or the pickles in a row at the start of a legacy/raw
    pickle file. A zip that cannot be opened counts as a (damaged) torch file.

    Returns:
        (a complete pickle was found where torch keeps one, globals in order of first use).
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if m == "data.pkl" or m.endswith("/data.pkl")]
                if not members:
                    return False, []
                with archive.open(members[0]) as stream:
                    return _scan_pickles(stream, 1)
        with open(path, "rb") as stream:
            if stream.read(len(ZIP_MAGIC)) == ZIP_MAGIC:
                return True, []
            stream.seek(0)
            return _scan_pickles(stream, MAX_PICKLES)
    except (OSError, zipfile.BadZipFile):
        return True, []


def _scan_pickles(stream: Any, count: int) -> tuple[bool, list[str]]:
    """Globals of up to ``count`` pickles in a row, from a symbolic run of the pickle stack.

    ``STACK_GLOBAL`` (protocol 4+) takes module and name from the stack, so string pushes and the
    memo are followed; every other value is a placeholder. The first value says whether the first
    pickle ran to its STOP; the scan ends at the first byte that is not a pickle.
    """
    found: dict[str, None] = {}
    mark = object()
    for index in range(count):
        stack: list[Any] = []
        memo: dict[int, Any] = {}
        try:
            for opcode, arg, _pos in pickletools.genops(stream):
                name = opcode.name
                if name in ("GLOBAL", "INST"):
                    module, _, attribute = str(arg).partition(" ")
                    found[f"{PY2_MODULES.get(module, module)}.{attribute}"] = None
                elif name == "STACK_GLOBAL" and len(stack) >= 2 and isinstance(stack[-2], str) and isinstance(stack[-1], str):
                    found[f"{PY2_MODULES.get(stack[-2], stack[-2])}.{stack[-1]}"] = None
                if name == "MEMOIZE":
                    memo[len(memo)] = stack[-1] if stack else None
                    continue
                if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = stack[-1] if stack else None
                    continue
                before = opcode.stack_before
                if pickletools.markobject in before:
                    while stack and stack.pop() is not mark:
                        pass
                    del stack[len(stack) - before.index(pickletools.markobject) :]
                else:
                    del stack[len(stack) - len(before) :]
                if name in ("GET", "BINGET", "LONG_BINGET"):
                    stack.append(memo.get(arg))
                elif len(opcode.stack_after) == 1 and isinstance(arg, str) and name not in ("GLOBAL", "INST"):
                    stack.append(arg)
                else:
                    stack.extend(mark if item is pickletools.markobject else None for item in opcode.stack_after)
        except (ValueError, EOFError, UnicodeDecodeError):
            return index > 0, list(found)
    return True, list(found)


def _allowed_global(name: str) -> bool:
    """Whether torch's weights-only unpickler accepts a global (only asked after a load failed)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals  # no public equivalent for raw pickles
    except ImportError:
        return name.startswith("torch.") or name == "collections.OrderedDict"
    return name in _get_allowed_globals()


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint file (safetensors, or a torch file through weights-only unpickling).

    Unwraps ``params_ema`` > ``params`` > ``state_dict`` > ``model`` and strips ``module.``.

    Raises:
        CheckpointError: the file is missing, unreadable, refused, or holds no tensors (see
            :func:`load_file`).
    """
    path = Path(path)
    arch = name = task = None
    config: dict[str, Any] | None = None
    loaded, metadata = load_file(path)
    if metadata is not None:
        state = loaded
        if metadata.get("format") == FORMAT_TAG:
            arch = metadata.get("arch")
            name = metadata.get("name") or None
            task = metadata.get("task") or None
            config = json.loads(metadata["config"]) if "config" in metadata else None
    else:
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
    return Checkpoint(state_dict=state, arch=arch, config=config, name=name, task=task)


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
    path: str | os.PathLike[str],
    module: nn.Module | Mapping[str, torch.Tensor],
    arch: str,
    config: Mapping[str, Any],
    name: str | None = None,
    task: str | None = None,
) -> None:
    """Write restorecli's own inference checkpoint (safetensors + arch/config/task metadata), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    state = module.state_dict() if isinstance(module, nn.Module) else dict(module)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    metadata = {"format": FORMAT_TAG, "arch": arch, "config": json.dumps(dict(config), sort_keys=True), "name": name or ""}
    if task:
        metadata["task"] = task
    from restorecli.io import atomic_output

    with atomic_output(path, overwrite=True, error=CheckpointError) as temporary:
        save_file(tensors, temporary, metadata=metadata)
