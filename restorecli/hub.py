"""Model hub: the weights manifest, resolution of weights, and the local weights cache.

Resolution order: ``--weights PATH|URL`` > ``--model NAME`` > the task's default; a name resolves
to a bundled file, then the cache, then a download. Nothing is trusted because it exists: a
bundled file is hashed on use, a cached file is checked against the size, mtime and sha256
recorded when it was stored (and re-hashed when those differ), a download is verified before it
is renamed into the cache.

Cache layout (root: ``--cache-dir``, else ``RESTORECLI_CACHE``, else the platform cache folder)::

    <root>/models/<name>/<file>            weights of a manifest model
    <root>/models/<name>/record.json       sha256, size, mtime and origin of that file
    <root>/models/_url/<key>/<file>        weights fetched from a --weights URL

Environment: ``RESTORECLI_MANIFEST`` (extra manifest), ``RESTORECLI_CACHE``, ``RESTORECLI_OFFLINE``,
``RESTORECLI_MIRROR`` (see :mod:`restorecli.download`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlsplit

from restorecli.download import apply_mirror, download, is_offline, sha256_file
from restorecli.errors import (
    CheckpointError,
    ChecksumError,
    ConfigError,
    DownloadError,
    UnknownModelError,
    UsageError,
)

__all__ = [
    "MANIFEST_VERSION",
    "PACKAGE_MANIFEST",
    "TASKS",
    "CacheRecord",
    "DefaultRule",
    "ImportResult",
    "Manifest",
    "ManifestEntry",
    "ManifestFile",
    "ModelStatus",
    "ResolvedWeights",
    "VerifyResult",
    "cache_dir",
    "default_candidates",
    "default_model",
    "fetch",
    "identify_checkpoint",
    "import_checkpoint",
    "load_manifest",
    "local_path",
    "model_status",
    "remove_cached",
    "resolve_weights",
    "sha256_file",
    "verify_cache",
]

MANIFEST_VERSION = 1
TASKS = ("sr", "denoise", "deblur", "dehaze")
SOURCES = ("official", "restorecli")
FORMATS = ("safetensors", "pth", "ckpt", "pt")
PACKAGE_MANIFEST = Path(__file__).with_name("weights_manifest.json")
BUNDLED_DIR = Path(__file__).with_name("weights")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_RECORD = "record.json"
_URL_DIR = "_url"

_MODEL_REQUIRED = ("name", "arch", "task", "config", "files")
_MODEL_OPTIONAL = (
    "scale", "sigma", "variant", "description", "params", "source", "license",
    "homepage", "paper", "download_page", "metrics",
)  # fmt: skip
_FILE_REQUIRED = ("filename", "url", "sha256", "size")
_FILE_OPTIONAL = ("format", "bundled")
_RULE_KEYS = ("task", "scale", "sigma", "variant", "models")


# ----------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestFile:
    """One file of a manifest entry.

    Attributes:
        filename: File name in the cache (and in a mirror folder).
        url: Direct download URL, or None when the file must be obtained by hand.
        sha256: Pinned hex digest, or None when unknown.
        size: Size in bytes, or None when unknown.
        format: ``safetensors``, ``pth``, ``ckpt`` or ``pt``.
        bundled: Path inside the package's ``weights/`` folder, for weights shipped with it.
    """

    filename: str
    url: str | None
    sha256: str | None
    size: int | None
    format: str
    bundled: str | None = None


@dataclass(frozen=True)
class ManifestEntry:
    """One named model of the manifest.

    Attributes:
        name: Public model name, e.g. ``mair-sr-x4``.
        arch: Architecture id (``mair`` or ``mairunet``).
        task: ``sr``, ``denoise``, ``deblur`` or ``dehaze``.
        config: Keyword arguments that shape the network (read-only).
        files: The files; the first one holds the weights.
        scale: Upscaling factor (1 for same-size tasks).
        sigma: Gaussian noise level on the 0-255 scale, for synthetic-noise denoisers.
        variant: Task variant (``real`` noise; dehaze ``indoor``/``outdoor``/``mix``).
        description: One line for humans.
        params: Parameter count.
        source: ``official`` (MaIR release) or ``restorecli`` (trained by this project).
        license: Licence of the weights, as far as known.
        homepage: Project page.
        paper: Paper URL.
        download_page: Page where the file can be fetched by hand when there is no direct URL.
        metrics: Measured metrics, e.g. ``{"Set5": {"psnr": 32.5}}`` (read-only).
    """

    name: str
    arch: str
    task: str
    config: Mapping[str, Any]
    files: tuple[ManifestFile, ...]
    scale: int | None = None
    sigma: int | None = None
    variant: str | None = None
    description: str = ""
    params: int | None = None
    source: str = "restorecli"
    license: str | None = None
    homepage: str | None = None
    paper: str | None = None
    download_page: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def weights(self) -> ManifestFile:
        """The file holding the weights (the first one)."""
        return self.files[0]

    def config_dict(self) -> dict[str, Any]:
        """A fresh copy of ``config`` (lists as tuples, like the config dataclasses)."""
        return dict(self.config)

    def obtain_hint(self) -> str:
        """How to get this model's weights when the tool cannot fetch them by itself."""
        filename = self.weights.filename
        where = f"from {self.download_page}" if self.download_page else "from its publisher"
        if self.source == "official":
            prefix = (
                f"{self.name} has no direct download: the official MaIR checkpoints are published only in a "
                f"Google Drive folder, without checksums. Download {filename} {where}"
            )
        else:
            prefix = f"{self.name} has no download URL. Get {filename} {where}"
        return (
            f"{prefix}, then run `restore models import {filename} --name {self.name}` "
            f"(or pass the file directly with --weights {filename})"
        )


