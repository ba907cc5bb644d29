"""``restore models ...`` end to end through ``main()`` (exit codes, stdout data, stderr messages).

Checkpoints are made from the official configs with random (small models) or zero-stride
(large models) tensors, so they cost little time and disk.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_download import FileServer, isolate

from restorecli import hub

torch = pytest.importorskip("torch")
models = pytest.importorskip("restorecli.models")

PAYLOAD = b"restorecli test weights " * 1000
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path / "cache")


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        yield srv


def restore(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    """Run the console entry point; return (exit code, stdout, stderr)."""
    from restorecli.cli import main

    monkeypatch.setattr(sys, "argv", ["restore", *args])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out, err


def bundled_names() -> list[str]:
    """The models whose weights ship inside the package, in manifest order."""
    return [entry.name for entry in hub.load_manifest().entries if entry.weights.bundled is not None]


def official_file(tmp_path: Path, name: str, *, random: bool = False, filename: str | None = None) -> Path:
    """An official-style BasicSR checkpoint ({"params": state_dict}) of ``name``'s layout."""
    layout = models.build(name, device="meta").state_dict()
    if random:
        state = {key: torch.randn(value.shape) * 0.02 for key, value in layout.items()}
    else:  # zero-stride tensors: the right shapes, one stored element each
        state = {key: torch.zeros(()).expand(value.shape) for key, value in layout.items()}
    path = tmp_path / (filename or models.spec(name).official_file)
    torch.save({"params": state}, path)
    return path


@pytest.mark.parametrize("name", sorted(n for n in models.names() if models.spec(n).official_file))
def test_import_recognises_every_official_layout(tmp_path: Path, name: str) -> None:
    fits = hub.identify_checkpoint(official_file(tmp_path, name))
    assert name in fits
    shared = {
        frozenset({"mair-dn-s15", "mair-dn-s25", "mair-dn-s50"}),
        frozenset({"mair-realdn", "mair-deblur"}),
        frozenset({"mair-dehaze-its", "mair-dehaze-ots", "mair-dehaze-r6k"}),
    }
    group = next((g for g in shared if name in g), frozenset({name}))
    assert set(fits) == group


def test_import_unique_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    file = official_file(tmp_path, "mair-light-t-x2", random=True)
    code, out, err = restore(capsys, monkeypatch, "models", "import", str(file))
    assert code == 0, err
    stored = Path(out.strip())
    assert stored == tmp_path / "cache" / "models" / "mair-light-t-x2" / "mair-light-t-x2.safetensors"
    assert hashlib.sha256(file.read_bytes()).hexdigest() in err
    checkpoint = models.read_checkpoint(stored)
    assert checkpoint.arch == "mair" and checkpoint.name == "mair-light-t-x2"
    original = torch.load(file, weights_only=True)["params"]
    assert all(torch.equal(checkpoint.state_dict[k], v) for k, v in original.items())
    # It is now the default for x2 and resolves from the cache.
    resolved = hub.resolve_weights("sr", model=None, weights=None, scale=2)
    assert (resolved.name, resolved.source, resolved.path) == ("mair-light-t-x2", "cache", stored)
    code, out, _ = restore(capsys, monkeypatch, "models", "list", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["mair-light-t-x2"]["where"] == "cached" and rows["mair-light-t-x2"]["size"] == stored.stat().st_size
    assert rows["mair-sr-x2"]["where"] == "drive"
    # Importing the same file again is a no-op; a different one needs --force.
    assert restore(capsys, monkeypatch, "models", "import", str(file))[0] == 0
    (tmp_path / "other").mkdir()
    other = official_file(tmp_path / "other", "mair-light-t-x2", random=True)
    code, _, err = restore(capsys, monkeypatch, "models", "import", str(other))
    assert code == 2 and "--force" in err
    assert restore(capsys, monkeypatch, "models", "import", str(other), "--force")[0] == 0


def test_import_shared_layout_requires_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    file = official_file(tmp_path, "mair-dehaze-its", random=True)
    code, out, err = restore(capsys, monkeypatch, "models", "import", str(file))
    assert code == 2 and out == ""
    assert "mair-dehaze-its, mair-dehaze-ots, mair-dehaze-r6k" in err and "--name mair-dehaze-its" in err
    code, out, err = restore(capsys, monkeypatch, "models", "import", str(file), "--name", "mair-dehaze-its")
    assert code == 0, err
    assert hub.resolve_weights("dehaze", model=None, weights=None, variant="indoor").name == "mair-dehaze-its"


def test_import_rejects_wrong_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    file = official_file(tmp_path, "mair-light-t-x2")
    code, _, err = restore(capsys, monkeypatch, "models", "import", str(file), "--name", "mair-light-s-x2")
    assert code == 1 and "is not a mair-light-s-x2 checkpoint" in err and "it fits mair-light-t-x2" in err
    state = torch.load(file, weights_only=True)["params"]
    state["conv_first.weight"] = torch.zeros(60, 3, 5, 5)  # one tensor of the wrong shape
    torch.save({"params": state}, tmp_path / "odd.pth")
    code, _, err = restore(capsys, monkeypatch, "models", "import", str(tmp_path / "odd.pth"))
    assert code == 1 and "matches no known model layout" in err and "closest is mair-light-t-x2" in err
    torch.save({"params": {"weight": torch.zeros(3, 3)}}, tmp_path / "tiny.pth")
    assert restore(capsys, monkeypatch, "models", "import", str(tmp_path / "tiny.pth"))[0] == 1
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    code, _, err = restore(capsys, monkeypatch, "models", "import", str(tmp_path / "junk.pth"))
    assert code == 1 and "junk.pth is not a PyTorch or safetensors checkpoint" in err
    assert not (tmp_path / "cache" / "models").exists()


def test_import_checks_a_pinned_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pin = {
        "name": "mair-light-t-x2",
        "files": [{"filename": "MaIR_T_lightSR_x2.pth", "url": None, "sha256": "0" * 64, "size": None}],
    }
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"version": 1, "models": [pin]}))
    file = official_file(tmp_path, "mair-light-t-x2")
    code, _, err = restore(capsys, monkeypatch, "models", "import", str(file), "--manifest", str(manifest))
    assert code == 1 and "expected sha256 " + "0" * 64 in err


