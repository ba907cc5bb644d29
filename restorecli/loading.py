"""From "a name or a file" to a network ready to run: :func:`load_model`, the one loading path.

Every command that needs a network gets it here (the restore commands, ``eval``, ``bench``,
``train`` fine-tuning, ``models import``). Which network a name or a file is, is decided in one
function, :func:`identify_network`: a name is looked up in the model table (then a user
manifest); a restorecli file names its architecture and config itself; an official file is
recognised by its keys and shapes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from restorecli.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch

    from restorecli.hub.manifest import Manifest
    from restorecli.models import Checkpoint, LoadedModel, ModelSpec

__all__ = ["NetworkChoice", "identify_network", "layout_matches", "load_model"]

_CHECKPOINT_SUFFIXES = (".pth", ".ckpt", ".pt", ".safetensors", ".bin")


@dataclass(frozen=True, kw_only=True)
class NetworkChoice:
    """What network a name or a file is (before it is built).

    Attributes:
        name: Registered name, else the name stored in the file, else None.
        arch: Architecture id.
        config: Config mapping or dataclass of ``arch``.
        task: The network's task.
        sigma: Noise level of a synthetic-noise denoiser, else None.
        variant: Task variant, else None.
    """

    name: str | None
    arch: str
    config: Any
    task: str
    sigma: int | None = None
    variant: str | None = None


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    task: str | None = None,
    scale: int | None = None,
    sigma: int | None = None,
    variant: str | None = None,
    real: bool = False,
    device: str = "auto",
    precision: str = "fp32",
    pretrained: bool = True,
    architecture: tuple[str, Mapping[str, Any]] | None = None,
    allow_unverified: bool = False,
    manifest: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> LoadedModel:
    """Load a restoration network by model name or checkpoint file.

    Example::

        >>> import restorecli
        >>> model = restorecli.load_model("restorecli-light-x4", device="cpu")
        >>> (model.task, model.scale, model.weights.source)
        ('sr', 4, 'bundled')
        >>> output = model(image)  # (1, 3, H, W) in [0, 1] -> (1, 3, 4H, 4W)

    Args:
        name_or_path: A model name (``restore models list``), a checkpoint path or URL (official
            MaIR file, restorecli checkpoint or safetensors), or None for the task's default.
        weights: A checkpoint for the named model's architecture (``--model NAME --weights FILE``).
        task: ``sr``, ``denoise``, ``deblur`` or ``dehaze``: required for a task default, and
            checked against the network otherwise.
        scale: Upscaling factor wanted (picks the default; checked against the network).
        sigma: Gaussian noise level wanted (denoising).
        variant: Task variant wanted (dehaze ``indoor|outdoor|mix``).
        real: Real-noise denoising (same as ``variant="real"``).
        device: ``auto|cpu|cuda|cuda:N``.
        precision: ``fp32|bf16|fp16``, checked against the device and the architecture.
        pretrained: False builds a registered name with random weights (for speed measurements).
        architecture: ``(arch, config)`` the caller runs the weights in (fine-tuning): a file
            that neither names nor stores its network, and whose layout matches no registered
            model, is read as this network (strictly: keys and shapes must fit).
        allow_unverified: Accept downloads without a pinned sha256.
        manifest: Extra weights manifest (else ``RESTORECLI_MANIFEST``).
        cache_dir: Weights cache root.
        progress: Show download progress on stderr.

    Returns:
        The network in eval mode on its device, with its metadata and weights provenance.

    Raises:
        UnknownModelError: An unknown name (with close names).
        DownloadError, ChecksumError: The weights cannot be obtained or are corrupt.
        CheckpointError: The file is unreadable, of no known network, or does not fit the name.
        UsageError: The network does another task, scale, noise level or variant than asked.
        BackendUnavailableError: The device or precision cannot be used here.
    """
    from restorecli import models
    from restorecli.hub.manifest import load_manifest
    from restorecli.hub.resolution import check_fits, resolve_weights
    from restorecli.inference import resolve_device, resolve_precision

    if real:
        variant = "real"
    loaded = load_manifest(Path(manifest) if manifest is not None else None)
    model, weights = _name_and_file(name_or_path, weights, loaded)
    target = resolve_device(device)
    resolve_precision(precision, target)
    if not pretrained:
        if model is None or weights is not None:
            raise UsageError("pretrained=False builds a registered network: give its name, and no weights")
        spec = loaded.spec(model)
        check_fits(spec, task, scale=scale, sigma=sigma, variant=variant)
        choice = NetworkChoice(name=spec.name, arch=spec.arch, config=spec.config, task=spec.task, sigma=spec.sigma, variant=spec.variant)
        module = models.build_arch(spec.arch, spec.config)
        provenance = models.WeightsProvenance(path="", sha256="", source="none")
    else:
        resolved = resolve_weights(
            task,
            model=model,
            weights=os.fspath(weights) if weights is not None else None,
            scale=scale,
            sigma=sigma,
            variant=variant,
            allow_unverified=allow_unverified,
            manifest=Path(manifest) if manifest is not None else None,
            cache_dir=Path(cache_dir) if cache_dir is not None else None,
            progress=progress,
        )
        checkpoint = models.read_checkpoint(resolved.path)
        choice = identify_network(
            checkpoint, name=resolved.name, manifest=loaded, task=task, scale=scale, sigma=sigma, variant=variant,
            path=resolved.path, architecture=architecture,
        )  # fmt: skip
        module = models.build_arch(choice.arch, choice.config)
        try:
            models.load_checkpoint(module, checkpoint.state_dict)
        except CheckpointError as error:
            what = choice.name or choice.arch
            raise CheckpointError(f"weights {resolved.path} do not fit {what}: {str(error).split(': ', 1)[-1]}") from None
        provenance = models.WeightsProvenance(path=str(resolved.path), sha256=resolved.sha256, source=resolved.source)
    return _describe(module, choice, provenance, requested_task=task, scale=scale, device=target, precision=precision)


def _describe(
    module: torch.nn.Module,
    choice: NetworkChoice,
    provenance: Any,
    *,
    requested_task: str | None,
    scale: int | None,
    device: torch.device,
    precision: str,
) -> LoadedModel:
    """The descriptor of a built network, after checking it against the request."""
    from restorecli import models

    architecture = models.ARCHS[choice.arch]
    config = models.config_from_mapping(choice.arch, choice.config) if not isinstance(choice.config, architecture.config) else choice.config
    upscale = architecture.scale_of(config)
    where = provenance.path or choice.name
    if requested_task == "sr" and upscale == 1:
        raise UsageError(f"{where} holds a same-size (x1) network; `restore sr` needs an upscaling model")
    expected = scale if choice.task == "sr" else 1
    if expected is not None and upscale != expected:
        raise UsageError(f"{where} holds a x{upscale} network; expected x{expected} for `restore {choice.task}`")
    if precision not in architecture.precisions:
        raise UsageError(f"{choice.arch} networks compute in {', '.join(architecture.precisions)}, not {precision}")
    in_channels, out_channels = architecture.channels_of(config)
    return models.LoadedModel(
        module=module.to(device).eval(),
        name=choice.name,
        arch=choice.arch,
        config=config,
        task=choice.task,
        scale=upscale,
        sigma=choice.sigma,
        variant=choice.variant,
        in_channels=in_channels,
        out_channels=out_channels,
        size_rule=architecture.size_rule,
        tiling=architecture.tiling,
        precisions=architecture.precisions,
        device=device,
        weights=provenance,
    )


def _name_and_file(
    name_or_path: str | os.PathLike[str] | None, weights: str | os.PathLike[str] | None, loaded: Manifest
) -> tuple[str | None, str | os.PathLike[str] | None]:
    """Split ``name_or_path`` into (model name, weights file)."""
    if name_or_path is None:
        return None, weights
    text = os.fspath(name_or_path)
    is_file = (
        not isinstance(name_or_path, str)
        or urlsplit(text).scheme.lower() in ("http", "https", "file")
        or "/" in text
        or os.sep in text
        or text.lower().endswith(_CHECKPOINT_SUFFIXES)
    )
    if not is_file:
        return text, weights
    if weights is not None:
        raise UsageError(f"two weights files given ({text} and {os.fspath(weights)}); expected one")
    return None, text


def layout_matches(state_dict: Any, manifest: Manifest) -> list[ModelSpec]:
    """Registered models whose keys and shapes equal ``state_dict``'s (several may share one layout)."""
    from restorecli import models

    return [manifest.spec(name) for name in models.identify(state_dict)]


