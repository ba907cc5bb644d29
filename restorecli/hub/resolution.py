"""Which local file holds the weights a command asks for.

Order: ``--weights PATH|URL`` > ``--model NAME`` > the task's default; a name resolves to a
bundled file, then the cache, then a download. A download is verified before it is renamed into
the cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from restorecli.download import apply_mirror, download, is_offline, sha256_file
from restorecli.errors import CheckpointError, ChecksumError, DownloadError, UsageError
from restorecli.hub.cache import (
    URL_DIR,
    bundled_weights,
    cached_weights,
    check_record,
    read_record,
    write_record,
)
from restorecli.hub.drive import fetch_from_drive
from restorecli.hub.manifest import SHA256_RE, TASKS, Manifest, ManifestEntry, as_manifest, load_manifest
from restorecli.paths import BUNDLED_DIR, models_cache

if TYPE_CHECKING:
    from restorecli.models.zoo import ModelSpec


@dataclass(frozen=True)
class ResolvedWeights:
    """Weights ready to load.

    Attributes:
        path: Local file.
        name: Manifest name, or None for an anonymous ``--weights`` file.
        arch: Architecture id from the manifest, or None (then read it from the file).
        config: Network config from the manifest, or None.
        sha256: Digest of ``path``.
        source: ``bundled``, ``cache``, ``download``, ``file`` or ``url``.
        published_sha256: Digest of the file as its publisher serves it, when the stored file is
            a conversion of it (a Google Drive checkpoint stored as safetensors); else None.
    """

    path: Path
    name: str | None
    arch: str | None
    config: dict[str, Any] | None
    sha256: str
    source: str
    published_sha256: str | None = None


def fetch(
    name: str,
    *,
    allow_unverified: bool = False,
    sha256: str | None = None,
    manifest: Manifest | Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> ResolvedWeights:
    """Local weights of a manifest model: bundled, else cached, else downloaded into the cache.

    A model published only in a Google Drive folder is fetched from there (see
    :mod:`restorecli.hub.drive`) and accepted when it loads strictly into its network.

    Args:
        name: Manifest name.
        allow_unverified: Download even when no sha256 is pinned.
        sha256: Digest the weights file must have (for a download: the file as published; for a
            cached model: the digest recorded when it was stored); checked besides a manifest pin.
        manifest: A loaded manifest or an extra manifest file.
        cache_dir: Cache root override.
        progress: Show a download progress bar on stderr.

    Raises:
        UnknownModelError: No such model.
        UsageError: ``sha256`` is not 64 hex digits.
        DownloadError: No URL (the message says how to get the file), offline mode, no pinned
            digest without ``allow_unverified``, or the transfer failed.
        ChecksumError: Corrupt bundled, cached or downloaded file, or not the ``sha256`` asked for.
        CheckpointError: A Google Drive file that does not load into its network.
    """
    entry = as_manifest(manifest).get(name)
    if sha256 is not None:
        if not SHA256_RE.match(sha256.strip().lower()):
            raise UsageError(f"--sha256: expected 64 hex digits, got {sha256!r}")
        entry = _pinned(entry, sha256.strip().lower())
    path, digest, source = _obtain(entry, allow_unverified, cache_dir, progress)
    record = read_record(path.parent) if source in ("cache", "download") else None
    published = record.original_sha256 if record is not None and record.filename == path.name else None
    return ResolvedWeights(path, entry.name, entry.arch, entry.config_dict(), digest, source, published)


def _obtain(entry: ManifestEntry, allow_unverified: bool, cache: Path | None, progress: bool) -> tuple[Path, str, str]:
    bundled = bundled_weights(entry)
    if bundled is not None:
        return bundled, sha256_file(bundled), "bundled"
    hit = cached_weights(entry, cache)
    if hit is not None:
        return hit[0], hit[1].sha256, "cache"
    url = apply_mirror(entry.weights.url, entry.weights.filename)
    if url is None and entry.drive_folder is not None:
        stored = fetch_from_drive(entry, expected_sha256=entry.weights.sha256, cache_dir=cache, progress=progress)
        return stored.path, stored.sha256, "download"
    if url is None:
        raise DownloadError(entry.obtain_hint())
    folder = models_cache(cache) / entry.name
    if is_offline() and urlsplit(url).scheme != "file":
        raise DownloadError(
            f"{entry.name} is not in the cache ({folder}) and offline mode (RESTORECLI_OFFLINE=1) forbids "
            f"downloading it; run `restore models download {entry.name}` on a machine with network and copy the "
            "cache folder, or set RESTORECLI_MIRROR to a local mirror"
        )
    if entry.weights.sha256 is None and not allow_unverified:
        raise DownloadError(
            f"{entry.name}: no sha256 is pinned for {entry.weights.filename}, so the download ({url}) cannot be "
            "verified; pass --allow-unverified to fetch it anyway (its sha256 is printed so you can pin it in a "
            "manifest, see RESTORECLI_MANIFEST)"
        )
    dest = folder / entry.weights.filename
    result = download(
        url,
        dest,
        sha256=entry.weights.sha256,
        size=entry.weights.size,
        allow_unverified=allow_unverified,
        progress=progress,
    )
    write_record(folder, dest, name=entry.name, origin="download", url=url, sha256=result.sha256)
    return dest, result.sha256, "download"


def _pinned(entry: ManifestEntry, sha256: str) -> ManifestEntry:
    """``entry`` with ``sha256`` pinned; a different pin of the manifest's is a contradiction."""
    pinned = entry.weights.sha256
    if pinned is not None and pinned != sha256:
        raise ChecksumError(f"{entry.name}: --sha256 {sha256} differs from the manifest's pinned {pinned}")
    files = (replace(entry.weights, sha256=sha256), *entry.files[1:])
    return replace(entry, files=files)


