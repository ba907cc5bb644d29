"""Official checkpoints from Google Drive, with gdown's listing and download replaced by a local folder tree."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from gdown.exceptions import DownloadError as GdownDownloadError
from gdown.exceptions import FileURLRetrievalError
from test_download import isolate
from test_hub import OFFICIAL

from restorecli import hub, models
from restorecli.errors import CheckpointError, ChecksumError, DownloadError
from restorecli.hub import drive

FOLDER_ID = "1YYmIVTyynLg-Kfu-mviq24WdVkJu-S3M"
# Sub-folders as a publisher lays them out, plus look-alikes that must not be picked.
FOLDERS = {
    "mair-sr": "SR", "mair-light-s": "LightSR/MaIR-S", "mair-light-t": "LightSR/MaIR-T", "mair-dn": "Denoising",
    "mair-realdn": "RealDN", "mair-deblur": "Deblur", "mair-dehaze": "Dehazing",
}  # fmt: skip
TREE = {
    name: f"{next(folder for prefix, folder in FOLDERS.items() if name.startswith(prefix + '-') or name == prefix)}/{file}"
    for name, file in OFFICIAL.items()
}
DISTRACTORS = ("SR/MaIR_SR_x4.pth.log", "Old/deep/MaIR_SR_x4_old.pth", "README.txt")


@dataclass
class Listed:
    """What gdown.download_folder(skip_download=True) returns per file."""

    id: str
    path: str
    local_path: str


@dataclass
class FakeDrive:
    """A local folder tree served through gdown's two function signatures."""

    root: Path
    downloads: list[str] = field(default_factory=list)
    resumed_from: list[int] = field(default_factory=list)
    fail_listing: Exception | None = None
    fail_download: Exception | None = None
    cut_after: int | None = None  # bytes sent before the connection drops, once

    def ids(self) -> dict[str, Path]:
        files = sorted(p for p in self.root.rglob("*") if p.is_file())
        return {hashlib.sha1(str(p.relative_to(self.root)).encode()).hexdigest()[:28]: p for p in files}

    def list_folder(self, *, id: str, skip_download: bool, **_: Any) -> list[Listed]:
        assert id == FOLDER_ID and skip_download
        if self.fail_listing is not None:
            raise self.fail_listing
        return [Listed(key, str(p.relative_to(self.root)), "") for key, p in self.ids().items()]

    def download(
        self, *, id: str, output: str, resume: bool, progress: Callable[[int, int | None], None], **_: Any
    ) -> str:
        assert resume
        if self.fail_download is not None:
            raise self.fail_download
        source = self.ids()[id]
        self.downloads.append(str(source.relative_to(self.root)))
        data = source.read_bytes()
        part = Path(output + "ABCDEFGH.part")  # gdown's partial-file naming
        start = part.stat().st_size if part.exists() else 0
        self.resumed_from.append(start)
        end = len(data)
        if self.cut_after is not None:
            end, self.cut_after = start + self.cut_after, None
            with part.open("ab") as handle:
                handle.write(data[start:end])
            raise requests.ConnectionError("connection reset by peer")
        with part.open("ab") as handle:
            handle.write(data[start:end])
        progress(end, len(data))
        os.replace(part, output)
        return output

    def client(self) -> drive.GdownClient:
        return drive.GdownClient(list_function=self.list_folder, download_function=self.download)


def official_checkpoint(path: Path, name: str) -> Path:
    """An official-style checkpoint ({"params": state_dict}) of ``name``'s layout with random weights."""
    layout = models.build(name, device="meta").state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": {key: torch.randn(value.shape) * 0.02 for key, value in layout.items()}}, path)
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    isolate(monkeypatch, tmp_path / "cache")  # online: only the fake Drive answers
    return tmp_path / "cache"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDrive:
    """The official tree with placeholder bytes; tests put real checkpoints where they need them."""
    root = tmp_path / "drive" / "MaIR"
    for relative in (*TREE.values(), *DISTRACTORS):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(f"placeholder {relative}".encode())
    served = FakeDrive(root)
    monkeypatch.setattr(drive, "default_client", served.client)
    return served


def nothing_left(cache: Path, name: str) -> bool:
    return not (cache / "models" / name).exists() and not (cache / "partial" / name).exists()


def test_every_official_name_asks_for_its_own_file(fake: FakeDrive, cache: Path) -> None:
    """The placeholders load into nothing, so each fetch also proves that a wrong file is rejected and removed."""
    for name, relative in TREE.items():
        fake.downloads.clear()
        with pytest.raises(CheckpointError, match="does not load into its network, so it was deleted") as info:
            hub.fetch(name, progress=False)
        assert fake.downloads == [relative], name
        assert "restore models import" in str(info.value) and "\n" not in str(info.value)
        assert nothing_left(cache, name)