def identify_network(
    checkpoint: Checkpoint,
    *,
    name: str | None,
    manifest: Manifest,
    task: str | None = None,
    scale: int | None = None,
    sigma: int | None = None,
    variant: str | None = None,
    path: Path | str = "",
    architecture: tuple[str, Mapping[str, Any]] | None = None,
) -> NetworkChoice:
    """Which network a checkpoint holds: the one decision of the package.

    In order: a known ``name`` (the model table, then the manifest); the architecture and config a
    restorecli file stores; the registered layout equal to the file's keys and shapes, preferring
    one of ``task`` with the requested scale, sigma and variant; the caller's ``architecture``.

    Raises:
        CheckpointError: Nothing says what the file is, or it contradicts the name.
        UsageError: It holds a network of another task than ``task``.
    """
    from restorecli.hub.resolution import check_fits

    if name is not None:
        spec = manifest.spec(name)
        if checkpoint.arch and checkpoint.arch != spec.arch:
            raise CheckpointError(f"{path} holds a {checkpoint.arch} network, not {name} ({spec.arch})")
        # restorecli files store the config the weights were trained with
        config = checkpoint.config if checkpoint.arch and checkpoint.config is not None else spec.config
        return NetworkChoice(name=spec.name, arch=spec.arch, config=config, task=spec.task, sigma=spec.sigma, variant=spec.variant)
    if checkpoint.arch and checkpoint.config is not None:
        known = checkpoint.name if checkpoint.name in manifest.model_names() else None
        if known is not None and manifest.spec(known).arch == checkpoint.arch:
            spec = manifest.spec(known)
            check_fits(spec, task, scale=None, sigma=None, variant=None)
            return NetworkChoice(name=known, arch=checkpoint.arch, config=checkpoint.config, task=spec.task, sigma=spec.sigma, variant=spec.variant)
        return NetworkChoice(
            name=checkpoint.name,
            arch=checkpoint.arch,
            config=checkpoint.config,
            task=_stored_task(checkpoint, task, path),
        )
    matches = layout_matches(checkpoint.state_dict, manifest)
    if not matches and architecture is not None and task is not None:
        return NetworkChoice(name=None, arch=architecture[0], config=architecture[1], task=task)
    if not matches:
        raise CheckpointError(
            f"{path}: its keys and shapes match no known MaIR model; expected an official MaIR checkpoint "
            "or a restorecli checkpoint (pass --model NAME to name the architecture)"
        )
    for_task = [spec for spec in matches if task is None or spec.task == task]
    if not for_task:
        found = ", ".join(f"{spec.name} ({spec.task})" for spec in matches)
        raise UsageError(f"{path} holds weights of {found}; expected a {task} model")
    preferred = [
        spec
        for spec in for_task
        if (scale is None or spec.scale == scale) and (sigma is None or spec.sigma == sigma) and (variant is None or spec.variant == variant)
    ]
    spec = (preferred or for_task)[0]
    return NetworkChoice(name=spec.name, arch=spec.arch, config=spec.config, task=spec.task, sigma=spec.sigma, variant=spec.variant)


def _stored_task(checkpoint: Checkpoint, task: str | None, path: Path | str) -> str:
    """The task of an unregistered restorecli file: stored in it, else asked for, else implied by its scale."""
    from restorecli import models

    if checkpoint.task is not None:
        if task is not None and checkpoint.task != task:
            raise UsageError(f"{path} holds a {checkpoint.task} network; expected a {task} model")
        return checkpoint.task
    if task is not None:
        return task
    config = models.config_from_mapping(checkpoint.arch, checkpoint.config)  # type: ignore[arg-type]
    if models.ARCHS[checkpoint.arch].scale_of(config) > 1:  # type: ignore[index]
        return "sr"
    raise CheckpointError(f"{path} does not say which task its same-size network does; pass task=")