@dataclass(frozen=True)
class DefaultRule:
    """Candidates for a task default, in order of preference.

    A rule applies when its ``scale``, ``sigma`` and ``variant`` equal the request's (an absent
    value matches only an absent one).
    """

    task: str
    models: tuple[str, ...]
    scale: int | None = None
    sigma: int | None = None
    variant: str | None = None


@dataclass(frozen=True)
class Manifest:
    """The shipped manifest merged with an optional user manifest.

    Attributes:
        version: Schema version (1).
        entries: Models in manifest order.
        defaults: Default rules, user rules first.
        sources: Files that were read.
    """

    version: int
    entries: tuple[ManifestEntry, ...]
    defaults: tuple[DefaultRule, ...]
    sources: tuple[Path, ...]

    def names(self) -> list[str]:
        """Model names in manifest order."""
        return [entry.name for entry in self.entries]

    def __contains__(self, name: object) -> bool:
        return any(entry.name == name for entry in self.entries)

    def get(self, name: str) -> ManifestEntry:
        """The entry called ``name``.

        Raises:
            UnknownModelError: No such entry (the message suggests close names).
        """
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise UnknownModelError(
            f"unknown model {name!r}{_suggest(name, self.names())}; list models with `restore models list`"
        )

    def find_sha256(self, sha256: str) -> ManifestEntry | None:
        """The entry whose weights file has this pinned digest, if any."""
        for entry in self.entries:
            if entry.weights.sha256 == sha256:
                return entry
        return None


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def load_manifest(extra: Path | None = None) -> Manifest:
    """Read the shipped manifest and merge a user manifest into it.

    User entries add models, or override fields of a shipped model with the same name (so a user
    manifest can pin a checksum or point at an internal mirror with a few lines). User default
    rules take precedence over shipped ones.

    Args:
        extra: User manifest; defaults to ``RESTORECLI_MANIFEST`` when that is set.

    Returns:
        The merged manifest.

    Raises:
        ConfigError: A manifest is missing, not JSON, of another version, or has unknown,
            missing or ill-typed keys.
    """
    if extra is None and os.environ.get("RESTORECLI_MANIFEST"):
        extra = Path(os.environ["RESTORECLI_MANIFEST"])
    sources = [PACKAGE_MANIFEST]
    shipped = _read_manifest_json(PACKAGE_MANIFEST)
    raw_models: dict[str, dict[str, Any]] = {}
    for item in shipped["models"]:
        raw_models[_raw_name(item, PACKAGE_MANIFEST)] = item
    rules = list(shipped.get("defaults", []))
    if extra is not None:
        extra = Path(extra).expanduser()
        sources.insert(0, extra)
        user = _read_manifest_json(extra)
        for item in user["models"]:
            name = _raw_name(item, extra)
            raw_models[name] = {**raw_models.get(name, {}), **item}
        rules = list(user.get("defaults", [])) + rules
    where = " or ".join(str(path) for path in sources)
    entries = tuple(_parse_entry(item, where) for item in raw_models.values())
    known = {entry.name for entry in entries}
    defaults = tuple(_parse_rule(item, where, known) for item in rules)
    return Manifest(MANIFEST_VERSION, entries, defaults, tuple(sources))


