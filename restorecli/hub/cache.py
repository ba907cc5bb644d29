"""The local weights cache: storing a checked checkpoint, records of stored files, their verification.

Layout (root: ``--cache-dir``, else ``RESTORECLI_CACHE``, else the platform cache folder; see
:mod:`restorecli.paths`)::

    <root>/models/<name>/<file>            weights of a manifest model
    <root>/models/<name>/record.json       sha256, size, mtime and origin of that file
    <root>/models/_url/<key>/<file>        weights fetched from a --weights URL
    <root>/partial/<name>/                 an interrupted Google Drive transfer, kept to resume

Nothing is trusted because it exists: a bundled file is hashed on use, a cached file is checked
against the size, mtime and sha256 recorded when it was stored (and re-hashed when those differ).
A file from Google Drive has no published digest to fall back on, only the one recorded at its
first download, so it is re-hashed on every use.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from restorecli.download import apply_mirror, sha256_file
from restorecli.errors import CheckpointError, ChecksumError, DownloadError, UnknownModelError, UsageError
from restorecli.io import atomic_output
from restorecli.hub.manifest import NAME_RE, Manifest, ManifestEntry, as_manifest, suggest
from restorecli.paths import BUNDLED_DIR, models_cache

if TYPE_CHECKING:
    import torch

RECORD_FILE = "record.json"
URL_DIR = "_url"
DRIVE_ORIGIN = "drive"


@dataclass(frozen=True)
class CacheRecord:
    """What was stored in a cache folder, written next to the file as ``record.json``.

    Attributes:
        name: Model name (or a URL key for ``--weights URL`` files).
        filename: The weights file in the same folder.
        sha256: Digest of the stored file.
        size: Its size in bytes.
        mtime_ns: Its modification time when recorded (a cheap change detector).
        origin: ``download``, ``import``, ``drive`` (from Google Drive, digest trusted on first use),
            ``url`` or ``adopted`` (found in place, digest pinned).
        url: Where it was downloaded from.
        original_filename: For imports and Drive files: the original file's name.
        original_sha256: For imports and Drive files: the original file's digest (what a manifest
            would pin).
    """

    name: str
    filename: str
    sha256: str
    size: int
    mtime_ns: int
    origin: str
    url: str | None = None
    original_filename: str | None = None
    original_sha256: str | None = None

    @property
    def source_sha256(self) -> str:
        """The digest a manifest pins for this file: the original's for imports."""
        return self.original_sha256 or self.sha256


