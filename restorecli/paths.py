"""Every folder and file the tool reads or writes by default, and the variables that move them.

Only the standard library and platformdirs are imported here, so that any layer (the scan
kernels' build cache included) can ask for a folder without importing the hub.

Environment:
    RESTORECLI_CACHE: root of the cache (weights, data sets, compiled kernels); default: the
        platform's user cache folder.
    RESTORECLI_MANIFEST: an extra weights manifest merged over the packaged one.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "BUNDLED_DIR",
    "ENV_CACHE",
    "ENV_MANIFEST",
    "PACKAGE_MANIFEST",
    "cache_dir",
    "datasets_cache",
    "models_cache",
    "user_manifest",
]

ENV_CACHE = "RESTORECLI_CACHE"
ENV_MANIFEST = "RESTORECLI_MANIFEST"
_PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_MANIFEST = _PACKAGE_DIR / "weights_manifest.json"
"""The weights manifest: the one hand-edited copy (the top-level file is a checked copy of it)."""
BUNDLED_DIR = _PACKAGE_DIR / "weights"
"""Weights shipped inside the package."""


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Root of the cache: ``override``, else ``RESTORECLI_CACHE``, else the platform cache folder."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("restorecli", appauthor=False))


def models_cache(override: str | os.PathLike[str] | None = None) -> Path:
    """Where weights are cached: ``models/`` under :func:`cache_dir`."""
    return cache_dir(override) / "models"


def datasets_cache() -> Path:
    """Where benchmark sets are downloaded: ``datasets/`` under :func:`cache_dir`."""
    return cache_dir() / "datasets"


def user_manifest() -> Path | None:
    """The extra manifest named by ``RESTORECLI_MANIFEST``, or None."""
    value = os.environ.get(ENV_MANIFEST, "").strip()
    return Path(value).expanduser() if value else None
