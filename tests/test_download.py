"""Verified, resumable downloads against a local HTTP server (never the internet).

``FileServer`` is imported by the other hub tests too.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from restorecli import download as dl
from restorecli.errors import ChecksumError, DownloadError
from restorecli.filelock import exclusive_lock


class FileServer:
    """Serves ``files`` on 127.0.0.1 with scripted misbehaviour per path.

    ``plan[path]`` is a list of modes used one per request (then "ok"): "ok", "404", "500",
    "cut" (half the body, then close), "stall" (a few bytes, then silence), "norange" (ignore Range).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.plan: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path
                server.requests.append((path, self.headers.get("Range")))
                modes = server.plan.get(path, [])
                mode = modes.pop(0) if modes else "ok"
                data = server.files.get(path)
                if mode == "404" or data is None:
                    self.send_error(404)
                    return
                if mode == "500":
                    self.send_error(500)
                    return
                start = 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if match and mode != "norange":
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if mode == "stall":
                    self.wfile.write(body[:10])
                    self.wfile.flush()
                    server.release.wait(5)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, data: bytes, *modes: str) -> str:
        self.files[path] = data
        self.plan[path] = list(modes)
        return self.url(path)


def isolate(monkeypatch: pytest.MonkeyPatch, cache: Path | None = None) -> None:
    """Clear the hub's environment (conftest sets offline mode; these tests only talk to 127.0.0.1)."""
    for name in ("RESTORECLI_OFFLINE", "RESTORECLI_MIRROR", "RESTORECLI_MANIFEST", "RESTORECLI_CACHE"):
        monkeypatch.delenv(name, raising=False)
    if cache is not None:
        monkeypatch.setenv("RESTORECLI_CACHE", str(cache))


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch)


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not all one byte so offsets matter
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"progress": False, "backoff": 0.0}