def read_record(folder: Path) -> CacheRecord | None:
    try:
        data = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
        return CacheRecord(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return None  # an unreadable record is treated as absent; the file is then re-proven


def write_record(folder: Path, path: Path, **fields: Any) -> CacheRecord:
    """Record ``path`` (stored in ``folder``) as it is now; ``fields`` fill the rest of the record."""
    stat = path.stat()
    digest = fields.pop("sha256", None) or sha256_file(path)
    record = CacheRecord(filename=path.name, sha256=digest, size=stat.st_size, mtime_ns=stat.st_mtime_ns, **fields)
    text = json.dumps(asdict(record), indent=2)
    with atomic_output(folder / RECORD_FILE, overwrite=True, error=CheckpointError) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return record


def check_record(record: CacheRecord, path: Path, *, full: bool) -> None:
    """Raise ChecksumError when ``path`` no longer matches its record.

    The cheap check compares size and mtime; when either differs (or ``full``), the file is
    re-hashed, and a file whose bytes are unchanged just gets its record refreshed.
    """
    stat = path.stat()
    if not full and stat.st_size == record.size and stat.st_mtime_ns == record.mtime_ns:
        return
    got = sha256_file(path)
    if got != record.sha256 or stat.st_size != record.size:
        raise ChecksumError(
            f"cached file {path} is corrupt: expected sha256 {record.sha256} ({record.size} bytes, recorded when it "
            f"was stored), got {got} ({stat.st_size} bytes); run `restore models remove {record.name}` and "
            "download or import it again"
        )
    if stat.st_mtime_ns != record.mtime_ns:
        write_record(path.parent, path, **_record_fields(record))


def _record_fields(record: CacheRecord) -> dict[str, Any]:
    data = asdict(record)
    for key in ("filename", "size", "mtime_ns"):
        data.pop(key)
    return data


@dataclass(frozen=True)
class ImportResult:
    """Outcome of :func:`import_checkpoint`.

    Attributes:
        name: Model name the file was stored under.
        path: Stored safetensors file.
        sha256: Digest of the stored file.
        original_sha256: Digest of the imported file (what a manifest would pin).
        replaced: Whether an earlier cached file was replaced.
    """

    name: str
    path: Path
    sha256: str
    original_sha256: str
    replaced: bool


def store_checkpoint(
    file: Path,
    entry: ManifestEntry,
    *,
    cache_dir: Path | None,
    origin: str,
    url: str | None = None,
    force: bool = False,
    state: Mapping[str, torch.Tensor] | None = None,
) -> ImportResult:
    """Store ``file`` as ``entry``'s weights once it loads strictly into ``entry``'s network.

    The file must hold finite values with exactly the keys and shapes of the network; it is saved
    as safetensors (with arch and config) and recorded with its original name and sha256.

    Args:
        file: The checkpoint.
        entry: The model it must be.
        cache_dir: Cache root override.
        origin: How it came: ``import`` (by hand) or ``drive``.
        url: Where it was downloaded from, if it was.
        force: Replace a different file already cached under that name.
        state: The file's tensors when the caller has read them already (not read again).

    Raises:
        CheckpointError: Unreadable file, wrong layout, non-finite weights.
        ChecksumError: The manifest pins a digest and the file differs.
        UsageError: Another file is cached under that name and ``force`` is off.
    """
    import torch

    from restorecli import models
    from restorecli.models.checkpoint import layout_mismatch

    if state is None:
        state = models.read_checkpoint(file).state_dict
    layout = {k: v.shape for k, v in models.build_arch(entry.arch, entry.config, device="meta").state_dict().items()}
    problem = layout_mismatch(layout, state)
    if problem:
        raise CheckpointError(f"{file.name} is not a {entry.name} checkpoint: {problem}")
    original = sha256_file(file)
    pinned = entry.weights.sha256
    if pinned and original != pinned:
        raise ChecksumError(
            f"{file} is not the pinned {entry.weights.filename}: expected sha256 {pinned}, got {original}"
        )
    folder = models_cache(cache_dir) / entry.name
    record = read_record(folder)
    replaced = record is not None and (folder / record.filename).is_file()
    if replaced and record is not None and not force:
        if record.source_sha256 == original:
            return ImportResult(entry.name, folder / record.filename, record.sha256, original, replaced=False)
        raise UsageError(f"{entry.name} is already cached ({folder / record.filename}); pass --force to replace it")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{file.name} holds non-finite values (NaN or inf) in {len(bad)} tensors, e.g. {bad[0]}")
    network = models.build_arch(entry.arch, entry.config)
    models.load_checkpoint(network, state)
    dest = folder / f"{entry.name}.safetensors"
    models.save_checkpoint(dest, network, entry.arch, entry.config_dict(), entry.name, task=entry.task)
    for stale in folder.iterdir():
        if stale != dest and stale.name != RECORD_FILE and stale.is_file():
            stale.unlink()
    record = write_record(
        folder, dest, name=entry.name, origin=origin, url=url, original_filename=file.name, original_sha256=original
    )
    return ImportResult(entry.name, dest, record.sha256, original, replaced)


def cached_weights(entry: ManifestEntry, cache: Path | None, *, full: bool = False) -> tuple[Path, CacheRecord] | None:
    """The verified cached weights of ``entry``, or None when there are none."""
    folder = models_cache(cache) / entry.name
    record = read_record(folder)
    if record is None:
        # A file put there by hand counts only when a pinned digest proves it.
        candidate = folder / entry.weights.filename
        if candidate.is_file() and entry.weights.sha256 and sha256_file(candidate) == entry.weights.sha256:
            record = write_record(folder, candidate, name=entry.name, origin="adopted", sha256=entry.weights.sha256)
            return candidate, record
        return None
    path = folder / record.filename
    if not path.is_file():
        return None
    check_record(record, path, full=full or record.origin == DRIVE_ORIGIN)
    pinned = entry.weights.sha256
    if pinned and record.source_sha256 != pinned:
        raise ChecksumError(
            f"cached {entry.name} ({path}) has sha256 {record.source_sha256}, but {pinned} is pinned "
            "(manifest or --sha256); "
            f"run `restore models remove {entry.name}` and download or import it again"
        )
    return path, record


def bundled_weights(entry: ManifestEntry) -> Path | None:
    if entry.weights.bundled is None:
        return None
    path = BUNDLED_DIR / entry.weights.bundled
    if not path.is_file():
        raise CheckpointError(
            f"bundled weights of {entry.name} are missing: expected {path}; "
            "the installation is incomplete, reinstall restorecli"
        )
    got = sha256_file(path)  # bundled files are small; hashing them on every use is cheap
    if entry.weights.sha256 and got != entry.weights.sha256:
        raise ChecksumError(
            f"bundled weights of {entry.name} are corrupt: expected sha256 {entry.weights.sha256}, "
            f"got {got} ({path}); reinstall restorecli"
        )
    return path



@dataclass(frozen=True)
class ModelStatus:
    """One row of ``restore models list``.

    Attributes:
        name: Model name.
        task: Task.
        scale: Upscaling factor.
        sigma: Noise level.
        variant: Task variant.
        params: Parameter count.
        source: ``official`` or ``restorecli``.
        where: ``bundled``, ``cached``, ``remote`` (downloadable), ``drive`` (downloadable from a
            Google Drive folder) or ``manual`` (import by hand).
        size: Bytes of the local file, else the manifest's size, else None.
        path: Local file, if any.
        description: One line.
    """

    name: str
    task: str
    scale: int | None
    sigma: int | None
    variant: str | None
    params: int | None
    source: str
    where: str
    size: int | None
    path: str | None
    description: str


def model_status(manifest: Manifest | Path | None = None, cache_dir: Path | None = None) -> list[ModelStatus]:
    """Where each manifest model's weights are, without hashing anything."""
    rows = []
    for entry in as_manifest(manifest).entries:
        path: Path | None = None
        if entry.weights.bundled is not None and (BUNDLED_DIR / entry.weights.bundled).is_file():
            where, path = "bundled", BUNDLED_DIR / entry.weights.bundled
        else:
            folder = models_cache(cache_dir) / entry.name
            record = read_record(folder)
            if record is not None and (folder / record.filename).is_file():
                where, path = "cached", folder / record.filename
            elif apply_mirror(entry.weights.url, entry.weights.filename) is not None:
                where = "remote"
            elif entry.drive_folder is not None:
                where = "drive"
            else:
                where = "manual"
        size = path.stat().st_size if path is not None else entry.weights.size
        rows.append(
            ModelStatus(
                entry.name,
                entry.task,
                entry.scale,
                entry.sigma,
                entry.variant,
                entry.params,
                entry.source,
                where,
                size,
                str(path) if path else None,
                entry.description,
            )  # fmt: skip
        )
    return rows


def local_path(name: str, *, manifest: Manifest | Path | None = None, cache_dir: Path | None = None) -> Path:
    """The verified local file of a model (bundled or cached); never downloads.

    Raises:
        UnknownModelError: No such model.
        DownloadError: The model is not available locally (the message says how to get it).
    """
    entry = as_manifest(manifest).get(name)
    bundled = bundled_weights(entry)
    if bundled is not None:
        return bundled
    hit = cached_weights(entry, cache_dir)
    if hit is None:
        fetchable = entry.weights.url or entry.drive_folder
        how = f"run `restore models download {name}`" if fetchable else entry.obtain_hint()
        raise DownloadError(f"{name} is not in the cache ({models_cache(cache_dir)}); {how}")
    return hit[0]


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of re-hashing one stored file.

    Attributes:
        name: Model name (or ``_url/<key>``).
        path: The file.
        ok: Whether it matches its record and the manifest.
        detail: ``ok`` or what is wrong.
    """

    name: str
    path: str
    ok: bool
    detail: str


def verify_cache(
    names: Iterable[str] = (), *, manifest: Manifest | Path | None = None, cache_dir: Path | None = None
) -> list[VerifyResult]:
    """Re-hash every cached (and bundled) weights file; ``names`` limits the check.

    Returns:
        One result per file, in name order.
    """
    loaded = as_manifest(manifest)
    wanted = set(names)
    results = []
    for entry in loaded.entries:
        if entry.weights.bundled is not None and (not wanted or entry.name in wanted):
            path = BUNDLED_DIR / entry.weights.bundled
            try:
                bundled_weights(entry)
                results.append(VerifyResult(entry.name, str(path), True, "ok (bundled)"))
            except (ChecksumError, CheckpointError) as error:
                results.append(VerifyResult(entry.name, str(path), False, str(error)))
    root = models_cache(cache_dir)
    folders = sorted(p for p in root.glob("*") if p.is_dir() and p.name != URL_DIR) if root.is_dir() else []
    folders += sorted(p for p in (root / URL_DIR).glob("*") if p.is_dir()) if (root / URL_DIR).is_dir() else []
    for folder in folders:
        name = folder.name if folder.parent == root else f"{URL_DIR}/{folder.name}"
        if wanted and name not in wanted:
            continue
        results.append(_verify_folder(folder, name, loaded))
    for name in sorted(wanted - {r.name for r in results}):
        loaded.get(name)  # unknown names raise with suggestions
        results.append(VerifyResult(name, "", False, "not in the cache"))
    return results


def _verify_folder(folder: Path, name: str, loaded: Manifest) -> VerifyResult:
    record = read_record(folder)
    if record is None:
        return VerifyResult(name, str(folder), False, "no record.json (not stored by restorecli); remove the folder")
    path = folder / record.filename
    if not path.is_file():
        return VerifyResult(name, str(path), False, "file missing")
    try:
        check_record(record, path, full=True)
    except ChecksumError as error:
        return VerifyResult(name, str(path), False, str(error))
    pinned = loaded.get(name).weights.sha256 if name in loaded else None
    if pinned and record.source_sha256 != pinned:
        return VerifyResult(
            name, str(path), False, f"sha256 {record.source_sha256} differs from the manifest's {pinned}"
        )
    return VerifyResult(name, str(path), True, "ok")


def remove_cached(name: str, *, cache_dir: Path | None = None) -> Path:
    """Delete a model's cache folder.

    Returns:
        The folder that was removed.

    Raises:
        UnknownModelError: Nothing of that name is cached.
    """
    root = models_cache(cache_dir)
    folder = root / name
    if not NAME_RE.match(name.replace(f"{URL_DIR}/", "", 1)) or not folder.is_dir():
        cached = [p.name for p in root.glob("*") if p.is_dir() and p.name != URL_DIR] if root.is_dir() else []
        raise UnknownModelError(f"{name!r} is not in the cache ({root}){suggest(name, cached)}")
    shutil.rmtree(folder)
    return folder