def _read_manifest_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"manifest not found: expected a JSON file at {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"manifest {path} cannot be read: {error}") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"manifest {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"manifest {path}: expected a JSON object at the top level, got {type(data).__name__}")
    if data.get("version") != MANIFEST_VERSION:
        raise ConfigError(
            f"manifest {path} has version {data.get('version')!r}; this restorecli reads version {MANIFEST_VERSION}"
        )
    unknown = set(data) - {"version", "about", "defaults", "models"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"manifest {path}: unknown top-level key {key!r}{_suggest(key, ['defaults', 'models'])}")
    if not isinstance(data.get("models"), list) or not isinstance(data.get("defaults", []), list):
        raise ConfigError(f"manifest {path}: expected 'models' (and 'defaults') to be lists")
    return data


def _raw_name(item: Any, path: Path) -> str:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ConfigError(f"manifest {path}: every model needs a string 'name', got {item!r:.80}")
    if not _NAME_RE.match(item["name"]):
        raise ConfigError(
            f"manifest {path}: model name {item['name']!r} must be lowercase letters, digits, '.', '_' or '-'"
        )
    return item["name"]


def _check_keys(item: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...], what: str) -> None:
    allowed = required + optional
    for key in item:
        if key not in allowed:
            raise ConfigError(f"{what}: unknown key {key!r}{_suggest(key, allowed)}")
    missing = [key for key in required if key not in item]
    if missing:
        raise ConfigError(f"{what}: missing key(s) {', '.join(missing)}")


def _typed(value: Any, types: type | tuple[type, ...], what: str, *, optional: bool = True) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigError(f"{what}: expected {types}, got a boolean")
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise ConfigError(f"{what}: expected {names}, got {value!r:.60}")
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    return value


def _parse_file(item: Any, what: str) -> ManifestFile:
    if not isinstance(item, dict):
        raise ConfigError(f"{what}: expected an object, got {item!r:.60}")
    _check_keys(item, _FILE_REQUIRED, _FILE_OPTIONAL, what)
    filename = _typed(item["filename"], str, f"{what}.filename", optional=False)
    if Path(filename).name != filename or filename.startswith("."):
        raise ConfigError(f"{what}.filename: expected a bare file name, got {filename!r}")
    sha = _typed(item["sha256"], str, f"{what}.sha256")
    if sha is not None:
        sha = sha.lower()
        if not _SHA256_RE.match(sha):
            raise ConfigError(f"{what}.sha256: expected 64 hex digits, got {item['sha256']!r}")
    size = _typed(item["size"], int, f"{what}.size")
    bundled = _typed(item.get("bundled"), str, f"{what}.bundled")
    if bundled is not None and sha is None:
        raise ConfigError(f"{what}: bundled weights need a pinned sha256")
    fmt = item.get("format") or filename.rsplit(".", 1)[-1].lower()
    if fmt not in FORMATS:
        raise ConfigError(f"{what}.format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    return ManifestFile(
        filename=filename,
        url=_typed(item["url"], str, f"{what}.url"),
        sha256=sha,
        size=size,
        format=fmt,
        bundled=bundled,
    )


