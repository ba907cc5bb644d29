"""``restore models import``: store a checkpoint obtained by hand under the model it provably is."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from restorecli.errors import CheckpointError, UsageError
from restorecli.hub.cache import ImportResult, store_checkpoint
from restorecli.hub.manifest import Manifest, as_manifest


def identify_checkpoint(file: Path, *, manifest: Manifest | Path | None = None) -> list[str]:
    """Manifest models whose official layout equals the file's keys and shapes exactly.

    Raises:
        CheckpointError: Unreadable file.
    """
    from restorecli import models
    from restorecli.loading import layout_matches

    loaded = as_manifest(manifest)
    checkpoint = models.read_checkpoint(file)
    return [spec.name for spec in layout_matches(checkpoint.state_dict, loaded) if spec.name in loaded]


def import_checkpoint(
    file: Path,
    *,
    name: str | None = None,
    manifest: Manifest | Path | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
) -> ImportResult:
    """Store a checkpoint obtained by hand in the cache, under the model it provably is.

    The file's keys and shapes must equal the model's exactly; it is loaded strictly into the
    network and stored as safetensors (with arch and config) under the model's name.

    Args:
        file: ``.pth``/``.ckpt`` (read with ``weights_only=True``) or ``.safetensors``.
        name: Model name; required when several models share the file's layout.
        manifest: A loaded manifest or an extra manifest file.
        cache_dir: Cache root override.
        force: Replace a different file already cached under that name.

    Raises:
        CheckpointError: Unreadable file, wrong architecture, non-finite weights.
        UsageError: Several models fit and ``name`` is missing, or the name is taken.
        ChecksumError: The manifest pins a digest and the file differs.
    """
    from restorecli import models
    from restorecli.loading import layout_matches
    from restorecli.models.checkpoint import layout_mismatch

    loaded = as_manifest(manifest)
    file = Path(file).expanduser()
    checkpoint = models.read_checkpoint(file)
    state = checkpoint.state_dict
    if name is not None:
        entry = loaded.get(name)
        layout = {
            k: v.shape for k, v in models.build_arch(entry.arch, entry.config, device="meta").state_dict().items()
        }
        problem = layout_mismatch(layout, state)
        if problem:
            fits = [spec.name for spec in layout_matches(state, loaded) if spec.name in loaded]
            hint = f"; it fits {', '.join(fits)}" if fits else ""
            raise CheckpointError(f"{file} is not a {name} checkpoint: {problem}{hint}")
    else:
        fits = [spec.name for spec in layout_matches(state, loaded) if spec.name in loaded]
        if not fits:
            raise CheckpointError(
                f"{file} matches no known model layout ({len(state)} tensors): {_closest(state, loaded)}"
            )
        if len(fits) > 1:
            if checkpoint.name in fits:
                fits = [checkpoint.name]
            else:
                # The official file name tells which one it probably is; still, only the user can know.
                by_filename = [n for n in fits if loaded.get(n).weights.filename == file.name]
                example = by_filename[0] if by_filename else fits[0]
                raise UsageError(
                    f"{file} fits {len(fits)} models that share one layout ({', '.join(fits)}); "
                    f"choose one with --name, e.g. --name {example}"
                )
        entry = loaded.get(fits[0])
    return store_checkpoint(file, entry, cache_dir=cache_dir, origin="import", force=force, state=state)


def _closest(state: Mapping[str, Any], loaded: Manifest) -> str:
    """Describe how the file differs from the nearest official layout (for the error message)."""
    from restorecli import models
    from restorecli.models.checkpoint import layout_mismatch

    best: tuple[int, str, str] | None = None
    for name in models.names():
        if name not in loaded:
            continue
        layout = {k: v.shape for k, v in models.build(name, device="meta").state_dict().items()}
        score = len(set(layout) ^ set(state)) + sum(
            1 for k in layout if k in state and tuple(state[k].shape) != tuple(layout[k])
        )
        if best is None or score < best[0]:
            best = (score, name, layout_mismatch(layout, state) or "")
    return f"closest is {best[1]}: {best[2]}" if best else "no official layouts are known"