def test_download_path_verify_remove(
    server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.add("/p.safetensors", PAYLOAD)
    entry = {
        "name": "private-dn",
        "arch": "mair",
        "task": "denoise",
        "config": {},
        "files": [{"filename": "p.safetensors", "url": url, "sha256": None, "size": None}],
    }
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"version": 1, "models": [entry]}))
    monkeypatch.setenv("RESTORECLI_MANIFEST", str(manifest))
    code, out, err = restore(capsys, monkeypatch, "models", "download", "private-dn")
    assert code == 1 and "--allow-unverified" in err and out == ""
    code, out, err = restore(capsys, monkeypatch, "models", "download", "private-dn", "--allow-unverified")
    assert code == 0 and f"sha256 {DIGEST}" in err
    path = Path(out.strip())
    assert path.read_bytes() == PAYLOAD
    assert restore(capsys, monkeypatch, "models", "path", "private-dn")[1].strip() == str(path)
    code, out, _ = restore(capsys, monkeypatch, "models", "verify", "--json")
    bundled = [
        {"name": name, "path": str(hub.BUNDLED_DIR / f"{name}.safetensors"), "ok": True, "detail": "ok (bundled)"}
        for name in bundled_names()
    ]
    assert code == 0 and json.loads(out) == [*bundled, {"name": "private-dn", "path": str(path), "ok": True, "detail": "ok"}]
    path.write_bytes(PAYLOAD[::-1])
    code, out, err = restore(capsys, monkeypatch, "models", "verify")
    assert code == 1 and "FAILED" in out and "corrupt" in err
    code, _, err = restore(capsys, monkeypatch, "models", "remove", "private-dn")
    assert code == 0 and not path.exists()
    code, _, err = restore(capsys, monkeypatch, "models", "path", "private-dn")
    assert code == 1 and "restore models download private-dn" in err


def test_download_manual_model_explains(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = restore(capsys, monkeypatch, "models", "download", "mair-sr-x4")
    assert code == 1 and out == ""
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1
    assert "drive.google.com" in err and "restore models import MaIR_SR_x4.pth --name mair-sr-x4" in err


def test_unknown_names(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = restore(capsys, monkeypatch, "models", "download", "mair-sr-x5")
    assert code == 1 and "did you mean 'mair-sr-x4'" in err
    code, _, err = restore(capsys, monkeypatch, "models", "remove", "mair-sr-x4")
    assert code == 1 and "not in the cache" in err


def test_list_table_and_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = restore(capsys, monkeypatch, "models", "list", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 17 + len(bundled_names())  # the official models and the bundled ones
    where = {r["name"]: r["where"] for r in rows}
    assert {where[name] for name in bundled_names()} == {"bundled"} and len(bundled_names()) >= 4
    assert {"name", "task", "scale", "sigma", "params", "source", "where", "size"} <= set(rows[0])
    code, out, _ = restore(capsys, monkeypatch, "models", "list", "--task", "dehaze")
    assert code == 0 and "mair-dehaze-r6k" in out and "mair-sr-x4" not in out