def _parse_entry(item: dict[str, Any], where: str) -> ManifestEntry:
    what = f"manifest {where}: model {item['name']!r}"
    _check_keys(item, _MODEL_REQUIRED, _MODEL_OPTIONAL, what)
    task = _typed(item["task"], str, f"{what}.task", optional=False)
    if task not in TASKS:
        raise ConfigError(f"{what}.task: expected one of {', '.join(TASKS)}, got {task!r}{_suggest(task, TASKS)}")
    source = item.get("source") or "restorecli"
    if source not in SOURCES:
        raise ConfigError(f"{what}.source: expected one of {', '.join(SOURCES)}, got {source!r}")
    config = _typed(item["config"], dict, f"{what}.config", optional=False)
    files = _typed(item["files"], list, f"{what}.files", optional=False)
    if not files:
        raise ConfigError(f"{what}.files: expected at least one file")
    metrics = _typed(item.get("metrics"), dict, f"{what}.metrics") or {}
    return ManifestEntry(
        name=item["name"],
        arch=_typed(item["arch"], str, f"{what}.arch", optional=False),
        task=task,
        config=_freeze(config),
        files=tuple(_parse_file(f, f"{what}.files[{i}]") for i, f in enumerate(files)),
        scale=_typed(item.get("scale"), int, f"{what}.scale"),
        sigma=_typed(item.get("sigma"), int, f"{what}.sigma"),
        variant=_typed(item.get("variant"), str, f"{what}.variant"),
        description=_typed(item.get("description"), str, f"{what}.description") or "",
        params=_typed(item.get("params"), int, f"{what}.params"),
        source=source,
        license=_typed(item.get("license"), str, f"{what}.license"),
        homepage=_typed(item.get("homepage"), str, f"{what}.homepage"),
        paper=_typed(item.get("paper"), str, f"{what}.paper"),
        download_page=_typed(item.get("download_page"), str, f"{what}.download_page"),
        metrics=_freeze(metrics),
    )


def _parse_rule(item: Any, where: str, known: set[str]) -> DefaultRule:
    what = f"manifest {where}: default rule {item!r:.80}"
    if not isinstance(item, dict):
        raise ConfigError(f"{what}: expected an object")
    _check_keys(item, ("task", "models"), _RULE_KEYS[1:4], what)
    if item["task"] not in TASKS:
        raise ConfigError(f"{what}: task must be one of {', '.join(TASKS)}")
    models = _typed(item["models"], list, f"{what}.models", optional=False)
    for name in models:
        if name not in known:
            raise ConfigError(f"{what}: unknown model {name!r}{_suggest(str(name), known)}")
    return DefaultRule(
        task=item["task"],
        models=tuple(models),
        scale=_typed(item.get("scale"), int, f"{what}.scale"),
        sigma=_typed(item.get("sigma"), int, f"{what}.sigma"),
        variant=_typed(item.get("variant"), str, f"{what}.variant"),
    )


def _as_manifest(manifest: Manifest | Path | None) -> Manifest:
    return manifest if isinstance(manifest, Manifest) else load_manifest(manifest)


# ----------------------------------------------------------------------------- cache


def cache_dir(override: Path | None = None) -> Path:
    """Root of the cache: ``override``, else ``RESTORECLI_CACHE``, else the platform cache folder."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get("RESTORECLI_CACHE"):
        return Path(os.environ["RESTORECLI_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("restorecli", appauthor=False))


def _models_root(cache: Path | None) -> Path:
    return cache_dir(cache) / "models"


@dataclass(frozen=True)
class CacheRecord:
    """What was stored in a cache folder, written next to the file as ``record.json``.

    Attributes:
        name: Model name (or a URL key for ``--weights URL`` files).
        filename: The weights file in the same folder.
        sha256: Digest of the stored file.
        size: Its size in bytes.
        mtime_ns: Its modification time when recorded (a cheap change detector).
        origin: ``download``, ``import``, ``url`` or ``adopted`` (found in place, digest pinned).
        url: Where it was downloaded from.
        original_filename: For imports: the imported file's name.
        original_sha256: For imports: the imported file's digest (what a manifest would pin).
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


