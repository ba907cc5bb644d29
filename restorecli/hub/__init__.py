"""Model hub: the weights manifest, the local weights cache, resolution of weights, import.

One concern per module:

* :mod:`restorecli.hub.manifest`: the manifest file and its entries (weight metadata).
* :mod:`restorecli.hub.cache`: the cache folders, their records and verification.
* :mod:`restorecli.hub.resolution`: which local file a command's weights come from.
* :mod:`restorecli.hub.importing`: storing a hand-downloaded checkpoint in the cache.
* :mod:`restorecli.hub.drive`: official checkpoints from the authors' Google Drive folder.

Folders and the variables that move them live in :mod:`restorecli.paths`. Environment:
``RESTORECLI_MANIFEST`` (extra manifest), ``RESTORECLI_CACHE``, ``RESTORECLI_OFFLINE``,
``RESTORECLI_MIRROR`` (see :mod:`restorecli.download`).
"""

from __future__ import annotations

from restorecli.download import sha256_file
from restorecli.hub.cache import (
    CacheRecord,
    ModelStatus,
    VerifyResult,
    local_path,
    model_status,
    remove_cached,
    verify_cache,
)
from restorecli.hub.importing import ImportResult, identify_checkpoint, import_checkpoint
from restorecli.hub.manifest import (
    MANIFEST_VERSION,
    TASKS,
    DefaultRule,
    Manifest,
    ManifestEntry,
    ManifestFile,
    load_manifest,
)
from restorecli.hub.resolution import ResolvedWeights, default_candidates, default_model, fetch, resolve_weights
from restorecli.paths import BUNDLED_DIR, PACKAGE_MANIFEST, cache_dir

__all__ = [
    "BUNDLED_DIR",
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
