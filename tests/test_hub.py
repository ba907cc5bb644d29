"""Manifest, weights resolution and cache (local HTTP server only, temporary caches)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_download import FileServer, isolate

from restorecli import hub
from restorecli.errors import ChecksumError, ConfigError, DownloadError, UnknownModelError, UsageError

ROOT = Path(__file__).resolve().parents[1]
DRIVE = "https://drive.google.com/drive/folders/1YYmIVTyynLg-Kfu-mviq24WdVkJu-S3M"
OFFICIAL = {
    "mair-sr-x2": "MaIR_SR_x2.pth", "mair-sr-x3": "MaIR_SR_x3.pth", "mair-sr-x4": "MaIR_SR_x4.pth",
    "mair-light-s-x2": "MaIR_S_lightSR_x2.pth", "mair-light-s-x3": "MaIR_S_lightSR_x3.pth",
    "mair-light-s-x4": "MaIR_S_lightSR_x4.pth", "mair-light-t-x2": "MaIR_T_lightSR_x2.pth",
    "mair-light-t-x3": "MaIR_T_lightSR_x3.pth", "mair-light-t-x4": "MaIR_T_lightSR_x4.pth",
    "mair-dn-s15": "MaIR_CDN_s15.pth", "mair-dn-s25": "MaIR_CDN_s25.pth", "mair-dn-s50": "MaIR_CDN_s50.pth",
    "mair-realdn": "MaIR_RealDN.ckpt", "mair-deblur": "MaIR_MotionDeblur.ckpt",
    "mair-dehaze-its": "MaIR_DH_ITS.pth", "mair-dehaze-ots": "MaIR_DH_OTS.pth", "mair-dehaze-r6k": "MaIR_DH_R6K.pth",
}  # fmt: skip
PAYLOAD = b"restorecli test weights " * 1000
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path / "cache")


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        yield srv


def write_manifest(path: Path, models: list[dict], defaults: list[dict] | None = None) -> Path:
    path.write_text(json.dumps({"version": 1, "models": models, "defaults": defaults or []}))
    return path


def private_model(url: str | None, sha256: str | None = DIGEST, name: str = "private-sr-x4") -> dict:
    return {
        "name": name, "arch": "mair", "task": "sr", "scale": 4, "config": {"upscale": 4},
        "files": [{"filename": "private.safetensors", "url": url, "sha256": sha256, "size": None}],
    }  # fmt: skip


# --------------------------------------------------------------------------- the shipped manifest


def test_packaged_manifest_is_identical_to_repo_root() -> None:
    """The packaged manifest is the source; the top-level copy is written by scripts/sync_manifest.py."""
    assert (ROOT / "weights_manifest.json").read_bytes() == hub.PACKAGE_MANIFEST.read_bytes(), (
        "weights_manifest.json differs from restorecli/weights_manifest.json: run python scripts/sync_manifest.py"
    )


def test_schema_contract() -> None:
    from restorecli import models

    data = json.loads(hub.PACKAGE_MANIFEST.read_text())
    assert data["version"] == 1 and isinstance(data["models"], list)
    for model in data["models"]:
        assert {"name", "files"} <= set(model)
        # Network facts have one home, the model table; the shipped manifest holds weights only.
        assert model["name"] in models.MODELS
        assert not {"arch", "task", "config", "scale", "sigma", "variant"} & set(model), model["name"]
        for file in model["files"]:
            assert {"filename", "url", "sha256", "size"} <= set(file)
    joined = hub.load_manifest().get(data["models"][0]["name"])
    assert joined.arch and joined.task and joined.config  # joined from the table by name


def test_all_seventeen_official_models_with_official_file_names() -> None:
    manifest = hub.load_manifest()
    official = {e.name: e for e in manifest.entries if e.source == "official"}
    assert {name: e.weights.filename for name, e in official.items()} == OFFICIAL
    for entry in official.values():
        # No direct URL or checksum is published: the entry must say so, not invent one.
        assert entry.weights.url is None and entry.weights.sha256 is None
        assert entry.download_page == DRIVE
        assert DRIVE in entry.obtain_hint() and "restore models import" in entry.obtain_hint()


def test_manifest_configs_and_params_match_the_models_package() -> None:
    models = pytest.importorskip("restorecli.models")
    manifest = hub.load_manifest()
    # The vamamba-* names are configs to train (no published weights): no manifest entries. The
    # VAMamba network restorecli trained (restorecli-vamamba-light-x4) has one.
    official = [n for n in models.names() if models.spec(n).official_file]
    assert sorted(OFFICIAL) == official
    with_weights = [n for n in models.names() if not n.startswith("vamamba-")]
    assert "restorecli-vamamba-light-x4" in with_weights
    assert sorted(manifest.names()) == with_weights  # every table model with weights, once
    for name in with_weights:
        spec, entry = models.spec(name), manifest.get(name)
        assert entry.config_dict() == dataclasses.asdict(spec.config), name
        assert (entry.arch, entry.task, entry.scale, entry.sigma, entry.variant) == (
            spec.arch, spec.task, spec.scale, spec.sigma, spec.variant,
        )  # fmt: skip
        assert entry.weights.filename == (spec.official_file or f"{name}.safetensors")
        net = models.build_arch(entry.arch, entry.config, device="meta")
        assert entry.params == sum(p.numel() for p in net.parameters()), name


def test_bundled_folder_claims_only_what_exists() -> None:
    manifest = hub.load_manifest()
    claimed = {e.weights.bundled for e in manifest.entries if e.weights.bundled}
    present = {p.name for p in hub.BUNDLED_DIR.iterdir() if p.name != "README.txt"}
    assert claimed == present
    for entry in manifest.entries:
        if entry.weights.bundled:
            assert hub.sha256_file(hub.BUNDLED_DIR / entry.weights.bundled) == entry.weights.sha256


def test_defaults_only_pick_obtainable_models(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = hub.load_manifest()
    assert hub.default_candidates("sr", scale=4)[0] == "mair-sr-x4"
    # The bundled blind Gaussian denoiser backs up every Gaussian level, never real camera noise,
    # which has a bundled model of its own.
    assert hub.default_candidates("denoise", sigma=25) == ["mair-dn-s25", "restorecli-light-dn"]
    assert hub.default_candidates("denoise", real=True) == ["mair-realdn", "restorecli-light-realdn"]
    assert hub.default_model("denoise", sigma=50) == "restorecli-light-dn"
    assert hub.default_model("denoise", real=True) == "restorecli-light-realdn"
    assert hub.default_candidates("dehaze", variant="indoor") == ["mair-dehaze-its"]
    for rule in manifest.defaults:
        task = rule.task
        chosen = hub.default_model(task, scale=rule.scale, sigma=rule.sigma, variant=rule.variant, manifest=manifest)
        if chosen is not None:  # a default must be something the tool can get by itself
            entry = manifest.get(chosen)
            assert entry.weights.bundled or (entry.weights.url and entry.weights.sha256)


def test_default_after_import_is_the_cached_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate an imported official file by a cache record (the import itself is tested below).
    folder = tmp_path / "cache" / "models" / "mair-light-t-x4"
    folder.mkdir(parents=True)
    (folder / "mair-light-t-x4.safetensors").write_bytes(PAYLOAD)
    hub.cache.write_record(folder, folder / "mair-light-t-x4.safetensors", name="mair-light-t-x4", origin="import")
    assert hub.default_model("sr", scale=4) == "mair-light-t-x4"
    resolved = hub.resolve_weights("sr", model=None, weights=None, scale=4)
    assert (resolved.name, resolved.source, resolved.sha256) == ("mair-light-t-x4", "cache", DIGEST)
    assert resolved.config is not None and resolved.config["upscale"] == 4 and resolved.arch == "mair"


def test_nothing_obtainable_explains_how_to_get_weights() -> None:
    # Indoor dehazing has no bundled model: nothing is obtainable on a fresh machine.
    assert hub.default_model("dehaze", variant="indoor") is None
    with pytest.raises(DownloadError) as info:
        hub.resolve_weights("dehaze", model=None, weights=None, variant="indoor")
    message = str(info.value)
    assert DRIVE in message and "MaIR_DH_ITS.pth" in message and "restore models import" in message
    assert "restore models download mair-dehaze-its" in message


def test_bundled_default_works_offline_on_a_fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORECLI_OFFLINE", "1")
    for scale in (4, 2):
        resolved = hub.resolve_weights("sr", model=None, weights=None, scale=scale)
        assert (resolved.name, resolved.source, resolved.arch) == (f"restorecli-light-x{scale}", "bundled", "mair")
        assert resolved.path.parent == hub.BUNDLED_DIR and hub.sha256_file(resolved.path) == resolved.sha256
        assert resolved.config is not None and resolved.config["upscale"] == scale


def test_no_model_for_request_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="scale 8.*scale 2, scale 3, scale 4"):
        hub.resolve_weights("sr", model=None, weights=None, scale=8)


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match="did you mean 'mair-sr-x4'"):
        hub.resolve_weights("sr", model="mair-sr-x5", weights=None)


def test_manual_name_says_exactly_how() -> None:
    """Google Drive cannot be reached in tests (tests/conftest.py): the error still gives the manual route."""
    with pytest.raises(DownloadError, match=r"download MaIR_CDN_s25\.pth from https://drive\.google\.com.*"
                       r"restore models import MaIR_CDN_s25\.pth --name mair-dn-s25"):  # fmt: skip
        hub.resolve_weights("denoise", model="mair-dn-s25", weights=None)


def test_nothing_obtainable_names_the_request() -> None:
    """No weights for `restore dehaze --variant indoor` offline: the error names the request
    (not "the default model", which is the bundled dehazer) and how to get the file."""
    with pytest.raises(DownloadError, match=r"no weights available for dehaze with variant indoor\. .*MaIR_DH_ITS\.pth"):
        hub.resolve_weights("dehaze", model=None, weights=None, variant="indoor")


def test_model_of_another_task_or_scale_is_refused() -> None:
    with pytest.raises(UsageError, match="does denoise, not sr"):
        hub.resolve_weights("sr", model="mair-dn-s25", weights=None)
    with pytest.raises(UsageError, match="scale 4, but scale 2"):
        hub.resolve_weights("sr", model="mair-sr-x4", weights=None, scale=2)


# --------------------------------------------------------------------------- user manifests


def test_user_manifest_adds_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    override = {
        "name": "mair-sr-x4",
        "files": [{"filename": "MaIR_SR_x4.pth", "url": "https://mirror.lan/x4.pth", "sha256": DIGEST, "size": 10}],
    }
    path = write_manifest(
        tmp_path / "m.json", [override, private_model(None)], [{"task": "sr", "scale": 4, "models": ["private-sr-x4"]}]
    )
    monkeypatch.setenv("RESTORECLI_MANIFEST", str(path))
    manifest = hub.load_manifest()
    x4 = manifest.get("mair-sr-x4")
    assert x4.weights.url == "https://mirror.lan/x4.pth" and x4.weights.sha256 == DIGEST
    assert x4.config["embed_dim"] == 180  # fields not overridden are kept
    assert "private-sr-x4" in manifest
    assert hub.default_candidates("sr", scale=4, manifest=manifest)[:2] == ["private-sr-x4", "mair-sr-x4"]
    # An explicit argument wins over the environment.
    other = write_manifest(tmp_path / "o.json", [private_model(None, name="other")])
    assert "other" in hub.load_manifest(other) and "private-sr-x4" not in hub.load_manifest(other)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"version": 2, "models": []}, "version 2"),
        ({"version": 1, "modles": []}, "did you mean 'models'"),
        (
            {
                "version": 1,
                "models": [{"name": "x", "arch": "mair", "task": "sr", "config": {}, "files": [], "scael": 2}],
            },
            "did you mean 'scale'",
        ),
        ({"version": 1, "models": [{"name": "x", "arch": "mair", "task": "sr", "config": {}}]}, "missing key"),
        (
            {"version": 1, "models": [{"name": "x", "arch": "mair", "task": "upscale", "config": {}, "files": [{}]}]},
            "task",
        ),
        ({"version": 1, "models": [private_model(None, sha256="abc")]}, "64 hex digits"),
        ({"version": 1, "models": [], "defaults": [{"task": "sr", "models": ["nope"]}]}, "unknown model 'nope'"),
    ],
)
def test_bad_manifests_are_config_errors(tmp_path: Path, document: dict, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=message):
        hub.load_manifest(path)


def test_manifest_not_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        hub.load_manifest(path)
    with pytest.raises(ConfigError, match="not found"):
        hub.load_manifest(tmp_path / "missing.json")


# --------------------------------------------------------------------------- download into the cache


def test_download_then_cache_hit(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/private.safetensors", PAYLOAD)
    manifest = write_manifest(tmp_path / "m.json", [private_model(url)])
    first = hub.resolve_weights("sr", model="private-sr-x4", weights=None, manifest=manifest, progress=False)
    assert first.source == "download" and first.sha256 == DIGEST and first.path.read_bytes() == PAYLOAD
    assert first.path.parent == tmp_path / "cache" / "models" / "private-sr-x4"
    second = hub.resolve_weights("sr", model="private-sr-x4", weights=None, manifest=manifest)
    assert second.source == "cache" and second.path == first.path
    assert len(server.requests) == 1


def test_checksum_mismatch_leaves_cache_empty(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/private.safetensors", PAYLOAD)
    manifest = write_manifest(tmp_path / "m.json", [private_model(url, sha256="f" * 64)])
    with pytest.raises(ChecksumError, match=f"expected {'f' * 64}, got {DIGEST}"):
        hub.fetch("private-sr-x4", manifest=manifest, progress=False)
    folder = tmp_path / "cache" / "models" / "private-sr-x4"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_404_is_a_download_error(server: FileServer, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.json", [private_model(server.url("/gone.safetensors"))])
    with pytest.raises(DownloadError, match="HTTP 404"):
        hub.fetch("private-sr-x4", manifest=manifest, progress=False)


def test_unverified_entry_needs_opt_in(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/private.safetensors", PAYLOAD)
    manifest = write_manifest(tmp_path / "m.json", [private_model(url, sha256=None)])
    with pytest.raises(DownloadError, match="--allow-unverified"):
        hub.fetch("private-sr-x4", manifest=manifest)
    assert server.requests == []
    resolved = hub.fetch("private-sr-x4", manifest=manifest, allow_unverified=True, progress=False)
    assert resolved.sha256 == DIGEST and resolved.source == "download"
    # Once stored, its recorded digest protects it; no flag needed to use it.
    assert hub.fetch("private-sr-x4", manifest=manifest).source == "cache"


def test_offline_mode_never_downloads(server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = server.add("/private.safetensors", PAYLOAD)
    manifest = write_manifest(tmp_path / "m.json", [private_model(url)])
    monkeypatch.setenv("RESTORECLI_OFFLINE", "1")
    # The private model cannot be fetched offline, so the default falls through to the bundled one.
    assert hub.default_model("sr", scale=4, manifest=manifest) == "restorecli-light-x4"
    with pytest.raises(DownloadError, match="offline mode"):
        hub.fetch("private-sr-x4", manifest=manifest)
    assert server.requests == []
    monkeypatch.delenv("RESTORECLI_OFFLINE")
    hub.fetch("private-sr-x4", manifest=manifest, progress=False)
    monkeypatch.setenv("RESTORECLI_OFFLINE", "1")
    assert hub.fetch("private-sr-x4", manifest=manifest).source == "cache"  # cached files still work


def test_offline_weights_url_says_offline_before_asking_for_allow_unverified(server: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url = server.add("/w/offline.pth", PAYLOAD)
    monkeypatch.setenv("RESTORECLI_OFFLINE", "1")
    for allow_unverified in (False, True):
        with pytest.raises(DownloadError) as info:
            hub.resolve_weights("sr", model=None, weights=url, allow_unverified=allow_unverified)
        assert str(info.value).startswith(f"{url} is not in the cache and offline mode (RESTORECLI_OFFLINE=1) forbids")
        assert "--allow-unverified" not in str(info.value)
    assert server.requests == []
    monkeypatch.delenv("RESTORECLI_OFFLINE")
    cached = hub.resolve_weights("sr", model=None, weights=url, allow_unverified=True, progress=False)
    monkeypatch.setenv("RESTORECLI_OFFLINE", "1")
    assert hub.resolve_weights("sr", model=None, weights=url).path == cached.path  # a cached URL works offline


def test_mirror_serves_official_files(server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.add("/mirror/MaIR_T_lightSR_x4.pth", PAYLOAD)
    pin = {
        "name": "mair-light-t-x4",
        "files": [{"filename": "MaIR_T_lightSR_x4.pth", "url": None, "sha256": DIGEST, "size": len(PAYLOAD)}],
    }
    manifest = write_manifest(tmp_path / "m.json", [pin])
    monkeypatch.setenv("RESTORECLI_MIRROR", server.url("/mirror"))
    assert hub.default_model("sr", scale=4, manifest=manifest) == "mair-light-t-x4"
    resolved = hub.resolve_weights("sr", model=None, weights=None, scale=4, manifest=manifest, progress=False)
    assert resolved.name == "mair-light-t-x4" and resolved.path.name == "MaIR_T_lightSR_x4.pth"
    assert server.requests == [("/mirror/MaIR_T_lightSR_x4.pth", None)]


def test_corrupted_cache_file_is_detected(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/private.safetensors", PAYLOAD)
    manifest = write_manifest(tmp_path / "m.json", [private_model(url, sha256=None)])
    path = hub.fetch("private-sr-x4", manifest=manifest, allow_unverified=True, progress=False).path
    path.write_bytes(PAYLOAD[:-1] + b"!")  # same size, new bytes
    with pytest.raises(ChecksumError, match=f"expected sha256 {DIGEST}"):
        hub.fetch("private-sr-x4", manifest=manifest)
    results = hub.verify_cache(manifest=manifest)
    bundled = [e.name for e in hub.load_manifest().entries if e.weights.bundled]  # bundled files are checked too
    cached = [(r.name, r.ok) for r in results if r.name not in bundled]
    assert cached == [("private-sr-x4", False)]
    hub.remove_cached("private-sr-x4")
    assert [r.name for r in hub.verify_cache(manifest=manifest)] == bundled


def test_zero_byte_cache_file_is_detected(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/private.safetensors", PAYLOAD)
    manifest = write_manifest(tmp_path / "m.json", [private_model(url)])
    path = hub.fetch("private-sr-x4", manifest=manifest, progress=False).path
    path.write_bytes(b"")
    with pytest.raises(ChecksumError, match="0 bytes"):
        hub.local_path("private-sr-x4", manifest=manifest)


def test_touched_but_intact_file_is_accepted(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/private.safetensors", PAYLOAD)
    manifest = write_manifest(tmp_path / "m.json", [private_model(url)])
    path = hub.fetch("private-sr-x4", manifest=manifest, progress=False).path
    path.write_bytes(PAYLOAD)  # new mtime, same bytes: re-hashed once, then trusted again
    assert hub.local_path("private-sr-x4", manifest=manifest) == path
    assert all(r.ok for r in hub.verify_cache(manifest=manifest))


# --------------------------------------------------------------------------- --weights PATH|URL


def test_weights_path_wins_and_is_hashed(tmp_path: Path) -> None:
    file = tmp_path / "mine.pth"
    file.write_bytes(PAYLOAD)
    bare = hub.resolve_weights("sr", model=None, weights=str(file))
    assert (bare.path, bare.name, bare.arch, bare.config, bare.sha256, bare.source) == (
        file,
        None,
        None,
        None,
        DIGEST,
        "file",
    )
    shaped = hub.resolve_weights("sr", model="mair-light-t-x4", weights=str(file))
    assert shaped.path == file and shaped.name == "mair-light-t-x4" and shaped.config is not None
    with pytest.raises(Exception, match="not found"):
        hub.resolve_weights("sr", model=None, weights=str(tmp_path / "missing.pth"))


def test_weights_path_recognised_by_pinned_digest(tmp_path: Path) -> None:
    file = tmp_path / "downloaded.safetensors"
    file.write_bytes(PAYLOAD)
    manifest = write_manifest(tmp_path / "m.json", [private_model(None)])
    resolved = hub.resolve_weights("sr", model=None, weights=str(file), manifest=manifest)
    assert resolved.name == "private-sr-x4" and resolved.arch == "mair"


def test_weights_url(server: FileServer) -> None:
    url = server.add("/w/some%20model.pth", PAYLOAD)
    with pytest.raises(DownloadError, match="--allow-unverified"):
        hub.resolve_weights("sr", model=None, weights=url)
    resolved = hub.resolve_weights("sr", model=None, weights=url, allow_unverified=True, progress=False)
    assert resolved.source == "url" and resolved.sha256 == DIGEST and resolved.path.name == "some model.pth"
    again = hub.resolve_weights("sr", model=None, weights=f"{url}#sha256={DIGEST}")
    assert again.path == resolved.path and len(server.requests) == 1
    with pytest.raises(ChecksumError):
        hub.resolve_weights(
            "sr", model=None, weights=server.add("/w/other.pth", PAYLOAD) + "#sha256=" + "0" * 64, progress=False
        )


def test_table_model_without_published_weights_needs_a_file(tmp_path: Path) -> None:
    # VAMamba has no published weights: the network comes from the model table, the file from --weights.
    with pytest.raises(DownloadError, match="no published weights"):
        hub.resolve_weights("sr", model="vamamba-light-sr-x2", weights=None)
    weights = tmp_path / "trained.pth"
    weights.write_bytes(b"not inspected by resolution")
    resolved = hub.resolve_weights("sr", model="vamamba-light-sr-x2", weights=str(weights), scale=2)
    assert (resolved.name, resolved.arch, resolved.source) == ("vamamba-light-sr-x2", "vamamba", "file")
    assert resolved.config["upscale"] == 2
    with pytest.raises(UsageError, match="scale 4"):
        hub.resolve_weights("sr", model="vamamba-light-sr-x2", weights=str(weights), scale=4)
    with pytest.raises(UsageError, match="expected a model for denoise"):
        hub.resolve_weights("denoise", model="vamamba-light-sr-x2", weights=str(weights))