def _read_record(folder: Path) -> CacheRecord | None:
    try:
        data = json.loads((folder / _RECORD).read_text(encoding="utf-8"))
        return CacheRecord(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return None  # an unreadable record is treated as absent; the file is then re-proven


def _write_record(folder: Path, path: Path, **fields: Any) -> CacheRecord:
    stat = path.stat()
    digest = fields.pop("sha256", None) or sha256_file(path)
    record = CacheRecord(filename=path.name, sha256=digest, size=stat.st_size, mtime_ns=stat.st_mtime_ns, **fields)
    handle, temporary = tempfile.mkstemp(prefix=".record.", suffix=".tmp", dir=folder)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(asdict(record), out, indent=2)
    os.replace(temporary, folder / _RECORD)
    return record


def _check_record(record: CacheRecord, path: Path, *, full: bool) -> None:
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
        _write_record(path.parent, path, **_record_fields(record))


def _record_fields(record: CacheRecord) -> dict[str, Any]:
    data = asdict(record)
    for key in ("filename", "size", "mtime_ns"):
        data.pop(key)
    return data


def _cached(entry: ManifestEntry, cache: Path | None, *, full: bool = False) -> tuple[Path, CacheRecord] | None:
    """The verified cached weights of ``entry``, or None when there are none."""
    folder = _models_root(cache) / entry.name
    record = _read_record(folder)
    if record is None:
        # A file put there by hand counts only when a pinned digest proves it.
        candidate = folder / entry.weights.filename
        if candidate.is_file() and entry.weights.sha256 and sha256_file(candidate) == entry.weights.sha256:
            record = _write_record(folder, candidate, name=entry.name, origin="adopted", sha256=entry.weights.sha256)
            return candidate, record
        return None
    path = folder / record.filename
    if not path.is_file():
        return None
    _check_record(record, path, full=full)
    pinned = entry.weights.sha256
    if pinned and record.source_sha256 != pinned:
        raise ChecksumError(
            f"cached {entry.name} ({path}) has sha256 {record.source_sha256}, but the manifest pins {pinned}; "
            f"run `restore models remove {entry.name}` and download or import it again"
        )
    return path, record


def _bundled(entry: ManifestEntry) -> Path | None:
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


# ----------------------------------------------------------------------------- resolution


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
    """

    path: Path
    name: str | None
    arch: str | None
    config: dict[str, Any] | None
    sha256: str
    source: str


def fetch(
    name: str,
    *,
    allow_unverified: bool = False,
    manifest: Manifest | Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> ResolvedWeights:
    """Local weights of a manifest model: bundled, else cached, else downloaded into the cache.

    Args:
        name: Manifest name.
        allow_unverified: Download even when no sha256 is pinned.
        manifest: A loaded manifest or an extra manifest file.
        cache_dir: Cache root override.
        progress: Show a download progress bar on stderr.

    Raises:
        UnknownModelError: No such model.
        DownloadError: No URL (the message says how to get the file), offline mode, no pinned
            digest without ``allow_unverified``, or the transfer failed.
        ChecksumError: Corrupt bundled, cached or downloaded file.
    """
    entry = _as_manifest(manifest).get(name)
    path, digest, source = _obtain(entry, allow_unverified, cache_dir, progress)
    return ResolvedWeights(path, entry.name, entry.arch, entry.config_dict(), digest, source)


def _obtain(entry: ManifestEntry, allow_unverified: bool, cache: Path | None, progress: bool) -> tuple[Path, str, str]:
    bundled = _bundled(entry)
    if bundled is not None:
        return bundled, sha256_file(bundled), "bundled"
    hit = _cached(entry, cache)
    if hit is not None:
        return hit[0], hit[1].sha256, "cache"
    url = apply_mirror(entry.weights.url, entry.weights.filename)
    if url is None:
        raise DownloadError(entry.obtain_hint())
    folder = _models_root(cache) / entry.name
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
    _write_record(folder, dest, name=entry.name, origin="download", url=url, sha256=result.sha256)
    return dest, result.sha256, "download"


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
    for rule in _as_manifest(manifest).defaults:
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
    loaded = _as_manifest(manifest)
    for name in default_candidates(task, scale=scale, sigma=sigma, variant=variant, real=real, manifest=loaded):
        if _obtainable(loaded.get(name), cache_dir):
            return name
    return None


def _obtainable(entry: ManifestEntry, cache: Path | None) -> bool:
    if entry.weights.bundled is not None and (BUNDLED_DIR / entry.weights.bundled).is_file():
        return True
    folder = _models_root(cache) / entry.name
    record = _read_record(folder)
    if record is not None and (folder / record.filename).is_file():
        return True
    url = apply_mirror(entry.weights.url, entry.weights.filename)
    if url is None or entry.weights.sha256 is None:
        return False
    return not is_offline() or urlsplit(url).scheme == "file"


def resolve_weights(
    task: str,
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
        task: ``sr``, ``denoise``, ``deblur`` or ``dehaze``.
        model: Manifest name, or None.
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
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if real:
        variant = "real"
    loaded = load_manifest(manifest)
    if model is not None and model not in loaded:
        wanted = {"scale": scale, "sigma": sigma, "variant": variant}
        return _resolve_unpublished(model, weights, loaded, task, wanted, (allow_unverified, cache_dir, progress))
    if weights is not None:
        return _resolve_explicit(
            weights,
            loaded.get(model) if model else None,
            loaded,
            task,
            scale,
            sigma,
            variant,
            allow_unverified,
            cache_dir,
            progress,
        )
    if model is None:
        candidates = default_candidates(task, scale=scale, sigma=sigma, variant=variant, manifest=loaded)
        if not candidates:
            raise UsageError(_no_default_message(loaded, task, scale, sigma, variant))
        model = default_model(task, scale=scale, sigma=sigma, variant=variant, manifest=loaded, cache_dir=cache_dir)
        if model is None:
            raise DownloadError(_nothing_obtainable_message(loaded, candidates))
    entry = loaded.get(model)
    _check_fits(entry, task, scale, sigma, variant)
    path, digest, source = _obtain(entry, allow_unverified, cache_dir, progress)
    return ResolvedWeights(path, entry.name, entry.arch, entry.config_dict(), digest, source)


def _resolve_explicit(
    weights: str,
    entry: ManifestEntry | None,
    loaded: Manifest,
    task: str,
    scale: int | None,
    sigma: int | None,
    variant: str | None,
    allow_unverified: bool,
    cache: Path | None,
    progress: bool,
) -> ResolvedWeights:
    path, digest, source = _weights_file(weights, allow_unverified, cache, progress)
    entry = entry or loaded.find_sha256(digest)
    if entry is None:
        return ResolvedWeights(path, None, None, None, digest, source)
    _check_fits(entry, task, scale, sigma, variant)
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


def _resolve_unpublished(
    model: str, weights: str | None, loaded: Manifest, task: str, wanted: dict[str, Any], fetch_options: tuple[bool, Path | None, bool]
) -> ResolvedWeights:
    """A name of the model table without manifest entry (no published weights, e.g. VAMamba):
    the network comes from the table, the file must come from ``weights``.

    ``wanted`` holds the scale/sigma/variant the user asked for (None where not given);
    ``fetch_options`` is (allow_unverified, cache, progress).
    """
    from restorecli import models

    try:
        spec = models.spec(model)
    except UnknownModelError:
        loaded.get(model)  # raises with suggestions from the manifest's names
        raise
    given = {"scale": spec.scale if task == "sr" else None, "sigma": spec.sigma, "variant": spec.variant}
    if spec.task != task or any(wanted[k] is not None and wanted[k] != given[k] for k in wanted):
        raise UsageError(
            f"model {model!r} does {spec.task} (scale {spec.scale}, sigma {spec.sigma}, variant {spec.variant}); "
            f"expected a model for {task} with {', '.join(f'{k} {v}' for k, v in wanted.items() if v is not None) or 'defaults'}"
        )
    if weights is None:
        raise DownloadError(
            f"no published weights for {model!r}; train them with `restore train` and pass the file with --weights"
        )
    path, digest, source = _weights_file(weights, *fetch_options)
    return ResolvedWeights(path, spec.name, spec.arch, asdict(spec.config), digest, source)


def _fetch_url(url: str, allow_unverified: bool, cache: Path | None, progress: bool) -> tuple[Path, str]:
    base, _, fragment = url.partition("#")
    pinned = fragment[len("sha256=") :] if fragment.startswith("sha256=") else None
    if pinned is not None and not _SHA256_RE.match(pinned.lower()):
        raise UsageError(f"{url}: expected #sha256= followed by 64 hex digits")
    key = hashlib.sha256(base.encode()).hexdigest()[:16]
    folder = _models_root(cache) / _URL_DIR / key
    filename = unquote(urlsplit(base).path.rsplit("/", 1)[-1]) or "weights"
    record = _read_record(folder)
    if record is not None and (folder / record.filename).is_file():
        _check_record(record, folder / record.filename, full=False)
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
    _write_record(folder, result.path, name=f"{_URL_DIR}/{key}", origin="url", url=base, sha256=result.sha256)
    return result.path, result.sha256


def _check_fits(entry: ManifestEntry, task: str, scale: int | None, sigma: int | None, variant: str | None) -> None:
    if entry.task != task:
        raise UsageError(
            f"model {entry.name} does {entry.task}, not {task}; pick a {task} model (`restore models list`)"
        )
    for label, wanted, has in (
        ("scale", scale, entry.scale),
        ("sigma", sigma, entry.sigma),
        ("variant", variant, entry.variant),
    ):
        if wanted is not None and has is not None and wanted != has:
            raise UsageError(f"model {entry.name} has {label} {has}, but {label} {wanted} was requested")


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


def _nothing_obtainable_message(loaded: Manifest, candidates: list[str]) -> str:
    first = loaded.get(candidates[0])
    others = ", ".join(candidates[1:])
    alternatives = f" Any of {others} works too once imported." if others else ""
    return f"no weights available for the default model. {first.obtain_hint()}.{alternatives}"


# ----------------------------------------------------------------------------- commands' library


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
        where: ``bundled``, ``cached``, ``remote`` (downloadable) or ``manual`` (import by hand).
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
    for entry in _as_manifest(manifest).entries:
        path: Path | None = None
        if entry.weights.bundled is not None and (BUNDLED_DIR / entry.weights.bundled).is_file():
            where, path = "bundled", BUNDLED_DIR / entry.weights.bundled
        else:
            folder = _models_root(cache_dir) / entry.name
            record = _read_record(folder)
            if record is not None and (folder / record.filename).is_file():
                where, path = "cached", folder / record.filename
            elif apply_mirror(entry.weights.url, entry.weights.filename) is not None:
                where = "remote"
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
    entry = _as_manifest(manifest).get(name)
    bundled = _bundled(entry)
    if bundled is not None:
        return bundled
    hit = _cached(entry, cache_dir)
    if hit is None:
        how = f"run `restore models download {name}`" if entry.weights.url else entry.obtain_hint()
        raise DownloadError(f"{name} is not in the cache ({_models_root(cache_dir)}); {how}")
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
    loaded = _as_manifest(manifest)
    wanted = set(names)
    results = []
    for entry in loaded.entries:
        if entry.weights.bundled is not None and (not wanted or entry.name in wanted):
            path = BUNDLED_DIR / entry.weights.bundled
            try:
                _bundled(entry)
                results.append(VerifyResult(entry.name, str(path), True, "ok (bundled)"))
            except (ChecksumError, CheckpointError) as error:
                results.append(VerifyResult(entry.name, str(path), False, str(error)))
    root = _models_root(cache_dir)
    folders = sorted(p for p in root.glob("*") if p.is_dir() and p.name != _URL_DIR) if root.is_dir() else []
    folders += sorted(p for p in (root / _URL_DIR).glob("*") if p.is_dir()) if (root / _URL_DIR).is_dir() else []
    for folder in folders:
        name = folder.name if folder.parent == root else f"{_URL_DIR}/{folder.name}"
        if wanted and name not in wanted:
            continue
        results.append(_verify_folder(folder, name, loaded))
    for name in sorted(wanted - {r.name for r in results}):
        loaded.get(name)  # unknown names raise with suggestions
        results.append(VerifyResult(name, "", False, "not in the cache"))
    return results


def _verify_folder(folder: Path, name: str, loaded: Manifest) -> VerifyResult:
    record = _read_record(folder)
    if record is None:
        return VerifyResult(name, str(folder), False, "no record.json (not stored by restorecli); remove the folder")
    path = folder / record.filename
    if not path.is_file():
        return VerifyResult(name, str(path), False, "file missing")
    try:
        _check_record(record, path, full=True)
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
    root = _models_root(cache_dir)
    folder = root / name
    if not _NAME_RE.match(name.replace(f"{_URL_DIR}/", "", 1)) or not folder.is_dir():
        cached = [p.name for p in root.glob("*") if p.is_dir() and p.name != _URL_DIR] if root.is_dir() else []
        raise UnknownModelError(f"{name!r} is not in the cache ({root}){_suggest(name, cached)}")
    shutil.rmtree(folder)
    return folder


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


def identify_checkpoint(file: Path, *, manifest: Manifest | Path | None = None) -> list[str]:
    """Manifest models whose official layout equals the file's keys and shapes exactly.

    Raises:
        CheckpointError: Unreadable file.
    """
    from restorecli import models

    loaded = _as_manifest(manifest)
    checkpoint = models.read_checkpoint(file)
    return [name for name in models.identify(checkpoint.state_dict) if name in loaded]


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
    import torch

    from restorecli import models
    from restorecli.models.checkpoint import layout_mismatch

    loaded = _as_manifest(manifest)
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
            fits = [n for n in models.identify(state) if n in loaded]
            hint = f"; it fits {', '.join(fits)}" if fits else ""
            raise CheckpointError(f"{file} is not a {name} checkpoint: {problem}{hint}")
    else:
        fits = [n for n in models.identify(state) if n in loaded]
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
    original = sha256_file(file)
    pinned = entry.weights.sha256
    if pinned and original != pinned:
        raise ChecksumError(
            f"{file} is not the pinned {entry.weights.filename}: expected sha256 {pinned}, got {original}"
        )
    folder = _models_root(cache_dir) / entry.name
    record = _read_record(folder)
    replaced = record is not None and (folder / record.filename).is_file()
    if replaced and record is not None and not force:
        if record.source_sha256 == original:
            return ImportResult(entry.name, folder / record.filename, record.sha256, original, replaced=False)
        raise UsageError(f"{entry.name} is already cached ({folder / record.filename}); pass --force to replace it")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{file} holds non-finite values (NaN or inf) in {len(bad)} tensors, e.g. {bad[0]}")
    module = models.build_arch(entry.arch, entry.config)
    models.load_checkpoint(module, state)
    dest = folder / f"{entry.name}.safetensors"
    models.save_checkpoint(dest, module, entry.arch, entry.config_dict(), entry.name)
    for stale in folder.iterdir():
        if stale != dest and stale.name != _RECORD and stale.is_file():
            stale.unlink()
    record = _write_record(
        folder, dest, name=entry.name, origin="import", original_filename=file.name, original_sha256=original
    )
    return ImportResult(entry.name, dest, record.sha256, original, replaced)


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