def test_first_download_is_stored_recorded_and_used_offline(
    fake: FakeDrive, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = official_checkpoint(fake.root / TREE["mair-light-t-x2"], "mair-light-t-x2")
    published = hub.sha256_file(original)
    resolved = hub.fetch("mair-light-t-x2", progress=False)
    assert resolved.source == "download" and resolved.published_sha256 == published
    record = json.loads((resolved.path.parent / "record.json").read_text())
    assert record["origin"] == "drive" and record["original_sha256"] == published
    assert record["original_filename"] == "MaIR_T_lightSR_x2.pth"
    assert record["url"].startswith("https://drive.google.com/")
    assert not (cache / "partial" / "mair-light-t-x2").exists()
    # Later uses come from the cache, also offline, and load the same weights.
    monkeypatch.setenv("RESTORECLI_OFFLINE", "1")
    again = hub.fetch("mair-light-t-x2", progress=False)
    assert (again.source, again.path, again.published_sha256) == ("cache", resolved.path, published)
    loaded = hub.resolve_weights("sr", model="mair-light-t-x2", weights=None)
    assert loaded.path == resolved.path and fake.downloads == [TREE["mair-light-t-x2"]]
    expected = torch.load(original, weights_only=True)["params"]
    stored = models.read_checkpoint(resolved.path).state_dict
    assert all(torch.equal(stored[key], value) for key, value in expected.items())


def test_a_file_of_another_layout_is_rejected_and_removed(fake: FakeDrive, cache: Path) -> None:
    official_checkpoint(fake.root / TREE["mair-light-t-x2"], "mair-light-t-x3")  # x3 head under the x2 name
    with pytest.raises(CheckpointError, match="mair-light-t-x2 checkpoint"):
        hub.fetch("mair-light-t-x2", progress=False)
    assert nothing_left(cache, "mair-light-t-x2")


def test_an_interrupted_transfer_resumes(fake: FakeDrive, cache: Path) -> None:
    original = official_checkpoint(fake.root / TREE["mair-light-t-x2"], "mair-light-t-x2")
    fake.cut_after = original.stat().st_size // 3
    with pytest.raises(DownloadError, match="resumes") as info:
        hub.fetch("mair-light-t-x2", progress=False)
    assert "no connection to Google Drive" in str(info.value) and "restore models import" in str(info.value)
    assert not (cache / "models" / "mair-light-t-x2").exists()  # nothing stored under the name yet
    resolved = hub.fetch("mair-light-t-x2", progress=False)
    assert fake.resumed_from == [0, original.stat().st_size // 3]
    assert resolved.published_sha256 == hub.sha256_file(original)
    assert not (cache / "partial" / "mair-light-t-x2").exists()


@pytest.mark.parametrize(
    ("where", "error", "expected"),
    [
        ("download", FileURLRetrievalError("Too many users have viewed or downloaded this file recently."), "too many users"),
        ("listing", GdownDownloadError(f"Failed to parse folder contents for folder ID: {FOLDER_ID}. The page structure may have changed."), "layout may have changed"),
        ("listing", requests.ConnectionError("Name or service not known"), "no connection to Google Drive"),
        ("listing", GdownDownloadError("Failed to retrieve folder contents (status code 404)."), "status code 404"),
    ],
)  # fmt: skip
def test_drive_failures_are_one_line_with_the_manual_route(
    fake: FakeDrive, cache: Path, where: str, error: Exception, expected: str
) -> None:
    official_checkpoint(fake.root / TREE["mair-sr-x4"], "mair-light-t-x4")  # never reached in these cases
    setattr(fake, f"fail_{where}", error)
    with pytest.raises(DownloadError) as info:
        hub.fetch("mair-sr-x4", progress=False)
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert message.endswith("`restore models import MaIR_SR_x4.pth --name mair-sr-x4`")
    assert nothing_left(cache, "mair-sr-x4")


def test_a_file_missing_from_the_folder_says_what_is_there(fake: FakeDrive, cache: Path) -> None:
    (fake.root / TREE["mair-deblur"]).unlink()
    missing = r"MaIR_MotionDeblur\.ckpt \(mair-deblur\) is not in the Google Drive folder"
    with pytest.raises(DownloadError, match=missing) as info:
        hub.fetch("mair-deblur", progress=False)
    assert "Deblur" not in str(info.value).split("holds")[1].split(";")[0] and "SR/MaIR_SR_x4.pth" in str(info.value)
    assert nothing_left(cache, "mair-deblur") and fake.downloads == []


def test_offline_mode_never_asks_drive(fake: FakeDrive, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORECLI_OFFLINE", "1")
    fake.fail_listing = AssertionError("Drive was asked while offline")
    with pytest.raises(DownloadError, match="offline mode .* unset RESTORECLI_OFFLINE, or download MaIR_SR_x2.pth"):
        hub.fetch("mair-sr-x2", progress=False)
    assert nothing_left(cache, "mair-sr-x2")


def test_a_mirror_takes_precedence(
    fake: FakeDrive, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    original = official_checkpoint(mirror / "MaIR_T_lightSR_x4.pth", "mair-light-t-x4")
    monkeypatch.setenv("RESTORECLI_MIRROR", mirror.as_uri())
    fake.fail_listing = AssertionError("Drive was asked although a mirror serves the file")
    resolved = hub.fetch("mair-light-t-x4", sha256=hub.sha256_file(original), progress=False)
    assert resolved.source == "download" and resolved.sha256 == hub.sha256_file(original)
    assert fake.downloads == []


def test_pinned_sha256_is_checked_before_anything_is_stored(fake: FakeDrive, cache: Path) -> None:
    original = official_checkpoint(fake.root / TREE["mair-light-t-x2"], "mair-light-t-x2")
    with pytest.raises(ChecksumError, match="expected 0{64}; the file was deleted"):
        hub.fetch("mair-light-t-x2", sha256="0" * 64, progress=False)
    assert nothing_left(cache, "mair-light-t-x2")
    published = hub.sha256_file(original)
    assert hub.fetch("mair-light-t-x2", sha256=published.upper(), progress=False).published_sha256 == published
    # A later pin that differs from the recorded first-use digest is caught without a download.
    with pytest.raises(ChecksumError, match="is pinned"):
        hub.fetch("mair-light-t-x2", sha256="1" * 64, progress=False)
    assert len(fake.downloads) == 2


def test_a_tampered_cache_file_is_caught_on_the_next_use(fake: FakeDrive, cache: Path) -> None:
    official_checkpoint(fake.root / TREE["mair-light-t-x2"], "mair-light-t-x2")
    stored = hub.fetch("mair-light-t-x2", progress=False).path
    stat = stored.stat()
    data = bytearray(stored.read_bytes())
    data[-5] ^= 0xFF  # same size, and the old modification time restored below
    stored.write_bytes(bytes(data))
    os.utime(stored, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ChecksumError, match="is corrupt"):
        hub.fetch("mair-light-t-x2", progress=False)


def test_without_gdown_the_manual_route_remains(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real default_client, with gdown made unimportable
    isolate(monkeypatch, cache)
    monkeypatch.setitem(sys.modules, "gdown", None)
    with pytest.raises(DownloadError, match="needs the gdown package.*restore models import MaIR_SR_x3.pth"):
        hub.fetch("mair-sr-x3", progress=False)


def test_cli_download_list_and_path(
    fake: FakeDrive, cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_cli_models import restore

    code, out, _ = restore(capsys, monkeypatch, "models", "list", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and {rows[name]["where"] for name in TREE} == {"drive"}
    assert rows["restorecli-light-x4"]["where"] == "bundled"
    original = official_checkpoint(fake.root / TREE["mair-light-t-x3"], "mair-light-t-x3")
    code, out, err = restore(capsys, monkeypatch, "models", "download", "mair-light-t-x3")
    assert code == 0, err
    stored = Path(out.strip())
    assert stored.is_file() and stored.parent == cache / "models" / "mair-light-t-x3"
    assert f"sha256 {hub.sha256_file(original)}" in err and "recorded and checked on every use" in err
    code, out, _ = restore(capsys, monkeypatch, "models", "path", "mair-light-t-x3")
    assert (code, out.strip()) == (0, str(stored))
    code, out, err = restore(capsys, monkeypatch, "models", "download", "mair-sr-x4", "--sha256", "xyz")
    assert code != 0 and out == "" and err.startswith("Error: ") and "64 hex digits" in err


def test_cli_interrupted_download_keeps_the_bytes_and_resumes(
    fake: FakeDrive, cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_cli_models import restore

    original = official_checkpoint(fake.root / TREE["mair-light-t-x2"], "mair-light-t-x2")
    real_download = fake.download

    def interrupted(**kwargs: Any) -> str:
        part = Path(kwargs["output"] + "ABCDEFGH.part")
        part.write_bytes(original.read_bytes()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(fake, "download", interrupted)
    monkeypatch.setattr(drive, "default_client", fake.client)
    code, out, err = restore(capsys, monkeypatch, "models", "download", "mair-light-t-x2")
    assert code == 130 and out == "" and "resumes the download" in err
    assert not (cache / "models" / "mair-light-t-x2").exists()
    monkeypatch.setattr(fake, "download", real_download)
    monkeypatch.setattr(drive, "default_client", fake.client)
    code, out, err = restore(capsys, monkeypatch, "models", "download", "mair-light-t-x2")
    assert code == 0, err
    assert fake.resumed_from == [1000]
    shutil.rmtree(cache / "models" / "mair-light-t-x2")
