"""The weights manifest: which files hold each model's weights, where to get them, what they score.

The packaged ``restorecli/weights_manifest.json`` (the one hand-edited copy; the top-level
``weights_manifest.json`` is a copy checked by the tests) is read and merged with an optional user
manifest (``RESTORECLI_MANIFEST``). Entries are checked key by key; an unknown key is an error that
suggests the closest valid one.

Architecture, task and config of a model come from the model table in code
(``restorecli.models.MODELS``), joined by name: a manifest entry of a table model holds only weight
metadata. A user manifest may add a model the table does not know; its entry then carries
``arch``, ``task`` and ``config`` itself (what ``restore train export`` prints).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from restorecli.errors import ConfigError, UnknownModelError
from restorecli.paths import PACKAGE_MANIFEST, user_manifest

if TYPE_CHECKING:
    from restorecli.models.zoo import ModelSpec

MANIFEST_VERSION = 1
TASKS = ("sr", "denoise", "deblur", "dehaze")
SOURCES = ("official", "restorecli")
FORMATS = ("safetensors", "pth", "ckpt", "pt")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# Keys of an entry: weight metadata, and the network keys that only a model outside the table has.
_WEIGHTS_REQUIRED = ("name", "files")
_DRIVE_FOLDER_RE = re.compile(r"^https://drive\.google\.com/drive/(?:u/\d+/)?folders/([-\w]{10,})")
_WEIGHTS_OPTIONAL = ("description", "params", "source", "license", "homepage", "paper", "download_page", "metrics")
_NETWORK_REQUIRED = ("arch", "task", "config")
_NETWORK_OPTIONAL = ("scale", "sigma", "variant")
_FILE_REQUIRED = ("filename", "url", "sha256", "size")
_FILE_OPTIONAL = ("format", "bundled")
_RULE_KEYS = ("task", "scale", "sigma", "variant", "models")


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
    """One named model of the manifest, joined with its network facts.

    ``arch``, ``task``, ``config``, ``scale``, ``sigma`` and ``variant`` are the model table's for a
    table model, the entry's own for a model only a user manifest knows.

    Attributes:
        name: Public model name, e.g. ``mair-sr-x4``.
        arch: Architecture id (``mair``, ``mairunet`` or ``vamamba``).
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

    @property
    def drive_folder(self) -> str | None:
        """The id of the Google Drive folder that ``download_page`` names, if it names one."""
        match = _DRIVE_FOLDER_RE.match(self.download_page or "")
        return match.group(1) if match else None

    def manual_route(self) -> str:
        """The by-hand route: download the file from its page, then import it."""
        where = self.download_page or "its publisher"
        return (
            f"or download {self.weights.filename} from {where} in a browser and run "
            f"`restore models import {self.weights.filename} --name {self.name}`"
        )

    def obtain_hint(self) -> str:
        """How to get this model's weights when the tool cannot fetch them by itself."""
        filename = self.weights.filename
        if self.drive_folder is not None:
            return (
                f"{self.name} is published in a Google Drive folder without checksums: run "
                f"`restore models download {self.name}` (its sha256 is recorded on first download), "
                f"{self.manual_route()}"
            )
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
            f"unknown model {name!r}{suggest(name, self.names())}; list models with `restore models list`"
        )

    def find_sha256(self, sha256: str) -> ManifestEntry | None:
        """The entry whose weights file has this pinned digest, if any."""
        for entry in self.entries:
            if entry.weights.sha256 == sha256:
                return entry
        return None

    def model_names(self) -> list[str]:
        """Every model name: the model table's and the manifest's, sorted."""
        from restorecli import models

        return sorted({*models.MODELS, *self.names()})

    def spec(self, name: str) -> ModelSpec:
        """The network facts of a model name: the model table's, else those of a user manifest entry.

        This is the one place that turns a name into a network. A user entry's config stays a
        mapping; it is checked when the network is built.

        Raises:
            UnknownModelError: Neither the table nor the manifest knows the name (with close names).
        """
        from restorecli import models

        if name in models.MODELS:
            return models.MODELS[name]
        if name in self:
            entry = self.get(name)
            return models.ModelSpec(
                entry.name, entry.arch, entry.task, entry.scale or 1, entry.sigma, entry.variant, entry.config, ""
            )
        raise UnknownModelError(
            f"unknown model {name!r}{suggest(name, self.model_names())}; list models with `restore models list`"
        )