def default_candidates(
    task: str,
    *,
    scale: int | None = None,
    sigma: int | None = None,
    variant: str | None = None,
    real: bool = False,
    manifest: Manifest | Path | None = None,
) -> list[str]:
    """Default-model candidates for a request, most preferred first (user rules first)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if real:
        variant = "real"
    names: list[str] = []
    for rule in as_manifest(manifest).defaults:
        if (rule.task, rule.scale, rule.sigma, rule.variant) == (task, scale, sigma, variant):
            names += [name for name in rule.models if name not in names]
    return names


def default_model(
    task: str,
    *,
    scale: int | None = None,
    sigma: int | None = None,
    variant: str | None = None,
    real: bool = False,
    manifest: Manifest | Path | None = None,
    cache_dir: Path | None = None,
) -> str | None:
    """The default model for a request: the first candidate whose weights the tool can obtain.

    Obtainable means bundled, already cached, or downloadable with a pinned sha256 (from a
    mirror or the manifest URL; not in offline mode unless the mirror is a ``file://`` folder).

    Returns:
        A manifest name, or None when no candidate is obtainable (or none exists).
    """
    loaded = as_manifest(manifest)
    for name in default_candidates(task, scale=scale, sigma=sigma, variant=variant, real=real, manifest=loaded):
        if _obtainable(loaded.get(name), cache_dir):
            return name
    return None


def _obtainable(entry: ManifestEntry, cache: Path | None) -> bool:
    if entry.weights.bundled is not None and (BUNDLED_DIR / entry.weights.bundled).is_file():
        return True
    folder = models_cache(cache) / entry.name
    record = read_record(folder)
    if record is not None and (folder / record.filename).is_file():
        return True
    url = apply_mirror(entry.weights.url, entry.weights.filename)
    if url is None or entry.weights.sha256 is None:
        return False
    return not is_offline() or urlsplit(url).scheme == "file"


def resolve_weights(
    task: str | None,
    *,
    model: str | None,
    weights: str | None,
    scale: int | None = None,
    sigma: int | None = None,
    variant: str | None = None,
    real: bool = False,
    allow_unverified: bool = False,
    manifest: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> ResolvedWeights:
    """Find the weights for a restoration command.

    Order: ``weights`` (a path, or an http(s)/file URL downloaded into the cache) > ``model`` >
    the task default picked by ``scale`` (sr), ``sigma`` or ``real`` (denoise), ``variant``
    (dehaze ``indoor``/``outdoor``/``mix``). With both ``weights`` and ``model``, the file comes from
    ``weights`` and the network config from ``model``'s entry. Pass ``scale``/``sigma``/``variant``
    only when the user gave them: they are checked against an explicit ``model``.

    Args:
        task: ``sr``, ``denoise``, ``deblur`` or ``dehaze``; None when the caller does not know it
            (then the model's own task counts, and there is no task default).
        model: Model name (of the model table or the manifest), or None.
        weights: Path or URL (``URL#sha256=HEX`` pins the digest), or None.
        scale: Requested upscaling factor.
        sigma: Requested Gaussian noise level.
        variant: Requested task variant.
        real: Real-noise denoising (same as ``variant="real"``).
        allow_unverified: Accept downloads without a pinned sha256.
        manifest: Extra manifest file (else ``RESTORECLI_MANIFEST``).
        cache_dir: Cache root override.
        progress: Show a download progress bar on stderr.

    Returns:
        The local file and what is known about it.

    Raises:
        UnknownModelError: Unknown model name.
        UsageError: The model does not do this task/scale/sigma/variant, or no model exists for it.
        DownloadError: The weights cannot be obtained (the message says how to get them).
        ChecksumError: A corrupt bundled, cached or downloaded file.
        CheckpointError: A ``weights`` path that does not exist.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if real:
        variant = "real"
    loaded = load_manifest(manifest)
    fetch_options = (allow_unverified, cache_dir, progress)
    if model is not None:
        spec = loaded.spec(model)  # the model table, else the manifest: raises with close names
        check_fits(spec, task, scale=scale, sigma=sigma, variant=variant)
        if weights is not None:
            path, digest, source = _weights_file(weights, *fetch_options)
            return ResolvedWeights(path, spec.name, spec.arch, spec.config_dict(), digest, source)
        if model not in loaded:
            raise DownloadError(
                f"no published weights for {model!r}; train them with `restore train` and pass the file with --weights"
            )
        entry = loaded.get(model)
        path, digest, source = _obtain(entry, *fetch_options)
        return ResolvedWeights(path, entry.name, entry.arch, entry.config_dict(), digest, source)
    if weights is not None:
        path, digest, source = _weights_file(weights, *fetch_options)
        entry = loaded.find_sha256(digest)
        if entry is None:
            return ResolvedWeights(path, None, None, None, digest, source)
        check_fits(loaded.spec(entry.name), task, scale=scale, sigma=sigma, variant=variant)
        return ResolvedWeights(path, entry.name, entry.arch, entry.config_dict(), digest, source)
    if task is None:
        raise UsageError("name a model, a weights file or a task: nothing says which network to load")
    candidates = default_candidates(task, scale=scale, sigma=sigma, variant=variant, manifest=loaded)
    if not candidates:
        raise UsageError(_no_default_message(loaded, task, scale, sigma, variant))
    model = default_model(task, scale=scale, sigma=sigma, variant=variant, manifest=loaded, cache_dir=cache_dir)
    if model is None:
        raise DownloadError(_nothing_obtainable_message(loaded, candidates, task, scale=scale, sigma=sigma, variant=variant))
    entry = loaded.get(model)
    path, digest, source = _obtain(entry, *fetch_options)
    return ResolvedWeights(path, entry.name, entry.arch, entry.config_dict(), digest, source)


def _weights_file(weights: str, allow_unverified: bool, cache: Path | None, progress: bool) -> tuple[Path, str, str]:
    """A ``--weights`` path or URL as (local path, sha256, source)."""
    if urlsplit(weights).scheme.lower() in ("http", "https", "file"):
        path, digest = _fetch_url(weights, allow_unverified, cache, progress)
        return path, digest, "url"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights file not found: expected a file at {path}")
    return path, sha256_file(path), "file"


def _fetch_url(url: str, allow_unverified: bool, cache: Path | None, progress: bool) -> tuple[Path, str]:
    base, _, fragment = url.partition("#")
    pinned = fragment[len("sha256=") :] if fragment.startswith("sha256=") else None
    if pinned is not None and not SHA256_RE.match(pinned.lower()):
        raise UsageError(f"{url}: expected #sha256= followed by 64 hex digits")
    key = hashlib.sha256(base.encode()).hexdigest()[:16]
    folder = models_cache(cache) / URL_DIR / key
    filename = unquote(urlsplit(base).path.rsplit("/", 1)[-1]) or "weights"
    record = read_record(folder)
    if record is not None and (folder / record.filename).is_file():
        check_record(record, folder / record.filename, full=False)
        if pinned is None or pinned.lower() == record.sha256:
            return folder / record.filename, record.sha256
    # offline first: --allow-unverified would not make the download possible
    if is_offline() and urlsplit(base).scheme.lower() != "file":
        raise DownloadError(
            f"{base} is not in the cache and offline mode (RESTORECLI_OFFLINE=1) forbids downloading it; unset "
            "RESTORECLI_OFFLINE, or download the file elsewhere and pass its path to --weights"
        )
    if pinned is None and not allow_unverified:
        raise DownloadError(
            f"no sha256 is known for {base}, so it cannot be verified; pass --allow-unverified to download it "
            "anyway (its sha256 is printed), or pin it as URL#sha256=HEX"
        )
    result = download(base, folder / filename, sha256=pinned, allow_unverified=True, progress=progress)
    write_record(folder, result.path, name=f"{URL_DIR}/{key}", origin="url", url=base, sha256=result.sha256)
    return result.path, result.sha256


def check_fits(
    spec: ModelSpec, task: str | None, *, scale: int | None, sigma: int | None, variant: str | None
) -> None:
    """Refuse a model that does another task, scale, noise level or variant than requested.

    A None request (or a None fact of the model) matches anything.

    Raises:
        UsageError: The first mismatch, naming both values.
    """
    if task is not None and spec.task != task:
        raise UsageError(
            f"model {spec.name} does {spec.task}, not {task}; expected a model for {task} (`restore models list`)"
        )
    for label, wanted, has in (
        ("scale", scale, spec.scale if spec.task == "sr" else None),
        ("sigma", sigma, spec.sigma),
        ("variant", variant, spec.variant),
    ):
        if wanted is not None and has is not None and wanted != has:
            raise UsageError(f"model {spec.name} has {label} {has}, but {label} {wanted} was requested")


def _no_default_message(loaded: Manifest, task: str, scale: int | None, sigma: int | None, variant: str | None) -> str:
    rules = [rule for rule in loaded.defaults if rule.task == task]
    options = sorted(
        {
            f"{label} {value}"
            for rule in rules
            for label, value in (("scale", rule.scale), ("sigma", rule.sigma), ("variant", rule.variant))
            if value is not None
        }
    )
    asked = ", ".join(
        f"{label} {value}"
        for label, value in (("scale", scale), ("sigma", sigma), ("variant", variant))
        if value is not None
    )
    available = ", ".join(options) or "none"
    return f"no {task} model for {asked or 'this request'}; available: {available} (or pass --model/--weights)"


def _nothing_obtainable_message(
    loaded: Manifest, candidates: list[str], task: str, *, scale: int | None, sigma: int | None, variant: str | None
) -> str:
    first = loaded.get(candidates[0])
    others = ", ".join(candidates[1:])
    alternatives = f" Any of {others} works too once imported." if others else ""
    asked = ", ".join(f"{label} {value}" for label, value in (("scale", scale), ("sigma", sigma), ("variant", variant)) if value is not None)
    which = f"{task} with {asked}" if asked else f"the default {task} model"
    return f"no weights available for {which}. {first.obtain_hint()}.{alternatives}"