def test_download_and_verify(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/w.bin", PAYLOAD)
    dest = tmp_path / "cache" / "w.bin"
    result = dl.download(url, dest, sha256=DIGEST, size=len(PAYLOAD), **FAST)
    assert result.path == dest and result.verified and result.sha256 == DIGEST
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("w.bin.part").exists()
    # A verified file already in place costs no request.
    before = len(server.requests)
    assert dl.download_file(url, dest, sha256=DIGEST, progress=False) == dest
    assert len(server.requests) == before


def test_resume_after_cut_connection(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/w.bin", PAYLOAD, "cut")
    dest = tmp_path / "w.bin"
    dl.download(url, dest, sha256=DIGEST, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[0][1] is None
    assert server.requests[1][1] == f"bytes={len(PAYLOAD) // 2}-"


def test_resume_from_part_left_by_earlier_run(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/w.bin", PAYLOAD)
    dest = tmp_path / "w.bin"
    dest.with_name("w.bin.part").write_bytes(PAYLOAD[:1000])
    dl.download(url, dest, sha256=DIGEST, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/w.bin", "bytes=1000-")]


def test_server_ignoring_range_restarts_cleanly(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/w.bin", PAYLOAD, "norange")
    dest = tmp_path / "w.bin"
    dest.with_name("w.bin.part").write_bytes(b"junk" * 100)
    dl.download(url, dest, sha256=DIGEST, **FAST)
    assert dest.read_bytes() == PAYLOAD


def test_stale_part_from_another_file_is_redownloaded(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/w.bin", PAYLOAD)
    dest = tmp_path / "w.bin"
    dest.with_name("w.bin.part").write_bytes(b"x" * 1000)  # same length prefix, wrong bytes
    dl.download(url, dest, sha256=DIGEST, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/w.bin", "bytes=1000-"), ("/w.bin", None)]


def test_complete_part_gets_416_and_is_accepted(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/w.bin", PAYLOAD)
    dest = tmp_path / "w.bin"
    dest.with_name("w.bin.part").write_bytes(PAYLOAD)
    dl.download(url, dest, sha256=DIGEST, **FAST)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/w.bin", PAYLOAD)
    dest = tmp_path / "w.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        dl.download(url, dest, sha256=wrong, **FAST)
    assert wrong in str(info.value) and DIGEST in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/w.bin", PAYLOAD[:100])
    with pytest.raises(ChecksumError, match="expected 5000 bytes, got 100"):
        dl.download(url, tmp_path / "w.bin", sha256=DIGEST, size=5000, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_404_is_not_retried(server: FileServer, tmp_path: Path) -> None:
    url = server.url("/missing.bin")
    with pytest.raises(DownloadError, match="HTTP 404"):
        dl.download(url, tmp_path / "m.bin", sha256=DIGEST, **FAST)
    assert len(server.requests) == 1
    assert not (tmp_path / "m.bin").exists()


def test_5xx_is_retried(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/w.bin", PAYLOAD, "500", "500")
    dl.download(url, tmp_path / "w.bin", sha256=DIGEST, retries=2, **FAST)
    assert len(server.requests) == 3


def test_5xx_gives_up_after_retries(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/w.bin", PAYLOAD, "500", "500", "500")
    with pytest.raises(DownloadError, match="after 2 attempt"):
        dl.download(url, tmp_path / "w.bin", sha256=DIGEST, retries=1, **FAST)


def test_stalled_server_hits_timeout(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/w.bin", PAYLOAD, "stall", "stall")
    with pytest.raises(DownloadError, match="timed out"):
        dl.download(url, tmp_path / "w.bin", sha256=DIGEST, timeout=0.3, retries=1, **FAST)
    assert not (tmp_path / "w.bin").exists()


def test_stall_then_resume(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/w.bin", PAYLOAD, "stall")
    dl.download(url, tmp_path / "w.bin", sha256=DIGEST, timeout=0.3, **FAST)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD
    assert server.requests[1][1] == "bytes=10-"


def test_unverified_needs_opt_in(server: FileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = server.add("/w.bin", PAYLOAD)
    with pytest.raises(DownloadError, match="--allow-unverified"):
        dl.download(url, tmp_path / "w.bin", sha256=None, **FAST)
    assert server.requests == []
    result = dl.download(url, tmp_path / "w.bin", sha256=None, allow_unverified=True, **FAST)
    assert result.sha256 == DIGEST and not result.verified
    assert DIGEST in caplog.text


def test_offline_never_touches_network(server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORECLI_OFFLINE", "1")
    url = server.add("/w.bin", PAYLOAD)
    with pytest.raises(DownloadError, match="RESTORECLI_OFFLINE"):
        dl.download(url, tmp_path / "w.bin", sha256=DIGEST, **FAST)
    assert server.requests == []


def test_file_url_works_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORECLI_OFFLINE", "1")
    source = tmp_path / "mirror" / "w.bin"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    dest = dl.download_file(source.as_uri(), tmp_path / "out" / "w.bin", sha256=DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_mirror_rewrites_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dl.apply_mirror("https://a.example/x/y.pth", "y.pth") == "https://a.example/x/y.pth"
    monkeypatch.setenv("RESTORECLI_MIRROR", "http://mirror.lan/w/")
    assert dl.apply_mirror("https://a.example/x/y.pth", "y.pth") == "http://mirror.lan/w/y.pth"
    assert dl.apply_mirror(None, "MaIR_SR_x4.pth") == "http://mirror.lan/w/MaIR_SR_x4.pth"


def test_bad_sha256_argument_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        dl.download("http://127.0.0.1:9/x", tmp_path / "x", sha256="abc")


def test_progress_bar_on_a_terminal(server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "bars_wanted", lambda: True)
    url = server.add("/w.bin", PAYLOAD, "cut")
    dl.download(url, tmp_path / "w.bin", sha256=DIGEST, progress=True, backoff=0.0)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD


def test_concurrent_download_waits_and_reuses_the_first_ones_file(server: FileServer, tmp_path: Path) -> None:
    """A second downloader of the same file waits for the lock, then finds the verified file."""
    url = server.add("/w.bin", PAYLOAD)
    dest = tmp_path / "cache" / "w.bin"
    dest.parent.mkdir(parents=True)
    results: list[dl.DownloadResult] = []
    with exclusive_lock(dest.with_name("w.bin.lock")):  # another process, mid-download
        waiter = threading.Thread(target=lambda: results.append(dl.download(url, dest, sha256=DIGEST, **FAST)))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and not results and server.requests == []
        dest.write_bytes(PAYLOAD)  # the holder finishes its verified file
    waiter.join(10)
    assert results and results[0].verified and results[0].path == dest
    assert server.requests == []  # nothing transferred twice


def test_concurrent_download_takes_over_after_a_failed_holder(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/w.bin", PAYLOAD)
    dest = tmp_path / "cache" / "w.bin"
    dest.parent.mkdir(parents=True)
    results: list[dl.DownloadResult] = []
    with exclusive_lock(dest.with_name("w.bin.lock")):
        waiter = threading.Thread(target=lambda: results.append(dl.download(url, dest, sha256=DIGEST, **FAST)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive()
    waiter.join(10)
    assert results and dest.read_bytes() == PAYLOAD and len(server.requests) == 1


def test_two_processes_transfer_the_file_once(server: FileServer, tmp_path: Path) -> None:
    import subprocess
    import sys

    url = server.add("/w.bin", PAYLOAD, "stall")  # the first transfer hangs until released
    dest = tmp_path / "cache" / "w.bin"
    script = (
        "import sys; from restorecli import download as dl; "
        "r = dl.download(sys.argv[1], sys.argv[2], sha256=sys.argv[3], progress=False, backoff=0.0, timeout=2.0); "
        "print(r.sha256)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, url, str(dest), DIGEST], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outputs == [DIGEST, DIGEST]
    assert dest.read_bytes() == PAYLOAD
    # One stalled request plus its resume; the waiting process found the verified file.
    assert len(server.requests) == 2 and server.requests[1][1] == "bytes=10-"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["w.bin"]