def suggest(word: str, options: Iterable[str]) -> str:
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
    if extra is None:
        extra = user_manifest()
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
        raise ConfigError(f"manifest {path}: unknown top-level key {key!r}{suggest(key, ['defaults', 'models'])}")
    if not isinstance(data.get("models"), list) or not isinstance(data.get("defaults", []), list):
        raise ConfigError(f"manifest {path}: expected 'models' (and 'defaults') to be lists")
    return data


def _raw_name(item: Any, path: Path) -> str:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ConfigError(f"manifest {path}: every model needs a string 'name', got {item!r:.80}")
    if not NAME_RE.match(item["name"]):
        raise ConfigError(
            f"manifest {path}: model name {item['name']!r} must be lowercase letters, digits, '.', '_' or '-'"
        )
    return item["name"]


def _check_keys(item: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...], what: str) -> None:
    allowed = required + optional
    for key in item:
        if key not in allowed:
            raise ConfigError(f"{what}: unknown key {key!r}{suggest(key, allowed)}")
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
        if not SHA256_RE.match(sha):
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
    from restorecli import models

    what = f"manifest {where}: model {item['name']!r}"
    table = models.MODELS.get(item["name"])
    if table is not None:
        network = [key for key in (*_NETWORK_REQUIRED, *_NETWORK_OPTIONAL) if key in item]
        if network:
            raise ConfigError(
                f"{what}: {', '.join(network)} come from the model table (restorecli/models) for a table model; "
                "a manifest entry gives only its weights"
            )
        _check_keys(item, _WEIGHTS_REQUIRED, _WEIGHTS_OPTIONAL, what)
        task, arch, config = table.task, table.arch, table.config_dict()
        scale, sigma, variant = table.scale, table.sigma, table.variant
    else:
        _check_keys(item, _WEIGHTS_REQUIRED + _NETWORK_REQUIRED, _WEIGHTS_OPTIONAL + _NETWORK_OPTIONAL, what)
        task = _typed(item["task"], str, f"{what}.task", optional=False)
        if task not in TASKS:
            raise ConfigError(f"{what}.task: expected one of {', '.join(TASKS)}, got {task!r}{suggest(task, TASKS)}")
        arch = _typed(item["arch"], str, f"{what}.arch", optional=False)
        config = _typed(item["config"], dict, f"{what}.config", optional=False)
        scale = _typed(item.get("scale"), int, f"{what}.scale")
        sigma = _typed(item.get("sigma"), int, f"{what}.sigma")
        variant = _typed(item.get("variant"), str, f"{what}.variant")
    source = item.get("source") or "restorecli"
    if source not in SOURCES:
        raise ConfigError(f"{what}.source: expected one of {', '.join(SOURCES)}, got {source!r}")
    files = _typed(item["files"], list, f"{what}.files", optional=False)
    if not files:
        raise ConfigError(f"{what}.files: expected at least one file")
    metrics = _typed(item.get("metrics"), dict, f"{what}.metrics") or {}
    return ManifestEntry(
        name=item["name"],
        arch=arch,
        task=task,
        config=_freeze(config),
        files=tuple(_parse_file(f, f"{what}.files[{i}]") for i, f in enumerate(files)),
        scale=scale,
        sigma=sigma,
        variant=variant,
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
            raise ConfigError(f"{what}: unknown model {name!r}{suggest(str(name), known)}")
    return DefaultRule(
        task=item["task"],
        models=tuple(models),
        scale=_typed(item.get("scale"), int, f"{what}.scale"),
        sigma=_typed(item.get("sigma"), int, f"{what}.sigma"),
        variant=_typed(item.get("variant"), str, f"{what}.variant"),
    )


def as_manifest(manifest: Manifest | Path | None) -> Manifest:
    return manifest if isinstance(manifest, Manifest) else load_manifest(manifest)

